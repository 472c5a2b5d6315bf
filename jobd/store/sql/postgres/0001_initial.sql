-- The jobs table, its indexes and the paused queues.
-- Applied once, in one transaction, by PostgresStore.open() under an advisory lock.

CREATE TABLE jobd.jobs (
    id uuid PRIMARY KEY,
    seq bigserial NOT NULL UNIQUE,  -- submission order; also the list cursor
    type text NOT NULL,
    queue text NOT NULL,
    payload jsonb,
    state text NOT NULL
        CHECK (state IN ('scheduled', 'pending', 'running', 'completed', 'failed', 'cancelled')),
    priority integer NOT NULL DEFAULT 0,
    attempts integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL CHECK (max_attempts >= 1),
    timeout double precision CHECK (timeout > 0),
    run_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    started_at timestamptz,
    finished_at timestamptz,
    last_error text,
    result jsonb,
    progress jsonb,
    key text,
    owner text,
    lease_until timestamptz,
    cancel_requested boolean NOT NULL DEFAULT false
);

-- Every index on the hot paths is partial, so millions of finished rows never
-- enter them: claims, promotions and rescues only walk the live jobs.

-- Claims: the next pending jobs of a queue, in claim order.
CREATE INDEX jobs_claim ON jobd.jobs (queue, priority DESC, run_at, seq) WHERE state = 'pending';

-- Promotion: the scheduled jobs that are due, and the earliest one still waiting.
CREATE INDEX jobs_scheduled ON jobd.jobs (run_at) WHERE state = 'scheduled';

-- Running jobs are few (bounded by the daemons' concurrency): one index serves the
-- per-queue count under a global limit (its prefix) and the expired-lease scan.
CREATE INDEX jobs_running ON jobd.jobs (queue, lease_until) WHERE state = 'running';

-- Idempotency: at most one unfinished job per key.
CREATE UNIQUE INDEX jobs_live_key ON jobd.jobs (key)
    WHERE key IS NOT NULL AND state IN ('scheduled', 'pending', 'running');

-- Listing, newest first, optionally filtered by state. A listing by queue or type
-- walks the seq index instead: every state change of a row writes a new version into
-- every index (no HOT update, since state is indexed), and two more indexes cost
-- more claim and completion throughput than those listings are worth.
CREATE INDEX jobs_list_state ON jobd.jobs (state, seq);

-- Pruning: the oldest finished jobs of one state.
CREATE INDEX jobs_finished ON jobd.jobs (state, finished_at) WHERE finished_at IS NOT NULL;

-- A queue listed here is paused for every daemon sharing the store.
CREATE TABLE jobd.paused_queues (
    queue text PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now()
);
