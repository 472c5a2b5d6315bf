-- Named queries of the PostgreSQL store. Each starts with a "-- name: NAME" line.
-- Parameters are psycopg's %(name)s; target states come in as parameters, computed
-- by jobd.job.next_state, so the state machine stays in one place.
-- {columns} stands for the columns of a job as jobd.store.postgres reads them.
--
-- Live jobs (scheduled, pending, running) are in jobd.live_jobs, finished ones in
-- jobd.finished_jobs (see 0002_live_and_finished.sql). The hot paths (insert, claim,
-- complete) are each one statement, sent without BEGIN/COMMIT: one round trip.

-- name: new_jobs
-- A part of insert_jobs and insert_and_claim_jobs, their first CTE: the jobs of a batch,
-- in order (position), from one JSON array.
new AS (
    SELECT * FROM ROWS FROM (json_to_recordset(%(jobs)s::json) AS (
        id uuid, type text, queue text, payload jsonb, state text, priority int, max_attempts int,
        timeout float8, run_at timestamptz, created_at timestamptz, key text, schedule text,
        scheduled_for timestamptz, parents uuid[], on_parent_failure text, traceparent text
    )) WITH ORDINALITY
    AS n(id, type, queue, payload, state, priority, max_attempts, timeout, run_at, created_at, key,
         schedule, scheduled_for, parents, on_parent_failure, traceparent, position)
)

-- name: insert_jobs
-- The whole batch, in order, as one JSON array (one parameter, encoded in one call).
-- An item whose key a live job holds (or an earlier item of the batch) is not inserted
-- and is missing from the answer; the caller then reads the holder. One NOTIFY wakes
-- every daemon when anything was inserted, unless the caller says it will decide after
-- its claim (notify false: see notify_unclaimed).
WITH {new_jobs},
inserted AS (
    INSERT INTO jobd.live_jobs (id, type, queue, payload, state, priority, max_attempts, timeout,
                                run_at, created_at, updated_at, key, schedule, scheduled_for,
                                parents, on_parent_failure, traceparent)
    SELECT id, type, queue, payload, state, priority, max_attempts, timeout,
           run_at, created_at, created_at, key, schedule, scheduled_for, parents, on_parent_failure, traceparent
    FROM new ORDER BY position
    ON CONFLICT (key) WHERE key IS NOT NULL DO NOTHING
    RETURNING id
),
woken AS (
    SELECT pg_notify('jobd', 'jobs') FROM (SELECT 1 FROM inserted LIMIT 1) AS any_inserted
    WHERE %(notify)s
)
SELECT id FROM inserted
UNION ALL
SELECT NULL FROM woken;

-- name: free_slots
-- A part of the claims without global limits or rates: the queues the claim may take
-- jobs of, with this daemon's free slots for each, less the paused ones.
slot AS (
    SELECT s.queue, s.free
    FROM unnest(%(queues)s::text[], %(free)s::int[]) AS s(queue, free)
    WHERE NOT EXISTS (SELECT 1 FROM jobd.paused_queues p WHERE p.queue = s.queue)
)

-- name: ready_in_slot
-- A part of the same claims: the next pending jobs of one slot's queue, in claim order,
-- skipping those another claim holds.
SELECT j.id, j.priority, j.run_at, j.seq FROM jobd.live_jobs j
WHERE j.queue = slot.queue AND j.state = 'pending'
ORDER BY j.priority DESC, j.run_at, j.seq
LIMIT least(slot.free, %(limit)s)
FOR UPDATE SKIP LOCKED

-- name: insert_and_claim_jobs
-- A submit to a daemon with room, in one statement: insert a batch (no keys, no
-- parents) and claim for the given slots (no global limit, no rate), the new jobs
-- ranked with the pending ones already there in claim order. A new job the claim takes
-- is inserted running, as the claim would leave it; one already there is claimed as
-- in complete_and_claim_unlimited. One NOTIFY wakes the other daemons if a new job is
-- left for them. Rows: the claimed jobs (flag true), then a NOTIFY's (flag NULL).
WITH {new_jobs},
{free_slots},
picked AS (
    -- At equal priority and run_at a job already there goes first (`fresh` sorts after
    -- it), and new ones in the batch's order, as their seq will say.
    SELECT ranked.id, ranked.fresh
    FROM (
        SELECT c.*, row_number() OVER (
                   PARTITION BY c.queue ORDER BY c.priority DESC, c.run_at, c.fresh, c.seq, c.position) AS nth
        FROM (
            SELECT ready.id, ready.priority, ready.run_at, ready.seq, slot.queue, false AS fresh,
                   0::int8 AS position
            FROM slot, LATERAL ({ready_in_slot}) ready
            UNION ALL
            SELECT n.id, n.priority, n.run_at, NULL, n.queue, true, n.position
            FROM new n JOIN slot ON slot.queue = n.queue
            WHERE n.state = 'pending'
        ) c
    ) ranked JOIN slot ON slot.queue = ranked.queue
    WHERE ranked.nth <= slot.free
    ORDER BY ranked.priority DESC, ranked.run_at, ranked.fresh, ranked.seq, ranked.position
    LIMIT %(limit)s
),
inserted AS (
    INSERT INTO jobd.live_jobs (id, type, queue, payload, state, priority, max_attempts, timeout,
                                run_at, created_at, updated_at, key, schedule, scheduled_for,
                                parents, on_parent_failure, traceparent,
                                attempts, started_at, owner, lease_until)
    SELECT n.id, n.type, n.queue, n.payload, CASE WHEN p.id IS NULL THEN n.state ELSE 'running' END,
           n.priority, n.max_attempts, n.timeout, n.run_at, n.created_at,
           CASE WHEN p.id IS NULL THEN n.created_at ELSE %(now)s END,
           n.key, n.schedule, n.scheduled_for, n.parents, n.on_parent_failure, n.traceparent,
           CASE WHEN p.id IS NULL THEN 0 ELSE 1 END,
           CASE WHEN p.id IS NOT NULL THEN %(now)s::timestamptz END,
           CASE WHEN p.id IS NOT NULL THEN %(owner)s END,
           CASE WHEN p.id IS NOT NULL THEN %(lease_until)s::timestamptz END
    FROM new n LEFT JOIN picked p ON p.id = n.id AND p.fresh
    ORDER BY n.position
    RETURNING {columns}, seq
),
chosen AS (SELECT id FROM picked WHERE NOT fresh),
{claim_chosen},
woken AS (
    SELECT pg_notify('jobd', 'jobs')
    WHERE EXISTS (SELECT 1 FROM new n WHERE NOT EXISTS (SELECT 1 FROM picked p WHERE p.id = n.id))
)
SELECT true, {columns}, seq FROM claimed
UNION ALL
SELECT true, {columns}, seq FROM inserted WHERE state = 'running'
UNION ALL
SELECT NULL, {nulls}, NULL FROM woken;

-- name: notify_unclaimed
-- After a submit that claimed in its own transaction: wake the other daemons only if a
-- job it inserted is still there for them, not taken by that claim. A single submit to a
-- daemon with room then wakes nobody, where every daemon used to make a claim for nothing.
SELECT pg_notify('jobd', 'jobs')
WHERE EXISTS (SELECT 1 FROM jobd.live_jobs WHERE id = ANY(%(ids)s::uuid[]) AND state <> 'running');

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
-- Serialises the claims of one globally limited or rate-limited queue across every
-- daemon; the first key keeps jobd's locks apart from any the application takes.
SELECT pg_advisory_xact_lock(%(namespace)s, hashtext(%(queue)s));

-- name: record_outcomes
-- The first part of both complete_and_claim queries: record a batch of outcomes.
done AS (
    SELECT *, 'running' AS fence_state FROM json_to_recordset(%(completions)s::json) AS c(
        id uuid, owner text, attempt int, outcome text, state text, final bool, result jsonb, error text,
        run_at timestamptz
    )
),
ended AS (
    DELETE FROM jobd.live_jobs j
    USING done c
    WHERE j.id = ANY(ARRAY(SELECT id FROM done WHERE final))
      AND c.final AND j.id = c.id AND j.owner = c.owner AND j.attempts = c.attempt AND j.state = c.fence_state
    RETURNING j.*, c.state AS new_state, c.outcome, c.result AS new_result, c.error
),
archived AS (
    INSERT INTO jobd.finished_jobs (id, seq, type, queue, payload, state, priority, attempts, max_attempts,
                                    timeout, run_at, created_at, updated_at, started_at, finished_at,
                                    last_error, result, progress, key, schedule, scheduled_for,
                                    parents, on_parent_failure, traceparent)
    SELECT id, seq, type, queue, payload, new_state, priority, attempts, max_attempts,
           timeout, run_at, created_at, %(now)s, started_at, %(now)s,
           CASE WHEN outcome = 'completed' THEN last_error ELSE error END,
           CASE WHEN outcome = 'completed' THEN new_result ELSE result END,
           progress, key, schedule, scheduled_for, parents, on_parent_failure, traceparent
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
    WHERE j.id = ANY(ARRAY(SELECT id FROM done WHERE NOT final))
      AND NOT c.final AND j.id = c.id AND j.owner = c.owner AND j.attempts = c.attempt AND j.state = c.fence_state
      AND (c.outcome <> 'requeued' OR NOT j.cancel_requested)
    -- A job back to pending or scheduled is work for any daemon (folded to one per commit).
    RETURNING j.id, pg_notify('jobd', 'jobs')
)

-- name: claim_chosen
-- The last CTE of both complete_and_claim queries: start the chosen jobs.
claimed AS (
    UPDATE jobd.live_jobs j
    SET state = 'running', attempts = j.attempts + 1, started_at = %(now)s, updated_at = %(now)s,
        owner = %(owner)s, lease_until = %(lease_until)s, cancel_requested = false, progress = NULL
    FROM chosen
    WHERE j.id = chosen.id
    RETURNING {j_columns}, j.seq
)

-- name: claimed_and_recorded
-- The answer of both complete_and_claim queries: the claimed jobs (their order is
-- restored by the caller), then the ids of the completions that applied, the rest of
-- their row NULL.
SELECT true, {columns}, seq FROM claimed
UNION ALL
SELECT false, id, {nulls} FROM archived
UNION ALL
SELECT false, id, {nulls} FROM continued

-- name: complete_and_claim_jobs
-- One statement records a batch of outcomes (one JSON array) and claims the next jobs.
--   done:      the completions, one row each (no job twice: see PostgresStore);
--   archived:  the final ones move to finished_jobs, only while still fenced in (the
--              job is running under the claim's owner and attempt);
--   continued: retried and requeued ones stay live, under the same fence (and a requeue
--              not while a cancel is requested: see `Store.complete_jobs`);
--   claimed:   pending jobs of the given queues, within the slots, global limits and
--              the tokens of rate-limited queues;
--   spent:     the buckets of rate-limited queues that started jobs, less their tokens;
--   held:      when the next token is due, for each queue whose rate held jobs back.
-- Every part reads the snapshot taken when the statement began, so the completions and
-- the claim touch disjoint rows: a job being completed is running, not pending. Under
-- a global limit the caller takes the queue's lock before this statement, and the
-- running count still includes the jobs this statement completes: it claims too few,
-- never too many, and the caller claims again at once. A rate-limited queue's lock,
-- taken the same way, makes its bucket change one claim at a time.
-- The fenced rows are found by primary key (`id = ANY`), never through live_jobs_running:
-- until vacuum, that partial index keeps an entry for every row version that was ever
-- running (thousands a second), and a completion that scanned it cost more than the rest
-- of the statement. So the state is compared with a column of `done` (fence_state), where
-- a constant 'running' would let the planner pick that index.
WITH {record_outcomes},
slot AS (
    SELECT s.queue, s.rate, s.burst,
           CASE WHEN s.global_limit IS NULL THEN s.free
                ELSE least(s.free, s.global_limit - (
                    SELECT count(*) FROM jobd.live_jobs r WHERE r.queue = s.queue AND r.state = 'running'))
           END AS allowed
    FROM unnest(%(queues)s::text[], %(free)s::int[], %(global_limits)s::int[], %(rates)s::int8[],
                %(bursts)s::int8[]) AS s(queue, free, global_limit, rate, burst)
    WHERE NOT EXISTS (SELECT 1 FROM jobd.paused_queues p WHERE p.queue = s.queue)
),
bucket AS (
    -- A rate-limited queue's bucket refilled to now, the rule of jobd.store.refill_bucket:
    -- `rate` is its refill per microsecond, `level` counts 1/jobd.store.TOKEN tokens; a queue
    -- without a row has a full bucket; a `now` behind the row's adds nothing.
    SELECT slot.queue, slot.rate, refilled.level, refilled.level / %(token)s AS tokens, refilled.updated_at
    FROM slot
    LEFT JOIN jobd.rate_buckets b ON b.queue = slot.queue,
    LATERAL (
        SELECT CASE WHEN b.queue IS NULL THEN slot.burst * %(token)s
                    ELSE least(slot.burst * %(token)s, b.level + slot.rate * greatest(0,
                        (extract(epoch FROM %(now)s::timestamptz) - extract(epoch FROM b.updated_at)) * 1000000
                    ))::int8
               END AS level,
               greatest(b.updated_at, %(now)s::timestamptz) AS updated_at
    ) refilled
    WHERE slot.rate IS NOT NULL AND slot.allowed > 0
),
chosen AS (
    -- The first `limit` in claim order across the queues; no queue can give more.
    SELECT ready.id, slot.queue
    FROM slot LEFT JOIN bucket ON bucket.queue = slot.queue, LATERAL (
        SELECT j.id, j.priority, j.run_at, j.seq FROM jobd.live_jobs j
        WHERE j.queue = slot.queue AND j.state = 'pending'
        ORDER BY j.priority DESC, j.run_at, j.seq
        -- least() skips the NULL tokens of a queue without a rate.
        LIMIT greatest(least(slot.allowed, %(limit)s, bucket.tokens), 0)
        FOR UPDATE SKIP LOCKED
    ) ready
    ORDER BY ready.priority DESC, ready.run_at, ready.seq
    LIMIT %(limit)s
),
taken AS (
    SELECT bucket.queue, bucket.rate, bucket.tokens, count(chosen.id) AS started,
           bucket.level - count(chosen.id) * %(token)s AS level, bucket.updated_at
    FROM bucket LEFT JOIN chosen ON chosen.queue = bucket.queue
    GROUP BY bucket.queue, bucket.rate, bucket.tokens, bucket.level, bucket.updated_at
),
spent AS (
    INSERT INTO jobd.rate_buckets (queue, level, updated_at)
    SELECT queue, level, updated_at FROM taken WHERE started > 0
    ON CONFLICT (queue) DO UPDATE SET level = excluded.level, updated_at = excluded.updated_at
),
held AS (
    -- More pending jobs than whole tokens, while the other limits had room for more: the
    -- rate held the queue back. Its next token is due once the level reaches a token.
    SELECT taken.queue,
           taken.updated_at + interval '1 microsecond'
               * ceil(greatest(%(token)s - taken.level, 0)::numeric / taken.rate)::float8 AS due
    FROM taken JOIN slot ON slot.queue = taken.queue
    WHERE taken.tokens < least(slot.allowed, %(limit)s)
      AND (SELECT count(*) FROM (
               SELECT 1 FROM jobd.live_jobs j WHERE j.queue = taken.queue AND j.state = 'pending'
               LIMIT taken.tokens + 1) AS pending) > taken.tokens
),
{claim_chosen}
-- After the claimed jobs and the completions that applied, the queues the rate held
-- back (flag NULL; the queue, and its next token's time as run_at).
{claimed_and_recorded}
UNION ALL
SELECT NULL, {held_columns}, NULL FROM held;

-- name: complete_and_claim_unlimited
-- complete_and_claim_jobs when no queue of the claim has a global limit or a rate, as
-- in most rounds: the same outcomes and the same claim order, without the counting
-- and the buckets, whose part of the plan cost 3 - 4 µs of server time a job.
WITH {record_outcomes},
{free_slots},
chosen AS (
    SELECT ready.id
    FROM slot, LATERAL ({ready_in_slot}) ready
    ORDER BY ready.priority DESC, ready.run_at, ready.seq
    LIMIT %(limit)s
),
{claim_chosen}
{claimed_and_recorded};

-- name: renew_leases
-- By primary key: `(state = 'running') IS TRUE` keeps the planner off live_jobs_running
-- (see complete_and_claim_jobs).
UPDATE jobd.live_jobs SET lease_until = %(lease_until)s
WHERE id = ANY(%(ids)s::uuid[]) AND owner = %(owner)s AND (state = 'running') IS TRUE
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
                                last_error, result, progress, key, schedule, scheduled_for,
                                    parents, on_parent_failure, traceparent)
SELECT id, seq, type, queue, payload, %(state)s, priority, attempts, max_attempts,
       timeout, run_at, created_at, %(now)s, started_at, %(now)s, %(error)s, result, progress, key,
       schedule, scheduled_for, parents, on_parent_failure, traceparent
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
                            last_error, result, progress, key, schedule, scheduled_for,
                                    parents, on_parent_failure, traceparent)
SELECT id, seq, type, queue, payload, %(state)s, priority, 0, max_attempts,
       timeout, %(now)s, created_at, %(now)s, NULL, NULL, last_error, NULL, NULL, key,
       schedule, scheduled_for, parents, on_parent_failure, traceparent
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
-- A job whose key window is still open is spared: a submit of its key must find it.
-- The dependants of a pruned job were settled when it finished: its rows there go too.
WITH pruned AS (
    DELETE FROM jobd.finished_jobs
    WHERE id IN (SELECT f.id FROM jobd.finished_jobs f
                 WHERE f.state = %(state)s AND f.finished_at < %(before)s
                   -- A hashed list of the few open windows: the scan stays the one it was.
                   AND f.id NOT IN (SELECT w.job_id FROM jobd.key_windows w WHERE w.expires_at > %(now)s)
                 LIMIT %(limit)s
                 FOR UPDATE OF f SKIP LOCKED)
    RETURNING id
),
forgotten AS (
    DELETE FROM jobd.job_dependants d USING pruned WHERE d.parent_id = pruned.id
)
SELECT count(*) FROM pruned;

-- name: forget_closed_windows
DELETE FROM jobd.key_windows WHERE expires_at <= %(now)s;

-- name: job_results
SELECT id, result FROM jobd.live_jobs WHERE id = ANY(%(ids)s::uuid[])
UNION ALL
SELECT id, result FROM jobd.finished_jobs WHERE id = ANY(%(ids)s::uuid[]);

-- name: lock_parents
-- Held until commit: a parent cannot finish (leave live_jobs) before its new dependant
-- is committed, so the trigger that settles its dependants sees it.
SELECT id FROM jobd.live_jobs WHERE id = ANY(%(ids)s::uuid[]) ORDER BY id FOR KEY SHARE;

-- name: known_jobs
SELECT id FROM jobd.live_jobs WHERE id = ANY(%(ids)s::uuid[])
UNION ALL
SELECT id FROM jobd.finished_jobs WHERE id = ANY(%(ids)s::uuid[]);

-- name: take_windows
-- Each key's row is taken by this submit unless the job it holds was made within the
-- submit's own window. The conflicting rows are locked either way, until commit.
INSERT INTO jobd.key_windows AS w (key, job_id, created_at, unique_for, expires_at)
SELECT key, id, created_at, unique_for, created_at + unique_for * interval '1 second'
FROM json_to_recordset(%(windows)s::json) AS n(key text, id uuid, created_at timestamptz, unique_for float8)
ON CONFLICT (key) DO UPDATE
SET job_id = excluded.job_id, created_at = excluded.created_at, unique_for = excluded.unique_for,
    expires_at = excluded.expires_at
WHERE w.created_at <= excluded.created_at - excluded.unique_for * interval '1 second'
RETURNING key;

-- name: live_jobs_with_keys
SELECT key, {columns} FROM jobd.live_jobs WHERE key = ANY(%(keys)s::text[]);

-- name: window_holders
SELECT w.key, {j_columns} FROM jobd.key_windows w JOIN jobd.jobs j ON j.id = w.job_id
WHERE w.key = ANY(%(keys)s::text[]);

-- name: take_window
UPDATE jobd.key_windows
SET job_id = %(id)s, created_at = %(created_at)s, unique_for = %(unique_for)s,
    expires_at = %(created_at)s + %(unique_for)s * interval '1 second'
WHERE key = %(key)s;

-- name: drop_window
DELETE FROM jobd.key_windows WHERE key = %(key)s AND job_id = %(id)s;

-- name: set_parents
UPDATE jobd.live_jobs SET parents = %(parents)s WHERE id = %(id)s;

-- name: add_dependants
INSERT INTO jobd.job_dependants (parent_id, child_id)
SELECT parent, child FROM unnest(%(parents)s::uuid[], %(children)s::uuid[]) AS d(parent, child)
ON CONFLICT DO NOTHING;

-- name: settle_waiting
SELECT jobd.settle_waiting(%(ids)s::uuid[], %(now)s);

-- name: jobs_by_id
SELECT {columns} FROM jobd.jobs WHERE id = ANY(%(ids)s::uuid[]);

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
