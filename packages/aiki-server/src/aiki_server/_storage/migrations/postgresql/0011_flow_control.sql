-- Aiki server schema, version 11 (PostgreSQL): flow control (concurrency limits, priorities,
-- fairness).

-- 0 (lowest, the default) to 9: higher priorities are claimed first
ALTER TABLE runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
-- the key the workflow's concurrency limit counts the run under, NULL when none was given
ALTER TABLE runs ADD COLUMN concurrency_key TEXT;
-- the claim order (milliseconds, like ready_at): lower first. Set when the run queues:
-- its ready time, pushed back behind its key's queued runs (fairness), and forward by
-- its priority. Ordering only, whether a run may be claimed is still its status
ALTER TABLE runs ADD COLUMN rank BIGINT NOT NULL DEFAULT 0;
UPDATE runs SET rank = ready_at;
ALTER TABLE runs ALTER COLUMN rank DROP DEFAULT;

DROP INDEX runs_queue;
CREATE INDEX runs_queue ON runs (status, workflow, version, pool, rank, id);
-- a key's running runs (its slots taken) and its queued tail at each priority
CREATE INDEX runs_concurrency ON runs (namespace, workflow, concurrency_key, status, priority, rank)
    WHERE concurrency_key IS NOT NULL;

-- one limit per workflow (all its versions). source 'code': declared by the last start
-- that carried one, 'operator': set through the API, in effect until deleted.
-- per_key 1: the limit counts each concurrency key apart, 0: the whole workflow
CREATE TABLE concurrency_limits (
    namespace  TEXT NOT NULL,
    workflow   TEXT NOT NULL,
    "limit"    BIGINT NOT NULL,
    strategy   TEXT NOT NULL,
    per_key    INTEGER NOT NULL,
    source     TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (namespace, workflow)
);
