-- Staged rollouts (issue 14). A rollout is a plan over one deployment: when
-- it starts it creates the deployment and one assignment per device of its
-- target, each with its wave; assignments of waves not opened yet wait in
-- state `waiting`, which no device is offered. Everything the scheduler
-- decides from lives in these rows, so a restarted server (or another
-- instance) continues where the last one stopped.

CREATE TABLE rollouts (
    id                    INTEGER PRIMARY KEY,
    release_id            INTEGER NOT NULL REFERENCES releases (id),
    -- Set when the rollout starts; its assignments carry the waves.
    deployment_id         INTEGER UNIQUE REFERENCES deployments (id),
    target                TEXT    NOT NULL,
    -- The plan as JSON (waves, soak, thresholds, deadline, parallelism).
    plan                  TEXT    NOT NULL,
    -- draft, running, paused, finished, cancelled.
    state                 TEXT    NOT NULL,
    -- Cumulative device counts of the waves, fixed at start (JSON array).
    waves                 TEXT    NOT NULL DEFAULT '[]',
    -- Waves opened so far (0 before the start).
    opened                INTEGER NOT NULL DEFAULT 0,
    -- When the open waves reached the success threshold: the soak's start.
    succeeded_at          INTEGER,
    -- Failures an operator accepted by resuming; the threshold counts the rest.
    acknowledged_failures INTEGER NOT NULL DEFAULT 0,
    -- Who or which threshold paused it, and the numbers (JSON).
    paused_by             TEXT,
    pause_reason          TEXT,
    created_by            TEXT    NOT NULL,
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL
);
CREATE INDEX rollouts_by_state ON rollouts (state);

-- Every transition of a rollout (and what the scheduler did on its own).
CREATE TABLE rollout_events (
    id         INTEGER PRIMARY KEY,
    rollout_id INTEGER NOT NULL REFERENCES rollouts (id),
    at         INTEGER NOT NULL,
    actor      TEXT    NOT NULL,
    kind       TEXT    NOT NULL,
    state      TEXT    NOT NULL,
    wave       INTEGER NOT NULL,
    detail     TEXT    NOT NULL
);
CREATE INDEX rollout_events_by_rollout ON rollout_events (rollout_id, id);

-- Work that one server instance of a fleet does at a time (the rollout
-- scheduler): whoever holds the unexpired lease.
CREATE TABLE leases (
    name       TEXT    PRIMARY KEY,
    holder     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
);

CREATE INDEX assignments_by_deployment_state ON assignments (deployment_id, state, wave);
