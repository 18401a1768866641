-- Access requests decided by approvers (issue 5). Never edit once released: add a new migration.

-- When an undecided request lapses, and the grant an approval made.
ALTER TABLE access_requests ADD COLUMN expires_at BIGINT;
ALTER TABLE access_requests ADD COLUMN grant_id BIGINT REFERENCES grants(id);
CREATE INDEX access_requests_status ON access_requests(status);
CREATE INDEX access_requests_vendor ON access_requests(vendor_id);

-- One row per approval (critical assets need two, from two different approvers).
CREATE TABLE request_approvals (
    id             BIGSERIAL PRIMARY KEY,
    request_id     BIGINT NOT NULL REFERENCES access_requests(id),
    approver       TEXT NOT NULL,
    method         TEXT NOT NULL,
    services       TEXT NOT NULL,
    duration_secs  BIGINT NOT NULL,
    at             BIGINT NOT NULL,
    UNIQUE (request_id, approver)
);

-- Staff sign-in: TOTP replay guard, lockout, and passkeys (webauthn-rs `Passkey` as JSON).
ALTER TABLE staff_users ADD COLUMN totp_last_step BIGINT;
ALTER TABLE staff_users ADD COLUMN failed_logins BIGINT NOT NULL DEFAULT 0;
ALTER TABLE staff_users ADD COLUMN locked_until BIGINT;
ALTER TABLE staff_users ADD COLUMN passkeys TEXT;
