-- Consumers of the audit log besides the webhook (issue 14: the IHE ATNA export). Never edit once
-- released: add a new migration.

-- Each consumer tails the audit log: its row says how far it got (the last `seq` handled), for which
-- endpoint (a hash of its destination), and which node holds its lease, so that with several nodes each
-- event is sent by one of them, in order. The webhook keeps its own row in `webhook_cursor`.
CREATE TABLE audit_cursors (
    name          TEXT PRIMARY KEY,
    endpoint      TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    holder        TEXT,
    lease_until   INTEGER NOT NULL DEFAULT 0
);
