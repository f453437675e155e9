//! Bus driver timing against the lock simulator with line timing on, over a real pty:
//! unlock round trip (p50/p99) against the physical minimum computed from frame sizes, poll
//! cycle time for 32 locks, firmware throughput against the line's capacity, and unlock
//! latency while a flash runs on the same bus.
//!
//! A plain bench binary (not criterion): the goals are percentiles and ratios of wall-clock
//! times dominated by the simulated line, which criterion's sampling does not report.
//! Run: `cargo bench -p dmr-edge-agent --bench bus_timing` (`-- quick` for fewer samples).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use dmr_edge_agent::bus::{self, BusConfig, BusHandle};
use dmr_edge_agent::tech::flash::{self, FlashOptions};
use dmr_firmware_sim::{DoorBehaviour, LockSpec, SimConfig, SimHandle};
use dmr_protocol::modbus::rtu;
use dmr_protocol::registers::{FwVersion, HARDWARE_LOCK, holding};
use ed25519_dalek::SigningKey;

/// Frame sizes of the unlock procedure: (request, reply) bytes of each exchange.
/// Read UNLOCK_COUNT (2 regs), write UNLOCK, read 5 discrete inputs.
const UNLOCK_FRAMES: [(usize, usize); 3] = [(8, 9), (8, 8), (8, 6)];
/// read_state: 5 discrete inputs, 1 coil.
const STATE_FRAMES: [(usize, usize); 2] = [(8, 6), (8, 6)];
/// One full firmware chunk: FC16 of 103 registers (offset, length, 100 data) and its echo.
const CHUNK_FRAME: (usize, usize) = (9 + 206, 8);

fn min_time(frames: &[(usize, usize)], baud: u32) -> Duration {
    frames
        .iter()
        .map(|&(q, r)| rtu::exchange_time(q, r, baud))
        .sum()
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn sim(n: u8, baud: u32, dir: &std::path::Path, key: &SigningKey) -> SimHandle {
    let mut cfg = SimConfig::new(LockSpec::numbered(n));
    cfg.pty_link = Some(dir.join(format!("tty{baud}")));
    cfg.line_baud = Some(baud);
    cfg.door = DoorBehaviour::StaysShut;
    cfg.vendor_keys = vec![(1, key.verifying_key())];
    cfg.reboot_silence_ms = 300;
    dmr_firmware_sim::start(cfg).await.unwrap()
}

async fn open(sim: &SimHandle, baud: u32) -> BusHandle {
    let mut cfg = BusConfig::serial(sim.pty_path().unwrap(), baud);
    cfg.request_timeout = Duration::from_millis(500);
    bus::spawn(cfg).await.unwrap()
}

async fn unlock_samples(bus: &BusHandle, addr: u8, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        // Idle longer than the 3.5-character silence first, as between two people.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let t = Instant::now();
        let o = bus.unlock(addr).await.unwrap();
        out.push(t.elapsed());
        assert!(o.actuated || o.unlock_count > o.count_before);
    }
    out.sort();
    out
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(quick));
}

async fn run(quick: bool) {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[1u8; 32]);
    println!(
        "bus_timing: simulator line timing on, pty, {} samples",
        if quick { "quick" } else { "full" }
    );
    {
        // The floor: the same unlock with the simulator's line timing off, so what remains
        // is the pty, the simulator's scheduling and the driver (including its own 1.75 ms
        // silence per exchange at 115200).
        let mut cfg = SimConfig::new(LockSpec::numbered(1));
        cfg.pty_link = Some(dir.path().join("ttyfloor"));
        cfg.door = DoorBehaviour::StaysShut;
        let sim = dmr_firmware_sim::start(cfg).await.unwrap();
        let bus = open(&sim, 115_200).await;
        bus.write_setting(1, holding::UNLOCK_PULSE_MS, 100)
            .await
            .unwrap();
        let s = unlock_samples(&bus, 1, if quick { 30 } else { 300 }).await;
        println!(
            "floor (no line timing, driver at 115200): unlock n={} p50 {:.2} ms p99 {:.2} ms = {:.2} ms per exchange at p50",
            s.len(),
            ms(pct(&s, 0.5)),
            ms(pct(&s, 0.99)),
            ms(pct(&s, 0.5)) / UNLOCK_FRAMES.len() as f64
        );
        bus.close().await;
        sim.shutdown().await;
    }
    for baud in [9600u32, 115_200] {
        let n_unlock = match (quick, baud) {
            (true, _) => 30,
            (false, 9600) => 200,
            (false, _) => 500,
        };
        let sim = sim(32, baud, dir.path(), &key).await;
        let bus = open(&sim, baud).await;
        bus.write_setting(1, holding::UNLOCK_PULSE_MS, 100)
            .await
            .unwrap();

        // Unlock round trip.
        let s = unlock_samples(&bus, 1, n_unlock).await;
        let min = min_time(&UNLOCK_FRAMES, baud);
        let (p50, p99) = (pct(&s, 0.5), pct(&s, 0.99));
        // The simulator delays each reply by what a real line takes up to the reply's last
        // byte; the driver keeps the silence after it. So `min` is the physical floor.
        println!(
            "{baud:>6} baud unlock: n={} p50 {:.2} ms p99 {:.2} ms min(physical) {:.2} ms  p50/min {:.3} p99/min {:.3}",
            s.len(),
            ms(p50),
            ms(p99),
            ms(min),
            p50.as_secs_f64() / min.as_secs_f64(),
            p99.as_secs_f64() / min.as_secs_f64(),
        );

        // Poll cycle over 32 locks.
        let cycles = if quick { 2 } else { 5 };
        let mut times = Vec::new();
        for _ in 0..cycles {
            let t = Instant::now();
            for addr in 1..=32u8 {
                bus.read_state(addr).await.unwrap();
            }
            times.push(t.elapsed());
        }
        times.sort();
        let min = min_time(&STATE_FRAMES, baud) * 32;
        let med = pct(&times, 0.5);
        println!(
            "{baud:>6} baud poll cycle, 32 locks: n={cycles} median {:.1} ms min(physical) {:.1} ms ratio {:.3}",
            ms(med),
            ms(min),
            med.as_secs_f64() / min.as_secs_f64()
        );

        // Flash throughput (transfer phase).
        let len = match (quick, baud) {
            (true, 9600) => 2_000,
            (true, _) => 10_000,
            (false, 9600) => 8_000,
            (false, _) => 40_000,
        };
        let payload: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        let img = dmr_protocol::firmware::build(
            HARDWARE_LOCK,
            FwVersion {
                major: 2,
                minor: 0,
                patch: 0,
            },
            &payload,
            1,
            &key,
        )
        .unwrap();
        let rep = flash::flash(&bus, 2, &img, FlashOptions::default(), &|_| {})
            .await
            .unwrap();
        let line = f64::from(baud) / 10.0;
        let best = 200.0 / rtu::exchange_time(CHUNK_FRAME.0, CHUNK_FRAME.1, baud).as_secs_f64();
        println!(
            "{baud:>6} baud flash: {} bytes, transfer {:.2} s, {:.0} B/s; line capacity {:.0} B/s ({:.2}); protocol ceiling {:.0} B/s ({:.2})",
            rep.bytes,
            rep.transfer_s,
            rep.bytes_per_s,
            line,
            rep.bytes_per_s / line,
            best,
            rep.bytes_per_s / best
        );

        // Unlocks while a flash runs on lock 3: each may wait for at most the chunk frame
        // already on the wire.
        let b = bus.clone();
        let img2 = img.clone();
        let flashing = tokio::spawn(async move {
            flash::flash(&b, 3, &img2, FlashOptions::default(), &|_| {}).await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let during = unlock_samples(&bus, 1, if quick { 10 } else { 40 }).await;
        let chunk = rtu::exchange_time(CHUNK_FRAME.0, CHUNK_FRAME.1, baud);
        let bound = min_time(&UNLOCK_FRAMES, baud) + chunk;
        println!(
            "{baud:>6} baud unlock during flash: n={} p50 {:.2} ms p99 {:.2} ms max {:.2} ms; bound min+one chunk frame {:.2} ms; max/bound {:.3}",
            during.len(),
            ms(pct(&during, 0.5)),
            ms(pct(&during, 0.99)),
            ms(*during.last().unwrap()),
            ms(bound),
            during.last().unwrap().as_secs_f64() / bound.as_secs_f64()
        );
        flashing.await.unwrap().unwrap();
        let c = bus.counters();
        println!(
            "{baud:>6} baud counters: {} requests, {} timeouts, {} faults",
            c.requests,
            c.timeouts,
            c.faults()
        );
        bus.close().await;
        sim.shutdown().await;
    }
}
