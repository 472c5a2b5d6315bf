-- Named queries of the PostgreSQL store. Each starts with a "-- name: NAME" line.
-- Parameters are psycopg's %(name)s; target states come in as parameters, computed
-- by jobd.job.next_state, so the state machine stays in one place.
-- {columns} stands for the columns of a job as jobd.store.postgres reads them.
--
-- Live jobs (scheduled, pending, running) are in jobd.live_jobs, finished ones in
-- jobd.finished_jobs (see 0002_live_and_finished.sql). The hot paths (insert, claim,
-- complete) are each one statement, sent without BEGIN/COMMIT: one round trip.

-- name: insert_jobs
-- The whole batch, in order, as one JSON array (one parameter, encoded in one call).
-- An item whose key a live job holds (or an earlier item of the batch) is not inserted
-- and is missing from the answer; the caller then reads the holder. One NOTIFY wakes
-- every daemon when anything was inserted.
WITH new AS (
    SELECT * FROM ROWS FROM (json_to_recordset(%(jobs)s::json) AS (
        id uuid, type text, queue text, payload jsonb, state text, priority int, max_attempts int,
        timeout float8, run_at timestamptz, created_at timestamptz, key text, schedule text,
        scheduled_for timestamptz
    )) WITH ORDINALITY
    AS n(id, type, queue, payload, state, priority, max_attempts, timeout, run_at, created_at, key,
         schedule, scheduled_for, position)
),
inserted AS (
    INSERT INTO jobd.live_jobs (id, type, queue, payload, state, priority, max_attempts, timeout,
                                run_at, created_at, updated_at, key, schedule, scheduled_for)
    SELECT id, type, queue, payload, state, priority, max_attempts, timeout,
           run_at, created_at, created_at, key, schedule, scheduled_for
    FROM new ORDER BY position
    ON CONFLICT (key) WHERE key IS NOT NULL DO NOTHING
    RETURNING id
),
woken AS (
    SELECT pg_notify('jobd', 'jobs') FROM (SELECT 1 FROM inserted LIMIT 1) AS any_inserted
)
SELECT id FROM inserted
UNION ALL
SELECT NULL FROM woken;

-- name: live_job_with_key
SELECT {columns} FROM jobd.live_jobs WHERE key = %(key)s;

-- name: get_job
SELECT {columns} FROM jobd.live_jobs WHERE id = %(id)s
UNION ALL
SELECT {columns} FROM jobd.finished_jobs WHERE id = %(id)s;

-- name: lock_live_job
SELECT {columns}, cancel_requested FROM jobd.live_jobs WHERE id = %(id)s FOR UPDATE;

-- name: lock_finished_job
SELECT {columns} FROM jobd.finished_jobs WHERE id = %(id)s FOR UPDATE;

-- name: list_jobs
-- {filters} becomes zero or more "AND column = %(column)s" terms, so each filter can use
-- its index; the two ordered scans are merged, newest first.
(SELECT {columns}, seq FROM jobd.live_jobs
 WHERE seq < %(below)s {filters} ORDER BY seq DESC LIMIT %(limit)s)
UNION ALL
(SELECT {columns}, seq FROM jobd.finished_jobs
 WHERE seq < %(below)s {filters} ORDER BY seq DESC LIMIT %(limit)s)
ORDER BY seq DESC
LIMIT %(limit)s;

-- name: list_live_jobs
-- A listing by one state reads only the table that can hold it: the planner does not
-- use the tables' CHECKs to skip the other one, and for `failed` it would read every
-- live job (the live table has no index on state but the partial ones).
SELECT {columns}, seq FROM jobd.live_jobs
WHERE seq < %(below)s {filters} ORDER BY seq DESC LIMIT %(limit)s;

-- name: list_finished_jobs
-- A listing by a finished state reads only the finished table, through its seq index
-- (completed) or finished_jobs_rare_state (failed, cancelled).
SELECT {columns}, seq FROM jobd.finished_jobs
WHERE seq < %(below)s {filters} ORDER BY seq DESC LIMIT %(limit)s;

-- name: lock_queue
-- Serialises the claims of one globally limited queue across every daemon; the
-- first key keeps jobd's locks apart from any the application takes.
SELECT pg_advisory_xact_lock(%(namespace)s, hashtext(%(queue)s));

-- name: complete_and_claim_jobs
-- One statement records a batch of outcomes (one JSON array) and claims the next jobs.
--   done:      the completions, one row each (no job twice: see PostgresStore);
--   archived:  the final ones move to finished_jobs, only while still fenced in (the
--              job is running under the claim's owner and attempt);
--   continued: retried and requeued ones stay live, under the same fence;
--   claimed:   pending jobs of the given queues, within the slots and global limits.
-- Every part reads the snapshot taken when the statement began, so the completions and
-- the claim touch disjoint rows: a job being completed is running, not pending. Under
-- a global limit the caller takes the queue's lock before this statement, and the
-- running count still includes the jobs this statement completes: it claims too few,
-- never too many, and the caller claims again at once.
WITH done AS (
    SELECT * FROM json_to_recordset(%(completions)s::json) AS c(
        id uuid, owner text, attempt int, outcome text, state text, final bool, result jsonb, error text,
        run_at timestamptz
    )
),
ended AS (
    DELETE FROM jobd.live_jobs j
    USING done c
    WHERE c.final AND j.id = c.id AND j.owner = c.owner AND j.attempts = c.attempt AND j.state = 'running'
    RETURNING j.*, c.state AS new_state, c.outcome, c.result AS new_result, c.error
),
archived AS (
    INSERT INTO jobd.finished_jobs (id, seq, type, queue, payload, state, priority, attempts, max_attempts,
                                    timeout, run_at, created_at, updated_at, started_at, finished_at,
                                    last_error, result, progress, key, schedule, scheduled_for)
    SELECT id, seq, type, queue, payload, new_state, priority, attempts, max_attempts,
           timeout, run_at, created_at, %(now)s, started_at, %(now)s,
           CASE WHEN outcome = 'completed' THEN last_error ELSE error END,
           CASE WHEN outcome = 'completed' THEN new_result ELSE result END,
           progress, key, schedule, scheduled_for
    FROM ended
    RETURNING id
),
continued AS (
    UPDATE jobd.live_jobs j
    SET state = c.state, updated_at = %(now)s, last_error = c.error,
        run_at = CASE WHEN c.outcome = 'retried' THEN coalesce(c.run_at, %(now)s) ELSE %(now)s END,
        attempts = CASE WHEN c.outcome = 'requeued' THEN j.attempts - 1 ELSE j.attempts END,
        owner = NULL, lease_until = NULL, cancel_requested = false
    FROM done c
    WHERE NOT c.final AND j.id = c.id AND j.owner = c.owner AND j.attempts = c.attempt AND j.state = 'running'
    -- A job back to pending or scheduled is work for any daemon (folded to one per commit).
    RETURNING j.id, pg_notify('jobd', 'jobs')
),
slot AS (
    SELECT s.queue,
           CASE WHEN s.global_limit IS NULL THEN s.free
                ELSE least(s.free, s.global_limit - (
                    SELECT count(*) FROM jobd.live_jobs r WHERE r.queue = s.queue AND r.state = 'running'))
           END AS allowed
    FROM unnest(%(queues)s::text[], %(free)s::int[], %(global_limits)s::int[]) AS s(queue, free, global_limit)
    WHERE NOT EXISTS (SELECT 1 FROM jobd.paused_queues p WHERE p.queue = s.queue)
),
chosen AS (
    -- The first `limit` in claim order across the queues; no queue can give more.
    SELECT ready.id
    FROM slot, LATERAL (
        SELECT j.id, j.priority, j.run_at, j.seq FROM jobd.live_jobs j
        WHERE j.queue = slot.queue AND j.state = 'pending'
        ORDER BY j.priority DESC, j.run_at, j.seq
        LIMIT greatest(least(slot.allowed, %(limit)s), 0)
        FOR UPDATE SKIP LOCKED
    ) ready
    ORDER BY ready.priority DESC, ready.run_at, ready.seq
    LIMIT %(limit)s
),
claimed AS (
    UPDATE jobd.live_jobs j
    SET state = 'running', attempts = j.attempts + 1, started_at = %(now)s, updated_at = %(now)s,
        owner = %(owner)s, lease_until = %(lease_until)s, cancel_requested = false, progress = NULL
    FROM chosen
    WHERE j.id = chosen.id
    RETURNING {j_columns}, j.seq
)
-- The claimed jobs (their order is restored by the caller), then the ids of the
-- completions that applied, the rest of their row NULL.
SELECT true, {columns}, seq FROM claimed
UNION ALL
SELECT false, id, {nulls} FROM archived
UNION ALL
SELECT false, id, {nulls} FROM continued;

-- name: renew_leases
UPDATE jobd.live_jobs SET lease_until = %(lease_until)s
WHERE id = ANY(%(ids)s::uuid[]) AND owner = %(owner)s AND state = 'running'
RETURNING id;

-- name: set_progress
UPDATE jobd.live_jobs SET progress = %(progress)s, updated_at = %(now)s
WHERE id = %(id)s AND owner = %(owner)s AND attempts = %(attempt)s AND state = 'running';

-- name: request_cancel
UPDATE jobd.live_jobs SET cancel_requested = true WHERE id = %(id)s RETURNING {columns};

-- name: finish_live_job
-- A live job leaves for finished_jobs with its new state and error (a cancel before it
-- ran, a rescue that ends it).
WITH ended AS (
    DELETE FROM jobd.live_jobs WHERE id = %(id)s RETURNING *
)
INSERT INTO jobd.finished_jobs (id, seq, type, queue, payload, state, priority, attempts, max_attempts,
                                timeout, run_at, created_at, updated_at, started_at, finished_at,
                                last_error, result, progress, key, schedule, scheduled_for)
SELECT id, seq, type, queue, payload, %(state)s, priority, attempts, max_attempts,
       timeout, run_at, created_at, %(now)s, started_at, %(now)s, %(error)s, result, progress, key,
       schedule, scheduled_for
FROM ended
RETURNING {columns};

-- name: cancel_requests
SELECT id FROM jobd.live_jobs WHERE state = 'running' AND owner = %(owner)s AND cancel_requested;

-- name: retry_job
-- A finished job back to live_jobs: pending, attempts from 0. The unique key index
-- refuses it while a live job holds its key.
WITH revived AS (
    DELETE FROM jobd.finished_jobs WHERE id = %(id)s RETURNING *
)
INSERT INTO jobd.live_jobs (id, seq, type, queue, payload, state, priority, attempts, max_attempts,
                            timeout, run_at, created_at, updated_at, started_at, finished_at,
                            last_error, result, progress, key, schedule, scheduled_for)
SELECT id, seq, type, queue, payload, %(state)s, priority, 0, max_attempts,
       timeout, %(now)s, created_at, %(now)s, NULL, NULL, last_error, NULL, NULL, key,
       schedule, scheduled_for
FROM revived
RETURNING {columns};

-- name: promote_due_jobs
-- Due jobs become pending, and one NOTIFY wakes every daemon if any did. The earliest
-- run_at still ahead is read from the statement's snapshot, where the due jobs are
-- still scheduled: hence "> now".
WITH promoted AS (
    UPDATE jobd.live_jobs SET state = %(state)s, updated_at = %(now)s
    WHERE state = 'scheduled' AND run_at <= %(now)s
    RETURNING 1
),
woken AS (
    SELECT pg_notify('jobd', 'jobs') FROM (SELECT 1 FROM promoted LIMIT 1) AS any_promoted
)
SELECT (SELECT min(run_at) FROM jobd.live_jobs WHERE state = 'scheduled' AND run_at > %(now)s),
       (SELECT count(*) FROM woken);

-- name: expired_leases
-- The owner is read here, before the rescue clears it.
SELECT {columns}, owner, cancel_requested FROM jobd.live_jobs
WHERE state = 'running' AND owner IS NOT NULL
  AND (%(all_running)s OR lease_until IS NULL OR lease_until < %(now)s)
FOR UPDATE SKIP LOCKED;

-- name: requeue_rescued
UPDATE jobd.live_jobs
SET state = %(state)s, last_error = %(error)s, run_at = %(now)s, updated_at = %(now)s,
    owner = NULL, lease_until = NULL, cancel_requested = false
WHERE id = %(id)s
RETURNING {columns};

-- name: prune_jobs
DELETE FROM jobd.finished_jobs
WHERE id IN (SELECT id FROM jobd.finished_jobs
             WHERE state = %(state)s AND finished_at < %(before)s
             LIMIT %(limit)s
             FOR UPDATE SKIP LOCKED);

-- name: count_jobs
-- Live jobs are counted (their table holds only them); finished ones are read from the
-- counters the finished_jobs triggers keep.
SELECT queue, state, count(*) FROM jobd.live_jobs GROUP BY queue, state
UNION ALL
SELECT queue, state, sum(jobs) FROM jobd.finished_counts GROUP BY queue, state;

-- name: pause_queue
INSERT INTO jobd.paused_queues (queue) VALUES (%(queue)s) ON CONFLICT (queue) DO NOTHING;

-- name: resume_queue
-- Jobs of a resumed queue are work for any daemon.
WITH resumed AS (
    DELETE FROM jobd.paused_queues WHERE queue = %(queue)s RETURNING 1
)
SELECT pg_notify('jobd', 'jobs') FROM resumed;

-- name: paused_queues
SELECT queue FROM jobd.paused_queues;

-- name: notify
-- PostgreSQL delivers notifications at commit, and folds identical ones of a transaction.
SELECT pg_notify('jobd', %(payload)s);

-- name: create_schedules
-- Schedules no daemon has recorded yet count their ticks from now.
INSERT INTO jobd.schedules (name, timing, since)
SELECT name, timing, %(now)s FROM unnest(%(names)s::text[], %(timings)s::text[]) AS s(name, timing)
ON CONFLICT (name) DO NOTHING;

-- name: lock_schedules
-- In name order, so that daemons firing the same schedules never deadlock.
SELECT name, timing, since, last_tick, last_job_id, paused FROM jobd.schedules
WHERE name = ANY(%(names)s::text[])
ORDER BY name
FOR UPDATE;

-- name: schedule_records
SELECT name, timing, since, last_tick, last_job_id, paused FROM jobd.schedules
WHERE name = ANY(%(names)s::text[]);

-- name: schedules_with_unfinished_jobs
SELECT DISTINCT schedule FROM jobd.live_jobs WHERE schedule = ANY(%(names)s::text[]);

-- name: put_schedules
UPDATE jobd.schedules AS s
SET timing = u.timing, since = u.since, last_tick = u.last_tick, last_job_id = u.last_job_id,
    paused = u.paused, updated_at = %(now)s
FROM unnest(%(names)s::text[], %(timings)s::text[], %(since)s::timestamptz[], %(last_ticks)s::timestamptz[],
            %(last_job_ids)s::uuid[], %(paused)s::bool[])
     AS u(name, timing, since, last_tick, last_job_id, paused)
WHERE s.name = u.name;

-- name: queue_activity
-- Per queue of %(queues)s: the earliest run_at of its pending jobs, as rows
-- (queue, NULL, NULL, run_at); then the attempts ended in seconds first <= s < last, every
-- shard summed, as rows (queue, outcome, jobs, NULL). The earliest run_at is found without
-- walking the pending jobs: live_jobs_claim orders them by priority first, so "levels"
-- skips from one priority present in the queue to the next lower one (one index search
-- each), and the first entry of each priority is its earliest run_at. Its cost grows with
-- the number of distinct priorities waiting, not of jobs.
WITH RECURSIVE levels(queue, priority) AS (
    SELECT q.queue,
           (SELECT j.priority FROM jobd.live_jobs j WHERE j.state = 'pending' AND j.queue = q.queue
            ORDER BY j.priority DESC LIMIT 1)
    FROM unnest(%(queues)s::text[]) AS q(queue)
    UNION ALL
    SELECT l.queue,
           (SELECT j.priority FROM jobd.live_jobs j
            WHERE j.state = 'pending' AND j.queue = l.queue AND j.priority < l.priority
            ORDER BY j.priority DESC LIMIT 1)
    FROM levels l WHERE l.priority IS NOT NULL
)
SELECT l.queue, NULL::text, NULL::bigint,
       min((SELECT j.run_at FROM jobd.live_jobs j
            WHERE j.state = 'pending' AND j.queue = l.queue AND j.priority = l.priority
            ORDER BY j.run_at LIMIT 1))
FROM levels l WHERE l.priority IS NOT NULL GROUP BY l.queue
UNION ALL
SELECT queue, outcome, sum(jobs)::bigint, NULL FROM jobd.recent_outcomes
WHERE second >= %(first)s AND second < %(last)s
GROUP BY queue, outcome;
