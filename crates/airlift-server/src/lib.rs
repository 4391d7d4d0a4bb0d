//! Airlift update server.
