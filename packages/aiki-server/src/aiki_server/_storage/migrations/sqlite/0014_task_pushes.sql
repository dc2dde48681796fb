-- Aiki server schema, version 14 (SQLite): long remote task attempts. Times are epoch
-- milliseconds (UTC).
-- A remote task attempt whose answer is not back within the server's wait goes on
-- without the worker: its row says what to push (the sealed input, the task's
-- timeout), to which endpoint, and until when the replica that pushes it holds it
-- (lease_until). A row whose lease ran out (its replica died) is pushed again. The row
-- goes when the attempt's outcome is recorded, or when its run ends (a cancel).

CREATE TABLE task_pushes (
    run_id      TEXT NOT NULL,
    address     TEXT NOT NULL,
    occurrence  INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    namespace   TEXT NOT NULL,
    task_name   TEXT NOT NULL,
    input       TEXT NOT NULL,
    timeout_ms  INTEGER,
    retry       TEXT,
    retry_attempt INTEGER NOT NULL,
    endpoint_id TEXT NOT NULL,
    lease_until INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (run_id, address, occurrence, attempt)
);
CREATE INDEX task_pushes_by_lease ON task_pushes (lease_until);
