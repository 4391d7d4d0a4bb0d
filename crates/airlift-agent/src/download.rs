//! An install's bytes: streamed from the server over HTTP into the
//! client's [`Session`], or from bytes at hand (a local upload). The
//! decisions (what to ask for, what an answer means, when to retry or give
//! up, the restart after a stale resume) are the session's; this file moves
//! bytes, paces them on the fleet's link, and drops connections when the
//! fleet simulator asks for it.

use airlift_client::download::{Fetch, Interrupt};
use airlift_client::{Attempt, Chunk, Client, Failure, Session};
use embedded_storage::nor_flash::NorFlash;

use crate::device::{Happening, Runtime};

/// Where an image comes from.
pub(crate) enum Source {
    Bytes(Vec<u8>),
    /// `foreign`: not the device's server (a pull from the device page):
    /// no token is sent, no retry is made, and a failure says only that
    /// the URL could not be fetched.
    Http {
        url: String,
        sha256: String,
        foreign: bool,
    },
}

enum Stop {
    Interrupt(Interrupt),
    Failure(Failure),
}

impl From<Interrupt> for Stop {
    fn from(i: Interrupt) -> Stop {
        Stop::Interrupt(i)
    }
}

impl From<Failure> for Stop {
    fn from(f: Failure) -> Stop {
        Stop::Failure(f)
    }
}

impl Runtime {
    /// Streams the image into the inactive slot through the session and
    /// activates it (the events are queued in `client`).
    pub(crate) async fn install<F: NorFlash>(
        &mut self,
        dev: &mut airlift_engine::Device<'_, F>,
        client: &mut Client,
        attempt: &Attempt,
        source: &Source,
    ) -> Result<(), Failure> {
        let mut session = client.start(dev, attempt, self.now_ms(), &mut self.journal())?;
        loop {
            match source {
                Source::Bytes(bytes) => {
                    if let Some(at) = session.write_all(bytes)? {
                        client.restarted(attempt, at, self.now_ms(), &mut self.journal());
                    }
                }
                Source::Http {
                    url,
                    sha256,
                    foreign,
                } => {
                    self.download(&mut session, client, attempt, url, sha256, *foreign)
                        .await?;
                }
            }
            let now = self.now_ms();
            if client
                .finish_install(&mut session, attempt, now, &mut self.journal())?
                .is_some()
            {
                return Ok(());
            }
        }
    }

    async fn download<F: NorFlash>(
        &mut self,
        session: &mut Session<'_, '_, F>,
        client: &mut Client,
        attempt: &Attempt,
        url: &str,
        sha256: &str,
        foreign: bool,
    ) -> Result<(), Failure> {
        while let Some(fetch) = session.request() {
            match self
                .stream(session, client, attempt, (url, sha256, foreign), fetch)
                .await
            {
                Ok(()) => {}
                Err(Stop::Failure(f)) => return Err(f),
                Err(Stop::Interrupt(_)) if foreign => {
                    return Err(Failure::Download(airlift_client::text::Text::format(
                        format_args!("could not fetch {url}"),
                    )));
                }
                Err(Stop::Interrupt(why)) => {
                    if matches!(why, Interrupt::Retry(_)) {
                        self.happen(&Happening::Retry);
                    }
                    session.interrupted(why)?;
                    let wait = client.config().retry_delay_ms;
                    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                }
            }
        }
        Ok(())
    }

    async fn stream<F: NorFlash>(
        &mut self,
        session: &mut Session<'_, '_, F>,
        client: &mut Client,
        attempt: &Attempt,
        (url, sha256, foreign): (&str, &str, bool),
        fetch: Fetch,
    ) -> Result<(), Stop> {
        let request = self
            .transport
            .artifact(url, fetch, sha256, foreign)
            .map_err(|refused| {
                Interrupt::Fatal(airlift_client::text::Text::from_str_cut(&refused))
            })?;
        let _permit = self.transport.permit().await;
        let mut response = request.send().await.map_err(|e| {
            Interrupt::Retry(airlift_client::text::Text::format(format_args!(
                "cannot reach the server: {}",
                crate::transport::describe(&e)
            )))
        })?;
        let content_range = response
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        session.on_response(fetch, response.status().as_u16(), content_range.as_deref())?;
        let cut_at = if self.config.drop_rate > 0.0 && self.chance(self.config.drop_rate) {
            Some(self.next() % u64::from(session.size().max(1)))
        } else {
            None
        };
        let mut received = 0u64;
        while session.left() > 0 {
            let chunk = match response.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    return Err(Stop::Interrupt(Interrupt::Retry(
                        airlift_client::text::Text::format(format_args!("connection dropped: {e}")),
                    )));
                }
            };
            if let Some(link) = &self.config.link {
                link.carry(chunk.len()).await;
            }
            match session.on_data(&chunk)? {
                Chunk::Written(0) => {}
                Chunk::Written(n) => {
                    received += n as u64;
                    self.happen(&Happening::Bytes(n as u64));
                    if cut_at.is_some_and(|c| received >= c) {
                        return Err(Stop::Interrupt(Interrupt::Retry(
                            airlift_client::text::Text::from_str_cut("simulated connection drop"),
                        )));
                    }
                }
                Chunk::Restarted { resumed_at } => {
                    client.restarted(attempt, resumed_at, self.now_ms(), &mut self.journal());
                    return Ok(());
                }
            }
        }
        session.on_end()?;
        Ok(())
    }
}
