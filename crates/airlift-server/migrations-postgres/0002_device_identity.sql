-- Airlift server schema for PostgreSQL, version 2 (issue 16): what SQLite's
-- migration 0005 adds, in PostgreSQL's types. Forward-only.
--
-- A revoked device keeps its row, its name and its history; its token is
-- refused until the operator gives it a new one. A deleted device's row
-- stays as a tombstone renamed `NAME~deleted-ID`, so its history stays
-- readable and its name is free again. A token a rotation replaced is kept,
-- so a device still sending it hears that it was revoked.

ALTER TABLE devices ADD COLUMN revoked_at BIGINT;
ALTER TABLE devices ADD COLUMN deleted_at BIGINT;
CREATE INDEX devices_gone ON devices (id) WHERE revoked_at IS NOT NULL OR deleted_at IS NOT NULL;

CREATE TABLE retired_tokens (
    token_hash BYTEA  PRIMARY KEY,
    device_id  BIGINT NOT NULL REFERENCES devices (id),
    retired_at BIGINT NOT NULL
);

-- The names devices may enrol with (`roof-*`); NULL: any name.
ALTER TABLE enrollment_secrets ADD COLUMN name_pattern TEXT;
