-- Rate limits: the token bucket of each rate-limited queue (`rate` in [queues.NAME]),
-- one row per queue, shared by every daemon. The claim that takes its tokens writes it,
-- once per claim, under the queue's advisory lock (`lock_queue`): daemons take turns,
-- so none spends a token another already took. jobd.store.refill_bucket is the rule;
-- `complete_and_claim_jobs` computes the same. A queue without a row has a full bucket.
CREATE TABLE jobd.rate_buckets (
    queue text PRIMARY KEY,
    level bigint NOT NULL,           -- tokens, in units of 1/jobd.store.TOKEN
    updated_at timestamptz NOT NULL  -- when `level` was true
);
