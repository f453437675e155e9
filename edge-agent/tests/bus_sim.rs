//! The bus driver against the real lock simulator over a real pty: unlock, state, settings,
//! bus faults, a silent lock, and a lost UNLOCK reply that must not actuate twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/sim.rs"]
mod sim;

use std::time::{Duration, Instant};

use dmr_edge_agent::bus::{BusConfig, BusError};
use dmr_firmware_sim::Faults;
use dmr_protocol::registers::holding;
use sim::{open_bus, start_sim, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_state_identity_and_settings_over_a_pty() {
    let sim = start_sim(3, |_| {}).await;
    let bus = open_bus(&sim.pty(), |_| {}).await;

    let id = bus.identity(2).await.unwrap();
    assert_eq!(id.serial, "SIM-0002");
    assert_eq!(id.fw_version.to_string(), "1.0.0");

    let st = bus.read_state(2).await.unwrap();
    assert!(st.inputs.door_closed && st.inputs.latch_locked && !st.unlocked);

    let out = bus.unlock(2).await.unwrap();
    assert!(out.actuated, "{out:?}");
    assert_eq!((out.count_before, out.unlock_count), (0, 1));
    let view = sim.lock(2);
    assert_eq!((view.actuations, view.unlock_count), (1, 1));
    assert_eq!(sim.lock(1).actuations, 0, "only lock 2 moved");
    // The coil reads ON while released.
    assert!(bus.read_state(2).await.unwrap().unlocked);

    bus.write_setting(3, holding::UNLOCK_PULSE_MS, 700)
        .await
        .unwrap();
    assert_eq!(bus.settings(3).await.unwrap().unlock_pulse_ms, 700);
    assert_eq!(sim.lock(3).pulse_ms, 700);
    // Out of range is refused before it reaches the lock.
    assert!(matches!(
        bus.write_setting(3, holding::UNLOCK_PULSE_MS, 50).await,
        Err(BusError::Register { addr: 3, .. })
    ));
    assert!(bus.health(2).online);
    assert_eq!(bus.counters().faults(), 0);
    bus.close().await;
    sim.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crc_and_wrong_unit_faults_are_discarded_counted_and_retried() {
    let sim = start_sim(2, |_| {}).await;
    let bus = open_bus(&sim.pty(), |c| c.read_retries = 10).await;
    sim.handle
        .control()
        .set_faults(Faults {
            corrupt_crc_rate: 0.15,
            wrong_unit_rate: 0.15,
            ..Faults::default()
        })
        .unwrap();
    for _ in 0..40 {
        let id = bus.identity(1).await.unwrap();
        assert_eq!(
            id.serial, "SIM-0001",
            "a faulty frame was taken for a reply"
        );
    }
    let c = bus.counters();
    assert!(c.crc_errors > 0 && c.wrong_unit > 0, "{c:?}");
    assert_eq!(c.retries, c.faults() + c.timeouts, "{c:?}");
    sim.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_lock_goes_offline_while_the_others_keep_answering() {
    let sim = start_sim(3, |_| {}).await;
    let bus = open_bus(&sim.pty(), |c| {
        c.request_timeout = Duration::from_millis(100);
        c.read_retries = 1;
        c.offline_after = 2;
        c.backoff_min = Duration::from_secs(10);
    })
    .await;
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
    let mut round_times = Vec::new();
    for _ in 0..6 {
        let t = Instant::now();
        for addr in 1..=3u8 {
            let r = bus.read_state(addr).await;
            if addr == 2 {
                assert!(r.is_err());
            } else {
                r.unwrap();
            }
        }
        round_times.push(t.elapsed());
    }
    let h = bus.health_all();
    assert!(!h[&2].online && h[&2].consecutive_failures >= 2, "{h:?}");
    assert!(h[&1].online && h[&3].online, "{h:?}");
    // Once lock 2 is in backoff a round costs no timeouts: a round that still asked it would
    // take two reply timeouts (200 ms) on top of the four good exchanges.
    let last = *round_times.last().unwrap();
    assert!(last < Duration::from_millis(180), "rounds: {round_times:?}");
    assert!(matches!(
        bus.identity(2).await,
        Err(BusError::Offline { addr: 2, .. })
    ));
    sim.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_unlock_replies_never_produce_a_second_actuation() {
    let sim = start_sim(1, |_| {}).await;
    let bus = open_bus(&sim.pty(), |c| {
        c.request_timeout = Duration::from_millis(80);
        c.read_retries = 4;
        c.offline_after = 1000;
    })
    .await;
    bus.write_setting(1, holding::UNLOCK_PULSE_MS, 100)
        .await
        .unwrap();
    sim.handle
        .control()
        .set_faults(Faults {
            drop_reply_rate: 0.3,
            ..Faults::default()
        })
        .unwrap();
    let mut lost = 0;
    let mut ok = 0;
    for _ in 0..25 {
        let before = sim.lock(1);
        let r = bus.unlock(1).await;
        let after = sim.lock(1);
        // The invariant: one unlock call moves the latch at most once.
        assert!(
            after.actuations - before.actuations <= 1,
            "one unlock actuated {} times: {r:?}",
            after.actuations - before.actuations
        );
        match r {
            Ok(o) => {
                ok += 1;
                assert!(o.actuated);
                assert_eq!(o.unlock_count, after.unlock_count);
                assert_eq!(after.actuations - before.actuations, 1, "{o:?}");
                if o.reply_lost {
                    lost += 1;
                }
            }
            // Too many replies lost in a row: allowed, as long as it said so.
            Err(e) => assert!(
                matches!(e, BusError::NoReply { .. } | BusError::UnlockUnknown { .. }),
                "{e}"
            ),
        }
        wait_until("relock", Duration::from_secs(3), || {
            sim.lock(1).latch_locked
        })
        .await;
    }
    assert!(ok >= 15, "only {ok} of 25 unlocks succeeded");
    assert!(
        lost > 0,
        "no UNLOCK reply was lost in 25 tries at 30% drop rate"
    );
    // The counter counts every lost UNLOCK reply, also several within one call and in calls
    // that ended in an error.
    assert!(bus.counters().unlock_reply_lost >= lost);
    sim.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_tcp_transport_speaks_the_same_interface() {
    let sim = start_sim(2, |c| c.tcp = Some("127.0.0.1:0".parse().unwrap())).await;
    let addr = sim.handle.tcp_addr().unwrap();
    let bus = dmr_edge_agent::bus::spawn(BusConfig::tcp(addr.to_string()))
        .await
        .unwrap();
    let out = bus.unlock(1).await.unwrap();
    assert!(out.actuated);
    assert_eq!(sim.lock(1).actuations, 1);
    assert_eq!(bus.identity(2).await.unwrap().serial, "SIM-0002");
    sim.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_errors_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("ttyUSB9");
    let err = dmr_edge_agent::bus::spawn(BusConfig::serial(&missing, 9600))
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::PortMissing { .. }), "{err}");
    assert!(err.to_string().contains("does not exist"));

    // A second owner of the same port is refused (TIOCEXCL).
    let sim = start_sim(1, |_| {}).await;
    let _first = open_bus(&sim.pty(), |_| {}).await;
    let err = dmr_edge_agent::bus::spawn(BusConfig::serial(sim.pty(), 9600))
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::PortBusy { .. }), "{err}");
    sim.handle.shutdown().await;
}
