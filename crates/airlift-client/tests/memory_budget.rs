//! The client's RAM budget: no heap; its state while the device runs, and
//! while it installs, fits what is stated here.
#![allow(clippy::unwrap_used)]

use std::mem::size_of;

use airlift_client::records::MAX_ITEM;
use airlift_client::{Attempt, Client, Detail, Session};
use airlift_engine::sim::SimFlash;
use airlift_engine::{Device, Install, READ_BACK_LEN};
use airlift_protocol::{CheckIn, CheckInAnswer, EventBatch};

/// The client's own state plus everything it puts on the stack at once,
/// on top of the engine's (the engine states its own budget).
const BUDGET: usize = 6 * 1024;
/// The engine's budget (its `memory_budget` test).
const ENGINE_BUDGET: usize = 8 * 1024;

#[test]
fn client_state_and_an_install_session_fit_their_budget() {
    let client = size_of::<Client>();
    let attempt = size_of::<Attempt>();
    let session = size_of::<Session<'static, 'static, &mut SimFlash>>();
    let device = size_of::<Device<'static, &mut SimFlash>>();
    let install = size_of::<Install<'static, 'static, &mut SimFlash>>();
    // Transient: the largest of a notes item buffer (read and written),
    // a detail being formatted, a batch of events being sent, a check-in
    // and its answer (the caller serialises them).
    let transient = [
        2 * (2 + MAX_ITEM),
        size_of::<Detail>(),
        size_of::<EventBatch>(),
        size_of::<CheckIn>() + size_of::<CheckInAnswer>(),
    ]
    .into_iter()
    .max()
    .unwrap();
    let own = client + attempt + (session - install) + transient;
    println!("client (running image, notes, outbox):  {client:>5} bytes");
    println!("update attempt (signed manifest):       {attempt:>5} bytes");
    println!(
        "install session:                        {session:>5} bytes (the engine's {install} included)"
    );
    println!("largest transient buffer:               {transient:>5} bytes");
    println!("client's own total:                     {own:>5} bytes of {BUDGET}");
    println!(
        "with the engine's device, session and read-back: {} bytes of {}",
        own + device + install + READ_BACK_LEN,
        BUDGET + ENGINE_BUDGET
    );
    assert!(
        own <= BUDGET,
        "{own} bytes exceeds the {BUDGET}-byte budget"
    );
    assert!(own + device + install + READ_BACK_LEN <= BUDGET + ENGINE_BUDGET);
}
