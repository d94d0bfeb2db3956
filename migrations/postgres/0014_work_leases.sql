-- Leases for work that several nodes share. A lease has an owner (the node's name) and a
-- fencing token from one counter, so every later write of the work can be made conditional on
-- still holding the lease it was claimed under: a node that stalled past its lease, or died and
-- came back, cannot complete, postpone or overwrite what another node took over since.

-- Fencing tokens: strictly increasing, one per claim.
CREATE TABLE lease_tokens (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n  BIGINT NOT NULL
);
INSERT INTO lease_tokens (id, n) VALUES (1, 0);

-- Outbox jobs are claimed by a delivery round: its node, its token, and until when (renewed
-- while the round runs; lease_until already exists).
ALTER TABLE m365_outbox ADD COLUMN lease_owner TEXT;
ALTER TABLE m365_outbox ADD COLUMN lease_token BIGINT;
CREATE INDEX m365_outbox_lease ON m365_outbox(lease_token);

-- Work one node does at a time (the delta import, the password-expiry scan, the janitor):
-- the holder renews it; when it stops renewing, another node takes the work over.
CREATE TABLE work_leases (
    name       TEXT PRIMARY KEY,
    owner      TEXT,
    token      BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

