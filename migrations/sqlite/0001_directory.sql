-- The user directory, its password history, admins, settings and the Directory Insights log.
-- Times are Unix milliseconds (INTEGER) so the same SQL runs on SQLite and PostgreSQL.

CREATE TABLE users (
    id                  TEXT PRIMARY KEY,
    username            TEXT NOT NULL,
    username_key        TEXT NOT NULL UNIQUE,
    email               TEXT NOT NULL,
    email_key           TEXT NOT NULL UNIQUE,
    firstname           TEXT NOT NULL DEFAULT '',
    lastname            TEXT NOT NULL DEFAULT '',
    alternate_email     TEXT,
    job_title           TEXT,
    department          TEXT,
    location            TEXT,
    manager_id          TEXT REFERENCES users(id) ON DELETE SET NULL,
    work_street_address TEXT,
    work_locality       TEXT,
    work_region         TEXT,
    work_postal_code    TEXT,
    work_country        TEXT,
    phone_work          TEXT,
    phone_mobile        TEXT,
    state               TEXT NOT NULL DEFAULT 'active',
    password_hash       TEXT,
    password_changed_at INTEGER,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);
CREATE INDEX users_manager ON users(manager_id);

CREATE TABLE password_history (
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    password_hash TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);
CREATE INDEX password_history_user ON password_history(user_id, created_at);

CREATE TABLE admins (
    id                   TEXT PRIMARY KEY,
    username             TEXT NOT NULL UNIQUE,
    password_hash        TEXT NOT NULL,
    role                 TEXT NOT NULL,
    must_change_password INTEGER NOT NULL DEFAULT 1,
    created_at           INTEGER NOT NULL
);

CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    event_type TEXT NOT NULL,
    target     TEXT,
    details    TEXT NOT NULL DEFAULT '{}',
    client_ip  TEXT
);
CREATE INDEX events_at ON events(at);
CREATE INDEX events_type_at ON events(event_type, at);
CREATE INDEX events_target_at ON events(target, at);

-- The Microsoft 365 binding of a user: the immutable ID is the SAML NameID.
CREATE TABLE m365_bindings (
    user_id             TEXT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    immutable_id        TEXT NOT NULL UNIQUE,
    user_principal_name TEXT NOT NULL,
    m365_object_id      TEXT,
    state               TEXT NOT NULL DEFAULT 'bound',
    bound_at            INTEGER NOT NULL
);
