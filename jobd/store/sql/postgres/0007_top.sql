-- How work flows through each queue, for GET /v1/stats and `jobd-ctl top`: the attempts
-- that ended completed, failed or retried in each of the last seconds, by every daemon
-- sharing the store. Triggers count them in a ring of 16 one-second slots per queue and
-- outcome, so the table never grows and reading the rates never touches the jobs
-- (queue_activity in queries.sql). As in finished_counts, each backend writes its own
-- shard row, so that daemons ending jobs at once do not queue up on one counter.
-- The age of the oldest pending job needs no table: live_jobs_claim already orders them.

CREATE TABLE jobd.recent_outcomes (
    queue text NOT NULL,
    outcome text NOT NULL,   -- completed | failed | retried
    shard integer NOT NULL,
    slot integer NOT NULL,   -- second % 16
    second bigint NOT NULL,  -- the Unix second the slot counts now
    jobs bigint NOT NULL,
    PRIMARY KEY (queue, outcome, shard, slot)
);

-- A slot still holding an older second starts again; a late write for a second older
-- than the slot's is dropped (it is outside any window by then). Only the newest second
-- of each slot enters one statement, which may not update a row twice.
CREATE FUNCTION jobd.count_recent_outcomes(ended jsonb) RETURNS void LANGUAGE sql AS $$
    INSERT INTO jobd.recent_outcomes AS r (queue, outcome, shard, slot, second, jobs)
    SELECT DISTINCT ON (queue, outcome, second % 16)
           queue, outcome, pg_backend_pid() % 16, second % 16, second, jobs
    FROM jsonb_to_recordset(ended) AS e(queue text, outcome text, second bigint, jobs bigint)
    ORDER BY queue, outcome, second % 16, second DESC
    ON CONFLICT (queue, outcome, shard, slot) DO UPDATE SET
        jobs = CASE WHEN r.second = excluded.second THEN r.jobs + excluded.jobs
                    WHEN r.second < excluded.second THEN excluded.jobs
                    ELSE r.jobs END,
        second = greatest(r.second, excluded.second);
$$;

-- Completed and failed jobs arrive in finished_jobs, stamped with the daemon's time of
-- the end: once per statement, however many rows it archives.
CREATE FUNCTION jobd.count_recent_finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM jobd.count_recent_outcomes(coalesce(jsonb_agg(e), '[]'))
    FROM (SELECT queue, state AS outcome, floor(extract(epoch FROM finished_at))::bigint AS second,
                 count(*) AS jobs
          FROM added WHERE state IN ('completed', 'failed') AND finished_at IS NOT NULL
          GROUP BY 1, 2, 3) AS e;
    RETURN NULL;
END $$;

CREATE TRIGGER recent_outcomes_finished AFTER INSERT ON jobd.finished_jobs
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION jobd.count_recent_finished();

-- A retried job stays live: running → scheduled. A row trigger whose WHEN is checked
-- without calling any function, so claims, promotions and requeues pay next to nothing;
-- lease renewals and progress do not set state and do not even check it.
CREATE FUNCTION jobd.count_recent_retry() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM jobd.count_recent_outcomes(jsonb_build_array(jsonb_build_object(
        'queue', NEW.queue, 'outcome', 'retried',
        'second', floor(extract(epoch FROM NEW.updated_at))::bigint, 'jobs', 1)));
    RETURN NULL;
END $$;

CREATE TRIGGER recent_outcomes_retried AFTER UPDATE OF state ON jobd.live_jobs
    FOR EACH ROW WHEN (OLD.state = 'running' AND NEW.state = 'scheduled')
    EXECUTE FUNCTION jobd.count_recent_retry();
