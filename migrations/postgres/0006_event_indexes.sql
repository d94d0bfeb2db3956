-- The event log is read newest first (by id) within one type, target or actor: these indexes
-- serve such a page without scanning or sorting the whole log.
CREATE INDEX events_type_id ON events(event_type, id);
CREATE INDEX events_target_id ON events(target, id);
CREATE INDEX events_actor_id ON events(actor, id);
