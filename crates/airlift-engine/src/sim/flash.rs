//! A simulated NOR flash with power-cut and torn-operation injection.

use std::vec::Vec;

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};

/// ESP32's flash program granularity as esp-storage reports it.
pub const WRITE_SIZE: usize = 4;
/// ESP32's flash sector.
pub const ERASE_SIZE: usize = 4096;

/// What happens at the faulted operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// Power is lost just before the operation: it has no effect.
    CutBefore,
    /// Power is lost in the middle of the operation: a program writes only
    /// the first half of its bytes (for a 4-byte word: 2 bytes), an erase
    /// resets only the first half of its range to 0xFF.
    Tear,
    /// Like [`FaultKind::Tear`], but the *second* half is done and the first
    /// is not (flash chips do not promise any order within an operation).
    TearLate,
}

/// A power cut at the `op`-th mutating operation (erase or program, counted
/// from 0 since the flash was created or the counter [`armed`](SimFlash::arm)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fault {
    /// Index of the operation.
    pub op: u64,
    /// Cut before, or tear.
    pub kind: FaultKind,
}

/// Errors of the simulated flash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimFlashError {
    /// Offset or length outside the flash.
    OutOfBounds,
    /// Offset or length not a multiple of the write or erase size.
    NotAligned,
    /// Power was cut; nothing works until [`SimFlash::power_cycle`].
    PowerLost,
}

impl NorFlashError for SimFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            SimFlashError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            SimFlashError::NotAligned => NorFlashErrorKind::NotAligned,
            SimFlashError::PowerLost => NorFlashErrorKind::Other,
        }
    }
}

/// A NOR flash in RAM: erase sets 4 KiB sectors to 0xFF, program can only
/// clear bits, and writes must be aligned to 4 bytes (like esp-storage).
/// Counts mutating operations and can cut power before, or in the middle
/// of, a chosen one. Reads are not counted (they change nothing).
#[derive(Debug, Clone)]
pub struct SimFlash {
    data: Vec<u8>,
    ops: u64,
    base: u64,
    fault: Option<Fault>,
    fault_at_arm: Option<Fault>,
    dead: bool,
}

impl SimFlash {
    /// An erased flash of `size` bytes (a multiple of 4 KiB).
    pub fn new(size: usize) -> SimFlash {
        SimFlash::from_bytes(std::vec![0xFF; size])
    }

    /// A flash holding `data` (for example a flash image file).
    pub fn from_bytes(data: Vec<u8>) -> SimFlash {
        SimFlash {
            data,
            ops: 0,
            base: 0,
            fault: None,
            fault_at_arm: None,
            dead: false,
        }
    }

    /// The contents.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// Writes bytes directly, bypassing NOR rules and counting (to build
    /// test images: "flashing with esptool").
    pub fn load(&mut self, offset: usize, bytes: &[u8]) {
        self.data[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    /// The contents, consuming the flash.
    pub fn into_bytes(self) -> Vec<u8> {
        self.data
    }

    /// Mutating operations since the counter was armed.
    pub fn ops(&self) -> u64 {
        self.ops - self.base
    }

    /// Restarts the operation count from here: fault indices count from
    /// now, and a fault scheduled with [`set_fault_at_arm`](Self::set_fault_at_arm)
    /// becomes active.
    pub fn arm(&mut self) {
        self.base = self.ops;
        if let Some(f) = self.fault_at_arm.take() {
            self.fault = Some(f);
        }
    }

    /// Schedules (or clears) a power cut, counted from the last arm or
    /// power cycle.
    pub fn set_fault(&mut self, fault: Option<Fault>) {
        self.fault = fault;
    }

    /// Schedules a power cut that only becomes active at the next
    /// [`arm`](Self::arm), so that operations before it (setting up the
    /// path under test) are never cut.
    pub fn set_fault_at_arm(&mut self, fault: Option<Fault>) {
        self.fault_at_arm = fault;
    }

    /// Whether power was cut.
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// Restores power (a reset): clears the fault and the dead state.
    pub fn power_cycle(&mut self) {
        self.dead = false;
        self.fault = None;
        self.fault_at_arm = None;
        self.base = self.ops;
    }

    /// Counts an operation; says whether it runs fully, tears, or is cut.
    fn begin_op(&mut self) -> Result<Option<FaultKind>, SimFlashError> {
        if self.dead {
            return Err(SimFlashError::PowerLost);
        }
        let index = self.ops - self.base;
        self.ops += 1;
        match self.fault {
            Some(f) if f.op == index => {
                self.dead = true;
                Ok(Some(f.kind))
            }
            _ => Ok(None),
        }
    }

    fn check(&self, offset: u32, len: usize, align: usize) -> Result<usize, SimFlashError> {
        let start = offset as usize;
        if !start.is_multiple_of(align) || !len.is_multiple_of(align) {
            return Err(SimFlashError::NotAligned);
        }
        match start.checked_add(len) {
            Some(end) if end <= self.data.len() => Ok(start),
            _ => Err(SimFlashError::OutOfBounds),
        }
    }
}

impl ErrorType for SimFlash {
    type Error = SimFlashError;
}

impl ReadNorFlash for SimFlash {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), SimFlashError> {
        if self.dead {
            return Err(SimFlashError::PowerLost);
        }
        let start = self.check(offset, bytes.len(), 1)?;
        bytes.copy_from_slice(&self.data[start..start + bytes.len()]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.data.len()
    }
}

impl NorFlash for SimFlash {
    const WRITE_SIZE: usize = WRITE_SIZE;
    const ERASE_SIZE: usize = ERASE_SIZE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), SimFlashError> {
        let len = to.checked_sub(from).ok_or(SimFlashError::OutOfBounds)? as usize;
        let start = self.check(from, len, ERASE_SIZE)?;
        match self.begin_op()? {
            None => {
                self.data[start..start + len].fill(0xFF);
                Ok(())
            }
            Some(FaultKind::CutBefore) => Err(SimFlashError::PowerLost),
            Some(FaultKind::Tear) => {
                self.data[start..start + len / 2].fill(0xFF);
                Err(SimFlashError::PowerLost)
            }
            Some(FaultKind::TearLate) => {
                self.data[start + len / 2..start + len].fill(0xFF);
                Err(SimFlashError::PowerLost)
            }
        }
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), SimFlashError> {
        let start = self.check(offset, bytes.len(), WRITE_SIZE)?;
        let (from, to) = match self.begin_op()? {
            None => (0, bytes.len()),
            Some(FaultKind::CutBefore) => return Err(SimFlashError::PowerLost),
            Some(FaultKind::Tear) => (0, bytes.len() / 2),
            Some(FaultKind::TearLate) => (bytes.len() / 2, bytes.len()),
        };
        for (d, s) in self.data[start + from..start + to]
            .iter_mut()
            .zip(&bytes[from..to])
        {
            *d &= *s;
        }
        if self.dead {
            Err(SimFlashError::PowerLost)
        } else {
            Ok(())
        }
    }
}
