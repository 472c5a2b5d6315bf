-- Named queries of the SQLite store. Each starts with a "-- name: NAME" line.
-- Target states come in as parameters, computed by jobd.job.next_state.

-- name: insert_jobs
-- ?1 is a JSON array of rows, each an array in the order of `_job_row`
-- (jobd/store/sqlite.py); a row's created_at (its 10th value) is also its first
-- updated_at. One statement for the whole batch, run in SQLite's C with the interpreter
-- let go: a chunked batch is checked meanwhile (`SQLiteStore.insert_job_chunks`).
-- `ORDER BY key` (the index in the array) makes `seq` follow the batch's order.
INSERT INTO jobs (id, type, queue, payload, state, priority, max_attempts, timeout,
                  run_at, created_at, updated_at, key, schedule, scheduled_for, parents, on_parent_failure, traceparent)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'), json_extract(value, '$[3]'),
       json_extract(value, '$[4]'), json_extract(value, '$[5]'), json_extract(value, '$[6]'), json_extract(value, '$[7]'),
       json_extract(value, '$[8]'), json_extract(value, '$[9]'), json_extract(value, '$[9]'), json_extract(value, '$[10]'),
       json_extract(value, '$[11]'), json_extract(value, '$[12]'), json_extract(value, '$[13]'), json_extract(value, '$[14]'),
       json_extract(value, '$[15]')
FROM json_each(?1)
ORDER BY key;

-- name: count_moved
-- Run once per queue and state whose count a write changed, with the change (no
-- trigger counts jobs: see `_count_moves`).
INSERT INTO job_counts (queue, state, jobs) VALUES (:queue, :state, :jobs)
ON CONFLICT (queue, state) DO UPDATE SET jobs = jobs + excluded.jobs;

-- name: live_job_with_key
SELECT * FROM jobs
WHERE key = :key AND state IN ('waiting', 'scheduled', 'pending', 'running');

-- name: get_job
SELECT * FROM jobs WHERE id = :id;

-- name: list_jobs
-- {filters} becomes zero or more "AND column = :column" terms, so each filter can use its index.
SELECT * FROM jobs
WHERE seq < :below {filters}
ORDER BY seq DESC
LIMIT :limit;

-- name: running_in_queue
-- "+queue" keeps SQLite off the queue index, which would walk the queue's finished rows too.
SELECT count(*) FROM jobs WHERE state = 'running' AND +queue = :queue;

-- name: claimable_jobs
SELECT seq, priority, run_at FROM jobs
WHERE state = 'pending' AND queue = :queue
ORDER BY priority DESC, run_at, seq
LIMIT :limit;

-- name: claim_jobs
-- :seqs is a JSON array of the chosen rows: one statement for the whole batch.
UPDATE jobs
SET state = :state, attempts = attempts + 1, started_at = :now, updated_at = :now,
    progress = NULL, owner = :owner, lease_until = :lease_until, cancel_requested = 0
WHERE seq IN (SELECT value FROM json_each(:seqs))
RETURNING *;

-- name: rate_bucket
SELECT level, updated_at FROM rate_buckets WHERE queue = :queue;

-- name: put_rate_bucket
INSERT INTO rate_buckets (queue, level, updated_at) VALUES (:queue, :level, :updated_at)
ON CONFLICT (queue) DO UPDATE SET level = excluded.level, updated_at = excluded.updated_at;

-- name: complete_jobs
-- :batch is a JSON array of completions: one statement for the whole batch. A row is
-- changed only while it is still running under the claim that produced the completion,
-- and a requeue not while a cancel is requested (see `Store.complete_jobs`).
UPDATE jobs
SET state = c.state,
    updated_at = :now,
    result = CASE WHEN c.outcome = 'completed' THEN c.result ELSE jobs.result END,
    last_error = CASE WHEN c.outcome = 'completed' THEN jobs.last_error ELSE c.error END,
    run_at = CASE c.outcome WHEN 'retried' THEN c.run_at WHEN 'requeued' THEN :now ELSE jobs.run_at END,
    attempts = CASE WHEN c.outcome = 'requeued' THEN jobs.attempts - 1 ELSE jobs.attempts END,
    finished_at = CASE WHEN c.outcome IN ('completed', 'failed', 'cancelled') THEN :now
                       ELSE jobs.finished_at END,
    owner = NULL, lease_until = NULL, cancel_requested = 0
FROM (
    SELECT json_extract(value, '$.id') AS id,
           json_extract(value, '$.owner') AS owner,
           json_extract(value, '$.attempt') AS attempt,
           json_extract(value, '$.outcome') AS outcome,
           json_extract(value, '$.state') AS state,
           json_extract(value, '$.result') AS result,
           json_extract(value, '$.error') AS error,
           json_extract(value, '$.run_at') AS run_at
    FROM json_each(:batch)
) AS c
-- "+jobs.state" keeps SQLite off the state index: each completion finds its row by id.
WHERE jobs.id = c.id AND +jobs.state = 'running' AND jobs.owner = c.owner AND jobs.attempts = c.attempt
  AND (c.outcome <> 'requeued' OR jobs.cancel_requested = 0)
RETURNING id, queue, state;

-- name: renew_lease
UPDATE jobs SET lease_until = :lease_until
WHERE id = :id AND state = 'running' AND owner = :owner
RETURNING id;

-- name: set_progress
UPDATE jobs SET progress = :progress, updated_at = :now
WHERE id = :id AND state = 'running' AND owner = :owner AND attempts = :attempt;

-- name: request_cancel
UPDATE jobs SET cancel_requested = 1 WHERE id = :id RETURNING *;

-- name: cancel_waiting_job
UPDATE jobs SET state = :state, updated_at = :now, finished_at = :now, last_error = :error
WHERE id = :id
RETURNING *;

-- name: cancel_requests
SELECT id FROM jobs WHERE state = 'running' AND owner = :owner AND cancel_requested = 1;

-- name: retry_job
UPDATE jobs
SET state = :state, attempts = 0, run_at = :now, updated_at = :now,
    started_at = NULL, finished_at = NULL, result = NULL, progress = NULL
WHERE id = :id
RETURNING *;

-- name: promote_due_jobs
UPDATE jobs INDEXED BY jobs_scheduled SET state = :state, updated_at = :now
WHERE state = 'scheduled' AND run_at <= :now
RETURNING queue;

-- name: next_scheduled
SELECT min(run_at) FROM jobs INDEXED BY jobs_scheduled WHERE state = 'scheduled';

-- name: rescuable_jobs
SELECT * FROM jobs
WHERE state = 'running' AND (:all_running OR lease_until IS NULL OR lease_until < :now)
ORDER BY seq;

-- name: rescue_job
UPDATE jobs
SET state = :state, last_error = :error, updated_at = :now,
    run_at = CASE WHEN :state = 'pending' THEN :now ELSE run_at END,
    finished_at = :finished_at, owner = NULL, lease_until = NULL, cancel_requested = 0
WHERE id = :id
RETURNING *;

-- name: prune_jobs
-- The state IN (...) term lets SQLite use the partial index jobs_finished. A job whose
-- key window is still open is spared: a submit of its key must find it.
DELETE FROM jobs WHERE seq IN (
    SELECT seq FROM jobs
    WHERE state = :state AND state IN ('completed', 'failed', 'cancelled') AND finished_at < :before
      AND NOT EXISTS (SELECT 1 FROM key_windows w WHERE w.job_id = jobs.id AND w.expires_at > :now)
    ORDER BY finished_at
    LIMIT :limit
)
RETURNING queue;

-- name: forget_closed_windows
DELETE FROM key_windows WHERE expires_at <= :now;

-- name: window_holder
SELECT jobs.*, w.created_at AS window_created_at FROM key_windows w JOIN jobs ON jobs.id = w.job_id
WHERE w.key = :key;

-- name: put_window
INSERT INTO key_windows (key, job_id, created_at, expires_at) VALUES (:key, :id, :created_at, :expires_at)
ON CONFLICT (key) DO UPDATE SET
    job_id = excluded.job_id, created_at = excluded.created_at, expires_at = excluded.expires_at;

-- name: known_jobs
SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each(:ids));

-- name: add_dependant
INSERT OR IGNORE INTO job_dependants (parent_id, child_id) VALUES (:parent, :child);

-- name: dependants
SELECT DISTINCT child_id FROM job_dependants WHERE parent_id IN (SELECT value FROM json_each(:ids));

-- name: waiting_jobs
-- "+state" keeps SQLite off the state index, which would walk every waiting job.
SELECT * FROM jobs WHERE id IN (SELECT value FROM json_each(:ids)) AND +state = 'waiting';

-- name: jobs_by_id
SELECT * FROM jobs WHERE id IN (SELECT value FROM json_each(:ids));

-- name: job_states
SELECT id, state FROM jobs WHERE id IN (SELECT value FROM json_each(:ids));

-- name: settle_job
UPDATE jobs
SET state = :state, run_at = :run_at, updated_at = :now, finished_at = :finished_at,
    last_error = coalesce(:error, last_error)
WHERE id = :id;

-- name: job_results
SELECT id, result FROM jobs WHERE id IN (SELECT value FROM json_each(:ids));

-- name: count_jobs
SELECT queue, state, jobs FROM job_counts WHERE jobs > 0;

-- name: pause_queue
INSERT INTO paused_queues (queue, paused_at) VALUES (:queue, :now) ON CONFLICT (queue) DO NOTHING;

-- name: resume_queue
DELETE FROM paused_queues WHERE queue = :queue;

-- name: paused_queues
SELECT queue FROM paused_queues;

-- name: get_schedule
SELECT * FROM schedules WHERE name = :name;

-- name: put_schedule
INSERT INTO schedules (name, timing, since, last_tick, last_job_id, paused, updated_at)
VALUES (:name, :timing, :since, :last_tick, :last_job_id, :paused, :now)
ON CONFLICT (name) DO UPDATE SET
    timing = excluded.timing, since = excluded.since, last_tick = excluded.last_tick,
    last_job_id = excluded.last_job_id, paused = excluded.paused, updated_at = excluded.updated_at;

-- name: schedule_has_unfinished_job
SELECT 1 FROM jobs INDEXED BY jobs_schedule_live
WHERE schedule = :schedule AND state IN ('scheduled', 'pending', 'running')
LIMIT 1;

-- name: queue_activity
-- Per queue of :queues (a JSON array): the earliest run_at of its pending jobs, as rows
-- (queue, NULL, NULL, run_at); then the attempts ended in seconds :first <= s < :last, as
-- rows (queue, outcome, jobs, NULL). The earliest run_at is found without walking the
-- pending jobs: jobs_claim orders them by priority first, so "levels" skips from one
-- priority present in the queue to the next lower one (one index search each), and the
-- first entry of each priority is its earliest run_at. Its cost grows with the number of
-- distinct priorities waiting, not of jobs.
WITH RECURSIVE levels(queue, priority) AS (
    SELECT q.value,
           (SELECT j.priority FROM jobs j WHERE j.state = 'pending' AND j.queue = q.value
            ORDER BY j.priority DESC LIMIT 1)
    FROM json_each(:queues) AS q
    UNION ALL
    SELECT l.queue,
           (SELECT j.priority FROM jobs j
            WHERE j.state = 'pending' AND j.queue = l.queue AND j.priority < l.priority
            ORDER BY j.priority DESC LIMIT 1)
    FROM levels l WHERE l.priority IS NOT NULL
)
SELECT l.queue, NULL, NULL,
       min((SELECT j.run_at FROM jobs j
            WHERE j.state = 'pending' AND j.queue = l.queue AND j.priority = l.priority
            ORDER BY j.run_at LIMIT 1))
FROM levels l WHERE l.priority IS NOT NULL GROUP BY l.queue
UNION ALL
SELECT queue, outcome, sum(jobs), NULL FROM recent_outcomes
WHERE second >= :first AND second < :last
GROUP BY queue, outcome;
