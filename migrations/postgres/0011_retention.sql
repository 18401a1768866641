-- Retention and legal hold (issue 11). A session on legal hold keeps its recordings whatever their
-- retention: `held_at`/`held_by`/`hold_reason` are set by `session hold` and cleared by `session release`
-- (both audited: session.hold, session.release). A recording past its retention has its file deleted
-- by the daily job; its row stays, with its digest and path, marked `deleted_at` (audited:
-- recording.deleted). Never edit once released: add a new migration.
ALTER TABLE sessions ADD COLUMN held_at BIGINT;
ALTER TABLE sessions ADD COLUMN held_by TEXT;
ALTER TABLE sessions ADD COLUMN hold_reason TEXT;
ALTER TABLE recordings ADD COLUMN deleted_at BIGINT;
