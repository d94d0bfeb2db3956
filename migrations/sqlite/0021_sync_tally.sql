-- Changes delivered to and failed at Microsoft 365, counted per hour (UTC) for the console
-- overview's charts: delivered jobs are deleted from m365_outbox, so nothing else keeps them.
-- Written in the same transaction as the job's completion or failure.
CREATE TABLE m365_sync_tally (
    hour_start INTEGER PRIMARY KEY,
    delivered  INTEGER NOT NULL DEFAULT 0,
    failed     INTEGER NOT NULL DEFAULT 0
);
