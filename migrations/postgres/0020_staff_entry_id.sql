-- The directory entry a directory staff account belongs to, by its stable id. Never edit once
-- released: add a new migration.

-- `entryUUID` or Active Directory's `objectGUID` (as hex), as for vendors (0018): a DN changes when the
-- entry is moved or renamed, so an account tied to its entry by DN alone let the moved entry sign in
-- under a second name as a second account (a second approver for four eyes). NULL for accounts signed
-- in before it was kept (the next sign-in or re-check fills it in) and for directories without either.
ALTER TABLE staff_users ADD COLUMN entry_id TEXT;
