-- Periodic jobs: each job may name the schedule whose tick made it, and the store keeps
-- one record per schedule, shared by every daemon: which ticks have fired, whether it
-- is paused. A tick is recorded in the transaction that inserts its job, under the
-- record's row lock, so however many daemons fire it, it makes one job.

ALTER TABLE jobd.live_jobs ADD COLUMN schedule text, ADD COLUMN scheduled_for timestamptz;
ALTER TABLE jobd.finished_jobs ADD COLUMN schedule text, ADD COLUMN scheduled_for timestamptz;

-- The view takes the new columns (appended to both tables in the same order).
CREATE OR REPLACE VIEW jobd.jobs AS
    SELECT * FROM jobd.live_jobs
    UNION ALL
    SELECT * FROM jobd.finished_jobs;

-- overlap = "skip" asks whether a schedule has an unfinished job. Only jobs made by a
-- schedule enter the index, and `schedule` never changes, so lease renewals and
-- progress stay HOT updates.
CREATE INDEX live_jobs_schedule ON jobd.live_jobs (schedule) WHERE schedule IS NOT NULL;

CREATE TABLE jobd.schedules (
    name text PRIMARY KEY,
    timing text NOT NULL,          -- the ticks' definition; a change starts counting anew
    since timestamptz NOT NULL,    -- no tick at or before this fires
    last_tick timestamptz,
    last_job_id uuid,
    paused boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);
