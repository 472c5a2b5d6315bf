-- The ring of recent outcomes (0007) cost about 0.2 ms of every statement that writes
-- finished_jobs, whether it finished a job or not: its upsert was a LANGUAGE sql
-- function, planned again on each call. In plpgsql the plan is kept for the session,
-- and a statement that finished nothing (a claim alone) returns at once.

CREATE OR REPLACE FUNCTION jobd.count_recent_outcomes(ended jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
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
END $$;

CREATE OR REPLACE FUNCTION jobd.count_recent_finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM FROM added LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM jobd.count_recent_outcomes(coalesce(jsonb_agg(e), '[]'))
    FROM (SELECT queue, state AS outcome, floor(extract(epoch FROM finished_at))::bigint AS second,
                 count(*) AS jobs
          FROM added WHERE state IN ('completed', 'failed') AND finished_at IS NOT NULL
          GROUP BY 1, 2, 3) AS e;
    RETURN NULL;
END $$;
