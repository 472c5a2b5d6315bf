-- The oldest pending job of each queue, for the metrics (jobd_oldest_pending_job_age_seconds):
-- the first entry of the queue's range, however many jobs wait. The claim index cannot
-- answer it: it is ordered by priority first. Only pending rows enter it, and a claim
-- takes a row out of it rather than writing a new entry.
CREATE INDEX live_jobs_pending_since ON jobd.live_jobs (queue, run_at) WHERE state = 'pending';
