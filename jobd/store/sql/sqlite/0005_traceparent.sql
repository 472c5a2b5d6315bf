-- Tracing: the W3C trace context (`traceparent`) a job was submitted in, so that each of
-- its attempts can be traced as a child of the submitter's span. NULL when none was given.
ALTER TABLE jobs ADD COLUMN traceparent TEXT;
