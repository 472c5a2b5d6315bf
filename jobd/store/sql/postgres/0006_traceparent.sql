-- Tracing: the W3C trace context (`traceparent`) a job was submitted in, so that each of
-- its attempts can be traced as a child of the submitter's span. NULL when none was given.
-- Appended to both job tables in the same place, so the view's union still lines up.
ALTER TABLE jobd.live_jobs ADD COLUMN traceparent text;
ALTER TABLE jobd.finished_jobs ADD COLUMN traceparent text;

CREATE OR REPLACE VIEW jobd.jobs AS
    SELECT * FROM jobd.live_jobs
    UNION ALL
    SELECT * FROM jobd.finished_jobs;

-- A job that a failed parent cancels keeps its trace context too: the function of
-- 0004_flow_control, with the new column.
CREATE OR REPLACE FUNCTION jobd.settle_waiting(candidates uuid[], now timestamptz) RETURNS void
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
                                            schedule, scheduled_for, parents, on_parent_failure,
                                            traceparent)
            SELECT id, seq, type, queue, payload, 'cancelled', priority, attempts,
                   max_attempts, timeout, run_at, created_at, now,
                   started_at, now, failure, result, progress, key,
                   schedule, scheduled_for, parents, on_parent_failure, traceparent
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
