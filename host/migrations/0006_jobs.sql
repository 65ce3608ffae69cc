-- Shadow rebuilds and canaries run in processes of their own (`projector
-- rebuild`, `projector canary`). Each keeps its latest state here, one row
-- per kind and domain, so every host's status page and metrics show it.

CREATE TABLE IF NOT EXISTS projector_jobs (
    kind       VARCHAR(16)  NOT NULL,
    domain     VARCHAR(64)  NOT NULL,
    state      VARCHAR(32)  NOT NULL,
    detail     TEXT         NOT NULL,
    started_at DATETIME(6)  NOT NULL,
    updated_at DATETIME(6)  NOT NULL,
    PRIMARY KEY (kind, domain)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
