-- The events about one subject (a session's start, end and recovered recording), found without a scan
-- of the whole log: `session verify|play|export|list|show` read the digest the chain vouches for.
CREATE INDEX audit_events_subject ON audit_events(subject, seq);
