-- The seal on the audit chain's head: HMAC-SHA256 (hex) of its seq and hash under a subkey of the
-- secrets key (`audit::HeadSeal`). Never edit once released: add a new migration.

-- NULL until the process that applies this migration seals the head it finds (`Store::migrate`); after
-- that, a head without a valid seal was moved by someone without the key. An empty log needs none.
ALTER TABLE audit_head ADD COLUMN mac TEXT;
