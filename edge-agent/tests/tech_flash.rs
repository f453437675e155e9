//! Firmware flashing against the real simulator over a real pty: lossy bus, rejected images,
//! test-and-confirm rollback, and a simulator process killed with SIGKILL mid-transfer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/sim.rs"]
mod sim;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use dmr_edge_agent::tech::flash::{self, FlashError, FlashOptions};
use dmr_firmware_sim::Faults;
use dmr_protocol::registers::FwErrorCode;
use sim::{SimProcess, image, image_with, open_bus, start_sim, vendor_key, wait_until};

fn no_progress(_: flash::Progress) {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flash_completes_with_five_percent_of_replies_dropped() {
    let sim = start_sim(2, |_| {}).await;
    let bus = open_bus(&sim.pty(), |c| {
        c.request_timeout = Duration::from_millis(60);
        c.read_retries = 5;
        c.offline_after = 1000;
    })
    .await;
    sim.handle
        .control()
        .set_faults(Faults {
            drop_reply_rate: 0.05,
            ..Faults::default()
        })
        .unwrap();
    // ~165 exchanges: at a 5% loss rate the chance that none is lost is 0.02%.
    let img = image("1.2.3", 30_000);
    let rep = flash::flash(&bus, 2, &img, FlashOptions::default(), &no_progress)
        .await
        .unwrap();
    assert_eq!((rep.from.as_str(), rep.to.as_str()), ("1.0.0", "1.2.3"));
    assert!(rep.confirmed);
    let v = sim.lock(2);
    // VERIFY checked the SHA-256 of what arrived: the running version proves the image
    // was transferred intact despite the losses.
    assert_eq!(
        (v.fw_version.as_str(), v.active_slot.as_str()),
        ("1.2.3", "B")
    );
    assert_ne!(v.fw_state, "running_unconfirmed");
    assert!(
        bus.counters().timeouts > 0,
        "no reply was dropped: {:?}",
        bus.counters()
    );
    assert_eq!(
        sim.lock(1).fw_version,
        "1.0.0",
        "the other lock is untouched"
    );
    sim.handle.shutdown().await;
}

async fn rejected(img: Vec<u8>) -> (FlashError, dmr_firmware_sim::LockView) {
    let sim = start_sim(1, |_| {}).await;
    let bus = open_bus(&sim.pty(), |_| {}).await;
    let err = flash::flash(&bus, 1, &img, FlashOptions::default(), &no_progress)
        .await
        .unwrap_err();
    let view = sim.lock(1);
    sim.handle.shutdown().await;
    (err, view)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signature_wrong_hardware_and_truncated_images_leave_the_old_firmware() {
    let other_key = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let mut truncated = image("2.0.0", 3000);
    truncated.truncate(2500);
    let cases = [
        (
            image_with("2.0.0", 3000, 1, &other_key),
            FwErrorCode::BadSignature,
            "signature",
        ),
        (
            image_with("2.0.0", 3000, 9, &vendor_key()),
            FwErrorCode::WrongHardware,
            "other hardware",
        ),
        (truncated, FwErrorCode::BadLength, "length"),
    ];
    for (img, code, words) in cases {
        let (err, view) = rejected(img).await;
        match &err {
            FlashError::Rejected { code: c, .. } => assert_eq!(*c, code, "{err}"),
            other => panic!("expected a rejection, got {other}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(words), "{msg}");
        assert!(msg.contains("old firmware 1.0.0 keeps running"), "{msg}");
        assert_eq!(
            (view.fw_version.as_str(), view.active_slot.as_str()),
            ("1.0.0", "A")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_image_rolls_back_on_reboot() {
    let sim = start_sim(1, |_| {}).await;
    let bus = open_bus(&sim.pty(), |_| {}).await;
    let img = image("1.1.0", 2000);
    let rep = flash::flash(&bus, 1, &img, FlashOptions { confirm: false }, &no_progress)
        .await
        .unwrap();
    assert!(!rep.confirmed);
    let v = sim.lock(1);
    assert_eq!(
        (v.fw_version.as_str(), v.fw_state.as_str()),
        ("1.1.0", "running_unconfirmed")
    );
    // Reboot without CONFIRM: the controller returns to the old slot.
    let _ = bus.reboot(1).await;
    let id = flash::wait_for_lock(&bus, 1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(id.fw_version.to_string(), "1.0.0");
    assert_eq!(sim.lock(1).active_slot, "A");
    sim.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_simulator_mid_flash_and_restarting_it_resumes_the_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let pty = dir.path().join("ttySIM");
    let state = dir.path().join("state.json");
    let key = dmr_protocol::keys::public_b64u(&vendor_key().verifying_key());
    let args: Vec<String> = [
        "--lock",
        "1:SN-KILL",
        "--state",
        state.to_str().unwrap(),
        "--vendor-key",
        &format!("{}:{key}", sim::VENDOR_KEY_ID),
        "--reboot-silence-ms",
        "300",
        "--door",
        "shut",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let img = Arc::new(image("3.0.0", 40_000));

    let proc1 = SimProcess::start(&args, &pty);
    let bus = open_bus(&pty, |c| {
        c.request_timeout = Duration::from_millis(100);
        c.read_retries = 1;
    })
    .await;
    let done = Arc::new(AtomicU32::new(0));
    let d = Arc::clone(&done);
    let (b, i) = (bus.clone(), Arc::clone(&img));
    let task = tokio::spawn(async move {
        flash::flash(&b, 1, &i, FlashOptions::default(), &move |p| {
            d.store(p.done, Ordering::SeqCst)
        })
        .await
    });
    wait_until("a third of the image", Duration::from_secs(30), || {
        done.load(Ordering::SeqCst) > 14_000
    })
    .await;
    proc1.kill9();
    let err = task.await.unwrap().unwrap_err();
    let at_kill = done.load(Ordering::SeqCst);
    assert!(at_kill < img.len() as u32, "finished before the kill");
    drop(err);
    // While the simulator is dead the port is gone: requests fail as unreachable.
    let down = bus.fw_status(1).await.unwrap_err();
    assert!(down.is_unreachable(), "{down}");

    // Power back: the same state file, a new pty behind the same path. The same bus handle
    // reopens the port by itself.
    let _proc2 = SimProcess::start(&args, &pty);
    let mut st = None;
    for _ in 0..50 {
        match bus.fw_status(1).await {
            Ok(s) => {
                st = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let st = st.expect("the bus did not reopen the restarted simulator's pty");
    assert!(
        st.received > 0,
        "the lock forgot what it had received: {st:?}"
    );
    let rep = flash::flash(&bus, 1, &img, FlashOptions::default(), &no_progress)
        .await
        .unwrap();
    assert!(rep.resumed_from > 0, "{rep:?}");
    assert!(rep.resumed_from <= at_kill + 200, "{rep:?} vs {at_kill}");
    assert_eq!(rep.to, "3.0.0");
    assert_eq!(
        bus.identity(1).await.unwrap().fw_version.to_string(),
        "3.0.0"
    );
}
