//! The rule both the server and a device's own web page apply to failed
//! authentication: each client (and each credential) has an allowance of
//! `burst` failures that refills at one failure per `interval_ms`. A client
//! whose allowance is spent is refused before its credential is checked,
//! so guessing goes no faster than the refill, whatever the client sends.
//!
//! Kept as one `u64` per key (the generic cell rate algorithm: the time at
//! which the allowance is full again), and pure: the caller passes the time
//! in milliseconds, so tests choose it.

/// How many failures a key may have in a burst, and how fast they are forgiven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Failures allowed back to back.
    pub burst: u32,
    /// Milliseconds after which one more failure is allowed.
    pub interval_ms: u64,
}

impl Rule {
    /// How long the window of `burst` failures is, in milliseconds.
    fn window_ms(&self) -> u64 {
        u64::from(self.burst.max(1) - 1).saturating_mul(self.interval_ms)
    }

    /// Milliseconds until a key at `full_at` (the time its allowance is full
    /// again, 0 for a fresh key) may fail once more; 0 when it may now.
    pub fn wait_ms(&self, full_at: u64, now_ms: u64) -> u64 {
        full_at
            .saturating_sub(now_ms)
            .saturating_sub(self.window_ms())
    }

    /// Counts one failure of a key at `full_at`: its new `full_at`, and
    /// whether this failure spent the last of the allowance (the key is
    /// refused from now until [`Rule::wait_ms`] says otherwise).
    pub fn fail(&self, full_at: u64, now_ms: u64) -> (u64, bool) {
        let next = full_at.max(now_ms).saturating_add(self.interval_ms);
        let spent = next.saturating_sub(now_ms) > self.window_ms();
        (next, spent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: Rule = Rule {
        burst: 3,
        interval_ms: 1000,
    };

    #[test]
    fn a_burst_of_failures_is_allowed_then_one_per_interval() {
        let (mut full_at, now) = (0, 10_000);
        let mut spent_at = None;
        for n in 1..=3 {
            assert_eq!(RULE.wait_ms(full_at, now), 0, "failure {n} is allowed");
            let (next, spent) = RULE.fail(full_at, now);
            full_at = next;
            if spent {
                spent_at = Some(n);
            }
        }
        assert_eq!(spent_at, Some(3), "the third failure spends the allowance");
        assert_eq!(RULE.wait_ms(full_at, now), 1000);
        assert_eq!(RULE.wait_ms(full_at, now + 400), 600);
        assert_eq!(
            RULE.wait_ms(full_at, now + 1000),
            0,
            "one more after an interval"
        );
        let (next, spent) = RULE.fail(full_at, now + 1000);
        assert!(spent);
        assert_eq!(RULE.wait_ms(next, now + 1000), 1000);
        assert_eq!(RULE.wait_ms(next, now + 4000), 0);
        assert_eq!(
            next,
            now + 4000,
            "the allowance is full again after three intervals"
        );
    }

    #[test]
    fn a_fresh_key_and_a_burst_of_one_behave() {
        assert_eq!(RULE.wait_ms(0, 5), 0);
        let one = Rule {
            burst: 1,
            interval_ms: 50,
        };
        let (full_at, spent) = one.fail(0, 100);
        assert!(spent);
        assert_eq!(one.wait_ms(full_at, 100), 50);
        assert_eq!(one.wait_ms(full_at, 150), 0);
    }
}
