-- chaperone foundation schema (SQLite). Never edit once released: add a new migration.
-- Times are unix seconds (INTEGER). Booleans are INTEGER 0/1. Secrets are AEAD blobs (see src/secrets.rs).

CREATE TABLE vendors (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT NOT NULL UNIQUE,
    org             TEXT NOT NULL,
    totp_secret     BLOB NOT NULL,
    totp_last_step  INTEGER,
    enabled         INTEGER NOT NULL DEFAULT 1,
    locked_until    INTEGER,
    created_at      INTEGER NOT NULL
);

CREATE TABLE vendor_keys (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    vendor_id    INTEGER NOT NULL REFERENCES vendors(id),
    public_key   TEXT NOT NULL,
    fingerprint  TEXT NOT NULL UNIQUE,
    comment      TEXT NOT NULL,
    added_at     INTEGER NOT NULL
);

CREATE TABLE auth_failures (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    vendor_id  INTEGER NOT NULL REFERENCES vendors(id),
    at         INTEGER NOT NULL
);
CREATE INDEX auth_failures_vendor_at ON auth_failures(vendor_id, at);

CREATE TABLE staff_users (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    name               TEXT NOT NULL UNIQUE,
    role               TEXT NOT NULL,
    enabled            INTEGER NOT NULL DEFAULT 1,
    password_hash      TEXT,
    totp_secret        BLOB,
    enroll_token_hash  TEXT,
    enroll_expires_at  INTEGER,
    created_at         INTEGER NOT NULL
);

CREATE TABLE assets (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
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
    cred_secret     BLOB,
    created_at      INTEGER NOT NULL
);

CREATE TABLE asset_services (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    asset_id  INTEGER NOT NULL REFERENCES assets(id) ON DELETE CASCADE,
    name      TEXT NOT NULL,
    port      INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    UNIQUE (asset_id, name)
);

CREATE TABLE access_requests (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    vendor_id        INTEGER NOT NULL REFERENCES vendors(id),
    asset_id         INTEGER NOT NULL REFERENCES assets(id),
    services         TEXT NOT NULL,
    duration_secs    INTEGER NOT NULL,
    reason           TEXT NOT NULL,
    status           TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    decided_at       INTEGER,
    decided_by       TEXT,
    decision_reason  TEXT
);

CREATE TABLE grants (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    vendor_id      INTEGER NOT NULL REFERENCES vendors(id),
    asset_id       INTEGER NOT NULL REFERENCES assets(id),
    services       TEXT NOT NULL,
    starts_at      INTEGER NOT NULL,
    ends_at        INTEGER NOT NULL,
    reason         TEXT NOT NULL,
    issued_by      TEXT NOT NULL,
    request_id     INTEGER REFERENCES access_requests(id),
    revoked_at     INTEGER,
    revoked_by     TEXT,
    revoke_reason  TEXT,
    created_at     INTEGER NOT NULL
);
CREATE INDEX grants_vendor_asset ON grants(vendor_id, asset_id);

CREATE TABLE sessions (
    id           TEXT PRIMARY KEY,
    vendor_id    INTEGER NOT NULL REFERENCES vendors(id),
    asset_id     INTEGER NOT NULL REFERENCES assets(id),
    grant_id     INTEGER NOT NULL REFERENCES grants(id),
    kind         TEXT NOT NULL,
    service      TEXT NOT NULL,
    client_addr  TEXT NOT NULL,
    detail       TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    ended_at     INTEGER,
    end_reason   TEXT,
    bytes_up     INTEGER NOT NULL DEFAULT 0,
    bytes_down   INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE recordings (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id  TEXT NOT NULL REFERENCES sessions(id),
    format      TEXT NOT NULL,
    path        TEXT NOT NULL,
    sha256      TEXT,
    size        INTEGER,
    created_at  INTEGER NOT NULL,
    closed_at   INTEGER
);

-- Append-only: no UPDATE or DELETE of these rows anywhere in the code.
CREATE TABLE audit_events (
    seq        INTEGER PRIMARY KEY,
    at         INTEGER NOT NULL,
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
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    seq   INTEGER NOT NULL,
    hash  TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
