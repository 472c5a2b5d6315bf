-- No trigger counts jobs any more: the store keeps job_counts itself for every change of
-- a job's state and for every job it deletes (`_count_moves` in jobd/store/sqlite.py),
-- one upsert per queue and state of a statement, as 0007 began for inserts. The update
-- trigger ran two statements for every job claimed and every job completed, a fifth of
-- the database thread's time in a drain. Each write that moves jobs knows the state it
-- moves them from: a claim takes pending jobs, a completion or a rescue running ones,
-- and the others read the job first.

DROP TRIGGER job_counts_update;
DROP TRIGGER job_counts_delete;
