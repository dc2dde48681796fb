-- Aiki server schema, version 16 (PostgreSQL): indexes that keep the engine's cost flat in
-- the number of runs it has ever seen.
-- The timer daemon's due rows by the status it looks for, then the due time: a pass
-- and its look for the next due time read the due rows alone, however many runs
-- wait (runs_queue, which holds the status first, would walk every sleeping run).
CREATE INDEX runs_wake_due ON runs (status, wake_at) WHERE wake_at IS NOT NULL;
CREATE INDEX runs_claim_due ON runs (status, claim_expires_at) WHERE claim_expires_at IS NOT NULL;
-- A listing filtered by workflow or by status, newest first: its page is the first rows
-- of the index, however many runs of other workflows (or statuses) there are.
CREATE INDEX runs_listing_by_workflow ON runs (namespace, workflow, created_at, id);
CREATE INDEX runs_listing_by_status ON runs (namespace, status, created_at, id);
