-- Aiki server schema, version 9 (SQLite): a schedule's run timeout.

-- the timeout of each run the schedule starts (its deadline is its start plus this);
-- NULL for runs without a deadline, as every schedule created before
ALTER TABLE schedules ADD COLUMN timeout_ms INTEGER;
