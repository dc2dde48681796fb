-- Aiki server schema, version 2 (SQLite): schedules. Times are epoch milliseconds (UTC).
-- A schedule fires while it is not paused and next_fire_at has come. Firing starts a
-- run and advances next_fire_at in one transaction.

CREATE TABLE schedules (
    id              TEXT PRIMARY KEY,
    namespace       TEXT NOT NULL,
    name            TEXT NOT NULL,
    workflow        TEXT NOT NULL,
    version         TEXT NOT NULL,
    input           TEXT NOT NULL,
    cron            TEXT,
    every_ms        INTEGER,
    timezone        TEXT NOT NULL,
    overlap         TEXT NOT NULL,
    pool            TEXT NOT NULL,
    definition_hash TEXT NOT NULL,
    paused          INTEGER NOT NULL DEFAULT 0,
    next_fire_at    INTEGER,
    last_run_id     TEXT REFERENCES runs (id),
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    UNIQUE (namespace, name)
);
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE paused = 0;
CREATE INDEX schedules_listing ON schedules (namespace, created_at, id);
