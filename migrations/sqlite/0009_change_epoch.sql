-- A counter bumped by every write that can change the answer to a sign-in: a user's row, its
-- Microsoft 365 binding, or a session ending. Servers cache sessions with their user and poll
-- this one row, so a change made by the CLI or another process reaches their caches within the
-- poll interval. Inserting a session bumps nothing: no cached entry can be affected by it.
CREATE TABLE change_epoch (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n  BIGINT NOT NULL
);
INSERT INTO change_epoch (id, n) VALUES (1, 0);

CREATE TRIGGER users_changed_update AFTER UPDATE ON users
BEGIN UPDATE change_epoch SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER users_changed_delete AFTER DELETE ON users
BEGIN UPDATE change_epoch SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER bindings_changed_insert AFTER INSERT ON m365_bindings
BEGIN UPDATE change_epoch SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER bindings_changed_update AFTER UPDATE ON m365_bindings
BEGIN UPDATE change_epoch SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER bindings_changed_delete AFTER DELETE ON m365_bindings
BEGIN UPDATE change_epoch SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER sessions_changed_update AFTER UPDATE ON sso_sessions
BEGIN UPDATE change_epoch SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER sessions_changed_delete AFTER DELETE ON sso_sessions
BEGIN UPDATE change_epoch SET n = n + 1 WHERE id = 1; END;
