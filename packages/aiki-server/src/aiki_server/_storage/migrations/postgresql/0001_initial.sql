-- Aiki server schema, version 1 (PostgreSQL). Times are milliseconds since the epoch (UTC);
-- payloads are opaque JSON text written by the client's codec.

CREATE TABLE runs (
    id               TEXT PRIMARY KEY,
    namespace        TEXT NOT NULL,
    workflow         TEXT NOT NULL,
    version          TEXT NOT NULL,
    pool             TEXT NOT NULL,
    status           TEXT NOT NULL,
    revision         BIGINT NOT NULL DEFAULT 0,
    attempt          BIGINT NOT NULL DEFAULT 1,
    reference_id     TEXT,
    input_hash       TEXT NOT NULL,
    parent_run_id    TEXT REFERENCES runs (id),
    child_address    TEXT,
    child_occurrence BIGINT,
    input            TEXT NOT NULL,
    result           TEXT,
    error            TEXT,
    timeout_ms       BIGINT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    ready_at         BIGINT NOT NULL,
    start_at         BIGINT,
    deadline_at      BIGINT,
    wake_at          BIGINT,
    finished_at      BIGINT,
    claimed_by       TEXT,
    claim_expires_at BIGINT
);
CREATE UNIQUE INDEX runs_by_reference ON runs (namespace, workflow, reference_id)
    WHERE reference_id IS NOT NULL;
CREATE UNIQUE INDEX runs_by_child_address ON runs (parent_run_id, child_address, child_occurrence)
    WHERE parent_run_id IS NOT NULL;
CREATE INDEX runs_queue ON runs (status, workflow, version, pool, ready_at);
CREATE INDEX runs_listing ON runs (namespace, created_at, id);
CREATE INDEX runs_wake ON runs (wake_at) WHERE wake_at IS NOT NULL;
CREATE INDEX runs_deadline ON runs (deadline_at) WHERE deadline_at IS NOT NULL;
CREATE INDEX runs_claims ON runs (claim_expires_at) WHERE claim_expires_at IS NOT NULL;

CREATE TABLE tasks (
    id              TEXT PRIMARY KEY,
    run_id          TEXT NOT NULL REFERENCES runs (id),
    address         TEXT NOT NULL,
    occurrence      BIGINT NOT NULL,
    name            TEXT NOT NULL,
    status          TEXT NOT NULL,
    input           TEXT NOT NULL,
    result          TEXT,
    error           TEXT,
    next_attempt_at BIGINT,
    created_at      BIGINT NOT NULL,
    finished_at     BIGINT,
    UNIQUE (run_id, address, occurrence)
);

CREATE TABLE task_attempts (
    task_id     TEXT NOT NULL REFERENCES tasks (id),
    attempt     BIGINT NOT NULL,
    status      TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    finished_at BIGINT,
    error       TEXT,
    PRIMARY KEY (task_id, attempt)
);

CREATE TABLE sleeps (
    run_id       TEXT NOT NULL REFERENCES runs (id),
    name         TEXT NOT NULL,
    occurrence   BIGINT NOT NULL,
    status       TEXT NOT NULL,
    wake_at      BIGINT NOT NULL,
    completed_at BIGINT,
    PRIMARY KEY (run_id, name, occurrence)
);

CREATE TABLE events (
    id           TEXT PRIMARY KEY,
    run_id       TEXT NOT NULL REFERENCES runs (id),
    name         TEXT NOT NULL,
    reference_id TEXT,
    data         TEXT NOT NULL,
    received_at  BIGINT NOT NULL,
    consumed     BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX events_by_reference ON events (run_id, name, reference_id)
    WHERE reference_id IS NOT NULL;
CREATE INDEX events_by_run ON events (run_id, name, received_at);

CREATE TABLE event_waits (
    run_id     TEXT NOT NULL REFERENCES runs (id),
    name       TEXT NOT NULL,
    occurrence BIGINT NOT NULL,
    status     TEXT NOT NULL,
    timeout_at BIGINT,
    event_id   TEXT REFERENCES events (id),
    PRIMARY KEY (run_id, name, occurrence)
);

CREATE TABLE child_waits (
    run_id       TEXT NOT NULL REFERENCES runs (id),
    child_run_id TEXT NOT NULL REFERENCES runs (id),
    PRIMARY KEY (run_id, child_run_id)
);
CREATE INDEX child_waits_by_child ON child_waits (child_run_id);

CREATE TABLE state_transitions (
    seq         BIGSERIAL PRIMARY KEY,
    namespace   TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    entity      TEXT NOT NULL,
    entity_id   TEXT NOT NULL,
    from_status TEXT,
    to_status   TEXT NOT NULL,
    reason      TEXT,
    revision    BIGINT NOT NULL,
    at          BIGINT NOT NULL
);
CREATE INDEX state_transitions_by_run ON state_transitions (run_id, seq);

CREATE TABLE workers (
    id           TEXT NOT NULL,
    namespace    TEXT NOT NULL,
    capabilities TEXT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    PRIMARY KEY (namespace, id)
);
