//! One module per top-level subcommand.

pub mod image;
pub mod otadata;
pub mod partitions;
