-- No trigger counts the attempts that end any more: the store adds them to the
-- recent-outcome ring of 0006 itself (`_count_outcomes` in jobd/store/sqlite.py), one
-- upsert per queue and outcome of a write, as 0008 did for job_counts. The trigger ran
-- an upsert for every job a completion finished or retried: about 2 of the 16 µs a
-- job's completion cost the database thread. The two writes that end attempts, a
-- completion and a rescue, know each job's queue and the state it ends in.

DROP TRIGGER recent_outcomes_count;
