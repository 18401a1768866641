-- Webhook delivery (issues 4 and 5). Never edit once released: add a new migration.

-- The webhook tails the audit log: this row says how far it got, for which endpoint, and which node
-- holds the delivery lease (so that with several nodes each event is sent by one of them, in order).
CREATE TABLE webhook_cursor (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    endpoint       TEXT NOT NULL,
    delivered_seq  BIGINT NOT NULL,
    holder         TEXT,
    lease_until    BIGINT NOT NULL DEFAULT 0
);
