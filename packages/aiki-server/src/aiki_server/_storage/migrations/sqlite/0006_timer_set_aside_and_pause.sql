-- Aiki server schema, version 6 (SQLite): timer failures set aside, and pause requests.

-- consecutive failures of the timer daemon on this row's due time, and the last one's
-- error (ErrorInfo JSON). From 5 on the row is set aside: no timer pass takes it
ALTER TABLE runs ADD COLUMN timer_failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN timer_error TEXT;
ALTER TABLE schedules ADD COLUMN timer_failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE schedules ADD COLUMN timer_error TEXT;
CREATE INDEX runs_timer_failures ON runs (timer_failures) WHERE timer_failures > 0;
CREATE INDEX schedules_timer_failures ON schedules (timer_failures) WHERE timer_failures > 0;

-- 1 while a running run is to stop at its next task boundary, then become paused
ALTER TABLE runs ADD COLUMN pause_requested INTEGER NOT NULL DEFAULT 0;
