-- Named queries of the PostgreSQL store. Each starts with a "-- name: NAME" line.
-- Parameters are psycopg's %(name)s; target states come in as parameters, computed
-- by jobd.job.next_state, so the state machine stays in one place.

-- name: insert_job
-- A key held by an unfinished job (even one inserted earlier in this transaction)
-- makes this a no-op returning no row; the caller then fetches that job.
INSERT INTO jobd.jobs (id, type, queue, payload, state, priority, max_attempts, timeout,
                       run_at, created_at, updated_at, key)
VALUES (%(id)s, %(type)s, %(queue)s, %(payload)s, %(state)s, %(priority)s, %(max_attempts)s,
        %(timeout)s, %(run_at)s, %(created_at)s, %(created_at)s, %(key)s)
ON CONFLICT (key) WHERE key IS NOT NULL AND state IN ('scheduled', 'pending', 'running')
DO NOTHING
RETURNING *;

-- name: live_job_with_key
SELECT * FROM jobd.jobs
WHERE key = %(key)s AND state IN ('scheduled', 'pending', 'running');

-- name: notify
-- PostgreSQL delivers notifications at commit, and folds identical ones of a transaction.
SELECT pg_notify('jobd', %(payload)s);

-- name: get_job
SELECT * FROM jobd.jobs WHERE id = %(id)s;

-- name: lock_job
SELECT * FROM jobd.jobs WHERE id = %(id)s FOR UPDATE;

-- name: list_jobs
-- {filters} becomes zero or more "AND column = %(column)s" terms, so each filter can use its index.
SELECT * FROM jobd.jobs
WHERE seq < %(below)s {filters}
ORDER BY seq DESC
LIMIT %(limit)s;

-- name: lock_queue
-- Serialises the claims of one globally limited queue across every daemon; the
-- first key keeps jobd's locks apart from any the application takes.
SELECT pg_advisory_xact_lock(%(namespace)s, hashtext(%(queue)s));

-- name: claim_jobs
-- One statement for every queue. Its snapshot is taken after lock_queue returned,
-- so the running count includes every claim committed by an earlier lock holder.
WITH slot AS (
    SELECT s.queue,
           CASE WHEN s.global_limit IS NULL THEN s.free
                ELSE least(s.free, s.global_limit - (
                    SELECT count(*) FROM jobd.jobs r WHERE r.queue = s.queue AND r.state = 'running'))
           END AS allowed
    FROM unnest(%(queues)s::text[], %(free)s::int[], %(global_limits)s::int[])
         AS s(queue, free, global_limit)
    WHERE NOT EXISTS (SELECT 1 FROM jobd.paused_queues p WHERE p.queue = s.queue)
),
chosen AS (
    -- The first `limit` in claim order across the queues; no queue can give more.
    SELECT ready.id
    FROM slot, LATERAL (
        SELECT j.id, j.priority, j.run_at, j.seq FROM jobd.jobs j
        WHERE j.queue = slot.queue AND j.state = 'pending'
        ORDER BY j.priority DESC, j.run_at, j.seq
        LIMIT greatest(least(slot.allowed, %(limit)s), 0)
        FOR UPDATE SKIP LOCKED
    ) ready
    ORDER BY ready.priority DESC, ready.run_at, ready.seq
    LIMIT %(limit)s
),
claimed AS (
    UPDATE jobd.jobs j
    SET state = %(state)s, attempts = j.attempts + 1, started_at = %(now)s, updated_at = %(now)s,
        owner = %(owner)s, lease_until = %(lease_until)s, cancel_requested = false, progress = NULL
    FROM chosen
    WHERE j.id = chosen.id
    RETURNING j.*
)
SELECT * FROM claimed ORDER BY priority DESC, run_at, seq;

-- name: complete_jobs
-- One row per completion; each applies only while the job is still running under
-- the claim's owner and attempt (the fence).
UPDATE jobd.jobs j
SET state = c.state,
    updated_at = %(now)s,
    result = CASE WHEN c.outcome = 'completed' THEN c.result::jsonb ELSE j.result END,
    last_error = CASE WHEN c.outcome = 'completed' THEN j.last_error ELSE c.error END,
    run_at = CASE c.outcome WHEN 'retried' THEN coalesce(c.run_at, %(now)s)
                            WHEN 'requeued' THEN %(now)s
                            ELSE j.run_at END,
    attempts = CASE WHEN c.outcome = 'requeued' THEN j.attempts - 1 ELSE j.attempts END,
    finished_at = CASE WHEN c.final THEN %(now)s ELSE j.finished_at END,
    owner = NULL, lease_until = NULL, cancel_requested = false
FROM unnest(%(ids)s::uuid[], %(owners)s::text[], %(attempts)s::int[], %(outcomes)s::text[],
            %(states)s::text[], %(finals)s::bool[], %(results)s::text[], %(errors)s::text[],
            %(run_ats)s::timestamptz[])
     AS c(id, owner, attempt, outcome, state, final, result, error, run_at)
-- "state || ''" keeps the planner off the running-rows index (which also holds not-yet-vacuumed
-- entries): each completion finds its row by id.
WHERE j.id = c.id AND j.owner = c.owner AND j.attempts = c.attempt AND j.state || '' = 'running'
RETURNING j.*;

-- name: renew_leases
UPDATE jobd.jobs SET lease_until = %(lease_until)s
WHERE id = ANY(%(ids)s::uuid[]) AND owner = %(owner)s AND state = 'running'
RETURNING id;

-- name: set_progress
UPDATE jobd.jobs SET progress = %(progress)s, updated_at = %(now)s
WHERE id = %(id)s AND owner = %(owner)s AND attempts = %(attempt)s AND state = 'running';

-- name: request_cancel
UPDATE jobd.jobs SET cancel_requested = true WHERE id = %(id)s RETURNING *;

-- name: cancel_waiting_job
UPDATE jobd.jobs
SET state = %(state)s, updated_at = %(now)s, finished_at = %(now)s, last_error = 'cancelled before it ran'
WHERE id = %(id)s
RETURNING *;

-- name: cancel_requests
SELECT id FROM jobd.jobs WHERE state = 'running' AND owner = %(owner)s AND cancel_requested;

-- name: live_key_exists
SELECT EXISTS (SELECT 1 FROM jobd.jobs
               WHERE key = %(key)s AND state IN ('scheduled', 'pending', 'running'));

-- name: retry_job
UPDATE jobd.jobs
SET state = %(state)s, attempts = 0, run_at = %(now)s, updated_at = %(now)s,
    started_at = NULL, finished_at = NULL, result = NULL, progress = NULL
WHERE id = %(id)s
RETURNING *;

-- name: promote_due_jobs
UPDATE jobd.jobs SET state = %(state)s, updated_at = %(now)s
WHERE state = 'scheduled' AND run_at <= %(now)s;

-- name: earliest_scheduled
SELECT min(run_at) FROM jobd.jobs WHERE state = 'scheduled';

-- name: rescue_jobs
-- SET expressions read the row as it was, so last_error names the expired owner;
-- the owner is also returned from the locked subquery since RETURNING sees the new row.
UPDATE jobd.jobs j
SET state = CASE WHEN j.cancel_requested THEN %(cancelled)s
                 WHEN j.attempts >= j.max_attempts THEN %(failed)s
                 ELSE %(pending)s END,
    last_error = CASE WHEN j.cancel_requested THEN 'cancelled; ' ELSE '' END
                 || 'lease expired: daemon ' || j.owner || ' stopped renewing attempt ' || j.attempts,
    run_at = CASE WHEN NOT j.cancel_requested AND j.attempts < j.max_attempts THEN %(now)s
                  ELSE j.run_at END,
    finished_at = CASE WHEN j.cancel_requested OR j.attempts >= j.max_attempts THEN %(now)s END,
    updated_at = %(now)s,
    owner = NULL, lease_until = NULL, cancel_requested = false
FROM (
    SELECT id, owner FROM jobd.jobs
    WHERE state = 'running' AND owner IS NOT NULL
      AND (%(all_running)s OR lease_until IS NULL OR lease_until < %(now)s)
    FOR UPDATE SKIP LOCKED
) expired
WHERE j.id = expired.id
RETURNING j.*, expired.owner AS expired_owner;

-- name: prune_jobs
DELETE FROM jobd.jobs
WHERE id IN (SELECT id FROM jobd.jobs
             WHERE state = %(state)s AND finished_at < %(before)s
             LIMIT %(limit)s
             FOR UPDATE SKIP LOCKED);

-- name: count_jobs
SELECT queue, state, count(*) FROM jobd.jobs GROUP BY queue, state;

-- name: pause_queue
INSERT INTO jobd.paused_queues (queue) VALUES (%(queue)s) ON CONFLICT (queue) DO NOTHING;

-- name: resume_queue
DELETE FROM jobd.paused_queues WHERE queue = %(queue)s;

-- name: paused_queues
SELECT queue FROM jobd.paused_queues;
