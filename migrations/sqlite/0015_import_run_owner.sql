-- An import run belongs to the node that runs it, which beats its heartbeat while the run goes
-- on: when a node dies mid-run, the node doing the cluster-wide chores sees the heartbeat stop
-- and ends the run as interrupted, instead of it showing "running" for ever.
ALTER TABLE m365_import_runs ADD COLUMN node TEXT;
ALTER TABLE m365_import_runs ADD COLUMN heartbeat_at INTEGER;
