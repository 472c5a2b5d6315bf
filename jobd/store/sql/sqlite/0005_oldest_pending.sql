-- The oldest pending job of each queue, for the metrics (jobd_oldest_pending_job_age_seconds):
-- the first entry of the queue's range, however many jobs wait. The claim index cannot
-- answer it: it is ordered by priority first.
CREATE INDEX jobs_pending_since ON jobs (queue, run_at) WHERE state = 'pending';
