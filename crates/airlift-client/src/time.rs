//! Wall-clock time on a device that learns it only once it is online.
//!
//! A chip starts without the time: its boot guard logs the boot, and an
//! update that rolled back is settled, before the network is up. Those
//! records are written *undated* and dated once the time is known
//! ([`crate::Client::time_known`]):
//!
//! * the boot record by a boot-time record the engine applies to it
//!   ([`airlift_engine::Device::date_boot`]);
//! * a history entry holds [`UNDATED`] and the device's uptime instead of a
//!   time ([`stamp`]), and is rewritten with the time when it was made in
//!   the same power-on as the sync. Entries from a power-on that never
//!   learnt the time stay undated: [`wall_secs`] reads them as unknown,
//!   and the device page shows them so.
//!
//! Events need no wall clock: each carries its age when it is sent
//! (`age_ms`, by the device's monotonic clock) and the server dates it by
//! its own.
//!
//! [`WallClock`] turns a time server's answer and the monotonic clock into
//! the time; [`SyncSchedule`] says when to ask a time server.

use crate::Clock;

/// The bit that marks a stored time as undated: the rest is the uptime in
/// milliseconds when it was made.
pub const UNDATED: u64 = 1 << 63;

/// What to store for "now": Unix seconds, or [`UNDATED`] and the uptime
/// when the time is not known (`clock.unix_secs == 0`).
pub fn stamp(clock: Clock) -> u64 {
    if clock.unix_secs == 0 {
        UNDATED | (clock.now_ms & !UNDATED)
    } else {
        clock.unix_secs
    }
}

/// The Unix seconds a stored time stands for, `None` when it is undated
/// (or 0, as earlier versions wrote without a clock).
pub fn wall_secs(stored: u64) -> Option<u64> {
    (stored != 0 && stored & UNDATED == 0).then_some(stored)
}

/// The date of an undated stored time made in this power-on, given the
/// clock now (which knows the time); `None` if it is not undated or the
/// time is still unknown.
pub fn date(stored: u64, now: Clock) -> Option<u64> {
    if stored & UNDATED == 0 || now.unix_secs == 0 {
        return None;
    }
    let made_ms = stored & !UNDATED;
    let ago_secs = now.now_ms.saturating_sub(made_ms) / 1000;
    Some(now.unix_secs.saturating_sub(ago_secs))
}

/// The time as the device knows it: the monotonic clock (ms since power-on)
/// and, once a time server answered, the Unix time it maps to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WallClock {
    /// `(monotonic ms, Unix ms)` at the last sync.
    base: Option<(u64, u64)>,
}

impl WallClock {
    /// A clock that does not know the time.
    pub const fn new() -> WallClock {
        WallClock { base: None }
    }

    /// A time server said it is `unix_ms` at monotonic `now_ms`.
    pub fn set(&mut self, now_ms: u64, unix_ms: u64) {
        self.base = Some((now_ms, unix_ms));
    }

    /// Whether the time is known.
    pub fn is_set(&self) -> bool {
        self.base.is_some()
    }

    /// The clock at monotonic `now_ms` (`unix_secs` 0 while not known).
    pub fn clock(&self, now_ms: u64) -> Clock {
        let unix_secs = self.base.map_or(0, |(at, unix_ms)| {
            (unix_ms + now_ms.saturating_sub(at)) / 1000
        });
        Clock { now_ms, unix_secs }
    }
}

/// When to ask a time server: at once, again [`SyncSchedule::RETRY_MS`]
/// after a failure, and every [`SyncSchedule::RESYNC_MS`] after a success
/// (a crystal drifts a few seconds a day).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncSchedule {
    next_ms: u64,
}

impl SyncSchedule {
    /// After a failed attempt.
    pub const RETRY_MS: u64 = 60_000;
    /// After a successful one.
    pub const RESYNC_MS: u64 = 24 * 3_600_000;

    /// Due at once.
    pub const fn new() -> SyncSchedule {
        SyncSchedule { next_ms: 0 }
    }

    /// Whether to ask now.
    pub fn due(&self, now_ms: u64) -> bool {
        now_ms >= self.next_ms
    }

    /// Milliseconds until the next attempt.
    pub fn wait_ms(&self, now_ms: u64) -> u64 {
        self.next_ms.saturating_sub(now_ms)
    }

    /// An attempt at `now_ms` ended.
    pub fn done(&mut self, now_ms: u64, succeeded: bool) {
        self.next_ms = now_ms
            + if succeeded {
                Self::RESYNC_MS
            } else {
                Self::RETRY_MS
            };
    }
}
