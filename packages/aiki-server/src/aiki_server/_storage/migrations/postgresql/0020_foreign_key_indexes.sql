-- Aiki server schema, version 20 (PostgreSQL): an index under every foreign key.
-- Deleting an event (retention) checks that no event wait still names it: without an
-- index on event_waits.event_id, each deleted event read the whole table, so a batch
-- of ended runs with thousands of events read it thousands of times, holding its locks.
CREATE INDEX event_waits_by_event ON event_waits (event_id);
