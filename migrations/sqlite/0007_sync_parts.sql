-- What the connection's token grants (space-separated Graph permission names, from the token's
-- roles or scp claim); NULL when Microsoft's token could not be read. Shown to admins with
-- the permissions idbridge needs and lacks.
ALTER TABLE m365_connection ADD COLUMN granted_permissions TEXT;

-- Requests to the sync worker of whichever server process or node sees them first (e.g. an
-- attribute switched to Import from the CLI: import at once). Taken by deleting the row.
CREATE TABLE m365_worker_requests (
    name         TEXT PRIMARY KEY,          -- import
    requested_at INTEGER NOT NULL
);

-- Outbox job kinds now also include revoke_sessions (signing a user out of Microsoft 365,
-- delivered and failing on its own after a password change).
