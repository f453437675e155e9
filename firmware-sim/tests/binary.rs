//! The `dmr-lock-sim` binary as a process: what it prints, how it exits, and its control
//! HTTP API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{BIN, SimProcess, http, wait_until};
use serde_json::json;

async fn exit_code(args: &[&str]) -> (i32, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(BIN)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prints_endpoints_serves_and_exits_zero_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyBIN");
    let mut p = SimProcess::spawn(&[
        "--lock",
        "3:SN-THREE",
        "--lock",
        "7",
        "--link",
        link.to_str().unwrap(),
        "--tcp",
        "127.0.0.1:0",
        "--control",
        "127.0.0.1:0",
        "--door",
        "shut",
    ])
    .await;
    assert_eq!(p.pty.as_deref(), Some(link.as_path()));
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let tcp = p.tcp.unwrap();
    assert!(tcp.ip().is_loopback() && tcp.port() != 0);
    let ctl = p.control.unwrap();
    let (status, locks) = http(ctl, "GET", "/locks", None);
    assert_eq!(status, 200);
    let serials: Vec<&str> = locks
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["serial"].as_str().unwrap())
        .collect();
    assert_eq!(serials, ["SN-THREE", "SIM-0007"]);
    assert_eq!(locks[1]["addr"], 7);

    // Modbus TCP answers a raw MBAP request for unit 3's DEVICE_TYPE.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(tcp).await.unwrap();
    let pdu = dmr_protocol::modbus::Request::ReadInputRegisters { addr: 0, count: 1 }.encode_pdu();
    s.write_all(&dmr_protocol::modbus::tcp::encode(0x1234, 3, &pdu))
        .await
        .unwrap();
    let mut reply = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, [0x12, 0x34, 0, 0, 0, 5, 3, 4, 2, 0x4C, 0x4B]);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(p.child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = tokio::time::timeout(Duration::from_secs(10), p.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.code(), Some(0));
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "the pty link is removed on exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_exit_64_and_bad_config_exits_78() {
    let (code, err) = exit_code(&["--no-such-flag"]).await;
    assert_eq!(code, 64, "{err}");
    let (code, err) = exit_code(&["--door", "sometimes"]).await;
    assert_eq!(code, 64, "{err}");
    let (code, err) = exit_code(&["--locks", "2", "--lock", "3"]).await;
    assert_eq!(code, 64, "{err}");
    let (code, err) = exit_code(&["--vendor-key", "1:AAAA"]).await;
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("--vendor-key 1"), "{err}");
    let (code, err) = exit_code(&[
        "--lock",
        "3",
        "--lock",
        "3:X",
        "--fw",
        "1.2",
        "--line-baud",
        "1234",
    ])
    .await;
    assert_eq!(code, 78, "{err}");
    for want in ["address 3 used twice", "--fw", "line baud 1234"] {
        assert!(
            err.contains(want),
            "every problem is reported at once; missing {want:?}: {err}"
        );
    }
    let (code, _) = exit_code(&["--help"]).await;
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_drives_locks_and_reports_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = dmr_firmware_sim::SimConfig::new(dmr_firmware_sim::LockSpec::numbered(2));
    cfg.control = Some("127.0.0.1:0".parse().unwrap());
    cfg.door = dmr_firmware_sim::DoorBehaviour::StaysShut;
    cfg.state_file = Some(dir.path().join("s.json"));
    let sim = dmr_firmware_sim::start(cfg).await.unwrap();
    let a = sim.control_addr().unwrap();

    let (s, v) = http(a, "GET", "/locks/2", None);
    assert_eq!(s, 200);
    assert_eq!(
        (
            v["serial"].clone(),
            v["fw_version"].clone(),
            v["active_slot"].clone()
        ),
        (json!("SIM-0002"), json!("1.0.0"), json!("A"))
    );
    let (s, e) = http(a, "GET", "/locks/9", None);
    assert_eq!(s, 404);
    assert_eq!(e["error"]["code"], "unknown_lock");
    assert!(e["error"]["message"].as_str().unwrap().contains('9'));
    let (s, e) = http(a, "POST", "/locks/1/door", Some("{\"open\":\"yes\"}"));
    assert_eq!(s, 422);
    assert_eq!(e["error"]["code"], "invalid_body");
    let (s, _) = http(
        a,
        "POST",
        "/locks/1/alarm",
        Some("{\"kind\":\"earthquake\",\"on\":true}"),
    );
    assert_eq!(s, 422);
    let (s, e) = http(a, "PUT", "/faults", Some("{\"drop_reply_rate\":2}"));
    assert_eq!(s, 422, "{e}");
    let (s, _) = http(a, "POST", "/locks/9/power_cycle", None);
    assert_eq!(s, 404);

    // Opening a latched door is a forced entry.
    let (s, v) = http(a, "POST", "/locks/1/door", Some("{\"open\":true}"));
    assert_eq!(s, 200);
    assert_eq!(
        (v["door_closed"].clone(), v["forced_open"].clone()),
        (json!(false), json!(true))
    );
    for (kind, field) in [("tamper", "tamper"), ("jam", "fault")] {
        let (s, v) = http(
            a,
            "POST",
            "/locks/2/alarm",
            Some(&format!("{{\"kind\":\"{kind}\",\"on\":true}}")),
        );
        assert_eq!(s, 200);
        assert_eq!(v[field], true, "{kind}: {v}");
    }
    let (_, v) = http(
        a,
        "POST",
        "/locks/2/alarm",
        Some("{\"kind\":\"low_voltage\",\"on\":true}"),
    );
    assert!(v["supply_mv"].as_u64().unwrap() < 10500, "{v}");
    assert_eq!(v["last_error"], 3);
    let (_, v) = http(
        a,
        "POST",
        "/locks/2/alarm",
        Some("{\"kind\":\"forced_open\",\"on\":true}"),
    );
    assert_eq!(
        (v["forced_open"].clone(), v["door_closed"].clone()),
        (json!(true), json!(false))
    );

    let (s, f) = http(a, "PUT", "/faults", Some("{\"extra_delay_ms\":5}"));
    assert_eq!(s, 200);
    assert_eq!(f["extra_delay_ms"], 5);
    assert_eq!(f["silent"], false);
    assert_eq!(sim.control().faults().extra_delay_ms, 5);
    let (s, _) = http(a, "PUT", "/locks/2/faults", Some("{\"silent\":true}"));
    assert_eq!(s, 200);

    let (s, _) = http(a, "POST", "/locks/2/power_cycle", None);
    assert_eq!(s, 204);
    assert!(sim.control().lock(2).unwrap().rebooting);
    wait_until(Duration::from_secs(3), "reboot silence to end", || {
        !sim.control().lock(2).unwrap().rebooting
    })
    .await;
    let (s, _) = http(a, "GET", "/no/such/thing", None);
    assert_eq!(s, 404);
    sim.shutdown().await;
}
