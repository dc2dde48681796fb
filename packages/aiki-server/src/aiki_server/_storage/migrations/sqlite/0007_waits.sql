-- Aiki server schema, version 7 (SQLite): what a suspended run waits for.

-- the waits a suspended run reported, with their due times (epoch ms), as JSON (what
-- its detail lists), NULL while the run is not suspended
ALTER TABLE runs ADD COLUMN waits TEXT;

-- sleeps.status and event_waits.status may now also be 'withdrawn': a wait the run
-- stopped reporting, which neither wakes it nor takes an event until reported again
