//! `airlift`: the command-line tool. Thin subcommands over the library crates.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Image(c) => cmd::image::run(c),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("airlift: {err:#}");
            ExitCode::from(2)
        }
    }
}
