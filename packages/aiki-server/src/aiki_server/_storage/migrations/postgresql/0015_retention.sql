-- Aiki server schema, version 15 (PostgreSQL): retention. Times are epoch milliseconds (UTC).

-- the retention daemon finds the namespaces with ended runs, and takes each one's
-- oldest first, past its period
CREATE INDEX runs_finished ON runs (namespace, finished_at, id) WHERE finished_at IS NOT NULL;
-- and workers not seen for a while
CREATE INDEX workers_last_seen ON workers (last_seen_at);

-- a namespace's own retention, which wins over the server's: how long an ended run is
-- kept, from its end (retention_ms NULL: kept forever). No row: the server's setting
CREATE TABLE namespace_retention (
    namespace    TEXT PRIMARY KEY,
    retention_ms BIGINT CHECK (retention_ms IS NULL OR retention_ms >= 0),
    updated_at   BIGINT NOT NULL
);

-- the last run of a schedule is kept (its overlap policy reads it): found by this index
CREATE INDEX schedules_by_last_run ON schedules (last_run_id) WHERE last_run_id IS NOT NULL;

-- history rows a run wrote (its status moves and new task calls), counted by the
-- writes that update its row anyway, for the per-run history bound, counted from
-- this version on (a run started before counts only what it writes from now)
ALTER TABLE runs ADD COLUMN history_count INTEGER NOT NULL DEFAULT 0;
