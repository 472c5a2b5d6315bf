-- Dependencies (a job waits for its parents) and unique windows (a key returns the job
-- it made within `unique_for`, in any state).
--
-- The new state `waiting` needs a new CHECK, and SQLite changes a constraint only by
-- rebuilding the table: copy every row into the new one, then put back the indexes and
-- triggers. Submission numbers (seq) are kept, and so is the highest ever handed out.

CREATE TEMP TABLE saved_sequence AS SELECT seq FROM sqlite_sequence WHERE name = 'jobs';

CREATE TABLE jobs_new (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                TEXT    NOT NULL UNIQUE,
    type              TEXT    NOT NULL,
    queue             TEXT    NOT NULL,
    payload           TEXT,
    state             TEXT    NOT NULL
        CHECK (state IN ('waiting', 'scheduled', 'pending', 'running', 'completed', 'failed', 'cancelled')),
    priority          INTEGER NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    max_attempts      INTEGER NOT NULL,
    timeout           REAL,
    run_at            INTEGER NOT NULL,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    started_at        INTEGER,
    finished_at       INTEGER,
    last_error        TEXT,
    result            TEXT,
    progress          TEXT,
    key               TEXT,
    owner             TEXT,
    lease_until       INTEGER,
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    schedule          TEXT,
    scheduled_for     INTEGER,
    parents           TEXT,   -- JSON array of job ids, NULL when none
    on_parent_failure TEXT    -- 'cancel' or 'run', NULL when no parents
);

INSERT INTO jobs_new (seq, id, type, queue, payload, state, priority, attempts, max_attempts, timeout,
                      run_at, created_at, updated_at, started_at, finished_at, last_error, result,
                      progress, key, owner, lease_until, cancel_requested, schedule, scheduled_for)
SELECT seq, id, type, queue, payload, state, priority, attempts, max_attempts, timeout,
       run_at, created_at, updated_at, started_at, finished_at, last_error, result,
       progress, key, owner, lease_until, cancel_requested, schedule, scheduled_for
FROM jobs;

DROP TABLE jobs;  -- and its indexes and triggers
ALTER TABLE jobs_new RENAME TO jobs;
UPDATE sqlite_sequence SET seq = max(seq, coalesce((SELECT seq FROM saved_sequence), 0)) WHERE name = 'jobs';
DROP TABLE saved_sequence;

-- The indexes of 0001 and 0002; a waiting job is unfinished: it holds its key.
CREATE INDEX jobs_claim ON jobs (queue, priority DESC, run_at, seq) WHERE state = 'pending';
CREATE INDEX jobs_scheduled ON jobs (run_at) WHERE state = 'scheduled';
CREATE UNIQUE INDEX jobs_live_key ON jobs (key)
    WHERE key IS NOT NULL AND state IN ('waiting', 'scheduled', 'pending', 'running');
CREATE INDEX jobs_finished ON jobs (state, finished_at)
    WHERE state IN ('completed', 'failed', 'cancelled');
CREATE INDEX jobs_list_state ON jobs (state, seq);
CREATE INDEX jobs_list_queue ON jobs (queue, seq);
CREATE INDEX jobs_list_type ON jobs (type, seq);
CREATE INDEX jobs_schedule_live ON jobs (schedule)
    WHERE schedule IS NOT NULL AND state IN ('scheduled', 'pending', 'running');

-- The counters of 0001, kept by the same triggers.
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

-- Parent -> the jobs naming it in `after`: who to settle when a parent finishes. A row
-- goes when its parent is pruned (its dependants were settled when it finished).
CREATE TABLE job_dependants (
    parent_id TEXT NOT NULL,
    child_id  TEXT NOT NULL,
    PRIMARY KEY (parent_id, child_id)
) WITHOUT ROWID;

CREATE TRIGGER jobs_forget_dependants AFTER DELETE ON jobs
BEGIN
    DELETE FROM job_dependants WHERE parent_id = old.id;
END;

-- The latest job made with a key and `unique_for`; pruning spares a job whose window
-- is still open.
CREATE TABLE key_windows (
    key        TEXT    PRIMARY KEY,
    job_id     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX key_windows_job ON key_windows (job_id);
CREATE INDEX key_windows_expires ON key_windows (expires_at);
