-- Per-session terminate (issue 5). Never edit once released: add a new migration.

-- An approver asked this session to end (the node running it closes it within a second); the grant stays.
ALTER TABLE sessions ADD COLUMN terminate_requested_at BIGINT;
ALTER TABLE sessions ADD COLUMN terminate_reason TEXT;
CREATE INDEX sessions_terminate ON sessions(terminate_requested_at);
