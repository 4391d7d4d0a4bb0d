//! One module per top-level subcommand.

pub mod agent;
pub mod client;
pub mod demo;
pub mod deploy;
pub mod device;
pub mod enrollment;
pub mod flash;
pub mod fleet;
pub mod image;
pub mod keys;
pub mod otadata;
pub mod out;
pub mod partitions;
pub mod rehearse;
pub mod release;
pub mod rollout;
pub mod serve;
pub mod sim;
