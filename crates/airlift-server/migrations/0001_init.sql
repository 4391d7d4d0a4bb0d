-- Airlift server schema, version 1. Migrations are forward-only: never edit
-- a released migration, add a new file instead. Timestamps: Unix milliseconds.

CREATE TABLE releases (
    id               INTEGER PRIMARY KEY,
    sha256           TEXT    NOT NULL UNIQUE,
    size             INTEGER NOT NULL,
    chip_id          INTEGER NOT NULL,
    project          TEXT    NOT NULL,
    version          TEXT    NOT NULL,
    security_version INTEGER NOT NULL,
    key_id           TEXT    NOT NULL,
    signed_by_server INTEGER NOT NULL,
    manifest         BLOB    NOT NULL,
    created_at       INTEGER NOT NULL
);

CREATE TABLE devices (
    id               INTEGER PRIMARY KEY,
    name             TEXT    NOT NULL UNIQUE,
    token_hash       BLOB    NOT NULL UNIQUE,
    created_at       INTEGER NOT NULL,
    last_seen        INTEGER,
    chip_id          INTEGER,
    project          TEXT,
    version          TEXT,
    sha256           TEXT,
    security_version INTEGER,
    slot             INTEGER,
    state            TEXT,
    boot_count       INTEGER
);

CREATE TABLE device_tags (
    device_id INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    tag       TEXT    NOT NULL,
    PRIMARY KEY (device_id, tag)
);
CREATE INDEX device_tags_by_tag ON device_tags (tag);

CREATE TABLE deployments (
    id         INTEGER PRIMARY KEY,
    release_id INTEGER NOT NULL REFERENCES releases (id),
    target     TEXT    NOT NULL,
    state      TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);

-- One row per device in a deployment. `wave` numbers the stages of a staged
-- rollout (0 for an immediate deployment).
CREATE TABLE assignments (
    deployment_id INTEGER NOT NULL REFERENCES deployments (id),
    device_id     INTEGER NOT NULL REFERENCES devices (id),
    wave          INTEGER NOT NULL DEFAULT 0,
    state         TEXT    NOT NULL,
    reason        TEXT,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (deployment_id, device_id)
);
CREATE INDEX assignments_by_device ON assignments (device_id, state);

CREATE TABLE events (
    id            INTEGER PRIMARY KEY,
    device_id     INTEGER NOT NULL REFERENCES devices (id),
    deployment_id INTEGER,
    kind          TEXT    NOT NULL,
    reason        TEXT,
    detail        TEXT,
    at            INTEGER NOT NULL
);
CREATE INDEX events_by_device ON events (device_id, id);

CREATE TABLE audit (
    id     INTEGER PRIMARY KEY,
    at     INTEGER NOT NULL,
    actor  TEXT    NOT NULL,
    action TEXT    NOT NULL,
    target TEXT    NOT NULL,
    detail TEXT    NOT NULL
);

CREATE TABLE admin_tokens (
    id         INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL,
    token_hash BLOB    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

CREATE TABLE enrollment_secrets (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    secret_hash BLOB    NOT NULL UNIQUE,
    tags        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);
