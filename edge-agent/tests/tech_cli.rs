//! The `dmr-tech` binary end to end against the simulator over a real pty: scan, status,
//! unlock, set, alarm-ack, set-address, fw keygen/sign/inspect, flash, JSON output and the
//! documented exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/sim.rs"]
mod sim;

use std::path::Path;
use std::process::Output;

use dmr_firmware_sim::{AlarmInput, Faults};
use serde_json::Value;
use sim::{start_sim, wait_until};

/// Runs dmr-tech off the async workers (the simulator lives on this runtime).
async fn tech(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_dmr-tech"))
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn args(pty: &Path, rest: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
    v.extend(["--port".to_string(), pty.display().to_string()]);
    v
}

fn json(o: &Output) -> Value {
    let text = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_status_unlock_set_and_alarm_ack() {
    let sim = start_sim(3, |_| {}).await;
    let pty = sim.pty();

    let o = tech(args(
        &pty,
        &["--json", "scan", "--to", "5", "--timeout-ms", "80"],
    ))
    .await;
    assert_eq!(code(&o), 0, "{o:?}");
    let v = json(&o);
    let locks = v["locks"].as_array().unwrap();
    let addrs: Vec<u64> = locks.iter().map(|l| l["addr"].as_u64().unwrap()).collect();
    assert_eq!(addrs, [1, 2, 3]);
    assert_eq!(locks[1]["serial"], "SIM-0002");
    assert_eq!(locks[1]["fw"], "1.0.0");
    assert_eq!(locks[1]["slot"], "A");

    // People's output names the locks too.
    let o = tech(args(&pty, &["scan", "--to", "3"])).await;
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("SIM-0003") && text.contains("3 lock(s) found"),
        "{text}"
    );

    let o = tech(args(&pty, &["unlock", "--addr", "2"])).await;
    assert_eq!(code(&o), 0, "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("lock 2 unlocked"));
    assert_eq!(sim.lock(2).actuations, 1);

    let o = tech(args(
        &pty,
        &[
            "--json",
            "set",
            "--addr",
            "3",
            "--pulse-ms",
            "800",
            "--auto-relock-s",
            "5",
        ],
    ))
    .await;
    assert_eq!(code(&o), 0, "{o:?}");
    assert_eq!(json(&o)["settings"]["unlock_pulse_ms"], 800);
    let v = sim.lock(3);
    assert_eq!((v.pulse_ms, v.auto_relock_s), (800, 5));

    let o = tech(args(&pty, &["--json", "status", "--addr", "2"])).await;
    assert_eq!(code(&o), 0, "{o:?}");
    let v = json(&o);
    assert_eq!(v["locks"][0]["unlock_count"], 1);
    assert_eq!(v["locks"][0]["serial"], "SIM-0002");

    // Tamper is latched until ALARM_ACK (once the input is gone).
    let c = sim.handle.control();
    c.set_alarm(1, AlarmInput::Tamper, true).unwrap();
    c.set_alarm(1, AlarmInput::Tamper, false).unwrap();
    let o = tech(args(&pty, &["--json", "alarm-ack", "--addr", "1"])).await;
    assert_eq!(code(&o), 0, "{o:?}");
    assert_eq!(json(&o)["tamper"], false);
    assert!(!sim.lock(1).tamper);
    sim.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_address_moves_the_lock() {
    let sim = start_sim(2, |_| {}).await;
    let pty = sim.pty();
    // 2 is taken: refused as a usage error.
    let o = tech(args(&pty, &["set-address", "--addr", "1", "--new", "2"])).await;
    assert_eq!(code(&o), 64, "{o:?}");
    let o = tech(args(&pty, &["set-address", "--addr", "1", "--new", "17"])).await;
    assert_eq!(code(&o), 0, "{o:?}");
    wait_until("lock at 17", std::time::Duration::from_secs(5), || {
        sim.handle.control().lock(17).is_some()
    })
    .await;
    assert_eq!(sim.lock(17).serial, "SIM-0001");
    sim.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_error_words() {
    let sim = start_sim(2, |_| {}).await;
    let pty = sim.pty();
    // Usage: 64.
    let o = tech(vec!["unlock".into()]).await;
    assert_eq!(code(&o), 64, "{o:?}");
    let o = tech(args(&pty, &["unlock", "--addr", "0"])).await;
    assert_eq!(code(&o), 64, "{o:?}");
    let o = tech(args(&pty, &["set", "--addr", "1", "--pulse-ms", "5"])).await;
    assert_eq!(code(&o), 64, "{o:?}");
    // --help documents the exit codes.
    let o = tech(vec!["--help".into()]).await;
    assert_eq!(code(&o), 0);
    assert!(String::from_utf8_lossy(&o.stdout).contains("69  unreachable"));

    // Unreachable: 69, with what to check.
    let o = tech(vec![
        "status".into(),
        "--addr".into(),
        "1".into(),
        "--port".into(),
        "/dev/ttyDOESNOTEXIST".into(),
    ])
    .await;
    assert_eq!(code(&o), 69, "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not exist"));
    sim.handle
        .control()
        .set_lock_faults(
            2,
            Faults {
                silent: true,
                ..Faults::default()
            },
        )
        .unwrap();
    let o = tech(args(
        &pty,
        &["--json", "unlock", "--addr", "2", "--timeout-ms", "80"],
    ))
    .await;
    assert_eq!(code(&o), 69, "{o:?}");
    let v = json(&o);
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.contains("lock 2 did not answer") && msg.contains("wiring"),
        "{msg}"
    );
    assert_eq!(sim.lock(2).actuations, 0);
    sim.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fw_keygen_sign_inspect_and_flash_all() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("vendor.pem");
    let o = tech(vec![
        "--json".into(),
        "fw".into(),
        "keygen".into(),
        "--out".into(),
        key.display().to_string(),
    ])
    .await;
    assert_eq!(code(&o), 0, "{o:?}");
    let public = json(&o)["result"]["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    let vk = dmr_protocol::keys::parse_public_b64u(&public).unwrap();

    let payload = dir.path().join("payload.bin");
    std::fs::write(&payload, vec![0xA5u8; 1500]).unwrap();
    let img = dir.path().join("fw.img");
    let o = tech(
        [
            "fw",
            "sign",
            "--payload",
            payload.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--key-id",
            "3",
            "--version",
            "1.4.2",
            "--out",
            img.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    )
    .await;
    assert_eq!(code(&o), 0, "{o:?}");

    let vendor = format!("3:{public}");
    let o = tech(vec![
        "--json".into(),
        "fw".into(),
        "inspect".into(),
        img.display().to_string(),
        "--vendor-key".into(),
        vendor.clone(),
    ])
    .await;
    assert_eq!(code(&o), 0, "{o:?}");
    let v = json(&o);
    assert_eq!(
        (v["version"].as_str(), v["payload_len"].as_u64()),
        (Some("1.4.2"), Some(1500))
    );
    // A truncated copy is reported in words and fails.
    let cut = dir.path().join("cut.img");
    std::fs::write(&cut, &std::fs::read(&img).unwrap()[..1000]).unwrap();
    let o = tech(vec![
        "fw".into(),
        "inspect".into(),
        cut.display().to_string(),
    ])
    .await;
    assert_eq!(code(&o), 1, "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("truncated"));

    let sim = start_sim(2, |c| c.vendor_keys = vec![(3, vk)]).await;
    let o = tech(args(
        &sim.pty(),
        &[
            "--json",
            "flash",
            "--image",
            img.to_str().unwrap(),
            "--all",
            "--to",
            "3",
            "--timeout-ms",
            "100",
        ],
    ))
    .await;
    assert_eq!(code(&o), 0, "{o:?}");
    let v = json(&o);
    assert_eq!(v["ok"], true);
    assert_eq!(v["locks"].as_array().unwrap().len(), 2);
    assert_eq!(v["locks"][1]["report"]["to"], "1.4.2");
    for a in [1, 2] {
        assert_eq!(sim.lock(a).fw_version, "1.4.2");
    }
    sim.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_tcp_instead_of_a_serial_port() {
    let sim = start_sim(2, |c| c.tcp = Some("127.0.0.1:0".parse().unwrap())).await;
    let tcp = sim.handle.tcp_addr().unwrap().to_string();
    let o = tech(vec![
        "--json".into(),
        "scan".into(),
        "--tcp".into(),
        tcp.clone(),
        "--to".into(),
        "4".into(),
        "--timeout-ms".into(),
        "80".into(),
    ])
    .await;
    assert_eq!(code(&o), 0, "{o:?}");
    assert_eq!(json(&o)["locks"].as_array().unwrap().len(), 2);
    let o = tech(vec![
        "unlock".into(),
        "--tcp".into(),
        tcp,
        "--addr".into(),
        "1".into(),
    ])
    .await;
    assert_eq!(code(&o), 0, "{o:?}");
    assert_eq!(sim.lock(1).actuations, 1);
    // --port and --tcp together is a usage error.
    let o = tech(vec![
        "unlock".into(),
        "--tcp".into(),
        "127.0.0.1:1".into(),
        "--port".into(),
        "/dev/null".into(),
        "--addr".into(),
        "1".into(),
    ])
    .await;
    assert_eq!(code(&o), 64, "{o:?}");
    sim.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_baud_change_takes_effect_after_the_reboot() {
    // Line timing on: a lock set to another baud than the port hears only noise.
    let sim = start_sim(1, |c| c.line_baud = Some(9600)).await;
    let pty = sim.pty();
    let o = tech(args(
        &pty,
        &["set", "--addr", "1", "--set-baud", "19200", "--reboot"],
    ))
    .await;
    assert_eq!(code(&o), 0, "{o:?}");
    wait_until(
        "the lock at 19200",
        std::time::Duration::from_secs(5),
        || {
            let v = sim.lock(1);
            v.baud == 19200 && !v.rebooting
        },
    )
    .await;
    let o = tech(args(
        &pty,
        &["status", "--addr", "1", "--timeout-ms", "100"],
    ))
    .await;
    assert_eq!(code(&o), 69, "the lock still answered at 9600: {o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("baud rate"));
    let o = tech(args(
        &pty,
        &["--json", "status", "--addr", "1", "--baud", "19200"],
    ))
    .await;
    assert_eq!(code(&o), 0, "{o:?}");
    assert_eq!(json(&o)["locks"][0]["baud"], 19200);
    sim.handle.shutdown().await;
}
