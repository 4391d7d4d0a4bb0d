//! The power-cut campaign of the client's own flash records, in the manner
//! of the engine's (`airlift_engine::sim::campaign`), for `airlift sim
//! power-cut`: for every write path of the notes, count its flash
//! operations, then for each operation cut power before it, and tear it
//! (first half done, and second half done); after each cut, read the notes
//! back and check they are the notes before the write or after it, whole
//! (history included), then check the same write, retried, completes.

use std::format;
use std::string::String;
use std::vec::Vec;

use airlift_engine::Region;
use airlift_engine::sim::{Fault, FaultKind, SimFlash};
use airlift_protocol::{EventKind, Reason};

use crate::notes::{HISTORY_MAX, HistoryEntry, NoteStore, Notes, Outcome, Pending, Source};
use crate::text::Text;

/// A write path of the notes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotesPath {
    /// An update begins: the pending update is written.
    Begin,
    /// An update ends: the result, and a history entry appended.
    Result,
    /// An update ends with the history full: the oldest entry goes.
    HistoryFull,
    /// The server withdrew the update: the pending update is forgotten.
    Withdraw,
}

impl NotesPath {
    /// Every path.
    pub const ALL: [NotesPath; 4] = [
        NotesPath::Begin,
        NotesPath::Result,
        NotesPath::HistoryFull,
        NotesPath::Withdraw,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            NotesPath::Begin => "notes-begin",
            NotesPath::Result => "notes-result",
            NotesPath::HistoryFull => "notes-history-full",
            NotesPath::Withdraw => "notes-withdraw",
        }
    }
}

/// The result of one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotesReport {
    /// The path.
    pub path: NotesPath,
    /// Flash operations (erase or program) on the path.
    pub ops: u64,
    /// Cut-before points tried (one per operation).
    pub cut_points: u64,
    /// Torn points tried (two per operation).
    pub torn_points: u64,
    /// Points after which a check failed.
    pub failures: u64,
    /// The first few failures, explained.
    pub examples: Vec<String>,
}

/// Where the campaign keeps the notes: the `nvs` partition of Airlift's
/// default layout.
pub const REGION: Region = Region::new(0x9000, 0x4000);

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

fn case(path: NotesPath) -> Case {
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
        NotesPath::Begin => Case {
            before: with(None),
            history: 3,
            after: with(Some(pending(7))),
            add: None,
        },
        NotesPath::Result | NotesPath::HistoryFull => Case {
            before: with(Some(pending(7))),
            history: if path == NotesPath::Result {
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
        NotesPath::Withdraw => Case {
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

/// Runs every notes path.
pub fn run() -> Result<Vec<NotesReport>, String> {
    NotesPath::ALL.iter().map(|&p| run_path(p)).collect()
}

/// Runs one notes path.
pub fn run_path(path: NotesPath) -> Result<NotesReport, String> {
    let store = NoteStore::new(REGION).map_err(|e| format!("{e}"))?;
    let c = case(path);
    let mut pre = SimFlash::new(0x10000);
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
    let mut whole = pre.clone();
    whole.arm();
    store
        .save(&mut whole, &c.after, c.add.as_ref())
        .map_err(|e| format!("{} without a power cut failed: {e}", path.name()))?;
    let ops = whole.ops();
    let after = read(&store, &mut whole)?;
    let mut report = NotesReport {
        path,
        ops,
        cut_points: 0,
        torn_points: 0,
        failures: 0,
        examples: Vec::new(),
    };
    let expected_len = (c.history + usize::from(c.add.is_some())).min(HISTORY_MAX);
    if after.0 != c.after
        || after.1.len() != expected_len
        || after.1.last() != c.add.as_ref().or(before.1.last())
    {
        report.failures += 1;
        report
            .examples
            .push(format!("no cut: the notes read back are {after:?}"));
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
            let result = store.save(&mut flash, &c.after, c.add.as_ref());
            let mut problem = None;
            if !flash.is_dead() {
                problem = Some(format!("the cut was never reached ({result:?})"));
            } else {
                flash.power_cycle();
                match read(&store, &mut flash) {
                    Ok(got) if got == before || got == after => {
                        // The write, retried, completes.
                        let retried = if got == after {
                            Ok(())
                        } else {
                            store.save(&mut flash, &c.after, c.add.as_ref())
                        };
                        match (retried, read(&store, &mut flash)) {
                            (Ok(()), Ok(again)) if again == after => {}
                            (r, again) => {
                                problem = Some(format!("the retried write gave {r:?}, {again:?}"))
                            }
                        }
                    }
                    Ok(got) => problem = Some(format!("the notes read back are {got:?}")),
                    Err(e) => problem = Some(format!("the notes cannot be read: {e}")),
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
