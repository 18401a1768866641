-- How a session ended, as a word an auditor filters on: closed (by the vendor or the device), expired,
-- revoked, terminated, disabled (the vendor was disabled, locked, or lost the key of the login), budget,
-- recording (the recording failed or reached its cap), lost (a connection failed, or the node running it
-- disappeared), shutdown. Never edit once released: add a new migration.
ALTER TABLE sessions ADD COLUMN end_cause TEXT;
-- Sessions ended before this column existed keep their reason text; their cause is not known.
