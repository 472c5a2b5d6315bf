-- Finished jobs move out of the hot table. Every claim, completion and retry touches
-- only `live_jobs` (scheduled, pending, running) and its small indexes, however many
-- finished jobs are kept; `finished_jobs` is written once per job, at the right-hand
-- edge of each of its indexes (job ids are time-ordered UUIDs), and read by listings.
-- `jobd.jobs` becomes a view of both, for people and tools that read the table.

ALTER TABLE jobd.jobs RENAME TO live_jobs;
ALTER INDEX jobd.jobs_pkey RENAME TO live_jobs_pkey;
ALTER INDEX jobd.jobs_seq_key RENAME TO live_jobs_seq_key;

CREATE TABLE jobd.finished_jobs (LIKE jobd.live_jobs INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
ALTER TABLE jobd.finished_jobs ADD PRIMARY KEY (id);
ALTER TABLE jobd.finished_jobs ADD CONSTRAINT finished_jobs_state_check
    CHECK (state IN ('completed', 'failed', 'cancelled'));

INSERT INTO jobd.finished_jobs
SELECT * FROM jobd.live_jobs WHERE state IN ('completed', 'failed', 'cancelled');
DELETE FROM jobd.live_jobs WHERE state IN ('completed', 'failed', 'cancelled');

ALTER TABLE jobd.live_jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobd.live_jobs ADD CONSTRAINT live_jobs_state_check
    CHECK (state IN ('scheduled', 'pending', 'running'));
-- Room on each page for a new row version, so that lease renewals and progress
-- (which change no indexed column) are HOT updates that touch no index.
ALTER TABLE jobd.live_jobs SET (fillfactor = 70);

-- The live table's indexes. Claims, promotion and the unique key are as before.
DROP INDEX jobd.jobs_finished;
DROP INDEX jobd.jobs_live_key;
CREATE UNIQUE INDEX live_jobs_key ON jobd.live_jobs (key) WHERE key IS NOT NULL;
-- Running jobs (few: at most every daemon's concurrency): the per-queue count under a
-- global limit, the expired-lease scan, a daemon's cancel requests and the listing of
-- running jobs, newest first. lease_until is no longer indexed (see fillfactor).
DROP INDEX jobd.jobs_running;
CREATE INDEX live_jobs_running ON jobd.live_jobs (seq) WHERE state = 'running';
ALTER INDEX jobd.jobs_claim RENAME TO live_jobs_claim;
ALTER INDEX jobd.jobs_scheduled RENAME TO live_jobs_scheduled;
-- Every claim wrote a row version into a (state, seq) index: it goes. Listing live jobs
-- by state walks the seq index (live jobs are few) or, for running ones, the index above.
DROP INDEX jobd.jobs_list_state;

-- The finished table's indexes: one per way of finding its jobs.
CREATE UNIQUE INDEX finished_jobs_seq ON jobd.finished_jobs (seq);  -- listing, newest first
-- Listing by state: completed jobs are the common case and the seq walk finds them at
-- once; the rare states get an index of their own.
CREATE INDEX finished_jobs_rare_state ON jobd.finished_jobs (state, seq) WHERE state <> 'completed';
CREATE INDEX finished_jobs_queue ON jobd.finished_jobs (queue, seq);
CREATE INDEX finished_jobs_type ON jobd.finished_jobs (type, seq);
-- Pruning: rows arrive in the order they finish, so a block range index on
-- finished_at finds the oldest for almost nothing on insert.
CREATE INDEX finished_jobs_finished_at ON jobd.finished_jobs USING brin (finished_at);

-- Finished jobs per queue and state, kept by a trigger on every statement that adds or
-- removes finished rows, so that stats and gauges never count the table. Each backend
-- writes its own shard row, so that daemons completing jobs at once do not queue up
-- on one counter.
CREATE TABLE jobd.finished_counts (
    queue text NOT NULL,
    state text NOT NULL,
    shard integer NOT NULL,
    jobs bigint NOT NULL,
    PRIMARY KEY (queue, state, shard)
);
INSERT INTO jobd.finished_counts (queue, state, shard, jobs)
SELECT queue, state, 0, count(*) FROM jobd.finished_jobs GROUP BY queue, state;

CREATE FUNCTION jobd.count_finished_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO jobd.finished_counts AS counts (queue, state, shard, jobs)
    SELECT queue, state, pg_backend_pid() % 16, count(*) FROM added GROUP BY queue, state
    ON CONFLICT (queue, state, shard) DO UPDATE SET jobs = counts.jobs + excluded.jobs;
    RETURN NULL;
END $$;

CREATE FUNCTION jobd.count_finished_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO jobd.finished_counts AS counts (queue, state, shard, jobs)
    SELECT queue, state, pg_backend_pid() % 16, -count(*) FROM removed GROUP BY queue, state
    ON CONFLICT (queue, state, shard) DO UPDATE SET jobs = counts.jobs + excluded.jobs;
    RETURN NULL;
END $$;

CREATE TRIGGER finished_jobs_added AFTER INSERT ON jobd.finished_jobs
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION jobd.count_finished_added();
CREATE TRIGGER finished_jobs_removed AFTER DELETE ON jobd.finished_jobs
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION jobd.count_finished_removed();

CREATE VIEW jobd.jobs AS
    SELECT * FROM jobd.live_jobs
    UNION ALL
    SELECT * FROM jobd.finished_jobs;
