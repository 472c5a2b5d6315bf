-- Tracing: the W3C trace context (`traceparent`) a job was submitted in, so that each of
-- its attempts can be traced as a child of the submitter's span. NULL when none was given.
-- Appended to both job tables in the same place, so the view's union still lines up.
ALTER TABLE jobd.live_jobs ADD COLUMN traceparent text;
ALTER TABLE jobd.finished_jobs ADD COLUMN traceparent text;

CREATE OR REPLACE VIEW jobd.jobs AS
    SELECT * FROM jobd.live_jobs
    UNION ALL
    SELECT * FROM jobd.finished_jobs;
