//! The power-cut campaign of the client's own flash records, in the manner
//! of the engine's (`airlift_engine::sim::campaign`), for `airlift sim
//! power-cut`: for every write path of the notes and the settings, count
//! its flash operations, then for each operation cut power before it, and
//! tear it (first half done, and second half done); after each cut, read
//! the records back and check they are those before the write or after it,
//! whole (the notes' history included), then check the same write, retried,
//! completes.

use std::format;
use std::string::String;
use std::vec::Vec;

use airlift_engine::Region;
use airlift_engine::sim::campaign::PathReport;
use airlift_engine::sim::{Fault, FaultKind, SimFlash};
use airlift_protocol::{EventKind, Reason};

use crate::notes::{HISTORY_MAX, HistoryEntry, NoteStore, Notes, Outcome, Pending, Source};
use crate::records::RecordError;
use crate::settings::{Settings, SettingsStore};
use crate::text::Text;

/// A write path of the client's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordPath {
    /// An update begins: the pending update is written.
    Begin,
    /// An update ends: the result, and a history entry appended.
    Result,
    /// An update ends with the history full: the oldest entry goes.
    HistoryFull,
    /// The server withdrew the update: the pending update is forgotten.
    Withdraw,
    /// Provisioning rewrites the settings (a new server and token).
    Settings,
}

impl RecordPath {
    /// Every path.
    pub const ALL: [RecordPath; 5] = [
        RecordPath::Begin,
        RecordPath::Result,
        RecordPath::HistoryFull,
        RecordPath::Withdraw,
        RecordPath::Settings,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            RecordPath::Begin => "notes-begin",
            RecordPath::Result => "notes-result",
            RecordPath::HistoryFull => "notes-history-full",
            RecordPath::Withdraw => "notes-withdraw",
            RecordPath::Settings => "settings-write",
        }
    }
}

/// The result of one records path.
pub type RecordReport = PathReport<RecordPath>;

impl core::fmt::Display for RecordPath {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the campaign keeps the records: the last 16 KiB of Airlift's data
/// partition in its default layout (`Layout::records`).
pub const REGION: Region = Region::new(0x31_C000, 0x4000);

fn pending(n: u8) -> Pending {
    Pending {
        deployment: Some(u64::from(n)),
        sha256: [n; 32],
        version: Text::<32>::format(format_args!("{n}.0.0")).0,
        source: Source::Server,
        trials_before: u32::from(n),
    }
}

fn entry(n: u8) -> HistoryEntry {
    HistoryEntry {
        at: 1_700_000_000 + u64::from(n),
        version: Text::<32>::format(format_args!("{n}.0.0")).0,
        sha256: [n; 32],
        source: if n.is_multiple_of(2) {
            Source::Server
        } else {
            Source::Upload
        },
        deployment: n.is_multiple_of(2).then_some(u64::from(n)),
        result: EventKind::Failed,
        reason: Some(Reason::Verification),
        detail: Text::<128>::format(format_args!(
            "attempt {n}: image sha-256 differs from the one in the signed manifest"
        ))
        .0,
    }
}

/// What a path starts from and writes.
struct Case {
    before: Notes,
    history: usize,
    after: Notes,
    add: Option<HistoryEntry>,
}

fn case(path: RecordPath) -> Case {
    let failed = Some(Outcome {
        deployment: Some(3),
        kind: EventKind::Failed,
        reason: Some(Reason::Verification),
    });
    let with = |p: Option<Pending>| Notes {
        pending: p,
        last_result: failed,
    };
    match path {
        RecordPath::Begin => Case {
            before: with(None),
            history: 3,
            after: with(Some(pending(7))),
            add: None,
        },
        RecordPath::Result | RecordPath::HistoryFull => Case {
            before: with(Some(pending(7))),
            history: if path == RecordPath::Result {
                3
            } else {
                HISTORY_MAX
            },
            after: Notes {
                pending: None,
                last_result: Some(Outcome {
                    deployment: Some(7),
                    kind: EventKind::RolledBack,
                    reason: Some(Reason::BootFailed),
                }),
            },
            add: Some(entry(100)),
        },
        // The settings are not notes: `run_path` writes them itself.
        RecordPath::Withdraw | RecordPath::Settings => Case {
            before: with(Some(pending(7))),
            history: 3,
            after: with(None),
            add: None,
        },
    }
}

type State = (Notes, Vec<HistoryEntry>);

fn read(store: &NoteStore, flash: &mut SimFlash) -> Result<State, String> {
    let notes = store.load(flash).map_err(|e| format!("{e}"))?;
    let mut history = Vec::new();
    store
        .history(flash, |h| history.push(h.clone()))
        .map_err(|e| format!("{e}"))?;
    Ok((notes, history))
}

/// Runs every path.
pub fn run() -> Result<Vec<RecordReport>, String> {
    RecordPath::ALL.iter().map(|&p| run_path(p)).collect()
}

/// Runs one path.
pub fn run_path(path: RecordPath) -> Result<RecordReport, String> {
    // The flash up to the end of the records; nothing else is written.
    let mut pre = SimFlash::new(REGION.end() as usize);
    if path == RecordPath::Settings {
        let store = SettingsStore::new(REGION).map_err(|e| format!("{e}"))?;
        let settings = |n: u8| Settings {
            wifi_ssid: Text::<32>::format(format_args!("lab-{n}")).0,
            wifi_password: Text::<64>::format(format_args!("correct horse {n}")).0,
            server: Text::<255>::format(format_args!("https://updates-{n}.example.com")).0,
            token: Text::<128>::format(format_args!("{}", "t".repeat(100 + usize::from(n)))).0,
            max_attempts: n,
            tls_pin: Some([n; 32]),
            require_https: n.is_multiple_of(2),
            name: Text::<64>::format(format_args!("board-{n}")).0,
            page_password: Some([n; 32]),
            time_server: Text::<64>::format(format_args!("ntp-{n}.example.com")).0,
        };
        store
            .save(&mut pre, &settings(1))
            .map_err(|e| format!("setup: {e}"))?;
        let after = settings(2);
        return cut_everywhere(
            path,
            &pre,
            |flash| store.save(flash, &after),
            |flash| store.load(flash).map_err(|e| format!("{e}")),
            |got| (*got != Some(after.clone())).then(|| format!("{got:?}")),
        );
    }
    let store = NoteStore::new(REGION).map_err(|e| format!("{e}"))?;
    let c = case(path);
    // The history, one save per entry, as a device would have written it.
    for n in 0..c.history {
        let n = u8::try_from(n).map_err(|_| "history too long")?;
        store
            .save(&mut pre, &c.before, Some(&entry(n)))
            .map_err(|e| format!("setup: {e}"))?;
    }
    store
        .save(&mut pre, &c.before, None)
        .map_err(|e| format!("setup: {e}"))?;
    let before = read(&store, &mut pre)?;
    let expected_len = (c.history + usize::from(c.add.is_some())).min(HISTORY_MAX);
    let newest = c.add.clone().or(before.1.last().cloned());
    cut_everywhere(
        path,
        &pre,
        |flash| store.save(flash, &c.after, c.add.as_ref()),
        |flash| read(&store, flash),
        |got| {
            (got.0 != c.after || got.1.len() != expected_len || got.1.last() != newest.as_ref())
                .then(|| format!("{got:?}"))
        },
    )
}

/// The write on `pre` without a cut (checked by `wrong`), then cut at every
/// one of its operations: what `read` finds after each cut must be what it
/// found before the write or after it, and the write, retried, completes.
fn cut_everywhere<S: PartialEq + core::fmt::Debug>(
    path: RecordPath,
    pre: &SimFlash,
    write: impl Fn(&mut SimFlash) -> Result<(), RecordError>,
    read: impl Fn(&mut SimFlash) -> Result<S, String>,
    wrong: impl Fn(&S) -> Option<String>,
) -> Result<RecordReport, String> {
    let mut start = pre.clone();
    let before = read(&mut start)?;
    let mut whole = pre.clone();
    whole.arm();
    write(&mut whole).map_err(|e| format!("{path} without a power cut failed: {e}"))?;
    let ops = whole.ops();
    let after = read(&mut whole)?;
    let mut report = RecordReport {
        path,
        ops,
        cut_points: 0,
        torn_points: 0,
        failures: 0,
        examples: Vec::new(),
    };
    if let Some(got) = wrong(&after) {
        report.failures += 1;
        report
            .examples
            .push(format!("no cut: the records read back are {got}"));
    }
    for k in 0..ops {
        for kind in [FaultKind::CutBefore, FaultKind::Tear, FaultKind::TearLate] {
            match kind {
                FaultKind::CutBefore => report.cut_points += 1,
                _ => report.torn_points += 1,
            }
            let mut flash = pre.clone();
            flash.set_fault_at_arm(Some(Fault { op: k, kind }));
            flash.arm();
            let result = write(&mut flash);
            let mut problem = None;
            if !flash.is_dead() {
                problem = Some(format!("the cut was never reached ({result:?})"));
            } else {
                flash.power_cycle();
                match read(&mut flash) {
                    Ok(got) if got == before || got == after => {
                        // The write, retried, completes.
                        let retried = if got == after {
                            Ok(())
                        } else {
                            write(&mut flash)
                        };
                        match (retried, read(&mut flash)) {
                            (Ok(()), Ok(again)) if again == after => {}
                            (r, again) => {
                                problem = Some(format!("the retried write gave {r:?}, {again:?}"))
                            }
                        }
                    }
                    Ok(got) => problem = Some(format!("the records read back are {got:?}")),
                    Err(e) => problem = Some(format!("the records cannot be read: {e}")),
                }
            }
            if let Some(p) = problem {
                report.failures += 1;
                if report.examples.len() < 5 {
                    report.examples.push(format!("{kind:?} op {k}: {p}"));
                }
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod region_tests {
    use super::REGION;

    #[test]
    fn the_campaigns_records_are_where_the_default_layout_puts_them() {
        let layout =
            airlift_engine::sim::layout_of(&airlift_format::partition::AIRLIFT_DEFAULT).unwrap();
        assert_eq!(layout.records, Some(REGION));
    }
}
