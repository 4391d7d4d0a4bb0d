//! What the device remembers across resets about its updates: the update
//! in progress or on trial ([`Pending`]), the last result (repeated at every
//! check-in) and a short history (the device page shows it).
//!
//! Kept as [`records`](crate::records) in the first two sectors of the
//! client's region at the end of Airlift's data partition
//! ([`airlift_engine::Layout::records`]), so every
//! save is power-safe: a cut leaves the previous notes. Bounded: the
//! pending update and the last result live in RAM (under 100 bytes), the
//! history only on flash, at most [`HISTORY_MAX`] entries, read one at a
//! time and copied forward by each save.

use airlift_engine::Region;
use airlift_protocol::{DETAIL_MAX, EventKind, Label, Reason};
use embedded_storage::nor_flash::NorFlash;

use crate::Clock;
use crate::records::{MAX_ITEM, RecordError, RecordPair};
use crate::time;

/// Most history entries kept (the oldest goes first).
pub const HISTORY_MAX: usize = 12;

const KIND_NOTES: u8 = 1;
const TAG_PENDING: u8 = 1;
const TAG_LAST: u8 = 2;
const TAG_HISTORY: u8 = 3;

/// Where an update came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Assigned by the server (a deployment).
    Server,
    /// Uploaded on the device page.
    Upload,
    /// Pulled from a URL given on the device page.
    Pull,
}

impl Source {
    /// `server`, `upload` or `pull`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Server => "server",
            Source::Upload => "upload",
            Source::Pull => "pull",
        }
    }

    fn code(self) -> u8 {
        match self {
            Source::Server => 0,
            Source::Upload => 1,
            Source::Pull => 2,
        }
    }

    fn from_code(c: u8) -> Source {
        match c {
            1 => Source::Upload,
            2 => Source::Pull,
            _ => Source::Server,
        }
    }
}

/// An update in progress, or on trial, remembered across resets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The deployment it belongs to (`None` for a local upload).
    pub deployment: Option<u64>,
    /// SHA-256 of the new image.
    pub sha256: [u8; 32],
    /// Version string of the new image.
    pub version: Label,
    /// Where it came from.
    pub source: Source,
    /// Trial boots of this image in the boot log before this attempt (so an
    /// image that was rolled back once is not taken as rolled back again).
    pub trials_before: u32,
}

/// The outcome of the last update attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The deployment, when the server assigned the update.
    pub deployment: Option<u64>,
    /// `confirmed`, `rolled_back` or `failed`.
    pub kind: EventKind,
    /// Why, for failures and rollbacks.
    pub reason: Option<Reason>,
}

/// One line of the update history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// When it ended: Unix seconds, or undated ([`time::stamp`]); read it
    /// with [`HistoryEntry::unix_secs`].
    pub at: u64,
    /// Version of the image the attempt installed.
    pub version: Label,
    /// Its SHA-256.
    pub sha256: [u8; 32],
    /// Where it came from.
    pub source: Source,
    /// The deployment, when there was one.
    pub deployment: Option<u64>,
    /// `confirmed`, `rolled_back` or `failed`.
    pub result: EventKind,
    /// Why, for failures and rollbacks.
    pub reason: Option<Reason>,
    /// Human-readable detail.
    pub detail: heapless::String<DETAIL_MAX>,
}

impl HistoryEntry {
    /// When it ended, `None` when that is not known (made before the device
    /// knew the time, and never dated).
    pub fn unix_secs(&self) -> Option<u64> {
        time::wall_secs(self.at)
    }
}

/// The notes kept in RAM while the device runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notes {
    /// The update being installed or on trial.
    pub pending: Option<Pending>,
    /// The last result, repeated at check-ins.
    pub last_result: Option<Outcome>,
}

// On flash a kind or a reason is its index in the protocol's list of them.

fn kind_code(k: EventKind) -> u8 {
    EventKind::ALL.iter().position(|x| *x == k).unwrap_or(7) as u8
}

fn kind_of(c: u8) -> EventKind {
    EventKind::ALL
        .get(usize::from(c))
        .copied()
        .unwrap_or(EventKind::Failed)
}

fn reason_code(r: Option<Reason>) -> u8 {
    r.and_then(|r| Reason::ALL.iter().position(|x| *x == r))
        .map_or(0xFF, |i| i as u8)
}

fn reason_of(c: u8) -> Option<Reason> {
    Reason::ALL.get(usize::from(c)).copied()
}

/// Appends and reads fields of an item.
struct Item {
    buf: [u8; MAX_ITEM],
    len: usize,
}

impl Item {
    fn new() -> Item {
        Item {
            buf: [0; MAX_ITEM],
            len: 0,
        }
    }

    fn put(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(MAX_ITEM - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn put_deployment(&mut self, d: Option<u64>) {
        self.put(&[u8::from(d.is_some())]);
        self.put(&d.unwrap_or(0).to_le_bytes());
    }

    fn put_str(&mut self, s: &str) {
        let s = &s.as_bytes()[..s.len().min(255)];
        self.put(&[s.len() as u8]);
        self.put(s);
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Reads fields from an item's payload; a short payload reads as zeros.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }

    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }

    fn deployment(&mut self) -> Option<u64> {
        let present = self.u8() != 0;
        let v = u64::from_le_bytes(self.take::<8>());
        present.then_some(v)
    }

    fn string<const N: usize>(&mut self) -> heapless::String<N> {
        let len = usize::from(self.u8()).min(self.0.len());
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        crate::text::Text::<N>::from_str_cut(core::str::from_utf8(s).unwrap_or("")).0
    }
}

fn encode_pending(p: &Pending) -> Item {
    let mut i = Item::new();
    i.put_deployment(p.deployment);
    i.put(&p.sha256);
    i.put(&[p.source.code()]);
    i.put(&p.trials_before.to_le_bytes());
    i.put_str(&p.version);
    i
}

fn decode_pending(b: &[u8]) -> Pending {
    let mut f = Fields(b);
    Pending {
        deployment: f.deployment(),
        sha256: f.take(),
        source: Source::from_code(f.u8()),
        trials_before: u32::from_le_bytes(f.take()),
        version: f.string(),
    }
}

fn encode_outcome(o: &Outcome) -> Item {
    let mut i = Item::new();
    i.put_deployment(o.deployment);
    i.put(&[kind_code(o.kind), reason_code(o.reason)]);
    i
}

fn decode_outcome(b: &[u8]) -> Outcome {
    let mut f = Fields(b);
    Outcome {
        deployment: f.deployment(),
        kind: kind_of(f.u8()),
        reason: reason_of(f.u8()),
    }
}

fn encode_history(h: &HistoryEntry) -> Item {
    let mut i = Item::new();
    i.put(&h.at.to_le_bytes());
    i.put_deployment(h.deployment);
    i.put(&h.sha256);
    i.put(&[h.source.code(), kind_code(h.result), reason_code(h.reason)]);
    i.put_str(&h.version);
    i.put_str(&h.detail);
    i
}

fn decode_history(b: &[u8]) -> HistoryEntry {
    let mut f = Fields(b);
    HistoryEntry {
        at: u64::from_le_bytes(f.take()),
        deployment: f.deployment(),
        sha256: f.take(),
        source: Source::from_code(f.u8()),
        result: kind_of(f.u8()),
        reason: reason_of(f.u8()),
        version: f.string(),
        detail: f.string(),
    }
}

/// The notes' place on flash: the first two sectors of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoteStore {
    pair: RecordPair,
}

impl NoteStore {
    /// Notes kept at the start of `region` (two sectors).
    pub fn new(region: Region) -> Result<NoteStore, RecordError> {
        Ok(NoteStore {
            pair: RecordPair::new(region, KIND_NOTES)?,
        })
    }

    /// Reads the newest intact notes (empty notes when there are none).
    pub fn load<F: NorFlash>(&self, flash: &mut F) -> Result<Notes, RecordError> {
        let mut notes = Notes::default();
        let Some(copy) = self.pair.newest(flash)? else {
            return Ok(notes);
        };
        let (mut at, mut buf) = (0, [0u8; 2 + MAX_ITEM]);
        while let Some((tag, payload)) = self.pair.next_item(flash, copy, &mut at, &mut buf)? {
            match tag {
                TAG_PENDING => notes.pending = Some(decode_pending(payload)),
                TAG_LAST => notes.last_result = Some(decode_outcome(payload)),
                _ => {}
            }
        }
        Ok(notes)
    }

    /// Calls `f` with every history entry, oldest first.
    pub fn history<F: NorFlash>(
        &self,
        flash: &mut F,
        mut f: impl FnMut(&HistoryEntry),
    ) -> Result<(), RecordError> {
        let Some(copy) = self.pair.newest(flash)? else {
            return Ok(());
        };
        let (mut at, mut buf) = (0, [0u8; 2 + MAX_ITEM]);
        while let Some((tag, payload)) = self.pair.next_item(flash, copy, &mut at, &mut buf)? {
            if tag == TAG_HISTORY {
                f(&decode_history(payload));
            }
        }
        Ok(())
    }

    /// Writes `notes` as the next copy, with the history of the current
    /// copy and `add` after it (the oldest entries dropped beyond
    /// [`HISTORY_MAX`]). One sector erase and a few programs; a power cut
    /// at any point leaves the previous copy in charge.
    pub fn save<F: NorFlash>(
        &self,
        flash: &mut F,
        notes: &Notes,
        add: Option<&HistoryEntry>,
    ) -> Result<(), RecordError> {
        self.write(flash, notes, add, None)
    }

    /// Writes `notes` as the next copy with the newest `newest` history
    /// entries, when undated, dated by [`time::date`] at `now` (a clock
    /// that knows the time). Power-safe like [`NoteStore::save`].
    pub fn redate<F: NorFlash>(
        &self,
        flash: &mut F,
        notes: &Notes,
        newest: usize,
        now: Clock,
    ) -> Result<(), RecordError> {
        self.write(flash, notes, None, Some((newest, now)))
    }

    fn write<F: NorFlash>(
        &self,
        flash: &mut F,
        notes: &Notes,
        add: Option<&HistoryEntry>,
        redate: Option<(usize, Clock)>,
    ) -> Result<(), RecordError> {
        let current = self.pair.newest(flash)?;
        let mut kept = 0usize;
        if let Some(copy) = current {
            let (mut at, mut buf) = (0, [0u8; 2 + MAX_ITEM]);
            while let Some((tag, _)) = self.pair.next_item(flash, copy, &mut at, &mut buf)? {
                kept += usize::from(tag == TAG_HISTORY);
            }
        }
        let total = kept + usize::from(add.is_some());
        let mut skip = total.saturating_sub(HISTORY_MAX);
        // Entries of the current copy from this index on are redated.
        let redate_from = redate.map(|(newest, now)| (kept.saturating_sub(newest), now));
        let mut w = self.pair.begin(flash, current)?;
        if let Some(p) = &notes.pending {
            w.item(flash, TAG_PENDING, encode_pending(p).bytes())?;
        }
        if let Some(o) = &notes.last_result {
            w.item(flash, TAG_LAST, encode_outcome(o).bytes())?;
        }
        if let Some(copy) = current {
            let (mut at, mut buf) = (0, [0u8; 2 + MAX_ITEM]);
            let mut index = 0usize;
            loop {
                let len = match self.pair.next_item(flash, copy, &mut at, &mut buf)? {
                    Some((TAG_HISTORY, payload)) => payload.len(),
                    Some(_) => continue,
                    None => break,
                };
                index += 1;
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                let item = &mut buf[2..2 + len];
                if let Some((from, now)) = redate_from
                    && index > from
                    && let Some(stored) = item.get_mut(..8)
                {
                    let mut raw = [0u8; 8];
                    raw.copy_from_slice(stored);
                    if let Some(secs) = time::date(u64::from_le_bytes(raw), now) {
                        stored.copy_from_slice(&secs.to_le_bytes());
                    }
                }
                w.item(flash, TAG_HISTORY, item)?;
            }
        }
        if let Some(h) = add
            && skip == 0
        {
            w.item(flash, TAG_HISTORY, encode_history(h).bytes())?;
        }
        w.commit(flash)
    }
}
