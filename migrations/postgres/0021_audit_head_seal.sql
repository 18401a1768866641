-- The seal on the audit chain's head: HMAC-SHA256 (hex) of its seq and hash under a subkey of the
-- secrets key (`audit::HeadSeal`). Never edit once released: add a new migration.

-- NULL until an operator seals the head (`chaperone audit seal`): nothing seals a head by itself, since
-- whoever can write the database could make it look like one from before this column. A head without a
-- valid seal was moved by someone without the key. An empty log needs none.
ALTER TABLE audit_head ADD COLUMN mac TEXT;
