-- The Microsoft 365 connection (one tenant), OAuth consent in progress, and imports.

CREATE TABLE m365_connection (
    id                      INTEGER PRIMARY KEY CHECK (id = 1),
    mode                    TEXT NOT NULL,          -- delegated | application
    state                   TEXT NOT NULL,          -- connected | reauthorize | deactivated
    tenant_id               TEXT,
    default_domain          TEXT,
    connected_at            BIGINT,
    connected_by            TEXT,
    access_token_enc        TEXT,                   -- AES-GCM sealed (src/secrets.rs)
    access_token_expires_at BIGINT,
    refresh_token_enc       TEXT,                   -- AES-GCM sealed
    last_error              TEXT,
    updated_at              BIGINT NOT NULL
);

CREATE TABLE m365_oauth_states (
    state_hash        TEXT PRIMARY KEY,
    pkce_verifier_enc TEXT NOT NULL,
    actor             TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    expires_at        BIGINT NOT NULL
);

-- A local user that came from (or was matched to) an M365 user; the binding issue uses it.
CREATE TABLE m365_links (
    user_id             TEXT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    tenant_id           TEXT NOT NULL,
    m365_object_id      TEXT NOT NULL UNIQUE,
    user_principal_name TEXT NOT NULL,
    immutable_id        TEXT,
    linked_at           BIGINT NOT NULL
);

CREATE TABLE m365_import_runs (
    id          TEXT PRIMARY KEY,
    started_by  TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    finished_at BIGINT,
    state       TEXT NOT NULL,                      -- running | finished | failed
    total       BIGINT NOT NULL,
    imported    BIGINT NOT NULL DEFAULT 0,
    failed      BIGINT NOT NULL DEFAULT 0,
    message     TEXT
);

CREATE TABLE m365_import_results (
    run_id              TEXT NOT NULL REFERENCES m365_import_runs(id) ON DELETE CASCADE,
    m365_object_id      TEXT NOT NULL,
    user_principal_name TEXT,
    outcome             TEXT NOT NULL,              -- imported | failed
    message             TEXT,
    user_id             TEXT,
    at                  BIGINT NOT NULL
);
CREATE INDEX m365_import_results_run ON m365_import_results(run_id);
