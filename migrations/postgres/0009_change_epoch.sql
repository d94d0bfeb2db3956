-- A counter bumped by every write that can change the answer to a sign-in: a user's row, its
-- Microsoft 365 binding, or a session ending. Every node caches sessions with their user and
-- polls this one row, so a change made on any node or by the CLI reaches every cache within
-- the poll interval. Statement-level triggers: one bump per statement, however many rows.
CREATE TABLE change_epoch (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n  BIGINT NOT NULL
);
INSERT INTO change_epoch (id, n) VALUES (1, 0);

CREATE FUNCTION bump_change_epoch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE change_epoch SET n = n + 1 WHERE id = 1;
    RETURN NULL;
END;
$$;

CREATE TRIGGER users_changed AFTER UPDATE OR DELETE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION bump_change_epoch();
CREATE TRIGGER bindings_changed AFTER INSERT OR UPDATE OR DELETE ON m365_bindings
    FOR EACH STATEMENT EXECUTE FUNCTION bump_change_epoch();
CREATE TRIGGER sessions_changed AFTER UPDATE OR DELETE ON sso_sessions
    FOR EACH STATEMENT EXECUTE FUNCTION bump_change_epoch();
