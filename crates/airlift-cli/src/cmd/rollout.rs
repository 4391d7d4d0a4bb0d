//! `airlift rollout create|list|show|start|pause|resume|advance|cancel`
//! over the admin API, and `airlift rollout rehearse` (see
//! [`super::rehearse`]).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::client::{Api, ServerArgs, Table, age, field, print_json};

/// `airlift rollout` subcommands.
#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Create a staged rollout of a release and start it (unless --draft).
    Create(Box<CreateArgs>),
    /// List rollouts, newest first.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show a rollout: plan, state, progress per wave, held-back devices, history.
    Show {
        /// Rollout id.
        id: i64,
        /// Also list every device with its wave and state.
        #[arg(long)]
        devices: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Start a draft: fix its device set and open wave 1.
    Start(CommandArgs),
    /// Pause: devices not offered the release yet are not; those updating finish.
    Pause(CommandArgs),
    /// Resume a paused rollout, accepting the failures so far.
    Resume(CommandArgs),
    /// Open the next wave now, without the success threshold or the soak.
    Advance(CommandArgs),
    /// Cancel: devices that have not finished are not offered the release any more.
    Cancel(CommandArgs),
    /// Run a plan against simulated devices (a server and a fleet in this
    /// process) at chosen failure and silence rates, and print wave by wave
    /// when it would advance or pause.
    Rehearse(Box<super::rehearse::RehearseArgs>),
}

/// The id of the rollout a command acts on.
#[derive(Args, Debug)]
pub struct CommandArgs {
    /// Rollout id.
    pub id: i64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// How a rollout proceeds (shared by `create` and `rehearse`).
#[derive(Args, Debug, Clone)]
pub struct PlanArgs {
    /// Cumulative waves, counts or percentages of the devices; the last
    /// wave always takes the rest.
    #[arg(long, value_delimiter = ',', default_value = "1%,10%,50%,100%")]
    pub waves: Vec<String>,
    /// Soak time between waves once the open waves reached the success
    /// threshold (500ms, 30s, 10m, 2h, 1d).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub soak: Duration,
    /// Share of the open waves' devices that must have confirmed the new
    /// image before the next wave opens.
    #[arg(long, default_value = "95%")]
    pub success: String,
    /// Pause when this many devices failed (rolled back, failed, or silent
    /// past the deadline): a count (5) or a share of the open waves (10%).
    #[arg(long, default_value = "5%")]
    pub pause_at: String,
    /// A device offered the update that has not moved for this long counts as failed.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub deadline: Duration,
    /// At most this many devices updating at once (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub max_parallel: u64,
    /// Hold back devices that failed this release this many times (0: none).
    #[arg(long, default_value_t = 2)]
    pub penalty: u64,
}

impl PlanArgs {
    /// The plan's fields of the API's request, with these soak and deadline.
    pub fn body(&self, soak: Duration, deadline: Duration) -> Value {
        json!({"waves": self.waves, "soak_ms": millis(soak), "success_threshold": self.success,
            "failure_threshold": self.pause_at, "deadline_ms": millis(deadline),
            "max_parallel": self.max_parallel, "penalty_failures": self.penalty})
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `airlift rollout create` options.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The release: its id or SHA-256.
    pub release: String,
    /// Who gets it: `tag:T`, `devices:A,B,...`, `device:NAME` or `all`
    /// (resolved once, when the rollout starts).
    #[arg(long)]
    pub to: String,
    #[command(flatten)]
    pub plan: PlanArgs,
    /// Leave it a draft (start it with `airlift rollout start`).
    #[arg(long)]
    pub draft: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Parses `500ms`, `30s`, `10m`, `2h`, `1d`, or plain seconds (`1.5`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => f64::NAN,
    };
    number
        .parse::<f64>()
        .ok()
        .and_then(|n| Duration::try_from_secs_f64(n * scale).ok())
        .ok_or_else(|| format!("{text:?} is not a duration like 500ms, 30s, 10m, 2h or 1d"))
}

/// `3600000` ms as `1h`, `90000` as `1m30s`.
pub fn show_duration(ms: &Value) -> String {
    let Some(ms) = ms.as_u64() else {
        return "-".to_owned();
    };
    if ms < 1000 || ms % 1000 != 0 {
        return if ms < 1000 {
            format!("{ms}ms")
        } else {
            format!("{:.1}s", ms as f64 / 1000.0)
        };
    }
    let mut s = ms / 1000;
    let mut out = String::new();
    for (unit, size) in [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= size {
            out.push_str(&format!("{}{unit}", s / size));
            s %= size;
        }
    }
    if out.is_empty() { "0s".to_owned() } else { out }
}

/// The plan in one line.
pub fn plan_line(plan: &Value) -> String {
    let waves: Vec<String> = plan["waves"]
        .as_array()
        .map(|w| w.iter().map(|v| field(&json!({"v": v}), "v")).collect())
        .unwrap_or_default();
    let mut line = format!(
        "waves {}; soak {}; next wave at {} confirmed; pause at {} failed; deadline {}",
        waves.join(", "),
        show_duration(&plan["soak_ms"]),
        field(plan, "success_threshold"),
        field(plan, "failure_threshold"),
        show_duration(&plan["deadline_ms"]),
    );
    match plan["max_parallel"].as_u64() {
        Some(0) | None => {}
        Some(n) => line.push_str(&format!("; at most {n} updating at once")),
    }
    match plan["penalty_failures"].as_u64() {
        Some(0) | None => line.push_str("; no penalty box"),
        Some(n) => line.push_str(&format!("; penalty box after {n} failures")),
    }
    line
}

/// One wave's numbers: `50 devices: 44 confirmed, 6 failed (rolled_back 6)`.
pub fn wave_numbers(p: &Value) -> String {
    let mut parts = vec![format!("{} confirmed", field(p, "confirmed"))];
    if p["failures"].as_u64().unwrap_or(0) > 0 {
        let reasons: Vec<String> = p["failures_by_reason"]
            .as_object()
            .map(|r| r.iter().map(|(k, n)| format!("{k} {n}")).collect())
            .unwrap_or_default();
        parts.push(format!(
            "{} failed ({})",
            field(p, "failures"),
            reasons.join(", ")
        ));
    }
    for (key, what) in [
        ("updating", "updating"),
        ("waiting", "waiting"),
        ("skipped", "skipped"),
    ] {
        if p[key].as_u64().unwrap_or(0) > 0 {
            parts.push(format!("{} {what}", field(p, key)));
        }
    }
    format!("{} devices: {}", field(p, "devices"), parts.join(", "))
}

fn print_detail(d: &Value, devices: bool) {
    let r = &d["release"];
    let waves = d["waves"].as_array().map_or(0, Vec::len);
    let state = match d["state"].as_str() {
        Some(s @ ("running" | "paused")) => format!("{s}, wave {} of {waves} open", d["opened"]),
        Some(s) => s.to_owned(),
        None => "-".to_owned(),
    };
    outln!(
        "rollout {}: {} {} -> {} ({state}, created {} by {})",
        field(d, "id"),
        field(r, "project"),
        field(r, "version"),
        field(d, "target"),
        age(&d["created_at"]),
        field(d, "created_by"),
    );
    outln!("  plan: {}", plan_line(&d["plan"]));
    if let Some(message) = d["pause_reason"]["message"].as_str() {
        outln!("  paused: {message}");
    }
    if d["state"] == "draft" {
        outln!(
            "  draft: the device set is fixed when it starts (airlift rollout start {})",
            field(d, "id")
        );
    } else {
        outln!("  all   {}", wave_numbers(&d["total"]));
    }
    for p in d["progress"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let open = if p["open"] == true {
            "open"
        } else {
            "not open"
        };
        outln!("  wave {} ({open}): {}", field(p, "wave"), wave_numbers(p));
    }
    for h in d["held_back"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        outln!(
            "  held back (penalty box): {} failed this release {} times",
            field(h, "device"),
            field(h, "failures")
        );
    }
    let events = d["events"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let start = events.first().and_then(|e| e["at"].as_i64()).unwrap_or(0);
    outln!("  history:");
    for e in events {
        let at = (e["at"].as_i64().unwrap_or(start) - start) as f64 / 1000.0;
        let wave = match e["wave"].as_u64() {
            Some(0) | None => String::new(),
            Some(n) => format!(" (wave {n})"),
        };
        outln!(
            "    +{at:.1}s {} by {}{wave}: {}",
            field(e, "kind"),
            field(e, "actor"),
            event_summary(e)
        );
    }
    if devices {
        for a in d["assignments"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let reason = a["reason"]
                .as_str()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            outln!(
                "  {:<24} wave {:<3} {}{}",
                field(a, "device_name"),
                field(a, "wave"),
                field(a, "state"),
                reason
            );
        }
    }
}

/// What a rollout event says, in a few words.
pub fn event_summary(e: &Value) -> String {
    let d = &e["detail"];
    match e["kind"].as_str().unwrap_or("") {
        "created" => format!("release {} to {}", field(d, "release"), field(d, "target")),
        "started" => format!(
            "{} devices ({} skipped, {} held back), waves {}",
            field(d, "devices"),
            field(d, "skipped"),
            field(d, "held_back"),
            field(d, "waves")
        ),
        "paused" => d["message"].as_str().unwrap_or("paused").to_owned(),
        "resumed" => format!("{} failures accepted", field(d, "accepted_failures")),
        "soak_started" => format!(
            "{} of {} confirmed; soaking {}",
            field(d, "confirmed"),
            field(d, "devices"),
            show_duration(&d["soak_ms"])
        ),
        "wave_opened" | "advanced" => format!(
            "wave {} opened ({} of {} confirmed before)",
            field(d, "wave"),
            field(d, "confirmed"),
            field(d, "devices")
        ),
        "deadline" => format!(
            "{} device(s) silent past the {} deadline count as failed",
            field(d, "devices"),
            show_duration(&d["deadline_ms"])
        ),
        "finished" => format!(
            "{} of {} confirmed, {} failed",
            field(d, "confirmed"),
            field(d, "devices"),
            field(d, "failures")
        ),
        _ => d.to_string(),
    }
}

/// Runs an `airlift rollout` subcommand.
pub fn run(command: RolloutCommand) -> anyhow::Result<ExitCode> {
    let (path, body, json, server) = match command {
        RolloutCommand::Rehearse(args) => return super::rehearse::run(*args),
        RolloutCommand::List { json, server } => {
            let list: Value = Api::new(&server)?.get("/api/v1/rollouts")?;
            if json {
                print_json(&list)?;
            } else {
                let list = list.as_array().map(Vec::as_slice).unwrap_or_default();
                if list.is_empty() {
                    eprintln!(
                        "no rollouts yet: airlift rollout create RELEASE --to TARGET starts one"
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                let mut table =
                    Table::new(&["ID", "RELEASE", "TARGET", "STATE", "WAVES OPEN", "CREATED"])
                        .right(0)
                        .right(1);
                for r in list {
                    table.row(vec![
                        field(r, "id"),
                        field(r, "release_id"),
                        field(r, "target"),
                        field(r, "state"),
                        format!(
                            "{} of {}",
                            field(r, "opened"),
                            r["waves"].as_array().map_or(0, Vec::len)
                        ),
                        age(&r["created_at"]),
                    ]);
                }
                table.print();
            }
            return Ok(ExitCode::SUCCESS);
        }
        RolloutCommand::Show {
            id,
            devices,
            json,
            server,
        } => {
            let detail: Value = Api::new(&server)?.get(&format!("/api/v1/rollouts/{id}"))?;
            if json {
                print_json(&detail)?;
            } else {
                print_detail(&detail, devices);
            }
            return Ok(ExitCode::SUCCESS);
        }
        RolloutCommand::Create(args) => {
            let mut body = args.plan.body(args.plan.soak, args.plan.deadline);
            body["release"] = json!(args.release);
            body["target"] = json!(args.to);
            body["start"] = json!(!args.draft);
            ("/api/v1/rollouts".to_owned(), body, args.json, args.server)
        }
        RolloutCommand::Start(a) => command_path(a, "start"),
        RolloutCommand::Pause(a) => command_path(a, "pause"),
        RolloutCommand::Resume(a) => command_path(a, "resume"),
        RolloutCommand::Advance(a) => command_path(a, "advance"),
        RolloutCommand::Cancel(a) => command_path(a, "cancel"),
    };
    let detail: Value = Api::new(&server)?.post(&path, &body)?;
    if json {
        print_json(&detail)?;
    } else {
        print_detail(&detail, false);
    }
    Ok(ExitCode::SUCCESS)
}

fn command_path(args: CommandArgs, what: &str) -> (String, Value, bool, ServerArgs) {
    (
        format!("/api/v1/rollouts/{}/{what}", args.id),
        json!({}),
        args.json,
        args.server,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations_read_and_print_in_the_units_people_use() {
        let check = |text: &str, ms: Option<u64>| {
            assert_eq!(parse_duration(text).ok().map(millis), ms, "{text}");
        };
        check("500ms", Some(500));
        check("30s", Some(30_000));
        check("1.5", Some(1_500));
        check("10m", Some(600_000));
        check("2h", Some(7_200_000));
        check("1d", Some(86_400_000));
        check("ten", None);
        check("5y", None);
        check("-1s", None);
        for (ms, shown) in [
            (3_600_000, "1h"),
            (90_000, "1m30s"),
            (500, "500ms"),
            (1_500, "1.5s"),
            (0, "0ms"),
        ] {
            assert_eq!(show_duration(&json!(ms)), shown);
        }
    }
}
