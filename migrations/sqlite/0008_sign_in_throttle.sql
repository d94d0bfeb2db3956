-- Failed sign-ins per key (`sso:account:<name>`, `sso:ip:<address>`, `admin:…`), in the
-- database so a lock holds across nodes. A fixed window: `failures` counts from
-- `window_start`; `locked_until` (Unix ms, 0 = not locked) refuses without a password check.
CREATE TABLE sign_in_throttle (
    key          TEXT PRIMARY KEY,
    failures     BIGINT NOT NULL DEFAULT 0,
    window_start BIGINT NOT NULL,
    locked_until BIGINT NOT NULL DEFAULT 0
);
