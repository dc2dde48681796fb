-- Aiki server schema, version 18 (PostgreSQL): a child's parent-close policy.

-- what the server does with a child run when its parent ends: 'terminate',
-- 'request_cancel' or 'abandon' (NULL for a run without a parent). Children started
-- before were cancelled with their parent, so they terminate.
ALTER TABLE runs ADD COLUMN parent_close_policy TEXT;
UPDATE runs SET parent_close_policy = 'terminate' WHERE parent_run_id IS NOT NULL;
