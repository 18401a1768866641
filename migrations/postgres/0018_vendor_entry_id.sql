-- The directory entry a directory vendor was added from, by its stable id. Never edit once released:
-- add a new migration.

-- `entryUUID` (OpenLDAP, 389 DS, FreeIPA) or Active Directory's `objectGUID` (as hex): unlike the DN, it
-- stays when an entry is moved or renamed, and it is new when an entry is deleted and made again. NULL
-- for vendors synced before it was kept (the sync fills it in) and for directories without either.
ALTER TABLE vendors ADD COLUMN entry_id TEXT;
