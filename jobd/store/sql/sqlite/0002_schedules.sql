-- Periodic jobs: each job may name the schedule whose tick made it, and the store keeps
-- one record per schedule (which ticks have fired, whether it is paused).

ALTER TABLE jobs ADD COLUMN schedule TEXT;
ALTER TABLE jobs ADD COLUMN scheduled_for INTEGER;  -- the tick, microseconds since the epoch

-- overlap = "skip" asks whether a schedule has an unfinished job; only those rows enter.
CREATE INDEX jobs_schedule_live ON jobs (schedule)
    WHERE schedule IS NOT NULL AND state IN ('scheduled', 'pending', 'running');

-- A tick fires only after `since` and after `last_tick`, and is recorded in the
-- transaction that inserts its job: that record is what makes each tick fire once.
CREATE TABLE schedules (
    name        TEXT    PRIMARY KEY,
    timing      TEXT    NOT NULL,  -- the ticks' definition; a change starts counting anew
    since       INTEGER NOT NULL,
    last_tick   INTEGER,
    last_job_id TEXT,
    paused      INTEGER NOT NULL DEFAULT 0,
    updated_at  INTEGER NOT NULL
) WITHOUT ROWID;
