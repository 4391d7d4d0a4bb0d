//! One install: the engine's session fed from a download (resuming,
//! retrying, giving up) or from bytes at hand, and the one retry from byte
//! 0 after [`airlift_engine::Error::StaleResume`].

use airlift_engine::{Activated, Device, Install};
use airlift_format::manifest::MAX_SIGNED_LEN;
use airlift_protocol::Reason;
use embedded_storage::nor_flash::NorFlash;

use crate::download::{self, Fetch, Interrupt, MAX_RETRIES, Message};
use crate::text::Text;

/// Why an install did not activate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The engine refused the manifest or the image.
    Refused(airlift_engine::Error),
    /// The download failed for good.
    Download(Message),
    /// The flash failed (a power cut shows as this): not a verdict on the
    /// image; the last checkpoint stays to resume from.
    Flash(airlift_engine::Error),
}

impl Failure {
    /// The protocol reason it is reported with.
    pub fn reason(&self) -> Reason {
        match self {
            Failure::Refused(e) | Failure::Flash(e) => reason_of(e),
            Failure::Download(_) => Reason::Download,
        }
    }
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Failure::Refused(e) | Failure::Flash(e) => e.fmt(f),
            Failure::Download(m) => m.fmt(f),
        }
    }
}

impl Failure {
    /// A streamed upload whose session restarted from byte 0 (the bytes an
    /// earlier, interrupted upload of this image left did not verify, and
    /// were cleared): the bytes that went by cannot be fed again, so the
    /// upload fails and the next one starts clean.
    pub fn upload_again(resumed_at: u32) -> Failure {
        Failure::Download(Text::format(format_args!(
            "bytes an earlier upload left (to {resumed_at}) did not verify: cleared, upload again"
        )))
    }
}

/// The protocol reason for an engine error.
pub fn reason_of(e: &airlift_engine::Error) -> Reason {
    use airlift_engine::Error as E;
    match e {
        E::BadSignature | E::UnknownKey { .. } | E::Manifest(_) => Reason::Signature,
        E::WrongChip { .. } => Reason::Chip,
        E::TooBig { .. } => Reason::TooBig,
        E::OlderSecurityVersion { .. } => Reason::SecurityVersion,
        E::Image(_)
        | E::ChecksumMismatch
        | E::DigestMismatch
        | E::ShaMismatch
        | E::StaleResume { .. }
        | E::Truncated { .. }
        | E::TooMuchData { .. } => Reason::Verification,
        E::Flash(_) => Reason::Flash,
        _ => Reason::Other,
    }
}

/// Inside a session a flash error (a power cut) ends it without a verdict.
fn failure(e: airlift_engine::Error) -> Failure {
    match e {
        airlift_engine::Error::Flash(_) => Failure::Flash(e),
        other => Failure::Refused(other),
    }
}

/// What [`Session::finish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Verified and activated: reset into it.
    Activated(Activated),
    /// A resumed install did not verify (the bytes an earlier attempt left
    /// may be what failed), so the session began again from byte 0, once:
    /// feed it the whole image again.
    Restarted {
        /// Where the failed attempt had resumed.
        resumed_at: u32,
    },
}

/// What a chunk of the body did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// This many bytes went to the engine.
    Written(usize),
    /// The session began again from byte 0 after a stale resume.
    Restarted {
        /// Where the failed attempt had resumed.
        resumed_at: u32,
    },
}

/// An install in progress.
pub struct Session<'d, 'k, F: NorFlash> {
    /// `None` only after a restart whose `begin` failed.
    install: Option<Install<'d, 'k, F>>,
    size: u32,
    manifest: [u8; MAX_SIGNED_LEN],
    manifest_len: usize,
    restarted: bool,
    retries: u32,
    /// Bytes of the current response still to drop (a 200 to a `Range`).
    skip: u32,
}

impl<'d, 'k, F: NorFlash> Session<'d, 'k, F> {
    /// Begins installing what the signed `manifest` describes (resuming an
    /// interrupted install of the same image when the engine can).
    pub fn begin(device: &'d mut Device<'k, F>, manifest: &[u8]) -> Result<Self, Failure> {
        let mut copy = [0u8; MAX_SIGNED_LEN];
        let n = manifest.len().min(MAX_SIGNED_LEN);
        copy[..n].copy_from_slice(&manifest[..n]);
        let install = device.begin(manifest).map_err(failure)?;
        Ok(Session {
            size: install.size(),
            install: Some(install),
            manifest: copy,
            manifest_len: n,
            restarted: false,
            retries: 0,
            skip: 0,
        })
    }

    /// Where the image's bytes must continue (0 for a fresh install).
    pub fn resume_offset(&self) -> u32 {
        self.install.as_ref().map_or(0, Install::resume_offset)
    }

    /// The image size the manifest announced.
    pub fn size(&self) -> u32 {
        self.size
    }

    fn install(&mut self) -> Result<&mut Install<'d, 'k, F>, Failure> {
        self.install
            .as_mut()
            .ok_or(Failure::Refused(airlift_engine::Error::SessionFailed))
    }

    /// Bytes still to come.
    pub fn left(&self) -> u32 {
        self.size() - self.resume_offset()
    }

    /// What to download next; `None` once every byte is in.
    pub fn request(&self) -> Option<Fetch> {
        (self.left() > 0).then(|| Fetch {
            from: self.resume_offset(),
        })
    }

    /// The answer to `fetch` arrived with `status` (and `Content-Range`).
    pub fn on_response(
        &mut self,
        fetch: Fetch,
        status: u16,
        content_range: Option<&str>,
    ) -> Result<(), Interrupt> {
        self.skip = download::accept(fetch, status, content_range)?;
        Ok(())
    }

    /// A chunk of the response body: writes what is new to the engine.
    /// [`Chunk::Restarted`] means the rest of this response is of no use:
    /// fetch again ([`Session::request`] starts at 0 now).
    pub fn on_data(&mut self, chunk: &[u8]) -> Result<Chunk, Failure> {
        let left = self.left();
        let data = download::to_write(chunk, &mut self.skip, left);
        if data.is_empty() {
            return Ok(Chunk::Written(0));
        }
        match self.install()?.write(data) {
            Ok(()) => Ok(Chunk::Written(data.len())),
            Err(e) => self
                .restart_or(failure(e))
                .map(|resumed_at| Chunk::Restarted { resumed_at }),
        }
    }

    /// The response body ended: an early end is an interruption.
    pub fn on_end(&self) -> Result<(), Interrupt> {
        if self.left() > 0 {
            return Err(Interrupt::Retry(Text::format(format_args!(
                "connection closed at byte {} of {}",
                self.resume_offset(),
                self.size()
            ))));
        }
        Ok(())
    }

    /// The download was interrupted: `Ok` to retry (after the caller's
    /// retry delay, resuming), or the failure that ends the install.
    pub fn interrupted(&mut self, why: Interrupt) -> Result<(), Failure> {
        match why {
            Interrupt::Fatal(m) => Err(Failure::Download(m)),
            Interrupt::Retry(m) => {
                self.retries += 1;
                if self.retries > MAX_RETRIES {
                    Err(Failure::Download(m))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Writes `image[resume_offset..]` from bytes at hand (a local upload),
    /// in chunks of 4 KiB; after a stale resume, once more from byte 0.
    /// Returns where a restarted attempt had resumed, if one was.
    pub fn write_all(&mut self, image: &[u8]) -> Result<Option<u32>, Failure> {
        let mut restarted = None;
        'attempt: loop {
            let from = (self.resume_offset() as usize).min(image.len());
            for chunk in image[from..].chunks(4096) {
                if let Err(e) = self.install()?.write(chunk) {
                    restarted = Some(self.restart_or(failure(e))?);
                    continue 'attempt;
                }
            }
            return Ok(restarted);
        }
    }

    /// Verifies and activates, or, after a stale resume, begins again from
    /// byte 0 once ([`Finished::Restarted`]).
    pub fn finish(&mut self) -> Result<Finished, Failure> {
        match self.install()?.finish_in_place() {
            Ok(a) => Ok(Finished::Activated(a)),
            Err(e) => self
                .restart_or(failure(e))
                .map(|resumed_at| Finished::Restarted { resumed_at }),
        }
    }

    /// A stale resume, the first time, restarts the session from byte 0
    /// (where it had resumed is returned); anything else is `failure`.
    fn restart_or(&mut self, failure: Failure) -> Result<u32, Failure> {
        match failure {
            Failure::Refused(airlift_engine::Error::StaleResume { resumed_at })
                if !self.restarted =>
            {
                self.restart()?;
                Ok(resumed_at)
            }
            other => Err(other),
        }
    }

    fn restart(&mut self) -> Result<(), Failure> {
        self.restarted = true;
        self.retries = 0;
        self.skip = 0;
        // Take the device back from the failed session and begin again:
        // the engine cleared the progress, so this starts at byte 0.
        let Some(failed) = self.install.take() else {
            return Err(Failure::Refused(airlift_engine::Error::SessionFailed));
        };
        let device = failed.into_device();
        let manifest = &self.manifest[..self.manifest_len];
        self.install = Some(device.begin(manifest).map_err(failure)?);
        Ok(())
    }
}
