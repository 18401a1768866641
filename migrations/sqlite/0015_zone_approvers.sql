-- Zone-only approvers (a security fix). Never edit once released: add a new migration.

-- 1: the account's approver role comes from `[ldap.zones.X] approver` groups alone (no `[ldap.roles]`
-- group), so it decides the requests of the zones in `zones` only. Before this column such an account
-- could decide every zone without a group of its own.
ALTER TABLE staff_users ADD COLUMN zones_only INTEGER NOT NULL DEFAULT 0;
-- Directory approvers with zones are taken as zone-only until their next sign-in or re-check
-- (`[ldap] recheck_interval`) says what their groups give: fail closed, not open.
UPDATE staff_users SET zones_only = 1 WHERE source = 'ldap' AND role = 'approver' AND zones <> '';
