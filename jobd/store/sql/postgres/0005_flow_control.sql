-- Dependencies (a job waits for its parents) and unique windows (a key returns the job
-- it made within `unique_for`, in any state).

-- A job with parents is `waiting` (a live job) until they settle it.
ALTER TABLE jobd.live_jobs DROP CONSTRAINT live_jobs_state_check;
ALTER TABLE jobd.live_jobs ADD CONSTRAINT live_jobs_state_check
    CHECK (state IN ('waiting', 'scheduled', 'pending', 'running'));
ALTER TABLE jobd.live_jobs ADD COLUMN parents uuid[], ADD COLUMN on_parent_failure text;
ALTER TABLE jobd.finished_jobs ADD COLUMN parents uuid[], ADD COLUMN on_parent_failure text;

CREATE OR REPLACE VIEW jobd.jobs AS
    SELECT * FROM jobd.live_jobs
    UNION ALL
    SELECT * FROM jobd.finished_jobs;

-- Parent -> the jobs naming it in `after`: who to settle when a parent finishes. A row
-- goes when its parent is pruned (its dependants were settled when it finished).
CREATE TABLE jobd.job_dependants (
    parent_id uuid NOT NULL,
    child_id uuid NOT NULL,
    PRIMARY KEY (parent_id, child_id)
);

-- The latest job made with a key and `unique_for`: one row per key, so that two daemons
-- submitting the same key at once take turns on it. Kept apart from the jobs, which
-- move between tables; pruning spares a job whose window is still open.
CREATE TABLE jobd.key_windows (
    key text PRIMARY KEY,
    job_id uuid NOT NULL,
    created_at timestamptz NOT NULL,
    unique_for double precision NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX key_windows_job ON jobd.key_windows (job_id);
CREATE INDEX key_windows_expires ON jobd.key_windows (expires_at);

-- Settles the waiting jobs among `candidates` as jobd.store.settle_waiting does, then
-- the dependants of those it cancels, level by level (a loop, not a recursion: a chain
-- a thousand deep is a thousand turns, not a thousand stack frames).
--
-- Each turn first locks its waiting jobs (in id order, so that two daemons settling
-- the same jobs take turns without deadlock); being VOLATILE, the function's next query
-- reads a fresh snapshot, which sees every parent finished by a transaction that
-- committed before the lock was granted. So when two daemons finish the last two
-- parents of a job at once, the second to get the lock sees both finished.
CREATE FUNCTION jobd.settle_waiting(candidates uuid[], now timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    frontier uuid[] := candidates;
    ended uuid[];
    released bigint;
BEGIN
    -- The cancels below add finished rows: their trigger leaves them to this loop.
    PERFORM set_config('jobd.settling', 'on', true);
    WHILE cardinality(frontier) > 0 LOOP
        PERFORM 1 FROM jobd.live_jobs WHERE id = ANY(frontier) AND state = 'waiting' ORDER BY id FOR UPDATE;
        WITH verdicts AS (
            SELECT c.id,
                   -- The first parent, in `after` order, that ended failed or cancelled.
                   (SELECT 'parent ' || p.id || ' ' || p.state
                    FROM unnest(c.parents) WITH ORDINALITY AS a(parent, position)
                    JOIN jobd.finished_jobs p ON p.id = a.parent
                    WHERE p.state IN ('failed', 'cancelled')
                    ORDER BY a.position LIMIT 1) AS failure,
                   coalesce(c.on_parent_failure = 'run', false) AS runs_anyway,
                   -- A parent that is neither live nor finished was pruned: it completed.
                   EXISTS (SELECT 1 FROM jobd.live_jobs p WHERE p.id = ANY(c.parents)) AS unfinished
            FROM jobd.live_jobs c
            WHERE c.id = ANY(frontier) AND c.state = 'waiting'
        ),
        cancelled AS (
            DELETE FROM jobd.live_jobs j
            USING verdicts v
            WHERE j.id = v.id AND v.failure IS NOT NULL AND NOT v.runs_anyway
            RETURNING j.*, v.failure
        ),
        archived AS (
            INSERT INTO jobd.finished_jobs (id, seq, type, queue, payload, state, priority, attempts,
                                            max_attempts, timeout, run_at, created_at, updated_at,
                                            started_at, finished_at, last_error, result, progress, key,
                                            schedule, scheduled_for, traceparent, parents,
                                            on_parent_failure)
            SELECT id, seq, type, queue, payload, 'cancelled', priority, attempts,
                   max_attempts, timeout, run_at, created_at, now,
                   started_at, now, failure, result, progress, key,
                   schedule, scheduled_for, traceparent, parents, on_parent_failure
            FROM cancelled
            RETURNING id
        ),
        freed AS (
            UPDATE jobd.live_jobs j
            SET state = CASE WHEN j.run_at > now THEN 'scheduled' ELSE 'pending' END,
                run_at = greatest(j.run_at, now), updated_at = now
            FROM verdicts v
            WHERE j.id = v.id AND NOT v.unfinished AND (v.failure IS NULL OR v.runs_anyway)
            RETURNING 1
        )
        SELECT ARRAY(SELECT id FROM archived), (SELECT count(*) FROM freed) INTO ended, released;
        IF released > 0 THEN
            PERFORM pg_notify('jobd', 'jobs');  -- work for any daemon
        END IF;
        frontier := ARRAY(SELECT DISTINCT child_id FROM jobd.job_dependants WHERE parent_id = ANY(ended));
    END LOOP;
    PERFORM set_config('jobd.settling', '', true);
END $$;

-- Every way a job finishes (completion, cancel, rescue, a cascade) moves its row into
-- finished_jobs, so one trigger there settles its dependants, in the same transaction.
CREATE FUNCTION jobd.settle_dependants() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    dependants uuid[];
BEGIN
    IF current_setting('jobd.settling', true) = 'on' THEN
        RETURN NULL;
    END IF;
    -- An array, not a join with `added`: a transition table has no statistics, and a
    -- join planned blind reads all of job_dependants on every completion.
    dependants := ARRAY(SELECT DISTINCT child_id FROM jobd.job_dependants
                        WHERE parent_id = ANY(ARRAY(SELECT id FROM added)));
    IF cardinality(dependants) > 0 THEN
        PERFORM jobd.settle_waiting(dependants, (SELECT max(finished_at) FROM added));
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER finished_jobs_settle AFTER INSERT ON jobd.finished_jobs
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION jobd.settle_dependants();
