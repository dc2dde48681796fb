-- Aiki server schema, version 8 (SQLite): long runs, workflow retries, replay notices.

-- task calls a run recorded, kept with the run: the per-run limit is checked without
-- counting rows, and claims that keep failing set the run aside (then fail it)
ALTER TABLE runs ADD COLUMN task_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN claim_failures INTEGER NOT NULL DEFAULT 0;
-- a run that continued as new, and the run it continued
ALTER TABLE runs ADD COLUMN continued_as TEXT;
ALTER TABLE runs ADD COLUMN continued_from TEXT;
UPDATE runs SET task_count = (SELECT count(*) FROM tasks WHERE tasks.run_id = runs.id);

-- the workflow-level attempt of the run that last wrote a task call, and each attempt:
-- a later run attempt runs a task that failed for good again
ALTER TABLE tasks ADD COLUMN run_attempt INTEGER NOT NULL DEFAULT 1;
ALTER TABLE task_attempts ADD COLUMN run_attempt INTEGER NOT NULL DEFAULT 1;
-- what a replay noticed when it made this call (a divergence from the history)
ALTER TABLE tasks ADD COLUMN notice TEXT;
