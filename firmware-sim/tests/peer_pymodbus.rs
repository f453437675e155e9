//! The simulator against pymodbus 3.16.1, an independent Modbus master, over the pty and
//! over Modbus TCP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{image, peer, vendor_key, wait_until};
use dmr_firmware_sim::{DoorBehaviour, LockSpec, SimConfig, SimHandle};
use serde_json::json;

async fn sim(dir: &tempfile::TempDir, door: DoorBehaviour) -> SimHandle {
    let mut cfg = SimConfig::new(LockSpec::numbered(2));
    cfg.pty_link = Some(dir.path().join("ttyLOCKS"));
    cfg.tcp = Some("127.0.0.1:0".parse().unwrap());
    cfg.vendor_keys = vec![(1, vendor_key().verifying_key())];
    cfg.door = door;
    cfg.reboot_silence_ms = 700;
    cfg.state_file = Some(dir.path().join("state.json"));
    dmr_firmware_sim::start(cfg).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymodbus_is_the_pinned_version() {
    let v = peer(&["version"]).await;
    assert_eq!(v["pymodbus"], "3.16.1", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymodbus_reads_identity_over_pty_and_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(&dir, DoorBehaviour::StaysShut).await;
    let tty = sim.pty_path().unwrap().to_str().unwrap().to_string();
    let tcp = sim.tcp_addr().unwrap().to_string();
    for (transport, target, unit, serial) in [
        ("--serial", &tty, "1", "SIM-0001"),
        ("--serial", &tty, "2", "SIM-0002"),
        ("--tcp", &tcp, "2", "SIM-0002"),
    ] {
        let id = peer(&[transport, target, "--unit", unit, "identity"]).await;
        assert_eq!(id["identity"], "ok", "{transport} unit {unit}: {id}");
        assert_eq!(id["device_type"], 0x4C4B);
        assert_eq!(id["fw_version"], "1.0.0");
        assert_eq!(id["serial"], serial);
        assert_eq!(id["supply_mv"], 12000);
        assert_eq!(
            (id["fw_state"].clone(), id["active_slot"].clone()),
            (json!(0), json!(0))
        );
    }
    // A unit that is not on the bus stays silent.
    let none = peer(&["--serial", &tty, "--unit", "9", "identity"]).await;
    assert_eq!(none["identity"], "timeout", "{none}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymodbus_sees_exceptions_01_02_03() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(&dir, DoorBehaviour::StaysShut).await;
    let tty = sim.pty_path().unwrap().to_str().unwrap().to_string();
    let tcp = sim.tcp_addr().unwrap().to_string();
    for (transport, target) in [("--serial", &tty), ("--tcp", &tcp)] {
        let e = peer(&[transport, target, "--unit", "1", "exceptions"]).await;
        let want = json!({
            "report_device_id": "exception_01",
            "read_past_identity": "exception_02",
            "read_gap": "exception_02",
            "coil_3": "exception_02",
            "pulse_too_short": "exception_03",
            "address_zero": "exception_03",
            "bad_fw_ctrl": "exception_03",
            "verify_when_idle": "exception_03",
            "pulse_ok": "ok",
        });
        assert_eq!(e, want, "over {transport}");
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymodbus_unlock_releases_then_relocks() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(
        &dir,
        DoorBehaviour::PersonOpensAndCloses {
            open_after_ms: 3000,
            close_after_ms: 100,
        },
    )
    .await;
    let tty = sim.pty_path().unwrap().to_str().unwrap().to_string();
    let u = peer(&["--serial", &tty, "--unit", "2", "unlock"]).await;
    assert_eq!(u["write"], "ok", "{u}");
    assert_eq!(u["unlock_coil"], true, "{u}");
    assert_eq!(u["after"]["latch_locked"], false, "{u}");
    assert_eq!(u["after"]["door_closed"], true, "{u}");
    let c = sim.control().clone();
    assert_eq!(c.lock(2).unwrap().actuations, 1);
    assert_eq!(c.lock(1).unwrap().actuations, 0, "lock 1 must not move");
    // The 3000 ms default pulse ends before the person arrives: relocked, door shut.
    wait_until(Duration::from_secs(5), "relock", || {
        c.lock(2).unwrap().latch_locked
    })
    .await;
    let b = peer(&["--serial", &tty, "--unit", "2", "bits"]).await;
    assert_eq!(b["bits"]["latch_locked"], true, "{b}");
    assert_eq!(b["bits"]["door_closed"], true, "{b}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymodbus_flashes_firmware_with_busy_repeat_and_confirm() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(&dir, DoorBehaviour::StaysShut).await;
    let tty = sim.pty_path().unwrap().to_str().unwrap().to_string();
    let img = dir.path().join("fw-1.4.2.bin");
    std::fs::write(&img, image("1.4.2", 1500)).unwrap();
    let img = img.to_str().unwrap();
    let r = peer(&[
        "--serial",
        &tty,
        "--unit",
        "2",
        "--timeout",
        "0.3",
        "flash",
        "--image",
        img,
    ])
    .await;
    assert_eq!(
        (r["total"].clone(), r["begin"].clone()),
        (json!("ok"), json!("ok")),
        "{r}"
    );
    assert_eq!(r["chunks"], 9, "{r}");
    assert_eq!(
        r["repeat_last"], "ok",
        "repeating the last chunk is accepted: {r}"
    );
    assert_eq!(r["out_of_order"], "exception_03", "{r}");
    assert_eq!(r["after_transfer"]["state"], 1, "{r}");
    assert_eq!(r["after_transfer"]["received"], 1616, "{r}");
    assert_eq!(
        r["after_transfer"]["error"], 6,
        "out-of-order chunk sets FW_ERROR 6: {r}"
    );
    assert_eq!(r["verify"], "ok", "{r}");
    assert_eq!(r["during_verify_state"], 2, "{r}");
    assert_eq!(r["abort_during_verify"], "exception_06", "{r}");
    assert_eq!(r["after_verify"]["state"], 3, "{r}");
    assert_eq!(r["activate"], "ok", "{r}");
    assert!(
        r["silent_polls_after_activate"].as_u64().unwrap() >= 1,
        "reboot silence: {r}"
    );
    let after = &r["after_activate"];
    assert_eq!(after["fw_version"], "1.4.2", "{r}");
    assert_eq!(
        (after["fw_state"].clone(), after["active_slot"].clone()),
        (json!(5), json!(1)),
        "{r}"
    );
    assert_eq!(r["confirm"], "ok", "{r}");
    assert_eq!(r["after_confirm"]["state"], 0, "{r}");
    let v = sim.control().lock(2).unwrap();
    assert_eq!(
        (
            v.fw_version.as_str(),
            v.active_slot.as_str(),
            v.fw_state.as_str()
        ),
        ("1.4.2", "B", "idle")
    );
    // Confirmed: a power cycle keeps the new firmware.
    sim.control().power_cycle(2).unwrap();
    assert_eq!(sim.control().lock(2).unwrap().fw_version, "1.4.2");
    assert_eq!(sim.control().lock(1).unwrap().fw_version, "1.0.0");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymodbus_over_tcp_sees_a_foreign_signature_fail() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(&dir, DoorBehaviour::StaysShut).await;
    let tcp = sim.tcp_addr().unwrap().to_string();
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[0x77; 32]);
    let forged =
        dmr_protocol::firmware::build(1, "9.9.9".parse().unwrap(), &[1; 300], 1, &stranger)
            .unwrap();
    let img = dir.path().join("forged.bin");
    std::fs::write(&img, forged).unwrap();
    let r = peer(&[
        "--tcp",
        &tcp,
        "--unit",
        "1",
        "flash",
        "--image",
        img.to_str().unwrap(),
    ])
    .await;
    assert_eq!(r["after_verify"]["state"], 4, "{r}");
    assert_eq!(r["after_verify"]["error"], 5, "bad signature: {r}");
    assert!(r.get("activate").is_none(), "{r}");
    let v = sim.control().lock(1).unwrap();
    assert_eq!(
        (
            v.fw_state.as_str(),
            v.fw_error.as_str(),
            v.fw_version.as_str()
        ),
        ("failed", "bad_signature", "1.0.0")
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymodbus_resumes_a_transfer_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let link = dir.path().join("ttyPY");
    let key = dmr_protocol::keys::public_b64u(&vendor_key().verifying_key());
    let key_arg = format!("1:{key}");
    let args = [
        "--locks",
        "1",
        "--door",
        "shut",
        "--reboot-silence-ms",
        "300",
        "--link",
        link.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--vendor-key",
        &key_arg,
    ];
    let img = dir.path().join("fw.bin");
    std::fs::write(&img, image("5.0.0", 2000)).unwrap();
    let (img, tty) = (img.to_str().unwrap(), link.to_str().unwrap());

    let mut p = common::SimProcess::spawn(&args).await;
    let first = peer(&[
        "--serial",
        tty,
        "flash",
        "--image",
        img,
        "--stop-after",
        "1000",
    ])
    .await;
    assert_eq!(first["stopped_at"], 1000, "{first}");
    p.child.start_kill().unwrap(); // SIGKILL, like a power cut
    p.child.wait().await.unwrap();

    let _p = common::SimProcess::spawn(&args).await;
    let r = peer(&["--serial", tty, "flash", "--image", img, "--resume"]).await;
    assert_eq!(r["status_before"]["state"], 1, "{r}");
    assert_eq!(r["resumed_from"], 1000, "{r}");
    assert_eq!(r["after_verify"]["state"], 3, "{r}");
    assert_eq!(r["after_activate"]["fw_version"], "5.0.0", "{r}");
    assert_eq!(r["after_confirm"]["state"], 0, "{r}");
}
