-- Attempts admitted but not yet decided (their password is being checked), apart from the
-- failures: many users behind one address signing in at once must not lock it, yet no more
-- attempts than the limit allows may be checked at once.
ALTER TABLE sign_in_throttle ADD COLUMN pending BIGINT NOT NULL DEFAULT 0;
