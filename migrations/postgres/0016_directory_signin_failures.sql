-- Failed directory sign-ins of names no account holds yet. Never edit once released: add a new migration.

-- One row per refused directory sign-in of a name that is no staff account (an entry that never signed
-- in, or no entry at all: the directory's answer does not say which), kept for the failure window. Like
-- staff_signin_failures, a lock is a count over one (name, source) pair; before this table such names
-- were never counted, so each guess was a bind that drove the directory's own lockout.
CREATE TABLE directory_signin_failures (
    id      BIGSERIAL PRIMARY KEY,
    name    TEXT NOT NULL,
    source  TEXT NOT NULL,
    at      BIGINT NOT NULL
);
CREATE INDEX directory_signin_failures_pair ON directory_signin_failures(name, source, at);
CREATE INDEX directory_signin_failures_at ON directory_signin_failures(at);
