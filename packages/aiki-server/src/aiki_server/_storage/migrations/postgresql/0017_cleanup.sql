-- Aiki server schema, version 17 (PostgreSQL): the cleanup phase of a cancelled or
-- timed-out run.
-- A run that ran and is then cancelled or times out goes to `cleaning_up`: a worker
-- claims it (claimed_by set, NULL while it waits for one), runs its cleanup code, and
-- the run ends in cleanup_status (`cancelled` or `failed`), with the error already in
-- `error`. deadline_at bounds the cleanup: when it passes, the run ends all the same.

ALTER TABLE runs ADD COLUMN cleanup_status TEXT;
