-- Single-use links of "forgot password", stored by the SHA-256 of their token only: a copy of
-- the database yields no working link. `ended` says why a link stopped working before it
-- expired: 'used', or 'password_changed' (every link of the user dies when one is used or the
-- password changes in any way).
CREATE TABLE password_reset_tokens (
    id_hash    TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    ended_at   BIGINT,
    ended      TEXT
);
CREATE INDEX password_reset_tokens_user ON password_reset_tokens(user_id, created_at);
CREATE INDEX password_reset_tokens_expiry ON password_reset_tokens(expires_at);
