-- Aiki server schema, version 13 (SQLite): push delivery's endpoints. Times are epoch
-- milliseconds (UTC).
-- An endpoint is a URL the server pushes work to: claimed runs of its (workflow,
-- version, pool) triples (kind 'workflows'), or attempts of its tasks (kind 'tasks').
-- serves is JSON: [[workflow, version, pool], ...] or ["task-name", ...].
-- secrets is JSON, newest first: [{"secret": "aiki_push_...", "expires_at": ms or null}].
-- They are kept in clear because the server signs every push with them (a hash could
-- only check a signature, never make one). A rotated secret stays until its expires_at.
-- failures counts consecutive failed pushes (0 once one succeeds), failing_since is
-- when the first of them failed, last_error what the last said ("HTTP 503"), and
-- retry_at the time before which nothing is pushed (back-off, or an open circuit).

CREATE TABLE endpoints (
    id            TEXT PRIMARY KEY,
    namespace     TEXT NOT NULL,
    url           TEXT NOT NULL CHECK (length(url) <= 2000),
    kind          TEXT NOT NULL CHECK (kind IN ('workflows', 'tasks')),
    serves        TEXT NOT NULL,
    max_in_flight INTEGER NOT NULL CHECK (max_in_flight > 0),
    timeout_ms    INTEGER NOT NULL CHECK (timeout_ms > 0),
    secrets       TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    failures      INTEGER NOT NULL DEFAULT 0,
    failing_since INTEGER,
    last_error    TEXT,
    retry_at      INTEGER
);
CREATE INDEX endpoints_by_kind ON endpoints (namespace, kind);
