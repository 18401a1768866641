-- Nodes and the sessions they run. Never edit once released: add a new migration.

-- Every `chaperone serve` process registers here and renews `seen_at`; a session whose node is gone (no
-- row, or not seen for a while) was left open by a process that stopped without ending it, and the next
-- node to notice ends it and finishes its recording.
CREATE TABLE nodes (
    id          TEXT PRIMARY KEY,
    started_at  INTEGER NOT NULL,
    seen_at     INTEGER NOT NULL
);
ALTER TABLE sessions ADD COLUMN node TEXT;
-- Sessions open now were opened by a process that had no node name; once it is gone (it is, when this
-- runs at the start of a new version) they are ended like any abandoned session. Rows a still-running
-- older version writes later have no node and are left alone: upgrade every node together.
UPDATE sessions SET node = 'before-0005' WHERE ended_at IS NULL;
CREATE INDEX sessions_open ON sessions(ended_at);
