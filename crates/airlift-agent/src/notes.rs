//! The agent's own small persistent state, kept in the `nvs` partition the
//! way ESP32 firmware keeps its settings in NVS: the update being installed
//! (so a reset knows which deployment a boot belongs to), the last result
//! (repeated at every check-in) and the update history of the device page.
//!
//! Two copies, one per sector, each `magic, seq, len, crc32, json`; a save
//! erases the older copy and programs it in one write, so a power cut at any
//! point leaves the other copy (the previous state) readable.

use airlift_engine::Region;
use airlift_protocol::{EventKind, Reason};
use embedded_storage::nor_flash::{NorFlash, NorFlashError};
use serde::{Deserialize, Serialize};

use crate::AgentError;

const MAGIC: [u8; 4] = *b"ALN1";
const HEADER: usize = 16;
const SECTOR: u32 = 4096;
/// Most history entries kept.
pub const HISTORY_MAX: usize = 12;

/// An update in progress, or on trial, remembered across resets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The deployment it belongs to (`None` for a local upload).
    pub deployment: Option<u64>,
    /// SHA-256 of the new image, lowercase hex.
    pub sha256: String,
    /// Version string of the new image.
    pub version: String,
    /// Where it came from: `server`, `upload` or `pull`.
    pub source: String,
    /// Trial boots of this image in the boot log before this attempt (so an
    /// image that was rolled back once is not taken as rolled back again).
    #[serde(default)]
    pub trials_before: u32,
}

/// The outcome of the last update attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The deployment, when the server assigned the update.
    pub deployment: Option<u64>,
    /// `confirmed`, `rolled_back` or `failed`.
    pub kind: EventKind,
    /// Why, for failures and rollbacks.
    pub reason: Option<Reason>,
}

/// One line of the update history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Unix seconds.
    pub at: u64,
    /// Version of the image the attempt installed.
    pub version: String,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
    /// `server`, `upload` or `pull`.
    pub source: String,
    /// The deployment, when there was one.
    pub deployment: Option<u64>,
    /// `confirmed`, `rolled_back` or `failed`.
    pub result: EventKind,
    /// Why, for failures and rollbacks.
    pub reason: Option<Reason>,
    /// Human-readable detail.
    pub detail: String,
}

/// Everything the agent keeps in the `nvs` partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notes {
    /// The update being installed or on trial.
    pub pending: Option<Pending>,
    /// The last result, repeated at check-ins.
    pub last_result: Option<Outcome>,
    /// Recent attempts, oldest first.
    pub history: Vec<HistoryEntry>,
    #[serde(skip)]
    seq: u32,
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

fn flash_err<E: NorFlashError>(e: E) -> AgentError {
    AgentError::Engine(airlift_engine::Error::Flash(e.kind()))
}

impl Notes {
    /// Reads the newest intact copy (empty notes when there is none).
    pub fn load<F: NorFlash>(flash: &mut F, region: Region) -> Result<Notes, AgentError> {
        let mut best: Option<Notes> = None;
        for copy in 0..2 {
            let at = region.offset + copy * SECTOR;
            let mut sector = vec![0u8; SECTOR as usize];
            flash.read(at, &mut sector).map_err(flash_err)?;
            if sector[..4] != MAGIC {
                continue;
            }
            let word = |i: usize| {
                u32::from_le_bytes([sector[i], sector[i + 1], sector[i + 2], sector[i + 3]])
            };
            let (seq, len, crc) = (word(4), word(8) as usize, word(12));
            if len > SECTOR as usize - HEADER {
                continue;
            }
            let body = &sector[HEADER..HEADER + len];
            if crc32(body) != crc {
                continue;
            }
            let Ok(mut notes) = serde_json::from_slice::<Notes>(body) else {
                continue;
            };
            notes.seq = seq;
            if best.as_ref().is_none_or(|b| seq > b.seq) {
                best = Some(notes);
            }
        }
        Ok(best.unwrap_or_default())
    }

    /// Writes the notes as the next copy.
    pub fn save<F: NorFlash>(&mut self, flash: &mut F, region: Region) -> Result<(), AgentError> {
        while self.history.len() > HISTORY_MAX {
            self.history.remove(0);
        }
        let body = serde_json::to_vec(self).map_err(|e| AgentError::Notes(e.to_string()))?;
        if body.len() > SECTOR as usize - HEADER {
            return Err(AgentError::Notes(format!(
                "agent notes are {} bytes, more than one sector",
                body.len()
            )));
        }
        let seq = self.seq.wrapping_add(1);
        let mut out = Vec::with_capacity(HEADER + body.len() + 3);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32(&body).to_le_bytes());
        out.extend_from_slice(&body);
        while !out.len().is_multiple_of(4) {
            out.push(0xFF);
        }
        let at = region.offset + (seq % 2) * SECTOR;
        flash.erase(at, at + SECTOR).map_err(flash_err)?;
        flash.write(at, &out).map_err(flash_err)?;
        self.seq = seq;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::flash::{AgentFlash, CowFlash};

    #[test]
    fn notes_survive_a_power_cut_in_the_middle_of_a_save() {
        let region = Region::new(0x9000, 0x4000);
        let mut flash = CowFlash::new(vec![0xFFu8; 0x10000].into());
        let mut notes = Notes::load(&mut flash, region).unwrap();
        assert_eq!(notes, Notes::default());
        notes.pending = Some(Pending {
            deployment: Some(7),
            sha256: "ab".repeat(32),
            version: "2.0.0".into(),
            source: "server".into(),
            trials_before: 0,
        });
        notes.save(&mut flash, region).unwrap();
        let saved = notes.clone();
        notes.pending = None;
        // The erase of the other copy happens, the program does not.
        flash.cut_power_in(1);
        assert!(notes.save(&mut flash, region).is_err());
        flash.power_cycle();
        let back = Notes::load(&mut flash, region).unwrap();
        assert_eq!(back.pending, saved.pending);
        let mut back = back;
        back.pending = None;
        back.save(&mut flash, region).unwrap();
        assert_eq!(Notes::load(&mut flash, region).unwrap().pending, None);
    }
}
