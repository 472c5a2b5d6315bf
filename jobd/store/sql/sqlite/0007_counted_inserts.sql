-- An insert no longer fires a trigger: `_insert_jobs` (jobd/store/sqlite.py) adds the
-- jobs it inserts to job_counts itself, one row per queue and state for the whole
-- batch (count_inserted in queries.sql). The trigger ran an upsert for every job, and
-- a statement that fires a trigger keeps a statement journal: together 7 of the 28 µs
-- an insert costs. Every other change of a job's state is still counted by the
-- triggers of 0003, which see the old state as well as the new.

DROP TRIGGER job_counts_insert;
