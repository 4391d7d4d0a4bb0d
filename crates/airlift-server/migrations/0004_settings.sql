-- Airlift server schema, version 4: settings every server instance shares
-- (PostgreSQL keeps the release-signing key here when no key file is
-- configured; SQLite keeps the same table so both backends answer alike).
-- Forward-only, like every migration.

CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
