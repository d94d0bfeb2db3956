-- SAML IdP state: sign-in sessions, AuthnRequests waiting for a login, and seen request IDs.

CREATE TABLE sso_sessions (
    id_hash       TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    session_index TEXT NOT NULL,
    authn_instant INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL
);
CREATE INDEX sso_sessions_user ON sso_sessions(user_id);
CREATE INDEX sso_sessions_expiry ON sso_sessions(expires_at);

CREATE TABLE saml_pending_requests (
    id_hash        TEXT PRIMARY KEY,
    sp_entity_id   TEXT NOT NULL,
    request_id     TEXT,
    acs_url        TEXT NOT NULL,
    relay_state    TEXT,
    force_authn    INTEGER NOT NULL,
    login_hint     TEXT,
    -- hash of the login cookie of the browser that received the request (login CSRF guard)
    browser_hash   TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL
);
CREATE INDEX saml_pending_expiry ON saml_pending_requests(expires_at);

CREATE TABLE saml_seen_requests (
    sp_entity_id TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    expires_at   INTEGER NOT NULL,
    PRIMARY KEY (sp_entity_id, request_id)
);
CREATE INDEX saml_seen_expiry ON saml_seen_requests(expires_at);
