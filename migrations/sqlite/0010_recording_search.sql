-- What auditors search and play in the browser, derived from the recordings by the indexer after a
-- recording closed (src/search_index.rs). Bookkeeping: every row can be rebuilt from a recording the
-- audit chain vouches for. Never edit once released: add a new migration.

-- The text a person saw (terminal output, typed input when recorded, exec commands, transferred file
-- names), in chunks of lines: `times` holds each line's time in milliseconds (comma-separated), `body`
-- the lines (newline-separated), `words` the same text as `chaperone_recorder::transcript::words`
-- normalises it (lower case, runs of letters and digits), which is what the full-text index holds, so
-- SQLite and PostgreSQL match the same words.
CREATE TABLE recording_text (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    recording_id  INTEGER NOT NULL REFERENCES recordings(id),
    session_id    TEXT NOT NULL REFERENCES sessions(id),
    seq           INTEGER NOT NULL,
    times         TEXT NOT NULL,
    body          TEXT NOT NULL,
    words         TEXT NOT NULL
);
CREATE INDEX recording_text_session ON recording_text(session_id, seq);
CREATE INDEX recording_text_recording ON recording_text(recording_id);

-- FTS5 over `words`, its content kept in recording_text (external content), in step through triggers.
-- remove_diacritics 0: PostgreSQL's 'simple' configuration keeps accents too.
CREATE VIRTUAL TABLE recording_text_fts USING fts5(
    words, content='recording_text', content_rowid='id', tokenize='unicode61 remove_diacritics 0'
);
CREATE TRIGGER recording_text_ai AFTER INSERT ON recording_text BEGIN
    INSERT INTO recording_text_fts(rowid, words) VALUES (new.id, new.words);
END;
CREATE TRIGGER recording_text_ad AFTER DELETE ON recording_text BEGIN
    INSERT INTO recording_text_fts(recording_text_fts, rowid, words) VALUES ('delete', old.id, old.words);
END;

-- One row per recording the indexer looked at: `indexed` (text and playback index written), or
-- `failed` (why in `note`: not vouched for, altered, unreadable). `sha256` is the digest the audit chain
-- vouched for when it was indexed; `playback` the player's index (JSON: size, duration, markers, pauses,
-- segments with their byte ranges, digests and screen snapshots) and `mac` its HMAC-SHA256 under a key
-- derived from the secrets key, so that whoever can write the database but not read the key cannot
-- make the player show a screen the recording never had.
CREATE TABLE recording_index (
    recording_id  INTEGER PRIMARY KEY REFERENCES recordings(id),
    session_id    TEXT NOT NULL REFERENCES sessions(id),
    status        TEXT NOT NULL,
    sha256        TEXT,
    playback      TEXT,
    mac           TEXT,
    note          TEXT,
    lines         INTEGER NOT NULL DEFAULT 0,
    indexed_at    INTEGER NOT NULL
);

-- History is listed newest first and filtered by time.
CREATE INDEX sessions_started ON sessions(started_at);
