//! `airlift`: the command-line tool. Thin subcommands over the library crates.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `println!` that ends the program quietly when stdout's reader went away.
macro_rules! outln {
    () => { $crate::cmd::out::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cmd::out::write(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` that ends the program quietly when stdout's reader went away.
macro_rules! out {
    ($($arg:tt)*) => { $crate::cmd::out::write(format_args!($($arg)*)) };
}

mod cmd;

/// Safe over-the-air firmware updates for ESP32 fleets.
#[derive(Parser)]
#[command(name = "airlift", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect ESP-IDF application images.
    #[command(subcommand)]
    Image(cmd::image::ImageCommand),
    /// Run the update server.
    Serve(cmd::serve::ServeArgs),
    /// Sign releases offline and manage the server's firmware library.
    #[command(subcommand)]
    Release(cmd::keys::ReleaseCommand),
    /// Generate Ed25519 release signing keys.
    #[command(subcommand)]
    Keys(cmd::keys::KeysCommand),
    /// Simulate a device: the power-cut campaign.
    #[command(subcommand)]
    Sim(cmd::sim::SimCommand),
    /// Manage the devices known to the server.
    #[command(subcommand)]
    Device(cmd::device::DeviceCommand),
    /// The secrets devices enrol with, and the tags and names they grant.
    #[command(subcommand)]
    EnrollmentSecret(cmd::enrollment::EnrollmentCommand),
    /// Deploy a release to a device, a tag or all devices.
    Deploy(cmd::deploy::DeployArgs),
    /// Follow and cancel deployments.
    #[command(subcommand)]
    Deployment(cmd::deploy::DeploymentCommand),
    /// Staged rollouts: waves, soak, thresholds that pause them; rehearsals.
    #[command(subcommand)]
    Rollout(cmd::rollout::RolloutCommand),
    /// Inspect and build ESP-IDF partition tables.
    #[command(subcommand)]
    Partitions(cmd::partitions::PartitionsCommand),
    /// Inspect otadata: which OTA slot the bootloader boots.
    #[command(subcommand)]
    Otadata(cmd::otadata::OtadataCommand),
    /// Create and inspect a device's flash image (for `airlift device run`).
    #[command(subcommand)]
    Flash(cmd::flash::FlashCommand),
    /// Simulate a fleet of devices against a server.
    #[command(subcommand)]
    Fleet(cmd::fleet::FleetCommand),
    /// See Airlift work: a server, simulated devices, a good and a crashing release.
    Demo(cmd::demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Image(c) => cmd::image::run(c),
        Command::Serve(args) => cmd::serve::run(args),
        Command::Release(c) => cmd::keys::run_release(c),
        Command::Keys(c) => cmd::keys::run(c),
        Command::Sim(c) => cmd::sim::run(c),
        Command::Device(c) => cmd::device::run(c),
        Command::EnrollmentSecret(c) => cmd::enrollment::run(c),
        Command::Deploy(args) => cmd::deploy::run_deploy(args),
        Command::Deployment(c) => cmd::deploy::run(c),
        Command::Rollout(c) => cmd::rollout::run(c),
        Command::Partitions(c) => cmd::partitions::run(c),
        Command::Otadata(c) => cmd::otadata::run(c),
        Command::Flash(c) => cmd::flash::run(c),
        Command::Fleet(c) => cmd::fleet::run(c),
        Command::Demo(args) => cmd::demo::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) if cmd::out::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("airlift: {err:#}");
            ExitCode::from(2)
        }
    }
}
