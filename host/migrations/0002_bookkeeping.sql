-- Bookkeeping of the exactly-once effect: every applied event once, and the
-- next offset of every partition, written in the same transaction as the rows.

CREATE TABLE IF NOT EXISTS processed_events (
    event_id     VARCHAR(36)  NOT NULL,
    event_type   VARCHAR(100) NOT NULL,
    topic        VARCHAR(249) NOT NULL,
    `partition`  INT          NOT NULL,
    `offset`     BIGINT       NOT NULL,
    component    VARCHAR(128) NOT NULL,
    processed_at DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (event_id),
    KEY idx_processed_events_topic (topic, `partition`, `offset`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS consumer_offsets (
    group_id    VARCHAR(255) NOT NULL,
    topic       VARCHAR(249) NOT NULL,
    `partition` INT          NOT NULL,
    next_offset BIGINT       NOT NULL,
    updated_at  DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (group_id, topic, `partition`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
