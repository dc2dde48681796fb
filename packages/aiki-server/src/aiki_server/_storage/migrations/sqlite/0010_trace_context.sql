-- Aiki server schema, version 10 (SQLite): a run's trace context.

-- the trace context of the code that started the run (a JSON object of a few strings:
-- `traceparent`, `tracestate`), handed to each worker that claims it. NULL when the
-- starter sent none, as for every run started before
ALTER TABLE runs ADD COLUMN trace_context TEXT;
