//! An install fed the way a download feeds it: resumed with `Range`, a 200
//! to a resume, a broken connection, a server that keeps failing, and the
//! one restart from byte 0 after a stale resume.
#![allow(clippy::unwrap_used)]

mod common;

use airlift_client::download::Interrupt;
use airlift_client::{Chunk, Failure};
use airlift_protocol::EventKind;
use common::*;

/// Feeds `body` to the session as a response to its request, in `chunk`
/// sized pieces, stopping after `cut` bytes (a dropped connection).
fn respond(
    session: &mut airlift_client::Session<'_, '_, &mut airlift_engine::sim::SimFlash>,
    status: u16,
    content_range: Option<&str>,
    body: &[u8],
    cut: Option<usize>,
) -> Result<Option<Chunk>, Interrupt> {
    let fetch = session.request().unwrap();
    session.on_response(fetch, status, content_range)?;
    let body = &body[..cut.unwrap_or(body.len()).min(body.len())];
    for piece in body.chunks(1000) {
        match session.on_data(piece).unwrap() {
            Chunk::Written(_) => {}
            restarted => return Ok(Some(restarted)),
        }
    }
    session.on_end().map(|()| None)
}

#[test]
fn a_dropped_download_resumes_from_the_last_checkpoint_and_a_200_is_skipped_to_it() {
    let mut rig = Rig::new();
    let (mut client, _) = rig.power_on(&mut Lines::default());
    let v2 = image("2.0.0");
    let offer = update(5, &v2);
    let clock = rig.clock;
    let attempt = client
        .begin_assigned(&mut rig.dev(), &offer, clock, &mut ())
        .unwrap()
        .unwrap();
    {
        let mut dev = rig.dev();
        let mut session = client.start(&mut dev, &attempt, 0, &mut ()).unwrap();
        assert_eq!(session.request().unwrap().from, 0);
        let cut = respond(&mut session, 200, None, &v2, Some(10_000)).unwrap_err();
        let closed = format!("connection closed at byte 10000 of {}", v2.len());
        assert_eq!(cut, Interrupt::Retry(closed.as_str().into()));
        // The engine keeps what it wrote; the power goes before a checkpoint.
    }
    // After a reset the install resumes at the engine's checkpoint (whole sectors).
    let mut dev = rig.dev();
    let mut session = client.start(&mut dev, &attempt, 0, &mut ()).unwrap();
    let fetch = session.request().unwrap();
    assert_eq!(fetch.from, 8192);
    assert_eq!(fetch.range().unwrap().as_str(), "bytes=8192-");
    // The server ignores the range: the whole image, skipped to byte 8192.
    assert_eq!(respond(&mut session, 200, None, &v2, None), Ok(None));
    assert_eq!(session.request(), None, "every byte is in");
    let activated = client
        .finish_install(&mut session, &attempt, 0, &mut ())
        .unwrap();
    assert!(activated.is_some());
    let details: Vec<Option<String>> = client
        .take_events(0)
        .iter()
        .filter(|e| e.kind == EventKind::Downloading)
        .map(|e| e.detail.as_ref().map(|d| d.to_string()))
        .collect();
    assert_eq!(details, [None, Some("resuming at byte 8192".to_owned())]);
}

#[test]
fn a_download_gives_up_after_five_retries_or_at_once_on_a_refusal() {
    let mut rig = Rig::new();
    let (mut client, _) = rig.power_on(&mut Lines::default());
    let v2 = image("2.0.0");
    let clock = rig.clock;
    let mut dev = rig.dev();
    let attempt = client
        .begin_assigned(&mut dev, &update(5, &v2), clock, &mut ())
        .unwrap()
        .unwrap();
    let mut session = client.start(&mut dev, &attempt, 0, &mut ()).unwrap();
    for _ in 0..5 {
        let why = respond(&mut session, 503, None, &[], None).unwrap_err();
        assert_eq!(session.interrupted(why), Ok(()));
    }
    let why = respond(&mut session, 502, None, &[], None).unwrap_err();
    assert_eq!(
        session.interrupted(why),
        Err(Failure::Download("server answered 502".into()))
    );
    let why = respond(&mut session, 403, None, &[], None).unwrap_err();
    assert_eq!(
        session.interrupted(why),
        Err(Failure::Download(
            "download refused: server answered 403".into()
        ))
    );
    let failure = session
        .interrupted(Interrupt::Retry("x".into()))
        .unwrap_err();
    drop(session);
    // A server's download that gave up resumes at the next check-in: no result.
    let mut lines = Lines::default();
    let refusal = client
        .install_failed(&mut dev, &attempt, failure, clock, &mut lines)
        .unwrap();
    assert_eq!(refusal, None);
    assert_eq!(lines.0, ["download interrupted, will resume: x"]);
    assert!(client.notes().pending.is_some(), "still pending");
}

#[test]
fn a_stale_resume_begins_again_from_byte_zero_once_and_then_activates() {
    let mut rig = Rig::new();
    let (mut client, _) = rig.power_on(&mut Lines::default());
    let v2 = image("2.0.0");
    let clock = rig.clock;
    let attempt = client
        .begin_assigned(&mut rig.dev(), &update(6, &v2), clock, &mut ())
        .unwrap()
        .unwrap();
    // An earlier attempt was fed other bytes under the same manifest (a
    // server whose artifact changed): 8 KiB of them are in the slot,
    // vouched for by a checkpoint.
    let mut wrong = v2.clone();
    wrong[9_000] ^= 0xFF;
    {
        let mut dev = rig.dev();
        let mut session = client.start(&mut dev, &attempt, 0, &mut ()).unwrap();
        let fetch = session.request().unwrap();
        session.on_response(fetch, 200, None).unwrap();
        session.on_data(&wrong[..12_000]).unwrap();
    }
    let mut lines = Lines::default();
    let mut dev = rig.dev();
    let mut session = client.start(&mut dev, &attempt, 0, &mut ()).unwrap();
    let fetch = session.request().unwrap();
    assert_eq!(fetch.from, 8192);
    session.on_response(fetch, 200, None).unwrap();
    let mut outcome = None;
    for piece in wrong.chunks(4096) {
        if let Chunk::Restarted { resumed_at } = session.on_data(piece).unwrap() {
            outcome = Some(resumed_at);
            client.restarted(&attempt, resumed_at, 0, &mut lines);
            break;
        }
    }
    let finished = if outcome.is_none() {
        client
            .finish_install(&mut session, &attempt, 0, &mut lines)
            .unwrap()
    } else {
        None
    };
    assert_eq!(finished, None, "not activated: began again");
    assert!(
        lines
            .0
            .iter()
            .any(|l| l.contains("install again from byte 0")),
        "{:#?}",
        lines.0
    );
    assert_eq!(session.request().unwrap().from, 0, "from byte 0");
    assert_eq!(respond(&mut session, 200, None, &v2, None), Ok(None));
    assert!(
        client
            .finish_install(&mut session, &attempt, 0, &mut ())
            .unwrap()
            .is_some()
    );
}

#[test]
fn an_image_that_fails_from_byte_zero_is_refused_without_a_restart() {
    let mut rig = Rig::new();
    let (mut client, _) = rig.power_on(&mut Lines::default());
    let v2 = image("2.0.0");
    let mut bad = v2.clone();
    bad[15_000] ^= 0xFF;
    let clock = rig.clock;
    let attempt = client
        .begin_assigned(&mut rig.dev(), &update(6, &v2), clock, &mut ())
        .unwrap()
        .unwrap();
    let mut dev = rig.dev();
    let mut session = client.start(&mut dev, &attempt, 0, &mut ()).unwrap();
    // Bytes at hand that do not verify, written from byte 0: nothing was
    // resumed, so the refusal is the image's verdict at once.
    session.write_all(&bad).unwrap();
    let failure = client
        .finish_install(&mut session, &attempt, 0, &mut ())
        .unwrap_err();
    assert_eq!(
        failure,
        Failure::Refused(airlift_engine::Error::ChecksumMismatch)
    );
}
