-- Second factors and the steps of a sign-in.
--
-- A user may have to change their password at the next sign-in (an admin asked for it), and
-- may be one of the users the `chosen` MFA policy requires a second factor of.
ALTER TABLE users ADD COLUMN must_change_password BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN mfa_required BIGINT NOT NULL DEFAULT 0;

-- One TOTP authenticator per user (RFC 6238). The secret is sealed with the data key; it is
-- not confirmed until the user typed a code from it. `last_step` is the last accepted time
-- step: a code is accepted once.
CREATE TABLE mfa_totp (
    user_id      TEXT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    secret       TEXT NOT NULL,
    confirmed_at BIGINT,
    last_step    BIGINT NOT NULL DEFAULT -1,
    last_used_at BIGINT,
    created_at   BIGINT NOT NULL
);

-- Single-use recovery codes, stored as SHA-256 digests (each code carries 80 random bits).
CREATE TABLE mfa_recovery_codes (
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    code_hash  TEXT NOT NULL,
    used_at    BIGINT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, code_hash)
);

-- A parked sign-in remembers who passed the first factor and when (`authn_at`, which becomes
-- the assertion's AuthnInstant), when a second factor passed, and whether the request asked
-- for multi-factor authentication.
ALTER TABLE saml_pending_requests ADD COLUMN user_id TEXT;
ALTER TABLE saml_pending_requests ADD COLUMN authn_at BIGINT;
ALTER TABLE saml_pending_requests ADD COLUMN mfa_at BIGINT;
ALTER TABLE saml_pending_requests ADD COLUMN mfa_requested BIGINT NOT NULL DEFAULT 0;

-- When the session's user last passed a second factor (NULL: password only).
ALTER TABLE sso_sessions ADD COLUMN mfa_at BIGINT;
