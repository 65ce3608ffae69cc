-- processed_events is written once per event on the hot path; its secondary
-- index on (topic, partition, offset) cost an extra B-tree insert per event
-- and served only rare administrative queries (replay), which can scan.
-- (Portable to MySQL 8: no IF EXISTS, which only MariaDB accepts here; 0002
-- created the index, so it exists.)

ALTER TABLE processed_events DROP INDEX idx_processed_events_topic;
