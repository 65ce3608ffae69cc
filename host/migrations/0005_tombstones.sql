-- A hard delete leaves a tombstone: the row's key and the delete's
-- timestamp. An upsert older than the tombstone of its row changes nothing,
-- so a late or redriven older event cannot bring a deleted row (and its
-- children) back. `projector prune` removes tombstones past their retention.

CREATE TABLE IF NOT EXISTS tombstones (
    table_name      VARCHAR(64)  NOT NULL,
    row_key         VARCHAR(255) NOT NULL,
    event_id        VARCHAR(36)  NOT NULL,
    event_timestamp DATETIME(6)  NOT NULL,
    PRIMARY KEY (table_name, row_key)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
