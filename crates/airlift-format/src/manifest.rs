//! Airlift's signed update manifest: canonical encoding and Ed25519 signature.
