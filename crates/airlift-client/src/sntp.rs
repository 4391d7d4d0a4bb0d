//! SNTP (RFC 4330) as bytes: the request a device sends to a time server
//! over UDP port [`PORT`], and what it accepts as the answer. The socket
//! is the caller's.
//!
//! The request's transmit timestamp is a random number, not a time (the
//! device has none yet): a server copies it into its answer's originate
//! timestamp, so an answer that does not carry it back is not the answer
//! to this request (a stray or forged datagram) and is refused. An answer
//! is also refused when its server is not synchronised itself (leap
//! indicator 3, stratum 0, "kiss-o'-death", or above 15), when it is not
//! from a server (mode 4), or when it carries no time.

use core::fmt;

/// The NTP port.
pub const PORT: u16 = 123;

/// An SNTP packet without extensions.
pub const PACKET_LEN: usize = 48;

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const UNIX_OFFSET: u64 = 2_208_988_800;

/// The request, tagged with `nonce` (a random number the answer must
/// carry back).
pub fn request(nonce: u64) -> [u8; PACKET_LEN] {
    let mut p = [0u8; PACKET_LEN];
    // Leap indicator 0, version 4, mode 3 (client).
    p[0] = (4 << 3) | 3;
    p[40..48].copy_from_slice(&nonce.to_be_bytes());
    p
}

/// The time a server answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerTime {
    /// Unix time in milliseconds when the server sent its answer.
    pub unix_ms: u64,
}

/// Why an answer is not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SntpError {
    /// Shorter than an SNTP packet.
    Short(usize),
    /// Not a server's answer (mode 4).
    NotAServer(u8),
    /// The server's clock is not synchronised (leap indicator 3, stratum 0
    /// or above 15).
    Unsynchronised,
    /// The answer does not carry the request's tag back.
    NotOurs,
    /// The transmit timestamp is zero.
    NoTime,
}

impl fmt::Display for SntpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SntpError::Short(n) => write!(f, "time server answered {n} bytes, not an SNTP packet"),
            SntpError::NotAServer(m) => write!(f, "time server answered in mode {m}, not 4"),
            SntpError::Unsynchronised => f.write_str("time server is not synchronised"),
            SntpError::NotOurs => f.write_str("time server's answer is not to this request"),
            SntpError::NoTime => f.write_str("time server's answer carries no time"),
        }
    }
}

impl core::error::Error for SntpError {}

/// Reads `answer`, the server's reply to [`request`]`(nonce)`.
///
/// NTP's 32-bit seconds wrap in 2036: a value below 2^31 is read as after
/// the wrap (era 1), so times from 1968 to 2104 come out right.
pub fn parse(answer: &[u8], nonce: u64) -> Result<ServerTime, SntpError> {
    let Some(p) = answer.get(..PACKET_LEN) else {
        return Err(SntpError::Short(answer.len()));
    };
    let leap = p[0] >> 6;
    let mode = p[0] & 7;
    let stratum = p[1];
    if mode != 4 {
        return Err(SntpError::NotAServer(mode));
    }
    if leap == 3 || stratum == 0 || stratum > 15 {
        return Err(SntpError::Unsynchronised);
    }
    let word = |at: usize| u64::from(u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]]));
    let originate = (word(24) << 32) | word(28);
    if originate != nonce {
        return Err(SntpError::NotOurs);
    }
    let (secs, fraction) = (word(40), word(44));
    if secs == 0 && fraction == 0 {
        return Err(SntpError::NoTime);
    }
    let era = if secs < 0x8000_0000 { 1u64 << 32 } else { 0 };
    let unix_secs = (secs + era).saturating_sub(UNIX_OFFSET);
    Ok(ServerTime {
        unix_ms: unix_secs * 1000 + ((fraction * 1000) >> 32),
    })
}
