-- Aiki server schema, version 5 (SQLite): API keys, each opening one namespace.

-- only the SHA-256 (hex) of a key is kept: the key itself is shown once, when created
CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    namespace  TEXT NOT NULL,
    key_hash   TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
