//! The simulated NOR flash behaves like NOR flash, and faults land where asked.
#![allow(clippy::unwrap_used)]

use airlift_engine::sim::flash::SimFlashError;
use airlift_engine::sim::{Fault, FaultKind, SimFlash};
use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};

fn read(f: &mut SimFlash, at: u32, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    f.read(at, &mut buf).unwrap();
    buf
}

#[test]
fn erase_sets_whole_sectors_to_ff_and_program_only_clears_bits() {
    let mut f = SimFlash::from_bytes(vec![0x00; 3 * 4096]);
    f.erase(4096, 8192).unwrap();
    assert_eq!(read(&mut f, 4092, 8), [0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
    assert_eq!(read(&mut f, 8188, 8), [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0]);
    f.write(4096, &[0xF0, 0x0F, 0xAA, 0x55]).unwrap();
    f.write(4096, &[0x3C, 0xFF, 0xFF, 0x00]).unwrap();
    assert_eq!(read(&mut f, 4096, 4), [0x30, 0x0F, 0xAA, 0x00]);
}

#[test]
fn misaligned_and_out_of_range_operations_are_refused() {
    let mut f = SimFlash::new(2 * 4096);
    let check = |r: Result<(), SimFlashError>, e: SimFlashError| assert_eq!(r, Err(e));
    check(f.write(2, &[0; 4]), SimFlashError::NotAligned);
    check(f.write(0, &[0; 3]), SimFlashError::NotAligned);
    check(f.erase(100, 4096), SimFlashError::NotAligned);
    check(f.erase(0, 100), SimFlashError::NotAligned);
    check(f.write(8192, &[0; 4]), SimFlashError::OutOfBounds);
    check(f.erase(4096, 3 * 4096), SimFlashError::OutOfBounds);
    let mut buf = [0u8; 2];
    assert_eq!(f.read(8191, &mut buf), Err(SimFlashError::OutOfBounds));
    assert_eq!(f.ops(), 0, "refused operations are not counted");
    assert_eq!(f.capacity(), 8192);
}

#[test]
fn operations_are_counted_and_a_cut_stops_everything_until_power_returns() {
    let mut f = SimFlash::new(4096);
    f.set_fault(Some(Fault {
        op: 2,
        kind: FaultKind::CutBefore,
    }));
    f.write(0, &[0; 4]).unwrap();
    f.erase(0, 4096).unwrap();
    assert_eq!(f.ops(), 2);
    assert_eq!(f.write(0, &[0; 4]), Err(SimFlashError::PowerLost));
    assert!(f.is_dead());
    assert_eq!(read_err(&mut f), Err(SimFlashError::PowerLost));
    f.power_cycle();
    assert_eq!(read(&mut f, 0, 4), [0xFF; 4], "the cut write had no effect");
    f.write(0, &[0; 4]).unwrap();
}

fn read_err(f: &mut SimFlash) -> Result<(), SimFlashError> {
    let mut b = [0u8; 1];
    f.read(0, &mut b)
}

#[test]
fn torn_operations_do_half_of_the_work() {
    let check = |kind: FaultKind, program: [u8; 8], erase_first: u8, erase_last: u8| {
        let mut f = SimFlash::from_bytes(vec![0x00; 4096]);
        f.set_fault(Some(Fault { op: 0, kind }));
        assert_eq!(f.erase(0, 4096), Err(SimFlashError::PowerLost));
        let b = f.bytes();
        assert_eq!((b[0], b[4095]), (erase_first, erase_last), "{kind:?} erase");
        let mut f = SimFlash::new(4096);
        f.set_fault(Some(Fault { op: 0, kind }));
        assert_eq!(f.write(0, &[0x11; 8]), Err(SimFlashError::PowerLost));
        assert_eq!(f.bytes()[..8], program, "{kind:?} program");
    };
    let (x, f) = (0x11, 0xFF);
    check(FaultKind::Tear, [x, x, x, x, f, f, f, f], 0xFF, 0x00);
    check(FaultKind::TearLate, [f, f, f, f, x, x, x, x], 0x00, 0xFF);
    check(FaultKind::CutBefore, [f; 8], 0x00, 0x00);
}

#[test]
fn a_fault_set_for_arming_ignores_the_operations_before_the_arm() {
    let mut f = SimFlash::new(4096);
    f.set_fault_at_arm(Some(Fault {
        op: 1,
        kind: FaultKind::CutBefore,
    }));
    for _ in 0..5 {
        f.write(0, &[0xFF; 4]).unwrap();
    }
    f.arm();
    f.write(0, &[0; 4]).unwrap();
    assert_eq!(f.write(4, &[0; 4]), Err(SimFlashError::PowerLost));
    assert_eq!(f.ops(), 2);
}
