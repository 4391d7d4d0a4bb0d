-- Airlift server schema for PostgreSQL, version 1: what SQLite reaches
-- with its migrations 0001 to 0004, in PostgreSQL's types. Migrations are
-- forward-only: never edit a released migration, add a new file instead.
-- Timestamps: Unix milliseconds. Several server instances share one such
-- database; see store/sql.rs for how they keep out of each other's way.

CREATE TABLE releases (
    id               BIGSERIAL PRIMARY KEY,
    sha256           TEXT    NOT NULL UNIQUE,
    size             BIGINT  NOT NULL,
    chip_id          BIGINT  NOT NULL,
    project          TEXT    NOT NULL,
    version          TEXT    NOT NULL,
    security_version BIGINT  NOT NULL,
    key_id           TEXT    NOT NULL,
    signed_by_server BOOLEAN NOT NULL,
    manifest         BYTEA   NOT NULL,
    created_at       BIGINT  NOT NULL
);

CREATE TABLE devices (
    id               BIGSERIAL PRIMARY KEY,
    name             TEXT   NOT NULL UNIQUE,
    token_hash       BYTEA  NOT NULL UNIQUE,
    created_at       BIGINT NOT NULL,
    last_seen        BIGINT,
    chip_id          BIGINT,
    project          TEXT,
    version          TEXT,
    sha256           TEXT,
    security_version BIGINT,
    slot             BIGINT,
    state            TEXT,
    boot_count       BIGINT
);
CREATE INDEX devices_by_last_seen ON devices (last_seen);

CREATE TABLE device_tags (
    device_id BIGINT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    tag       TEXT   NOT NULL,
    PRIMARY KEY (device_id, tag)
);
CREATE INDEX device_tags_by_tag ON device_tags (tag);

CREATE TABLE deployments (
    id         BIGSERIAL PRIMARY KEY,
    release_id BIGINT NOT NULL REFERENCES releases (id),
    target     TEXT   NOT NULL,
    state      TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);

-- One row per device in a deployment; `wave` numbers a staged rollout's
-- stages (0 for an immediate deployment).
CREATE TABLE assignments (
    deployment_id BIGINT NOT NULL REFERENCES deployments (id),
    device_id     BIGINT NOT NULL REFERENCES devices (id),
    wave          BIGINT NOT NULL DEFAULT 0,
    state         TEXT   NOT NULL,
    reason        TEXT,
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (deployment_id, device_id)
);
CREATE INDEX assignments_by_device ON assignments (device_id, state);
CREATE INDEX assignments_by_deployment_state ON assignments (deployment_id, state, wave);
CREATE INDEX assignments_open ON assignments (deployment_id)
    WHERE state IN ('pending', 'offered', 'downloading', 'installed', 'booted');
CREATE INDEX assignments_problems ON assignments (updated_at)
    WHERE state IN ('failed', 'rolled_back');

CREATE TABLE events (
    id            BIGSERIAL PRIMARY KEY,
    device_id     BIGINT NOT NULL REFERENCES devices (id),
    deployment_id BIGINT,
    kind          TEXT   NOT NULL,
    reason        TEXT,
    detail        TEXT,
    at            BIGINT NOT NULL
);
CREATE INDEX events_by_device ON events (device_id, id);

CREATE TABLE audit (
    id     BIGSERIAL PRIMARY KEY,
    at     BIGINT NOT NULL,
    actor  TEXT   NOT NULL,
    action TEXT   NOT NULL,
    target TEXT   NOT NULL,
    detail TEXT   NOT NULL
);

CREATE TABLE admin_tokens (
    id         BIGSERIAL PRIMARY KEY,
    name       TEXT   NOT NULL,
    token_hash BYTEA  NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE enrollment_secrets (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT   NOT NULL UNIQUE,
    secret_hash BYTEA  NOT NULL UNIQUE,
    tags        TEXT   NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE sessions (
    token_hash     BYTEA  PRIMARY KEY,
    admin_token_id BIGINT NOT NULL REFERENCES admin_tokens (id) ON DELETE CASCADE,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL
);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);

CREATE TABLE rollouts (
    id                    BIGSERIAL PRIMARY KEY,
    release_id            BIGINT NOT NULL REFERENCES releases (id),
    deployment_id         BIGINT UNIQUE REFERENCES deployments (id),
    target                TEXT   NOT NULL,
    plan                  TEXT   NOT NULL,
    state                 TEXT   NOT NULL,
    waves                 TEXT   NOT NULL DEFAULT '[]',
    opened                BIGINT NOT NULL DEFAULT 0,
    succeeded_at          BIGINT,
    acknowledged_failures BIGINT NOT NULL DEFAULT 0,
    paused_by             TEXT,
    pause_reason          TEXT,
    created_by            TEXT   NOT NULL,
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL
);
CREATE INDEX rollouts_by_state ON rollouts (state);

CREATE TABLE rollout_events (
    id         BIGSERIAL PRIMARY KEY,
    rollout_id BIGINT NOT NULL REFERENCES rollouts (id),
    at         BIGINT NOT NULL,
    actor      TEXT   NOT NULL,
    kind       TEXT   NOT NULL,
    state      TEXT   NOT NULL,
    wave       BIGINT NOT NULL,
    detail     TEXT   NOT NULL
);
CREATE INDEX rollout_events_by_rollout ON rollout_events (rollout_id, id);

-- Work one instance of the fleet's servers does at a time (the rollout
-- scheduler): whoever holds the unexpired lease.
CREATE TABLE leases (
    name       TEXT   PRIMARY KEY,
    holder     TEXT   NOT NULL,
    expires_at BIGINT NOT NULL
);

-- Settings every instance shares (the release-signing key when no key file
-- is configured).
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
