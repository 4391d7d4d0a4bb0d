//! Airlift device agent.
