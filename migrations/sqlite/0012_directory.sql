-- Directory identities and vendor self-enrollment (issue 13). Never edit once released: add a new migration.

-- Staff from LDAP / Active Directory: `source` is 'local' (password here) or 'ldap' (the directory checks
-- the password; `dn` is the entry it last found, `zones` the zones it lets them approve, comma-separated).
-- Their role is what the directory said at their last sign-in or re-check.
ALTER TABLE staff_users ADD COLUMN source TEXT NOT NULL DEFAULT 'local';
ALTER TABLE staff_users ADD COLUMN dn TEXT;
ALTER TABLE staff_users ADD COLUMN zones TEXT NOT NULL DEFAULT '';
-- 1: the directory took the account's access away (removed, or in no mapped group), so the directory may
-- give it back at a sign-in; an account an administrator disabled (`user disable`) stays disabled.
ALTER TABLE staff_users ADD COLUMN directory_disabled INTEGER NOT NULL DEFAULT 0;

-- Vendors: `totp_enrolled` 0 means the vendor enrols a TOTP app at their next key login (the stored seed,
-- if any, is not used); `source` is 'local' (the CLI) or 'ldap' (the directory sync owns keys and
-- enabled); `dn` is the directory entry.
ALTER TABLE vendors ADD COLUMN totp_enrolled INTEGER NOT NULL DEFAULT 1;
ALTER TABLE vendors ADD COLUMN source TEXT NOT NULL DEFAULT 'local';
ALTER TABLE vendors ADD COLUMN dn TEXT;
