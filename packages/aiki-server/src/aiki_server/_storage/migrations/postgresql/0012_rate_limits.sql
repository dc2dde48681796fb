-- Aiki server schema, version 12 (PostgreSQL): rate limits. Times are epoch milliseconds (UTC).
-- A rate limit hands out at most "limit" units in any window of per_ms, per key. Each
-- key's state is one bucket row (GCRA: tat, the theoretical arrival time of the next
-- unit), created on its first use, and last_request is the request id of its last grant, which
-- the same request asked again (its answer lost) gets back. Deleting a limit deletes its buckets.

CREATE TABLE rate_limits (
    namespace   TEXT NOT NULL,
    name        TEXT NOT NULL,
    "limit"     BIGINT NOT NULL CHECK ("limit" > 0),
    per_ms      BIGINT NOT NULL CHECK (per_ms > 0),
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (namespace, name)
);

CREATE TABLE rate_limit_buckets (
    namespace   TEXT NOT NULL,
    name        TEXT NOT NULL,
    key         TEXT NOT NULL CHECK (char_length(key) <= 200),
    last_request TEXT,
    tat         BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (namespace, name, key),
    FOREIGN KEY (namespace, name) REFERENCES rate_limits (namespace, name) ON DELETE CASCADE
);
