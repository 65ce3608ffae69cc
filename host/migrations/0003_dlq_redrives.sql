-- Dead letters already sent back to their source topic by `projector dlq
-- redrive`, so a second redrive of "all" does not send them again.

CREATE TABLE IF NOT EXISTS dlq_redrives (
    dlq_topic        VARCHAR(249) NOT NULL,
    `partition`      INT          NOT NULL,
    `offset`         BIGINT       NOT NULL,
    source_topic     VARCHAR(249) NOT NULL,
    sent_to_partition INT         NOT NULL,
    sent_to_offset   BIGINT       NOT NULL,
    redriven_at      DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (dlq_topic, `partition`, `offset`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
