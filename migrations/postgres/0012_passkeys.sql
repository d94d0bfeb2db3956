-- WebAuthn passkeys (W3C Web Authentication Level 3) and the server-side state of their
-- ceremonies.
--
-- `credential` is webauthn-rs's `Passkey` as JSON: the credential ID, the public key and the
-- signature counter, nothing secret. `credential_id` (base64url) is unique across users: an
-- assertion names its credential, and WebAuthn §7.1 step 17 asks the relying party to refuse a
-- registration of a credential ID that is already registered.
CREATE TABLE mfa_passkeys (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    credential_id TEXT NOT NULL UNIQUE,
    label         TEXT NOT NULL,
    credential    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT
);
CREATE INDEX mfa_passkeys_user ON mfa_passkeys(user_id);

-- A ceremony in progress: the challenge and what it was issued for. The browser holds only a
-- random token (stored here as its SHA-256); a ceremony is deleted when it is used, so it can
-- be finished once (webauthn-rs: the state must never live on the client, or an assertion
-- could be replayed). `user_id` is set for a registration and a second factor, `pending_hash`
-- (the parked sign-in's token hash) for a sign-in.
CREATE TABLE mfa_passkey_ceremonies (
    id_hash      TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    user_id      TEXT REFERENCES users(id) ON DELETE CASCADE,
    pending_hash TEXT,
    state        TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX mfa_passkey_ceremonies_expiry ON mfa_passkey_ceremonies(expires_at);
-- One live ceremony per sign-in, or per user and kind outside a sign-in (the store replaces).
CREATE INDEX mfa_passkey_ceremonies_pending ON mfa_passkey_ceremonies(pending_hash);
CREATE INDEX mfa_passkey_ceremonies_user ON mfa_passkey_ceremonies(user_id, kind);

-- A user's factors decide what a sign-in asks for: other nodes' caches must hear of a change.
CREATE TRIGGER passkeys_changed AFTER INSERT OR DELETE ON mfa_passkeys
    FOR EACH STATEMENT EXECUTE FUNCTION bump_change_epoch();
