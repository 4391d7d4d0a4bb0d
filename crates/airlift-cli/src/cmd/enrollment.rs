//! `airlift enrollment-secret create|list|delete`: the secrets devices
//! enrol with, and what each grants them (its tags, the names it allows).

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};

use super::client::{Api, ServerArgs, field, print_json, print_list, strings};

/// `airlift enrollment-secret` subcommands.
#[derive(Subcommand, Debug)]
pub enum EnrollmentCommand {
    /// Create a secret (its value is printed once): every device enrolling
    /// with it gets its tags, and only a name its pattern allows.
    Create {
        /// Name of the secret (e.g. the production batch).
        name: String,
        /// A tag it grants (repeat for several); a device may ask for no other.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// The names devices may enrol with, `*` matching any run of
        /// characters (e.g. 'roof-*') [default: any name].
        #[arg(long)]
        name_pattern: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List secrets and what each grants (never their values).
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete a secret: no device enrols with it any more (devices enrolled
    /// with it keep their tokens).
    Delete {
        /// Name of the secret.
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// "tags roof, eu; names roof-*".
fn grants(secret: &Value) -> String {
    let tags = strings(&secret["tags"]);
    let tags = if tags.is_empty() {
        "no tag".to_owned()
    } else {
        format!("tags {}", tags.join(", "))
    };
    match secret["name_pattern"].as_str() {
        Some(pattern) => format!("{tags}; names {pattern}"),
        None => format!("{tags}; any name"),
    }
}

/// Runs an `airlift enrollment-secret` subcommand.
pub fn run(command: EnrollmentCommand) -> anyhow::Result<ExitCode> {
    match command {
        EnrollmentCommand::Create {
            name,
            tags,
            name_pattern,
            json,
            server,
        } => {
            let body = json!({"name": name, "tags": tags, "name_pattern": name_pattern});
            let answer: Value = Api::new(&server)?.post("/api/v1/enrollment-secrets", &body)?;
            if json {
                print_json(&answer)?;
            } else {
                outln!(
                    "enrolment secret {name} created ({}); its value (shown once):",
                    grants(&answer)
                );
                outln!("{}", field(&answer, "value"));
            }
        }
        EnrollmentCommand::List { json, server } => {
            let secrets: Value = Api::new(&server)?.get("/api/v1/enrollment-secrets")?;
            print_list(
                &secrets,
                json,
                "no enrolment secrets yet: airlift enrollment-secret create NAME --tag TAG makes one",
                &["NAME", "GRANTS"],
                |secret| vec![field(secret, "name"), grants(secret)],
            )?;
        }
        EnrollmentCommand::Delete { name, server } => {
            Api::new(&server)?.delete(&format!("/api/v1/enrollment-secrets/{name}"))?;
            outln!("enrolment secret {name} deleted: no device enrols with it any more");
        }
    }
    Ok(ExitCode::SUCCESS)
}
