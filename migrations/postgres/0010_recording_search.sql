-- What auditors search and play in the browser, derived from the recordings by the indexer after a
-- recording closed (src/search_index.rs). Bookkeeping: every row can be rebuilt from a recording the
-- audit chain vouches for. Never edit once released: add a new migration.

-- The text a person saw (terminal output, typed input when recorded, exec commands, transferred file
-- names), in chunks of lines: `times` holds each line's time in milliseconds (comma-separated), `body`
-- the lines (newline-separated), `words` the same text as `chaperone_recorder::transcript::words`
-- normalises it (lower case, runs of letters and digits), which is what the full-text index holds, so
-- SQLite and PostgreSQL match the same words. 'simple': no stemming, no stop words, like FTS5's
-- unicode61.
CREATE TABLE recording_text (
    id            BIGSERIAL PRIMARY KEY,
    recording_id  BIGINT NOT NULL REFERENCES recordings(id),
    session_id    TEXT NOT NULL REFERENCES sessions(id),
    seq           BIGINT NOT NULL,
    times         TEXT NOT NULL,
    body          TEXT NOT NULL,
    words         TEXT NOT NULL,
    tsv           tsvector GENERATED ALWAYS AS (to_tsvector('simple', words)) STORED
);
CREATE INDEX recording_text_session ON recording_text(session_id, seq);
CREATE INDEX recording_text_recording ON recording_text(recording_id);
CREATE INDEX recording_text_tsv ON recording_text USING GIN (tsv);

-- One row per recording the indexer looked at: `indexed` (text and playback index written), or
-- `failed` (why in `note`: not vouched for, altered, unreadable). `sha256` is the digest the audit chain
-- vouched for when it was indexed; `playback` the player's index (JSON: size, duration, markers, pauses,
-- segments with their byte ranges, digests and screen snapshots) and `mac` its HMAC-SHA256 under a key
-- derived from the secrets key, so that whoever can write the database but not read the key cannot
-- make the player show a screen the recording never had.
CREATE TABLE recording_index (
    recording_id  BIGINT PRIMARY KEY REFERENCES recordings(id),
    session_id    TEXT NOT NULL REFERENCES sessions(id),
    status        TEXT NOT NULL,
    sha256        TEXT,
    playback      TEXT,
    mac           TEXT,
    note          TEXT,
    lines         BIGINT NOT NULL DEFAULT 0,
    indexed_at    BIGINT NOT NULL
);

-- History is listed newest first and filtered by time.
CREATE INDEX sessions_started ON sessions(started_at);
