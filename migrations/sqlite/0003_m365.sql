-- The Microsoft 365 connection (one tenant), OAuth consent in progress, and imports.

CREATE TABLE m365_connection (
    id                      INTEGER PRIMARY KEY CHECK (id = 1),
    mode                    TEXT NOT NULL,          -- delegated | application
    state                   TEXT NOT NULL,          -- connected | reauthorize | deactivated
    tenant_id               TEXT,
    default_domain          TEXT,
    connected_at            INTEGER,
    connected_by            TEXT,
    access_token_enc        TEXT,                   -- AES-GCM sealed (src/secrets.rs)
    access_token_expires_at INTEGER,
    refresh_token_enc       TEXT,                   -- AES-GCM sealed
    last_error              TEXT,
    updated_at              INTEGER NOT NULL
);

CREATE TABLE m365_oauth_states (
    state_hash        TEXT PRIMARY KEY,
    pkce_verifier_enc TEXT NOT NULL,
    actor             TEXT NOT NULL,
    created_at        INTEGER NOT NULL,
    expires_at        INTEGER NOT NULL
);

-- A local user that came from (or was matched to) an M365 user; the binding issue uses it.
CREATE TABLE m365_links (
    user_id             TEXT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    tenant_id           TEXT NOT NULL,
    m365_object_id      TEXT NOT NULL UNIQUE,
    user_principal_name TEXT NOT NULL,
    immutable_id        TEXT,
    linked_at           INTEGER NOT NULL
);

CREATE TABLE m365_import_runs (
    id          TEXT PRIMARY KEY,
    started_by  TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    state       TEXT NOT NULL,                      -- running | finished | failed
    total       INTEGER NOT NULL,
    imported    INTEGER NOT NULL DEFAULT 0,
    failed      INTEGER NOT NULL DEFAULT 0,
    message     TEXT
);

CREATE TABLE m365_import_results (
    run_id              TEXT NOT NULL REFERENCES m365_import_runs(id) ON DELETE CASCADE,
    m365_object_id      TEXT NOT NULL,
    user_principal_name TEXT,
    outcome             TEXT NOT NULL,              -- imported | failed
    message             TEXT,
    user_id             TEXT,
    at                  INTEGER NOT NULL
);
CREATE INDEX m365_import_results_run ON m365_import_results(run_id);
