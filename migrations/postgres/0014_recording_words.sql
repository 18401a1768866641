-- Session search by text, one full-text row per long run of a recording's words instead of one per chunk
-- (issue 11: a word that is everywhere matched every chunk of every recording, ~250,000 rows for 1 GB,
-- and the search mapped each to its session before it could take the newest). Bookkeeping, rebuilt by
-- the indexer from what the audit chain vouches for. Never edit once released: add a new migration.

-- A part: consecutive lines of one recording, at most 16,000 words (below PostgreSQL's last tsvector
-- position, 16,383, so a phrase is matched at its true positions). Only the tsvector is kept: the text
-- itself stays in recording_text, for the transcript.
CREATE TABLE recording_words (
    id            BIGSERIAL PRIMARY KEY,
    recording_id  BIGINT NOT NULL REFERENCES recordings(id),
    session_id    TEXT NOT NULL REFERENCES sessions(id),
    seq           BIGINT NOT NULL,
    tsv           tsvector NOT NULL
);
CREATE INDEX recording_words_recording ON recording_words(recording_id);
CREATE INDEX recording_words_tsv ON recording_words USING GIN (tsv);

-- What was indexed before this migration: one part per chunk (correct, only not as quick; recordings
-- indexed from now on get long parts).
INSERT INTO recording_words (recording_id, session_id, seq, tsv)
    SELECT recording_id, session_id, seq, tsv FROM recording_text;
