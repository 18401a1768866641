-- Session search by text, one full-text row per long run of a recording's words instead of one per chunk
-- (issue 11: a word that is everywhere matched every chunk of every recording, ~250,000 rows for 1 GB,
-- and the search mapped each to its session before it could take the newest). Bookkeeping, rebuilt by
-- the indexer from what the audit chain vouches for. Never edit once released: add a new migration.

-- A part: consecutive lines of one recording, at most 16,000 words (below PostgreSQL's last tsvector
-- position, 16,383, so a phrase is matched at its true positions on both databases). Its words are in
-- the full-text index only (contentless): the text itself stays in recording_text, for the transcript.
CREATE TABLE recording_words (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    recording_id  INTEGER NOT NULL REFERENCES recordings(id),
    session_id    TEXT NOT NULL REFERENCES sessions(id),
    seq           INTEGER NOT NULL
);
CREATE INDEX recording_words_recording ON recording_words(recording_id);

CREATE VIRTUAL TABLE recording_words_fts USING fts5(
    words, content='', contentless_delete=1, tokenize='unicode61 remove_diacritics 0'
);
CREATE TRIGGER recording_words_ad AFTER DELETE ON recording_words BEGIN
    DELETE FROM recording_words_fts WHERE rowid = old.id;
END;

-- What was indexed before this migration: one part per chunk (correct, only not as quick; recordings
-- indexed from now on get long parts).
INSERT INTO recording_words (id, recording_id, session_id, seq)
    SELECT id, recording_id, session_id, seq FROM recording_text;
INSERT INTO recording_words_fts (rowid, words) SELECT id, words FROM recording_text;
