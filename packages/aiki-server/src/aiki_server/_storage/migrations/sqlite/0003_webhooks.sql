-- Aiki server schema, version 2 (SQLite): signed webhook URLs and the server's secrets.

-- one row per minted URL, whose signature covers id, run_id, event and expires_at
CREATE TABLE webhooks (
    id          TEXT PRIMARY KEY,
    namespace   TEXT NOT NULL,
    run_id      TEXT NOT NULL REFERENCES runs (id),
    event       TEXT NOT NULL,
    data_schema TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX webhooks_by_run ON webhooks (run_id);

-- secrets the server generates once and every replica shares (the webhook signing key)
CREATE TABLE server_secrets (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
