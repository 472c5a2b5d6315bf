-- The jobs table, its indexes, per-queue counters and paused queues.
-- Times are integers: microseconds since the Unix epoch, UTC (exact round trips).
-- JSON values (payload, result, progress) are JSON text; NULL stands for JSON null.

CREATE TABLE jobs (
    -- Submission order: claim tie-breaker and list cursor. AUTOINCREMENT never reuses
    -- a number after a prune, so a cursor always means the same place.
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT    NOT NULL UNIQUE,
    type             TEXT    NOT NULL,
    queue            TEXT    NOT NULL,
    payload          TEXT,
    state            TEXT    NOT NULL
        CHECK (state IN ('scheduled', 'pending', 'running', 'completed', 'failed', 'cancelled')),
    priority         INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    timeout          REAL,
    run_at           INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    last_error       TEXT,
    result           TEXT,
    progress         TEXT,
    key              TEXT,
    owner            TEXT,
    lease_until      INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);

-- Claims read only pending rows, already in claim order: finished rows cost nothing.
CREATE INDEX jobs_claim ON jobs (queue, priority DESC, run_at, seq) WHERE state = 'pending';
-- Promotion and "next run_at" walk scheduled rows by time (the queries name it: INDEXED BY).
CREATE INDEX jobs_scheduled ON jobs (run_at) WHERE state = 'scheduled';
-- An idempotency key belongs to at most one unfinished job.
CREATE UNIQUE INDEX jobs_live_key ON jobs (key)
    WHERE key IS NOT NULL AND state IN ('scheduled', 'pending', 'running');
-- Pruning walks finished rows by age.
CREATE INDEX jobs_finished ON jobs (state, finished_at)
    WHERE state IN ('completed', 'failed', 'cancelled');
-- Listing, newest first, by each filter. The state index also finds the few running rows
-- (leases, rescue, cancel requests, global limits).
CREATE INDEX jobs_list_state ON jobs (state, seq);
CREATE INDEX jobs_list_queue ON jobs (queue, seq);
CREATE INDEX jobs_list_type ON jobs (type, seq);

-- Jobs per queue and state, kept by triggers so that counting never scans the table.
CREATE TABLE job_counts (
    queue TEXT    NOT NULL,
    state TEXT    NOT NULL,
    jobs  INTEGER NOT NULL,
    PRIMARY KEY (queue, state)
) WITHOUT ROWID;

CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs
BEGIN
    INSERT INTO job_counts (queue, state, jobs) VALUES (new.queue, new.state, 1)
        ON CONFLICT (queue, state) DO UPDATE SET jobs = jobs + 1;
END;

CREATE TRIGGER job_counts_update AFTER UPDATE OF state, queue ON jobs
WHEN old.state IS NOT new.state OR old.queue IS NOT new.queue
BEGIN
    UPDATE job_counts SET jobs = jobs - 1 WHERE queue = old.queue AND state = old.state;
    INSERT INTO job_counts (queue, state, jobs) VALUES (new.queue, new.state, 1)
        ON CONFLICT (queue, state) DO UPDATE SET jobs = jobs + 1;
END;

CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs
BEGIN
    UPDATE job_counts SET jobs = jobs - 1 WHERE queue = old.queue AND state = old.state;
END;

CREATE TABLE paused_queues (
    queue     TEXT    PRIMARY KEY,
    paused_at INTEGER NOT NULL
) WITHOUT ROWID;
