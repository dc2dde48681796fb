-- Aiki server schema, version 4 (SQLite): what a worker needs to open sealed payloads.

-- the schedule that fired a run: its input is sealed to the schedule, not to the run
ALTER TABLE runs ADD COLUMN schedule_id TEXT;

-- 'api' (sealed by the sender's codec) or 'webhook' (posted in clear by a third party)
ALTER TABLE events ADD COLUMN origin TEXT NOT NULL DEFAULT 'api';
