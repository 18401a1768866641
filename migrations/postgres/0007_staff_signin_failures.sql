-- Staff sign-in failures per account and source address (issue 12). Never edit once released: add a new
-- migration.

-- One row per failed staff sign-in (wrong password, wrong or reused code, refused passkey), kept for the
-- failure window. A lock is a count over these rows for one (account, source) pair, so failures from one
-- address never lock the account from another. `source` is the client's address as text (an IPv6 client
-- as its /64). The old per-account counter (`staff_users.failed_logins`, `locked_until`) is no longer read.
CREATE TABLE staff_signin_failures (
    id       BIGSERIAL PRIMARY KEY,
    user_id  BIGINT NOT NULL REFERENCES staff_users(id),
    source   TEXT NOT NULL,
    at       BIGINT NOT NULL
);
CREATE INDEX staff_signin_failures_pair ON staff_signin_failures(user_id, source, at);
CREATE INDEX staff_signin_failures_at ON staff_signin_failures(at);
