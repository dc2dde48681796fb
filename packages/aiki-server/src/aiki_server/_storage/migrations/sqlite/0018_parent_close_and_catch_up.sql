-- Aiki server schema, version 18 (SQLite): a child's parent-close policy, a schedule's catch-up.

-- what the server does with a child run when its parent ends: 'terminate',
-- 'request_cancel' or 'abandon' (NULL for a run without a parent). Children started
-- before were cancelled with their parent, so they terminate.
ALTER TABLE runs ADD COLUMN parent_close_policy TEXT;
UPDATE runs SET parent_close_policy = 'terminate' WHERE parent_run_id IS NOT NULL;

-- which missed occurrences a schedule starts when it fires late: 'latest' (the one
-- schedules did before), 'all' (within catch_up_window_ms, a day when NULL) or 'none'
ALTER TABLE schedules ADD COLUMN catch_up TEXT NOT NULL DEFAULT 'latest';
ALTER TABLE schedules ADD COLUMN catch_up_window_ms INTEGER;
-- the input's fingerprint (the client's keyed one when it seals the input), for the
-- definition of a schedule updated in place (NULL before: the plain hash of its input)
ALTER TABLE schedules ADD COLUMN input_hash TEXT;
