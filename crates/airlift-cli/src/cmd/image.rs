//! `airlift image ...`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

/// `airlift image` subcommands.
#[derive(Subcommand)]
pub enum ImageCommand {
    /// Print an image's header, segments, checksum, digest and app descriptor.
    Inspect {
        /// The `.bin` file.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an `airlift image` subcommand.
pub fn run(command: ImageCommand) -> anyhow::Result<ExitCode> {
    match command {
        ImageCommand::Inspect { file, json } => {
            let _ = (file, json);
            anyhow::bail!("image inspect is not built yet")
        }
    }
}
