-- Admin accounts can be disabled (kept, but refused at sign-in, their sessions ended and
-- the API keys they created refused while disabled) and can have a second factor.
ALTER TABLE admins ADD COLUMN disabled_at INTEGER;

-- One TOTP authenticator per admin, as for users (mfa_totp): the secret sealed with the
-- data key, unconfirmed until the admin typed a code from it, `last_step` accepted once.
CREATE TABLE admin_mfa_totp (
    admin_id     TEXT PRIMARY KEY REFERENCES admins(id) ON DELETE CASCADE,
    secret       TEXT NOT NULL,
    confirmed_at INTEGER,
    last_step    BIGINT NOT NULL DEFAULT -1,
    last_used_at INTEGER,
    created_at   INTEGER NOT NULL
);

-- Single-use recovery codes of admins, stored as SHA-256 digests.
CREATE TABLE admin_mfa_recovery_codes (
    admin_id   TEXT NOT NULL REFERENCES admins(id) ON DELETE CASCADE,
    code_hash  TEXT NOT NULL,
    used_at    INTEGER,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (admin_id, code_hash)
);

-- A console session that passed the password but still owes the second factor:
-- 'code' (type a code) or 'enrol' (set up an authenticator first); NULL when complete.
ALTER TABLE admin_sessions ADD COLUMN pending_step TEXT;
