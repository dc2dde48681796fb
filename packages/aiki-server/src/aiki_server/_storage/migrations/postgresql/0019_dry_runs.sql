-- Aiki server schema, version 19 (PostgreSQL): dry-run jobs, replayed by a worker.

-- one row per run a dry-run request asked a worker to replay. The request deletes its
-- rows when it answers, and the retention sweep those of a request that died (expired)
CREATE TABLE dry_run_jobs (
    id          TEXT PRIMARY KEY,
    namespace   TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    worker_id   TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    version     TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    answer      TEXT
);
-- a directives poll reads its worker's pending jobs
CREATE INDEX dry_run_jobs_by_worker ON dry_run_jobs (namespace, worker_id, created_at);
CREATE INDEX dry_run_jobs_by_request ON dry_run_jobs (request_id);
CREATE INDEX dry_run_jobs_by_run ON dry_run_jobs (run_id);
CREATE INDEX dry_run_jobs_expiry ON dry_run_jobs (expires_at);
