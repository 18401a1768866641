-- chaperone foundation schema (PostgreSQL). Never edit once released: add a new migration.
-- Times are unix seconds (BIGINT). Booleans are BIGINT 0/1. Secrets are AEAD blobs (see src/secrets.rs).

CREATE TABLE vendors (
    id              BIGSERIAL PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    org             TEXT NOT NULL,
    totp_secret     BYTEA NOT NULL,
    totp_last_step  BIGINT,
    enabled         BIGINT NOT NULL DEFAULT 1,
    locked_until    BIGINT,
    created_at      BIGINT NOT NULL
);

CREATE TABLE vendor_keys (
    id           BIGSERIAL PRIMARY KEY,
    vendor_id    BIGINT NOT NULL REFERENCES vendors(id),
    public_key   TEXT NOT NULL,
    fingerprint  TEXT NOT NULL UNIQUE,
    comment      TEXT NOT NULL,
    added_at     BIGINT NOT NULL
);

CREATE TABLE auth_failures (
    id         BIGSERIAL PRIMARY KEY,
    vendor_id  BIGINT NOT NULL REFERENCES vendors(id),
    at         BIGINT NOT NULL
);
CREATE INDEX auth_failures_vendor_at ON auth_failures(vendor_id, at);

CREATE TABLE staff_users (
    id                 BIGSERIAL PRIMARY KEY,
    name               TEXT NOT NULL UNIQUE,
    role               TEXT NOT NULL,
    enabled            BIGINT NOT NULL DEFAULT 1,
    password_hash      TEXT,
    totp_secret        BYTEA,
    enroll_token_hash  TEXT,
    enroll_expires_at  BIGINT,
    created_at         BIGINT NOT NULL
);

CREATE TABLE assets (
    id              BIGSERIAL PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    address         TEXT NOT NULL,
    zone            TEXT NOT NULL,
    purpose         TEXT NOT NULL,
    criticality     TEXT NOT NULL,
    vendor_org      TEXT,
    os              TEXT,
    patch_status    TEXT,
    host_key        TEXT,
    cred_user       TEXT,
    cred_kind       TEXT,
    cred_secret     BYTEA,
    created_at      BIGINT NOT NULL
);

CREATE TABLE asset_services (
    id        BIGSERIAL PRIMARY KEY,
    asset_id  BIGINT NOT NULL REFERENCES assets(id) ON DELETE CASCADE,
    name      TEXT NOT NULL,
    port      BIGINT NOT NULL,
    kind      TEXT NOT NULL,
    UNIQUE (asset_id, name)
);

CREATE TABLE access_requests (
    id               BIGSERIAL PRIMARY KEY,
    vendor_id        BIGINT NOT NULL REFERENCES vendors(id),
    asset_id         BIGINT NOT NULL REFERENCES assets(id),
    services         TEXT NOT NULL,
    duration_secs    BIGINT NOT NULL,
    reason           TEXT NOT NULL,
    status           TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    decided_at       BIGINT,
    decided_by       TEXT,
    decision_reason  TEXT
);

CREATE TABLE grants (
    id             BIGSERIAL PRIMARY KEY,
    vendor_id      BIGINT NOT NULL REFERENCES vendors(id),
    asset_id       BIGINT NOT NULL REFERENCES assets(id),
    services       TEXT NOT NULL,
    starts_at      BIGINT NOT NULL,
    ends_at        BIGINT NOT NULL,
    reason         TEXT NOT NULL,
    issued_by      TEXT NOT NULL,
    request_id     BIGINT REFERENCES access_requests(id),
    revoked_at     BIGINT,
    revoked_by     TEXT,
    revoke_reason  TEXT,
    created_at     BIGINT NOT NULL
);
CREATE INDEX grants_vendor_asset ON grants(vendor_id, asset_id);

CREATE TABLE sessions (
    id           TEXT PRIMARY KEY,
    vendor_id    BIGINT NOT NULL REFERENCES vendors(id),
    asset_id     BIGINT NOT NULL REFERENCES assets(id),
    grant_id     BIGINT NOT NULL REFERENCES grants(id),
    kind         TEXT NOT NULL,
    service      TEXT NOT NULL,
    client_addr  TEXT NOT NULL,
    detail       TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    ended_at     BIGINT,
    end_reason   TEXT,
    bytes_up     BIGINT NOT NULL DEFAULT 0,
    bytes_down   BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE recordings (
    id          BIGSERIAL PRIMARY KEY,
    session_id  TEXT NOT NULL REFERENCES sessions(id),
    format      TEXT NOT NULL,
    path        TEXT NOT NULL,
    sha256      TEXT,
    size        BIGINT,
    created_at  BIGINT NOT NULL,
    closed_at   BIGINT
);

-- Append-only: no UPDATE or DELETE of these rows anywhere in the code.
CREATE TABLE audit_events (
    seq        BIGINT PRIMARY KEY,
    at         BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    detail     TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);

-- The chain head: the last sequence number and hash. Serialises appends (its row lock) and lets
-- `audit verify` notice rows removed from the end of the chain.
CREATE TABLE audit_head (
    id    BIGINT PRIMARY KEY CHECK (id = 1),
    seq   BIGINT NOT NULL,
    hash  TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
