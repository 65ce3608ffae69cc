-- processed_events is written once per event on the hot path; its secondary
-- index on (topic, partition, offset) cost an extra B-tree insert per event
-- and served only rare administrative queries (replay), which can scan.

ALTER TABLE processed_events DROP INDEX IF EXISTS idx_processed_events_topic;
