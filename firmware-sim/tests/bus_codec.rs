//! Bus behaviour seen through `dmr-protocol`'s own codec over the real pty: firmware
//! rollback, kill -9 and resume, line timing, fault injection, broadcast, bad frames and
//! address changes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Answer, RtuMaster, SimProcess, image, vendor_key, wait_until};
use dmr_firmware_sim::{DoorBehaviour, Faults, LockSpec, SimConfig, SimHandle};
use dmr_protocol::modbus::{ExceptionCode, Request, Response, rtu};
use dmr_protocol::registers::{
    FwCtrl, FwState, FwStatus, FwVersion, Identity, Slot, coil, holding, input, pack_chunk,
    u32_to_regs,
};

const SHORT: Duration = Duration::from_millis(300);

async fn sim(dir: &tempfile::TempDir, tweak: impl FnOnce(&mut SimConfig)) -> SimHandle {
    let mut cfg = SimConfig::new(LockSpec::numbered(2));
    cfg.pty_link = Some(dir.path().join("tty"));
    cfg.vendor_keys = vec![(1, vendor_key().verifying_key())];
    cfg.door = DoorBehaviour::StaysShut;
    cfg.reboot_silence_ms = 400;
    tweak(&mut cfg);
    dmr_firmware_sim::start(cfg).await.unwrap()
}

fn fw_status(m: &mut RtuMaster, unit: u8) -> FwStatus {
    FwStatus::from_regs(&m.read_input(unit, input::FW_STATE, input::FW_COUNT)).unwrap()
}

fn identity(m: &mut RtuMaster, unit: u8) -> Identity {
    Identity::from_regs(&m.read_input(unit, 0, input::IDENTITY_COUNT)).unwrap()
}

fn ctrl(m: &mut RtuMaster, unit: u8, c: FwCtrl) -> Response {
    m.ok(
        unit,
        Request::WriteSingleRegister {
            addr: holding::FW_CTRL,
            value: c.to_reg(),
        },
    )
}

fn begin(m: &mut RtuMaster, unit: u8, total: usize) {
    let [hi, lo] = u32_to_regs(total as u32);
    m.write_regs(unit, holding::FW_TOTAL_SIZE, vec![hi, lo]);
    assert!(matches!(
        ctrl(m, unit, FwCtrl::Begin),
        Response::WriteSingleRegister { .. }
    ));
}

/// Sends chunks from `from` until `until` bytes; returns the offset reached.
fn send(m: &mut RtuMaster, unit: u8, img: &[u8], from: usize, until: usize) -> usize {
    let mut off = from;
    while off < until {
        let end = (off + 200).min(until);
        let r = m.write_regs(
            unit,
            holding::FW_CHUNK_OFFSET,
            pack_chunk(off as u32, &img[off..end]).unwrap(),
        );
        assert!(
            matches!(r, Response::WriteMultipleRegisters { .. }),
            "chunk at {off}: {r:?}"
        );
        off = end;
    }
    off
}

/// Polls FW_STATE while the lock may be silent (rebooting) or verifying.
fn wait_fw(m: &mut RtuMaster, unit: u8, want: FwState) -> FwStatus {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = m.request(
            unit,
            &Request::ReadInputRegisters {
                addr: input::FW_STATE,
                count: input::FW_COUNT,
            },
            SHORT,
        );
        if let Answer::Reply {
            response: Response::Registers(regs),
            ..
        } = r
        {
            let s = FwStatus::from_regs(&regs).unwrap();
            if s.state == want {
                return s;
            }
        }
        assert!(Instant::now() < deadline, "FW_STATE never became {want:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cycle_while_unconfirmed_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(&dir, |c| c.control = Some("127.0.0.1:0".parse().unwrap())).await;
    let mut m = RtuMaster::open(sim.pty_path().unwrap());
    let img = image("2.0.1", 900);
    begin(&mut m, 1, img.len());
    send(&mut m, 1, &img, 0, img.len());
    ctrl(&mut m, 1, FwCtrl::Verify);
    wait_fw(&mut m, 1, FwState::Verified);
    ctrl(&mut m, 1, FwCtrl::Activate);
    let s = wait_fw(&mut m, 1, FwState::RunningUnconfirmed);
    assert_eq!(s.active_slot, Slot::B);
    assert_eq!(identity(&mut m, 1).fw_version.to_string(), "2.0.1");

    // The power cut comes through the control HTTP API.
    let (status, _) = common::http(
        sim.control_addr().unwrap(),
        "POST",
        "/locks/1/power_cycle",
        None,
    );
    assert_eq!(status, 204);
    // Silent while it restarts, then back on the old slot and version.
    assert_eq!(
        m.request(1, &Request::ReadInputRegisters { addr: 0, count: 1 }, SHORT),
        Answer::Timeout
    );
    let s = wait_fw(&mut m, 1, FwState::Idle);
    assert_eq!(s.active_slot, Slot::A);
    assert_eq!(
        identity(&mut m, 1).fw_version,
        FwVersion {
            major: 1,
            minor: 0,
            patch: 0
        }
    );
    // CONFIRM now has nothing to confirm.
    let r = m.ok(
        1,
        Request::WriteSingleRegister {
            addr: holding::FW_CTRL,
            value: FwCtrl::Confirm.to_reg(),
        },
    );
    assert_eq!(
        r,
        Response::WriteSingleRegister {
            addr: holding::FW_CTRL,
            value: 5
        },
        "idempotent confirm on a confirmed slot"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_transfer_resumes_from_fw_received() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let link = dir.path().join("ttyK");
    let key = dmr_protocol::keys::public_b64u(&vendor_key().verifying_key());
    let args = [
        "--locks",
        "2",
        "--door",
        "shut",
        "--reboot-silence-ms",
        "300",
        "--link",
        link.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--vendor-key",
        &format!("1:{key}"),
    ];
    let img = image("3.1.4", 2500);
    let mut p = SimProcess::spawn(&args).await;
    let mut m = RtuMaster::open(p.pty.as_deref().unwrap());
    // Also count an unlock, to see counters survive.
    m.ok(
        2,
        Request::WriteSingleCoil {
            addr: coil::UNLOCK,
            value: true,
        },
    );
    begin(&mut m, 2, img.len());
    let reached = send(&mut m, 2, &img, 0, 1400);
    assert_eq!(fw_status(&mut m, 2).received, 1400);
    drop(m);
    p.child.start_kill().unwrap(); // SIGKILL: no chance to flush anything
    let status = p.child.wait().await.unwrap();
    assert!(!status.success(), "killed, not exited: {status}");

    let mut p = SimProcess::spawn(&args).await;
    let mut m = RtuMaster::open(p.pty.as_deref().unwrap());
    let s = fw_status(&mut m, 2);
    assert_eq!(
        (s.state, s.received),
        (FwState::Receiving, reached as u32),
        "resume point survives kill -9"
    );
    assert_eq!(identity(&mut m, 2).unlock_count, 1);
    // The chunk accepted last may be repeated after a power cut...
    let again = m.write_regs(
        2,
        holding::FW_CHUNK_OFFSET,
        pack_chunk(1200, &img[1200..1400]).unwrap(),
    );
    assert!(
        matches!(again, Response::WriteMultipleRegisters { .. }),
        "{again:?}"
    );
    // ...but a gap is refused with 03 and FW_ERROR 6.
    let gap = m.request(
        2,
        &Request::WriteMultipleRegisters {
            addr: holding::FW_CHUNK_OFFSET,
            values: pack_chunk(1600, &img[1600..1800]).unwrap(),
        },
        Duration::from_secs(2),
    );
    assert!(
        matches!(
            gap,
            Answer::Reply {
                response: Response::Exception {
                    code: ExceptionCode::IllegalDataValue,
                    ..
                },
                ..
            }
        ),
        "{gap:?}"
    );
    send(&mut m, 2, &img, s.received as usize, img.len());
    ctrl(&mut m, 2, FwCtrl::Verify);
    wait_fw(&mut m, 2, FwState::Verified);
    ctrl(&mut m, 2, FwCtrl::Activate);
    wait_fw(&mut m, 2, FwState::RunningUnconfirmed);
    ctrl(&mut m, 2, FwCtrl::Confirm);
    let s = wait_fw(&mut m, 2, FwState::Idle);
    assert_eq!(s.active_slot, Slot::B);
    assert_eq!(identity(&mut m, 2).fw_version.to_string(), "3.1.4");
    assert_eq!(identity(&mut m, 1).fw_version.to_string(), "1.0.0");
    // A clean stop keeps the confirmed slot too.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(p.child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = tokio::time::timeout(Duration::from_secs(10), p.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(st.success(), "SIGTERM exits 0: {st}");
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(saved.contains("3.1.4"), "{saved}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_timing_delays_replies_by_their_wire_time() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(&dir, |c| c.line_baud = Some(9600)).await;
    let mut m = RtuMaster::open(sim.pty_path().unwrap());
    // 8-byte request, 37-byte reply (16 registers) at 9600 baud: the master has the whole
    // reply after both frames and the silence that ends the request; the silence after the
    // reply is the master's to keep.
    let wire = rtu::char_time(8 + 5 + 32, 9600) + rtu::inter_frame_silence(9600);
    assert!(wire > Duration::from_millis(50), "{wire:?}");
    for _ in 0..3 {
        let t = Instant::now();
        m.read_input(1, 0, 16);
        let took = t.elapsed();
        assert!(
            took >= wire,
            "reply after {took:?}, the wire needs {wire:?}"
        );
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_drop_corrupt_delay_and_misaddress_replies() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(&dir, |_| {}).await;
    let c = sim.control().clone();
    let mut m = RtuMaster::open(sim.pty_path().unwrap());
    let read = Request::ReadInputRegisters { addr: 0, count: 1 };

    // A dropped reply: the unlock still happened, once.
    c.set_lock_faults(
        1,
        Faults {
            drop_reply_rate: 1.0,
            ..Faults::default()
        },
    )
    .unwrap();
    let r = m.request(
        1,
        &Request::WriteSingleCoil {
            addr: coil::UNLOCK,
            value: true,
        },
        SHORT,
    );
    assert_eq!(r, Answer::Timeout);
    assert_eq!(c.lock(1).unwrap().actuations, 1);
    assert!(!c.lock(1).unwrap().latch_locked);
    // Lock 2 is unaffected by lock 1's faults.
    assert!(matches!(
        m.request(2, &read, SHORT),
        Answer::Reply { unit: 2, .. }
    ));

    c.set_lock_faults(
        1,
        Faults {
            corrupt_crc_rate: 1.0,
            ..Faults::default()
        },
    )
    .unwrap();
    assert_eq!(m.request(1, &read, SHORT), Answer::BadCrc);

    c.set_lock_faults(
        1,
        Faults {
            wrong_unit_rate: 1.0,
            ..Faults::default()
        },
    )
    .unwrap();
    assert!(matches!(
        m.request(1, &read, SHORT),
        Answer::Reply { unit: 2, .. }
    ));

    c.set_lock_faults(1, Faults::default()).unwrap();
    c.set_faults(Faults {
        extra_delay_ms: 250,
        ..Faults::default()
    })
    .unwrap();
    let t = Instant::now();
    assert!(matches!(
        m.request(2, &read, Duration::from_secs(2)),
        Answer::Reply { unit: 2, .. }
    ));
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );

    c.set_faults(Faults {
        silent: true,
        ..Faults::default()
    })
    .unwrap();
    assert_eq!(m.request(2, &read, SHORT), Answer::Timeout);
    c.set_faults(Faults::default()).unwrap();
    assert!(matches!(
        m.request(2, &read, SHORT),
        Answer::Reply { unit: 2, .. }
    ));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_unknown_units_and_bad_frames_get_no_reply() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(&dir, |_| {}).await;
    let c = sim.control().clone();
    let mut m = RtuMaster::open(sim.pty_path().unwrap());
    let set_pulse = Request::WriteSingleRegister {
        addr: holding::UNLOCK_PULSE_MS,
        value: 777,
    };
    assert_eq!(m.request(0, &set_pulse, SHORT), Answer::Timeout);
    assert!(
        c.locks().iter().all(|l| l.pulse_ms == 777),
        "broadcast applied to all"
    );
    let read = Request::ReadInputRegisters { addr: 0, count: 1 };
    assert_eq!(m.request(9, &read, SHORT), Answer::Timeout, "no lock at 9");
    let mut bad = rtu::encode(1, &read.encode_pdu());
    let n = bad.len();
    bad[n - 1] ^= 0xFF;
    assert_eq!(
        m.raw(&bad, &read, SHORT),
        Answer::Timeout,
        "bad CRC is discarded silently"
    );
    // The bus recovers at once for the next good frame.
    assert!(matches!(
        m.request(1, &read, SHORT),
        Answer::Reply { unit: 1, .. }
    ));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_and_baud_change_after_reboot() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(&dir, |_| {}).await;
    let c = sim.control().clone();
    let mut m = RtuMaster::open(sim.pty_path().unwrap());
    m.write_regs(2, holding::UNIT_ADDRESS, vec![42, 1]);
    assert_eq!(c.lock(2).unwrap().pending_address, Some(42));
    let read = Request::ReadInputRegisters { addr: 0, count: 1 };
    assert!(
        matches!(m.request(2, &read, SHORT), Answer::Reply { unit: 2, .. }),
        "still at 2 before reboot"
    );
    m.ok(
        2,
        Request::WriteSingleCoil {
            addr: coil::REBOOT,
            value: true,
        },
    );
    assert_eq!(
        m.request(42, &read, SHORT),
        Answer::Timeout,
        "silent while rebooting"
    );
    wait_until(Duration::from_secs(3), "reboot to finish", || {
        c.lock(42).is_some_and(|l| !l.rebooting)
    })
    .await;
    assert!(matches!(
        m.request(42, &read, SHORT),
        Answer::Reply { unit: 42, .. }
    ));
    assert_eq!(
        m.request(2, &read, SHORT),
        Answer::Timeout,
        "nobody at 2 any more"
    );
    let v = c.lock(42).unwrap();
    assert_eq!(
        (v.serial.as_str(), v.baud, v.pending_address),
        ("SIM-0002", 19200, None)
    );
    sim.shutdown().await;
}

fn inputs(m: &mut RtuMaster, unit: u8) -> dmr_protocol::registers::LockInputs {
    match m.ok(unit, Request::ReadDiscreteInputs { addr: 0, count: 5 }) {
        Response::Bits(b) => dmr_protocol::registers::LockInputs::from_bits(&b).unwrap(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn person_door_alarms_and_ack_over_modbus() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(&dir, |c| {
        c.door = DoorBehaviour::PersonOpensAndCloses {
            open_after_ms: 100,
            close_after_ms: 300,
        }
    })
    .await;
    let c = sim.control().clone();
    let mut m = RtuMaster::open(sim.pty_path().unwrap());
    m.ok(
        1,
        Request::WriteSingleCoil {
            addr: coil::UNLOCK,
            value: true,
        },
    );
    // The person opens the door while the latch is released...
    wait_until(Duration::from_secs(3), "door opened", || {
        !c.lock(1).unwrap().door_closed
    })
    .await;
    let i = inputs(&mut m, 1);
    assert!(!i.door_closed && !i.latch_locked && !i.forced_open, "{i:?}");
    // ...and closing it relocks (AUTO_RELOCK_S = 0), long before the 3000 ms pulse.
    let t = Instant::now();
    wait_until(Duration::from_secs(2), "relock on close", || {
        c.lock(1).unwrap().latch_locked
    })
    .await;
    assert!(t.elapsed() < Duration::from_millis(1500));
    let i = inputs(&mut m, 1);
    assert!(i.door_closed && i.latch_locked && !i.forced_open, "{i:?}");

    // Jam: acknowledged, latch does not move, FAULT and LAST_ERROR 1.
    c.set_alarm(2, dmr_firmware_sim::AlarmInput::Jam, true)
        .unwrap();
    let r = m.ok(
        2,
        Request::WriteSingleCoil {
            addr: coil::UNLOCK,
            value: true,
        },
    );
    assert_eq!(
        r,
        Response::WriteSingleCoil {
            addr: coil::UNLOCK,
            value: true
        }
    );
    let i = inputs(&mut m, 2);
    assert!(i.fault && i.latch_locked, "{i:?}");
    assert_eq!(identity(&mut m, 2).last_error.to_reg(), 1);
    assert_eq!(c.lock(2).unwrap().actuations, 0);
    // Low voltage on top; once the jam clears, ALARM_ACK leaves LAST_ERROR 3.
    c.set_alarm(2, dmr_firmware_sim::AlarmInput::LowVoltage, true)
        .unwrap();
    c.set_alarm(2, dmr_firmware_sim::AlarmInput::Jam, false)
        .unwrap();
    m.ok(
        2,
        Request::WriteSingleCoil {
            addr: coil::ALARM_ACK,
            value: true,
        },
    );
    let id = identity(&mut m, 2);
    assert!(id.supply_mv < 10_500, "{id:?}");
    assert_eq!(id.last_error.to_reg(), 3);

    // A forced entry latches FORCED_OPEN until ALARM_ACK; tamper likewise.
    c.set_door(2, true).unwrap();
    c.set_door(2, false).unwrap();
    c.set_alarm(2, dmr_firmware_sim::AlarmInput::Tamper, true)
        .unwrap();
    c.set_alarm(2, dmr_firmware_sim::AlarmInput::Tamper, false)
        .unwrap();
    let i = inputs(&mut m, 2);
    assert!(i.forced_open && i.tamper && i.door_closed, "{i:?}");
    m.ok(
        2,
        Request::WriteSingleCoil {
            addr: coil::ALARM_ACK,
            value: true,
        },
    );
    let i = inputs(&mut m, 2);
    assert!(!i.forced_open && !i.tamper, "{i:?}");
    sim.shutdown().await;
}
