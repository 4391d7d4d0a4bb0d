//! Throttling of failed authentication, per client address and per
//! credential (admin tokens, dashboard sign-in and sessions, enrolment
//! secrets, device tokens), with [`airlift_protocol::throttle`]'s rule.
//!
//! A request is checked before its credential is: a client (or a
//! credential under attack from many clients) whose allowance of failures
//! is spent gets 429 with `Retry-After`, whether or not what it sends is
//! right, so nothing it learns goes faster than the refill. A client's
//! allowance is `auth_failures_burst` failures refilled at one per
//! `auth_failure_interval_ms`; a credential's, shared by every client, ten
//! times both, so a guesser with many addresses is slowed too while one
//! noisy client does not lock everyone out. The moment an allowance is
//! spent is logged (once, not per refused request) and counted in
//! `airlift_auth_throttled_total`.
//!
//! IPv6 clients are keyed by their /64, which one host usually holds whole.
//! The table forgets clients whose allowance is full again; it holds at
//! most [`MAX_CLIENTS`], past which new clients share one entry.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use airlift_protocol::throttle::Rule;

use crate::error::ApiError;

/// Most client addresses remembered at once.
pub const MAX_CLIENTS: usize = 65_536;

/// A credential that can be guessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Credential {
    /// An admin token on an admin route.
    AdminToken,
    /// The dashboard: an admin token given to sign in, or a session cookie.
    Session,
    /// A fleet enrolment secret.
    EnrollmentSecret,
    /// A device token.
    DeviceToken,
}

impl Credential {
    /// Every credential, in the order of the metrics.
    pub const ALL: [Credential; 4] = [
        Credential::AdminToken,
        Credential::Session,
        Credential::EnrollmentSecret,
        Credential::DeviceToken,
    ];

    /// The name in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Credential::AdminToken => "admin_token",
            Credential::Session => "session",
            Credential::EnrollmentSecret => "enrollment_secret",
            Credential::DeviceToken => "device_token",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The address a request came from (a request extension set per connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// The request's [`ClientAddr`], when it came over a connection (an
/// extractor that never fails; tests driving the router directly have none).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<ClientAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Peer(parts.extensions.get::<ClientAddr>().copied()))
    }
}

/// The key of a client: its IPv4 address, or its IPv6 /64.
fn client_key(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4)),
            None => (u128::from(v6) >> 64 << 64) | 1 << 32,
        },
    }
}

/// A monotonic clock in milliseconds (injectable for tests).
pub type Clock = Box<dyn Fn() -> u64 + Send + Sync>;

/// Failed authentication per client and per credential.
pub struct Throttle {
    client: Rule,
    credential: Rule,
    clients: Mutex<HashMap<u128, u64>>,
    credentials: Mutex<[u64; 4]>,
    throttled: [AtomicU64; 4],
    clock: Clock,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("client", &self.client)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

impl Throttle {
    /// A throttle allowing each client `burst` failures, refilled at one
    /// per `interval_ms`, on the process's monotonic clock.
    pub fn new(burst: u32, interval_ms: u64) -> Throttle {
        let started = std::time::Instant::now();
        Throttle::with_clock(
            burst,
            interval_ms,
            Box::new(move || {
                // Offset so that a fresh key (0) is never ahead of the clock.
                u64::try_from(started.elapsed().as_millis())
                    .unwrap_or(u64::MAX)
                    .saturating_add(1)
            }),
        )
    }

    /// The same on the clock `clock`.
    pub fn with_clock(burst: u32, interval_ms: u64, clock: Clock) -> Throttle {
        let client = Rule {
            burst: burst.max(1),
            interval_ms,
        };
        let credential = Rule {
            burst: client.burst.saturating_mul(10),
            interval_ms: (interval_ms / 10).max(1),
        };
        Throttle {
            client,
            credential,
            clients: Mutex::new(HashMap::new()),
            credentials: Mutex::new([0; 4]),
            throttled: Default::default(),
            clock,
        }
    }

    /// Refuses (429) a request of `addr` presenting `credential` while the
    /// client's or the credential's allowance of failures is spent.
    pub fn check(&self, credential: Credential, addr: Option<ClientAddr>) -> Result<(), ApiError> {
        let now = (self.clock)();
        let for_credential = {
            let credentials = self.credentials.lock().unwrap_or_else(|p| p.into_inner());
            self.credential
                .wait_ms(credentials[credential.index()], now)
        };
        let for_client = match addr {
            Some(ClientAddr(ip)) => {
                let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
                clients
                    .get(&client_key(ip))
                    .map_or(0, |&full_at| self.client.wait_ms(full_at, now))
            }
            None => 0,
        };
        let wait = for_client.max(for_credential);
        if wait == 0 {
            return Ok(());
        }
        self.throttled[credential.index()].fetch_add(1, Ordering::Relaxed);
        let retry_after_secs = wait.div_ceil(1000).max(1);
        let whose = if for_client >= for_credential {
            "from this address"
        } else {
            "for this credential from all addresses"
        };
        Err(ApiError::TooManyRequests {
            message: format!(
                "too many failed authentications {whose} ({}): try again in {retry_after_secs} s",
                credential.as_str()
            ),
            retry_after_secs,
        })
    }

    /// Counts a failed authentication of `addr` with `credential`; logs the
    /// moment an allowance is spent.
    pub fn failed(&self, credential: Credential, addr: Option<ClientAddr>) {
        let now = (self.clock)();
        let spent_credential = {
            let mut credentials = self.credentials.lock().unwrap_or_else(|p| p.into_inner());
            let slot = &mut credentials[credential.index()];
            let (next, spent) = self.credential.fail(*slot, now);
            *slot = next;
            spent
        };
        if spent_credential {
            tracing::warn!(
                credential = credential.as_str(),
                burst = self.credential.burst,
                "too many failed authentications from all addresses: refusing this credential \
                 for a while"
            );
        }
        let Some(ClientAddr(ip)) = addr else {
            return;
        };
        let spent_client = {
            let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            if clients.len() >= MAX_CLIENTS {
                clients.retain(|_, full_at| *full_at > now);
            }
            let key = if clients.len() >= MAX_CLIENTS {
                u128::MAX
            } else {
                client_key(ip)
            };
            let slot = clients.entry(key).or_insert(0);
            let (next, spent) = self.client.fail(*slot, now);
            *slot = next;
            spent
        };
        if spent_client {
            tracing::warn!(
                credential = credential.as_str(),
                client = %ip,
                burst = self.client.burst,
                "too many failed authentications: refusing this client for a while"
            );
        }
    }

    /// Requests refused by the throttle, per credential (for `/metrics`).
    pub fn throttled(&self) -> [(Credential, u64); 4] {
        Credential::ALL.map(|c| (c, self.throttled[c.index()].load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;
    use std::sync::Arc;

    use super::*;

    fn manual() -> (Throttle, Arc<AtomicU64>) {
        let now = Arc::new(AtomicU64::new(1_000));
        let clock = now.clone();
        let throttle =
            Throttle::with_clock(3, 1000, Box::new(move || clock.load(Ordering::Relaxed)));
        (throttle, now)
    }

    fn addr(s: &str) -> Option<ClientAddr> {
        Some(ClientAddr(s.parse().unwrap()))
    }

    #[test]
    fn a_client_is_refused_after_its_burst_and_forgiven_with_time() {
        let (throttle, now) = manual();
        let a = addr("10.0.0.1");
        for _ in 0..3 {
            throttle.check(Credential::AdminToken, a).unwrap();
            throttle.failed(Credential::AdminToken, a);
        }
        let err = throttle.check(Credential::AdminToken, a).unwrap_err();
        assert!(
            matches!(
                err,
                ApiError::TooManyRequests {
                    retry_after_secs: 1,
                    ..
                }
            ),
            "{err:?}"
        );
        // Another client, and the same client with another credential, are not refused.
        throttle
            .check(Credential::AdminToken, addr("10.0.0.2"))
            .unwrap();
        throttle.check(Credential::DeviceToken, a).unwrap_err();
        now.fetch_add(1000, Ordering::Relaxed);
        throttle.check(Credential::AdminToken, a).unwrap();
        assert_eq!(throttle.throttled()[0], (Credential::AdminToken, 1));
    }

    #[test]
    fn a_credential_guessed_from_many_addresses_is_refused_to_all() {
        let (throttle, now) = manual();
        for i in 0..30u32 {
            let a = Some(ClientAddr(IpAddr::from(i.to_be_bytes())));
            throttle.check(Credential::EnrollmentSecret, a).unwrap();
            throttle.failed(Credential::EnrollmentSecret, a);
        }
        let fresh = addr("192.168.1.1");
        assert!(throttle.check(Credential::EnrollmentSecret, fresh).is_err());
        throttle.check(Credential::AdminToken, fresh).unwrap();
        now.fetch_add(100, Ordering::Relaxed);
        throttle.check(Credential::EnrollmentSecret, fresh).unwrap();
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_and_mapped_ipv4_as_ipv4() {
        let a: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a.into()), client_key(b.into()));
        assert_ne!(client_key(a.into()), client_key(c.into()));
        let mapped: Ipv6Addr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(
            client_key(mapped.into()),
            client_key("10.0.0.1".parse().unwrap())
        );
    }
}
