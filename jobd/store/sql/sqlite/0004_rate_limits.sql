-- Rate limits: the token bucket of each rate-limited queue (`rate` in [queues.NAME]), one
-- row per queue, written by the claim that takes its tokens (jobd.store.refill_bucket
-- is the rule). A queue without a row has a full bucket.
CREATE TABLE rate_buckets (
    queue      TEXT    PRIMARY KEY,
    level      INTEGER NOT NULL,  -- tokens, in units of 1/jobd.store.TOKEN
    updated_at INTEGER NOT NULL   -- microseconds since the epoch: when `level` was true
) WITHOUT ROWID;
