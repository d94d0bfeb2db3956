-- Admin console sessions and API keys.

-- Sessions of the admin console, stored by the SHA-256 of the cookie's token.
CREATE TABLE admin_sessions (
    id_hash      TEXT PRIMARY KEY,
    admin_id     TEXT NOT NULL REFERENCES admins(id) ON DELETE CASCADE,
    csrf_token   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    client_ip    TEXT
);
CREATE INDEX admin_sessions_admin ON admin_sessions(admin_id);

-- API keys: stored as the SHA-256 of the key; shown once when created.
CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,
    prefix       TEXT NOT NULL,
    role         TEXT NOT NULL,              -- admin | read_only
    created_by   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at   BIGINT,
    revoked_by   TEXT
);

ALTER TABLE admins ADD COLUMN password_changed_at BIGINT;
CREATE INDEX users_created ON users(created_at);
CREATE INDEX events_actor_at ON events(actor, at);
