-- Binding and sync: the outbox of changes waiting to reach Microsoft 365, the attribute
-- export selection, and the delta-query position for imported attributes.

-- Binding state: pending (bind queued) | bound | failed (bind failed, see last_error) | unbound.
ALTER TABLE m365_bindings ADD COLUMN last_sync_at INTEGER;
ALTER TABLE m365_bindings ADD COLUMN last_error TEXT;
-- Whether the user's real password has reached M365 (seed 000: idbridge becomes the password
-- authority at the user's next sign-in or password change).
ALTER TABLE m365_bindings ADD COLUMN password_pushed INTEGER NOT NULL DEFAULT 0;
-- accountEnabled as last sent to M365 (NULL: not sent yet).
ALTER TABLE m365_bindings ADD COLUMN account_enabled INTEGER;
CREATE INDEX m365_bindings_object ON m365_bindings(m365_object_id);

-- One row per change to deliver, written in the same transaction as the change. Jobs of one
-- user are delivered in id order; delivered jobs are deleted (with any sealed password).
CREATE TABLE m365_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id         TEXT NOT NULL,
    kind            TEXT NOT NULL,              -- bind | attributes | password | account
    fields          TEXT,                       -- JSON array of changed attribute names
    secret_enc      TEXT,                       -- AES-GCM sealed password (password jobs)
    state           TEXT NOT NULL DEFAULT 'queued', -- queued | failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_until     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX m365_outbox_due ON m365_outbox(state, next_attempt_at);
CREATE INDEX m365_outbox_user ON m365_outbox(user_id, id);

-- Direction of each optional attribute (seed 004): export | import | exclude. Absent = exclude.
CREATE TABLE m365_attribute_directions (
    attribute  TEXT PRIMARY KEY,
    direction  TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    updated_by TEXT NOT NULL
);

-- Where the delta query for imported attributes stands.
CREATE TABLE m365_delta_state (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    select_list TEXT NOT NULL,
    delta_link  TEXT,
    updated_at  INTEGER NOT NULL
);
