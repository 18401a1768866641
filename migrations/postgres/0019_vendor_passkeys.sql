-- A vendor's passkeys (webauthn-rs `Passkey` records, a JSON array), their second factor in the browser
-- through the link ssh prints while it waits. NULL: none. Never edit once released: add a new migration.
ALTER TABLE vendors ADD COLUMN passkeys TEXT;
