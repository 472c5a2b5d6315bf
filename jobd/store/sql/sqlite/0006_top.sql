-- How work flows through each queue, for GET /v1/stats and `jobd-ctl top`: the attempts
-- that ended completed, failed or retried in each of the last seconds. A trigger counts
-- them in a ring of 16 one-second slots per queue and outcome, so the table never grows
-- and reading the rates never touches the jobs table (queue_activity in queries.sql).
-- The age of the oldest pending job needs no table: jobs_claim already orders them.

CREATE TABLE recent_outcomes (
    queue   TEXT    NOT NULL,
    outcome TEXT    NOT NULL,  -- completed | failed | retried
    slot    INTEGER NOT NULL,  -- second % 16
    second  INTEGER NOT NULL,  -- the Unix second the slot counts now
    jobs    INTEGER NOT NULL,
    PRIMARY KEY (queue, outcome, slot)
) WITHOUT ROWID;

-- An attempt ends when its running job changes state; updated_at is the daemon's time of
-- the end. A slot still holding an older second starts again from 1; a late write for a
-- second older than the slot's is dropped (it is outside any window by then).
CREATE TRIGGER recent_outcomes_count AFTER UPDATE OF state ON jobs
WHEN old.state = 'running' AND new.state IN ('completed', 'failed', 'scheduled')
BEGIN
    INSERT INTO recent_outcomes (queue, outcome, slot, second, jobs)
    VALUES (new.queue, CASE new.state WHEN 'scheduled' THEN 'retried' ELSE new.state END,
            new.updated_at / 1000000 % 16, new.updated_at / 1000000, 1)
    ON CONFLICT (queue, outcome, slot) DO UPDATE SET
        jobs = CASE WHEN second = excluded.second THEN jobs + 1
                    WHEN second < excluded.second THEN 1
                    ELSE jobs END,
        second = max(second, excluded.second);
END;
