-- Airlift server schema, version 5 (issue 16): a device's identity can be
-- taken back, and an enrolment secret grants only what the operator set.
-- Forward-only, like every migration.
--
-- A revoked device keeps its row, its name and its history; its token is
-- refused until the operator gives it a new one. A deleted device's row
-- stays too, as a tombstone renamed `NAME~deleted-ID` (no live device can
-- take a name with `~`), so its events, assignments and audit history stay
-- readable and its own name is free again. A token a rotation replaced is
-- kept here, so a device still sending it hears that it was revoked rather
-- than that it is unknown.

ALTER TABLE devices ADD COLUMN revoked_at INTEGER;
ALTER TABLE devices ADD COLUMN deleted_at INTEGER;
-- What a new deployment checks its devices against (few rows).
CREATE INDEX devices_gone ON devices (id) WHERE revoked_at IS NOT NULL OR deleted_at IS NOT NULL;

CREATE TABLE retired_tokens (
    token_hash BLOB    PRIMARY KEY,
    device_id  INTEGER NOT NULL REFERENCES devices (id),
    retired_at INTEGER NOT NULL
) WITHOUT ROWID;

-- The names devices may enrol with (`roof-*`); NULL: any name. The tags a
-- secret carries were always set by the operator: they are now the only
-- tags it grants (a device no longer adds its own).
ALTER TABLE enrollment_secrets ADD COLUMN name_pattern TEXT;
