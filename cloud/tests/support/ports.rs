//! Loopback ports for what a test or bench starts itself (Mosquitto, `dmr-agent`,
//! `dmr-lock-sim`, `dmr-cloud serve`). One copy for the workspace: dmr-cloud's tests and
//! benches, dmr-broker's bench and the agent's test harness (edge-agent/tests/common/
//! agent_harness.rs) each include it with `#[path]`.
//!
//! Picking a port by binding `127.0.0.1:0`, closing it and handing the number to a child
//! races: the port is in the kernel's ephemeral range (32768–60999), and until the child binds
//! it any outgoing connection on the machine may take it as its source port; the child then
//! exits with "Address already in use" (the order_flow bench lost an agent that way). So ports
//! come from 20000–31999, below that range, from an offset derived from the process id (test
//! binaries run one after another) and never twice in one process (its tests run in parallel
//! threads); the bind check skips ports something already listens on.

use std::sync::atomic::{AtomicU64, Ordering};

const FIRST: u64 = 20_000;
const COUNT: u64 = 12_000;

/// A loopback port that binds now and that this process has not handed out before.
pub fn free_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // 7919 is prime, so coprime with COUNT: pids that differ mod COUNT get different offsets,
    // and consecutive ones start thousands of ports apart.
    let offset = u64::from(std::process::id()) * 7_919 % COUNT;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(
            n < COUNT,
            "no free loopback port left in {FIRST}..{}",
            FIRST + COUNT
        );
        let port = u16::try_from(FIRST + (offset + n) % COUNT).expect("below 32000");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

#[test]
fn ports_are_below_the_ephemeral_range_and_never_handed_out_twice() {
    let threads: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(|| (0..25).map(|_| free_port()).collect::<Vec<_>>()))
        .collect();
    let mut all: Vec<u16> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort_unstable();
    let n = all.len();
    all.dedup();
    assert_eq!(all.len(), n, "a port was handed out twice");
    // The premise: if this machine's ephemeral range reaches down here, the race is back.
    if let Ok(range) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") {
        let low: u64 = range.split_whitespace().next().unwrap().parse().unwrap();
        assert!(
            FIRST + COUNT <= low,
            "ephemeral range starts at {low}, inside {FIRST}.."
        );
    }
    assert!(
        all.iter()
            .all(|&p| (FIRST..FIRST + COUNT).contains(&u64::from(p))),
        "{all:?}"
    );
}
