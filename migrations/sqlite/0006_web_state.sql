-- Web sign-in state every node sees. Never edit once released: add a new migration.

-- Staff web sessions and passkey ceremonies used to live in the memory of the node that started them, so
-- behind a load balancer without sticky sessions a signed-in approver was signed out whenever a request
-- reached another node. `token_sha256` is the SHA-256 (hex) of the token the browser holds, never the token;
-- `data` is JSON; a row past `expires_at` (unix seconds) counts as gone and is deleted by the next write.
CREATE TABLE web_state (
    kind         TEXT NOT NULL,
    token_sha256 TEXT NOT NULL,
    -- The staff member a session belongs to (so disabling them ends it); NULL for a ceremony.
    subject      TEXT,
    data         TEXT NOT NULL,
    expires_at   INTEGER NOT NULL,
    PRIMARY KEY (kind, token_sha256)
);
CREATE INDEX web_state_expiry ON web_state(expires_at);
CREATE INDEX web_state_subject ON web_state(subject);
