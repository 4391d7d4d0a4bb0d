-- Airlift server schema, version 2: the dashboard's sessions and the indexes
-- behind its views. Forward-only, like every migration.

-- A signed-in dashboard: the cookie's value is stored as its SHA-256, like
-- every token. A session ends at `expires_at`, at sign-out, or when its
-- admin token is deleted.
CREATE TABLE sessions (
    token_hash     BLOB    PRIMARY KEY,
    admin_token_id INTEGER NOT NULL REFERENCES admin_tokens (id) ON DELETE CASCADE,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX sessions_by_expiry ON sessions (expires_at);

-- Deployments in progress: the unfinished assignments, by deployment.
-- Partial, so an assignment costs index upkeep only while it is open.
CREATE INDEX assignments_open ON assignments (deployment_id)
    WHERE state IN ('pending', 'offered', 'downloading', 'installed', 'booted');

-- Recent failures and rollbacks, newest first.
CREATE INDEX assignments_problems ON assignments (updated_at)
    WHERE state IN ('failed', 'rolled_back');
