//! Asking a time server (SNTP over embassy-net UDP). The bytes and what an
//! answer must be are `airlift_client::sntp`'s.

use airlift_client::sntp::{self, PACKET_LEN, PORT, SntpError};
use embassy_net::dns::DnsQueryType;
use embassy_net::udp::{PacketMetadata, UdpSocket};
use embassy_net::{IpEndpoint, Stack};
use embassy_time::{Duration, with_timeout};

/// How long a time server has to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why there is no time.
#[derive(Debug)]
pub(crate) enum TimeError {
    /// The server's name did not resolve.
    Dns(embassy_net::dns::Error),
    /// The socket failed.
    Socket,
    /// No answer in time.
    Timeout,
    /// An answer that is not taken.
    Answer(SntpError),
}

impl core::fmt::Display for TimeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TimeError::Dns(e) => write!(f, "time server's name: {e:?}"),
            TimeError::Socket => f.write_str("time server: socket failed"),
            TimeError::Timeout => f.write_str("time server did not answer"),
            TimeError::Answer(e) => e.fmt(f),
        }
    }
}

/// Asks `server` for the time: Unix milliseconds.
pub(crate) async fn query(stack: Stack<'_>, server: &str) -> Result<u64, TimeError> {
    let addresses = stack
        .dns_query(server, DnsQueryType::A)
        .await
        .map_err(TimeError::Dns)?;
    let address = *addresses.first().ok_or(TimeError::Timeout)?;
    let (mut rx_meta, mut tx_meta) = ([PacketMetadata::EMPTY; 1], [PacketMetadata::EMPTY; 1]);
    let (mut rx, mut tx) = ([0u8; 128], [0u8; 64]);
    let mut socket = UdpSocket::new(stack, &mut rx_meta, &mut rx, &mut tx_meta, &mut tx);
    socket.bind(0).map_err(|_| TimeError::Socket)?;
    let nonce = (u64::from(esp_hal::rng::Rng::new().random()) << 32)
        | u64::from(esp_hal::rng::Rng::new().random());
    let to = IpEndpoint::new(address, PORT);
    socket
        .send_to(&sntp::request(nonce), to)
        .await
        .map_err(|_| TimeError::Socket)?;
    let mut answer = [0u8; PACKET_LEN];
    loop {
        let (n, from) = with_timeout(ANSWER_TIMEOUT, socket.recv_from(&mut answer))
            .await
            .map_err(|_| TimeError::Timeout)?
            .map_err(|_| TimeError::Socket)?;
        // A datagram from elsewhere is not the answer; wait for it.
        if from.endpoint != to {
            continue;
        }
        return sntp::parse(&answer[..n], nonce)
            .map(|t| t.unix_ms)
            .map_err(TimeError::Answer);
    }
}
