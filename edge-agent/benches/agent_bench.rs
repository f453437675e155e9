//! Gateway daemon benchmarks (figures in docs/benchmarks.md, "Agent"):
//!
//! - `latency`: token presented → UNLOCK handed to the bus, with verify, lookups and the
//!   durable (synchronous=FULL) write included. The bus is a probe port that timestamps the
//!   moment `unlock(addr)` is called and answers at once: the frame's time on the wire is the
//!   bus driver's figure (bus_timing), not the daemon's.
//! - `lookup`: short-code lookup in a cache of 1,000,000 tokens, on the store thread and
//!   through the async round trip.
//! - `burst`: the same with 1, 4 and 8 presenters at once (group commit), beside bare FULL
//!   inserts from as many threads.
//! - `lookup_api`: short codes of a 1,000,000-token cache presented through the agent's
//!   unlock API, to the UNLOCK handed to the bus (durable write included).
//! - `outbox`: durable outbox appends (sign + insert, one event per transaction) against a
//!   bare rusqlite single-row insert with synchronous=FULL on the same disk, interleaved.
//! - `drain`: 50,000 events queued while the broker was down, drained once it is back.
//! - `process`: start → READY (NOTIFY_SOCKET) and RSS of the `dmr-agent` binary with 100,000
//!   cached tokens and a 100,000-event backlog.
//!
//! A plain bench binary (not criterion), because the goals are percentiles and ratios.
//! Run: `cargo bench -p dmr-edge-agent --bench agent_bench [-- latency burst lookup outbox drain process]`.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

#[path = "../tests/common/agent_harness.rs"]
mod harness;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dmr_edge_agent::agent::{
    self,
    clock::{SystemClock, TrustedClock},
    locks::{ActuationOutcome, BoxFuture, LockError, LockPort, LockSnapshot},
    store::{LockPlace, Store, StoreConfig},
};
use dmr_protocol::message::{Event, Presenter, ResultCode, UnlockEvent};
use harness::*;
use uuid::Uuid;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn summary(name: &str, mut v: Vec<Duration>) {
    v.sort();
    println!(
        "{name}: n={} p50={:.1} µs p90={:.1} µs p99={:.1} µs max={:.1} µs",
        v.len(),
        us(pct(&v, 0.5)),
        us(pct(&v, 0.9)),
        us(pct(&v, 0.99)),
        us(*v.last().unwrap())
    );
}

/// Timestamps the moment the daemon hands an unlock to the bus, per lock address.
#[derive(Default)]
struct ProbePort {
    handed: Mutex<std::collections::HashMap<u8, Instant>>,
}

impl ProbePort {
    fn take(&self, addr: u8) -> Instant {
        self.handed.lock().unwrap().remove(&addr).unwrap()
    }
}

impl LockPort for ProbePort {
    fn unlock(&self, addr: u8) -> BoxFuture<'_, ActuationOutcome> {
        self.handed.lock().unwrap().insert(addr, Instant::now());
        Box::pin(async { ActuationOutcome::Ok })
    }
    fn poll(&self, addr: u8) -> BoxFuture<'_, Result<LockSnapshot, LockError>> {
        Box::pin(async move {
            Err(LockError::Unreachable {
                addr,
                reason: "probe".into(),
            })
        })
    }
}

fn bench_toml(dir: &std::path::Path, extra: &str) -> String {
    bench_toml_locks(dir, extra, 1)
}

fn bench_toml_locks(dir: &std::path::Path, extra: &str, locks: u8) -> String {
    let list: Vec<String> = (1..=locks)
        .map(|a| format!("{{ addr = {a}, lock_id = \"{}\" }}", lock_id(a)))
        .collect();
    format!(
        r#"gateway_id = "{GW}"
state_dir = "{d}"
poll_interval_ms = 60000
{extra}
[trusted_keys]
"{CLOUD_KEY_ID}" = "{pk}"
[http]
status_listen = "127.0.0.1:0"
[[bus]]
port = "probe"
locks = [ {l} ]
"#,
        d = dir.display(),
        pk = dmr_protocol::keys::public_b64u(&cloud_key().verifying_key()),
        l = list.join(", ")
    )
}

async fn latency() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = agent::config::parse(&bench_toml(dir.path(), ""), []).unwrap();
    let probe = Arc::new(ProbePort::default());
    let running = agent::start(cfg, gw_key(), vec![probe.clone()], SystemClock)
        .await
        .unwrap();
    let tokens: Vec<String> = (0..2200).map(|_| token(lock_id(1), 1).to_text()).collect();
    // The disk's floor, interleaved: one bare single-row insert with synchronous=FULL.
    let bare = rusqlite::Connection::open(dir.path().join("bare.db")).unwrap();
    bare.pragma_update(None, "journal_mode", "WAL").unwrap();
    bare.pragma_update(None, "synchronous", "FULL").unwrap();
    bare.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)")
        .unwrap();
    let payload = "x".repeat(658);
    let mut lat = Vec::new();
    let mut floor = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let t0 = Instant::now();
        let r = running.unlocker.present(t, Presenter::Lan).await;
        assert_eq!(r.result, ResultCode::Ok);
        let handed = probe.take(1);
        let t1 = Instant::now();
        bare.execute("INSERT INTO t (payload) VALUES (?1)", [&payload])
            .unwrap();
        if i >= 200 {
            lat.push(handed - t0);
            floor.push(t1.elapsed());
        }
    }
    summary("present → UNLOCK handed to the bus (text token)", lat);
    summary(
        "bare single-row insert, synchronous=FULL (same disk, interleaved)",
        floor,
    );
    running.shutdown(Duration::from_secs(5)).await;
}

/// Token presented → UNLOCK handed to the bus while `tasks` presenters (one lock each) keep
/// presenting at the same time: what group commit is for. Interleaved with bare FULL inserts
/// from as many threads, so the disk's floor under the same concurrency is beside it.
async fn burst() {
    for tasks in [1u8, 4, 8] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = agent::config::parse(&bench_toml_locks(dir.path(), "", tasks), []).unwrap();
        let probe = Arc::new(ProbePort::default());
        let running = agent::start(cfg, gw_key(), vec![probe.clone()], SystemClock)
            .await
            .unwrap();
        let per_task = 2000 / tasks as usize + 25;
        let (g0, r0) = running.store.call(|db| db.group_stats()).await.unwrap();
        let t_all = Instant::now();
        let mut handles = Vec::new();
        for t in 1..=tasks {
            let u = running.unlocker.clone();
            let probe = probe.clone();
            let tokens: Vec<String> = (0..per_task)
                .map(|_| token(lock_id(t), 1).to_text())
                .collect();
            handles.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                for (i, tok) in tokens.iter().enumerate() {
                    let t0 = Instant::now();
                    let r = u.present(tok, Presenter::Lan).await;
                    assert_eq!(r.result, ResultCode::Ok);
                    let handed = probe.take(t);
                    if i >= 25 {
                        lat.push(handed - t0);
                    }
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for h in handles {
            lat.extend(h.await.unwrap());
        }
        let elapsed = t_all.elapsed();
        let (g1, r1) = running.store.call(|db| db.group_stats()).await.unwrap();
        let n = lat.len();
        summary(
            &format!("{tasks} concurrent presenters: present → UNLOCK handed to the bus"),
            lat,
        );
        println!(
            "  {} unlocks in {:.2} s ({:.0}/s); {} group commits for {} durable requests (uses + outcome events): {:.2} per fsync",
            n,
            elapsed.as_secs_f64(),
            (per_task * tasks as usize) as f64 / elapsed.as_secs_f64(),
            g1 - g0,
            r1 - r0,
            (r1 - r0) as f64 / (g1 - g0).max(1) as f64
        );
        // The floor under the same concurrency: bare single-row FULL inserts, one thread per
        // presenter, each on its own connection to one database.
        let bare_path = dir.path().join("bare.db");
        {
            let c = rusqlite::Connection::open(&bare_path).unwrap();
            c.pragma_update(None, "journal_mode", "WAL").unwrap();
            c.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)")
                .unwrap();
        }
        let mut threads = Vec::new();
        for _ in 0..tasks {
            let bare_path = bare_path.clone();
            threads.push(std::thread::spawn(move || {
                let c = rusqlite::Connection::open(&bare_path).unwrap();
                c.busy_timeout(Duration::from_secs(10)).unwrap();
                c.pragma_update(None, "synchronous", "FULL").unwrap();
                let payload = "x".repeat(658);
                let mut v = Vec::new();
                for i in 0..per_task {
                    let t0 = Instant::now();
                    c.execute("INSERT INTO t (payload) VALUES (?1)", [&payload])
                        .unwrap();
                    if i >= 25 {
                        v.push(t0.elapsed());
                    }
                }
                v
            }));
        }
        let mut floor = Vec::new();
        for t in threads {
            floor.extend(t.join().unwrap());
        }
        summary(
            &format!("  bare single-row FULL insert, {tasks} threads (floor, same disk)"),
            floor,
        );
        running.shutdown(Duration::from_secs(5)).await;
    }
}

fn open_store(dir: &std::path::Path) -> (Store, std::thread::JoinHandle<()>) {
    Store::open(
        StoreConfig {
            enrolled_keys: Default::default(),
            path: dir.join("agent.db"),
            gateway_id: GW,
            key: gw_key(),
            skew_s: 120,
            locks: vec![(lock_id(1), LockPlace { bus: 0, addr: 1 })],
            trusted_keys: [(CLOUD_KEY_ID, cloud_key().verifying_key())].into(),
            max_db_pages: None,
            mmap_bytes: 0,
        },
        Arc::new(TrustedClock::new(SystemClock, None)),
    )
    .unwrap()
}

/// Caches `n` tokens (for lock 1) in batches; returns some of their short codes and texts.
async fn fill_tokens(
    store: &Store,
    n: usize,
) -> (Vec<dmr_protocol::token::ShortCode>, Vec<String>) {
    let mut codes = Vec::new();
    let mut kept = Vec::new();
    let batch = 10_000;
    for b in 0..n.div_ceil(batch) {
        let mut texts = Vec::with_capacity(batch);
        for i in 0..batch.min(n - b * batch) {
            let t = token(lock_id(1), 1);
            // Remember every 50th code and text, so probes spread over the whole cache.
            if i % 50 == 0 && codes.len() < 20_000 {
                codes.push(t.short_code());
                kept.push(t.to_text());
            }
            texts.push(t.to_text());
        }
        store
            .call(move |db| db.put_tokens(&texts))
            .await
            .unwrap()
            .unwrap();
    }
    (codes, kept)
}

/// Times each short-code lookup of `codes` on the store thread.
async fn time_codes(store: &Store, codes: Vec<dmr_protocol::token::ShortCode>) -> Vec<Duration> {
    store
        .call(move |db| {
            let mut v = Vec::new();
            for c in &codes {
                let t0 = Instant::now();
                let found = db.cached_by_code(*c).unwrap();
                v.push(t0.elapsed());
                assert!(!found.is_empty());
            }
            v
        })
        .await
        .unwrap()
}

async fn lookup() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _t) = open_store(dir.path());
    let t0 = Instant::now();
    let (codes, texts) = fill_tokens(&store, 1_000_000).await;
    println!(
        "cached 1,000,000 tokens in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let (cnt, pages, psize, cache) = store
        .call(|db| {
            let c = db.conn();
            let q = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
            (
                q("SELECT COUNT(*) FROM tokens"),
                q("PRAGMA page_count"),
                q("PRAGMA page_size"),
                q("PRAGMA cache_size"),
            )
        })
        .await
        .unwrap();
    assert_eq!(cnt, 1_000_000);
    println!(
        "database {:.0} MB ({pages} pages of {psize} B); SQLite page cache setting {cache}",
        (pages * psize) as f64 / 1e6
    );
    // Five disjoint probe sets of 2,000 codes, each cold the first time it is used.
    let sets: Vec<Vec<_>> = codes.chunks(2000).take(5).map(|c| c.to_vec()).collect();
    summary(
        "short-code lookup, 1M cached, on the store thread (cold set)",
        time_codes(&store, sets[0].clone()).await,
    );
    summary(
        "  the same 2,000 codes again (pages now cached)",
        time_codes(&store, sets[0].clone()).await,
    );
    let mut rt = Vec::new();
    for c in sets[1].iter().copied() {
        let t0 = Instant::now();
        let found = store
            .call(move |db| db.cached_by_code(c))
            .await
            .unwrap()
            .unwrap();
        rt.push(t0.elapsed());
        assert!(!found.is_empty());
    }
    summary(
        "short-code lookup, 1M cached, async round trip (Store::call)",
        rt,
    );
    // The lookups a token *text* presentation makes before the signature check: parse,
    // cached copy by id, revocation list, use count.
    let probe: Vec<String> = texts.iter().skip(10_000).take(2000).cloned().collect();
    let by_text = store
        .call(move |db| {
            let mut v = Vec::new();
            for t in &probe {
                let t0 = Instant::now();
                let tok = db.cached_by_text(t).unwrap().unwrap();
                let id = tok.claims().token_id;
                let revoked = db.is_revoked(&id);
                let uses = db.uses_of(&id);
                v.push(t0.elapsed());
                assert!(!revoked && uses == 0);
            }
            v
        })
        .await
        .unwrap();
    summary(
        "token-text lookups (parse + cached copy by id + revocation + use count), 1M cached",
        by_text,
    );
    // Page cache experiments on the same file (not the shipped settings).
    for (name, pragma, set) in [
        ("cache_size = 16 MB", "PRAGMA cache_size = -16384", 2usize),
        ("mmap_size = 1 GB", "PRAGMA mmap_size = 1073741824", 3),
    ] {
        let p = pragma.to_string();
        store
            .call(move |db| db.conn().execute_batch(&p).unwrap())
            .await
            .unwrap();
        summary(
            &format!("  experiment {name}: short-code lookup, cold set"),
            time_codes(&store, sets[set].clone()).await,
        );
    }
}

/// End to end through the agent's API: short codes of a 1,000,000-token cache presented
/// through `Unlocker::present` (classify, lookup, verify, group-committed use, UNLOCK handed
/// to the probe bus). The durable write is included, so the disk's fsync dominates; the
/// lookup's share is the `lookup` part's figure.
async fn lookup_api() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = agent::config::parse(&bench_toml(dir.path(), ""), []).unwrap();
    let probe = Arc::new(ProbePort::default());
    let running = agent::start(cfg, gw_key(), vec![probe.clone()], SystemClock)
        .await
        .unwrap();
    let (codes, _) = fill_tokens(&running.store, 1_000_000).await;
    let mut lat = Vec::new();
    let mut refused = 0;
    for c in codes.iter().step_by(13).take(1000) {
        let t0 = Instant::now();
        let r = running
            .unlocker
            .present(&c.to_string(), Presenter::Lan)
            .await;
        if r.result != ResultCode::Ok {
            // A code shared by two cached tokens is refused as ambiguous (by design).
            refused += 1;
            continue;
        }
        lat.push(probe.take(1) - t0);
    }
    summary(
        "short code presented → UNLOCK handed to the bus, 1M cached (Unlocker::present, durable write included)",
        lat,
    );
    println!("  {refused} of the codes were refused (expected: codes shared by two cached tokens)");
    running.shutdown(Duration::from_secs(5)).await;
}

fn event() -> Event {
    Event::Unlock(UnlockEvent {
        lock_id: lock_id(1),
        token_id: Some(Uuid::now_v7()),
        order_id: Some(Uuid::now_v7()),
        result: ResultCode::Ok,
        via: Some(Presenter::Lan),
        at: now_ms(),
    })
}

async fn outbox() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _t) = open_store(dir.path());
    let bare = rusqlite::Connection::open(dir.path().join("bare.db")).unwrap();
    bare.pragma_update(None, "journal_mode", "WAL").unwrap();
    bare.pragma_update(None, "synchronous", "FULL").unwrap();
    bare.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)")
        .unwrap();
    // A payload the size of a signed unlock event.
    let sample = store
        .call(|db| {
            db.append_event(event()).unwrap();
            db.outbox_batch(0, 1).unwrap()[0].jws.clone()
        })
        .await
        .unwrap();
    println!("signed event size: {} bytes", sample.len());
    let per_round = 400;
    let mut ours_rates = Vec::new();
    let mut grouped_rates = Vec::new();
    let mut burst_rates = Vec::new();
    let mut bare_rates = Vec::new();
    for _round in 0..7 {
        // Through the group-commit path one at a time: nothing else waits, so every append
        // commits alone (the idle case must not get slower).
        let t0 = Instant::now();
        for _ in 0..per_round {
            store.append_event(event()).await.unwrap();
        }
        grouped_rates.push(per_round as f64 / t0.elapsed().as_secs_f64());
        // A burst: 8 writers at once through the group-commit path.
        let t0 = Instant::now();
        let mut hs = Vec::new();
        for _ in 0..8 {
            let st = store.clone();
            hs.push(tokio::spawn(async move {
                for _ in 0..per_round / 8 {
                    st.append_event(event()).await.unwrap();
                }
            }));
        }
        for h in hs {
            h.await.unwrap();
        }
        burst_rates.push(per_round as f64 / t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        for _ in 0..per_round {
            store
                .call(|db| db.append_event(event()))
                .await
                .unwrap()
                .unwrap();
        }
        ours_rates.push(per_round as f64 / t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        let mut stmt = bare.prepare("INSERT INTO t (payload) VALUES (?1)").unwrap();
        for _ in 0..per_round {
            stmt.execute([&sample]).unwrap();
        }
        bare_rates.push(per_round as f64 / t0.elapsed().as_secs_f64());
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (o, b) = (med(&mut ours_rates), med(&mut bare_rates));
    let (g, u) = (med(&mut grouped_rates), med(&mut burst_rates));
    println!(
        "outbox append (sign + insert, 1 event/txn, FULL): median {o:.0}/s; bare single-row insert (FULL): median {b:.0}/s; ratio {:.2}",
        o / b
    );
    println!(
        "outbox append through group commit, one writer: median {g:.0}/s (ratio {:.2}); 8 writers at once: median {u:.0}/s (ratio {:.2})",
        g / b,
        u / b
    );
}

async fn drain() {
    let mut broker = Mosquitto::start();
    let obs = Observer::start(broker.port, "bench-cloud", true);
    wait_until(Duration::from_secs(5), "observer", || {
        std::process::Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &broker.port.to_string(),
                "-t",
                "x",
                "-m",
                "x",
            ])
            .status()
            .is_ok()
    });
    obs.stop();
    broker.stop();
    let dir = tempfile::tempdir().unwrap();
    let n = 50_000;
    {
        let (store, t) = open_store(dir.path());
        store
            .call(move |db| {
                db.conn().execute_batch("BEGIN").unwrap();
                for _ in 0..n {
                    db.append_event(event()).unwrap();
                }
                db.conn().execute_batch("COMMIT").unwrap();
            })
            .await
            .unwrap();
        store.close().await.unwrap();
        drop(store);
        t.join().unwrap();
    }
    let toml = bench_toml(
        dir.path(),
        &format!(
            "[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nreconnect_min_ms = 100\nreconnect_max_ms = 200\n",
            broker.port
        ),
    );
    let cfg = agent::config::parse(&toml, []).unwrap();
    let running = agent::start(
        cfg,
        gw_key(),
        vec![Arc::new(ProbePort::default())],
        SystemClock,
    )
    .await
    .unwrap();
    assert_eq!(count(&running, "SELECT COUNT(*) FROM outbox").await, n);
    broker.start_again();
    let t0 = Instant::now();
    let obs = Observer::start(broker.port, "bench-cloud", true);
    loop {
        if count(&running, "SELECT COUNT(*) FROM outbox").await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(t0.elapsed() < Duration::from_secs(300));
    }
    let drained = t0.elapsed();
    wait_until(Duration::from_secs(120), "observer got all", || {
        obs.seen.lock().unwrap().len() >= n as usize
    });
    let delivered = t0.elapsed();
    println!(
        "backlog of {n} events: outbox empty {:.2} s after the broker came back ({:.0} events/s); all {n} verified at the subscriber after {:.2} s",
        drained.as_secs_f64(),
        n as f64 / drained.as_secs_f64(),
        delivered.as_secs_f64()
    );
    running.shutdown(Duration::from_secs(5)).await;
}

async fn process() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, t) = open_store(dir.path());
        let _ = fill_tokens(&store, 100_000).await;
        store
            .call(move |db| {
                db.conn().execute_batch("BEGIN").unwrap();
                for _ in 0..100_000 {
                    db.append_event(event()).unwrap();
                }
                db.conn().execute_batch("COMMIT").unwrap();
            })
            .await
            .unwrap();
        store.close().await.unwrap();
        drop(store);
        t.join().unwrap();
    }
    dmr_protocol::keys::save_signing_key(&dir.path().join("gateway.key"), &gw_key()).unwrap();
    let sim = sim(1).await;
    let status_port = free_port();
    let mqtt_port = free_port(); // nothing listens: the backlog stays
    let toml = config_toml(dir.path(), sim.tcp_addr().unwrap(), 1, Some(mqtt_port), "").replace(
        "status_listen = \"127.0.0.1:0\"",
        &format!("status_listen = \"127.0.0.1:{status_port}\""),
    );
    let conf = dir.path().join("agent.toml");
    std::fs::write(&conf, toml).unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let bin = env!("CARGO_BIN_EXE_dmr-agent");
    let size = std::fs::metadata(bin).unwrap().len();
    let t0 = Instant::now();
    let mut child = std::process::Command::new(bin)
        .args(["run", "--config"])
        .arg(&conf)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("DMR_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let _ = sock.recv(&mut buf).unwrap();
    let ready = t0.elapsed();
    // Let it poll, serve status and retry the broker for a while, then read its RSS.
    for _ in 0..20 {
        let _ = std::net::TcpStream::connect(("127.0.0.1", status_port));
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let rss = st
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap()
        .to_string();
    let hwm = st
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap()
        .to_string();
    println!(
        "dmr-agent (bench profile, {:.1} MB unstripped) start → READY {:.1} ms with 100k cached tokens and a 100k backlog; {rss}; {hwm}",
        size as f64 / 1e6,
        ready.as_secs_f64() * 1e3
    );
    let _ = child.kill();
    let _ = child.wait();
    sim.shutdown().await;
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |n: &str| args.is_empty() || args.iter().any(|a| a == n);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if want("latency") {
            latency().await;
        }
        if want("burst") {
            burst().await;
        }
        if want("outbox") {
            outbox().await;
        }
        if want("lookup") {
            lookup().await;
        }
        if want("lookup_api") {
            lookup_api().await;
        }
        if want("drain") {
            drain().await;
        }
        if want("process") {
            process().await;
        }
    });
}
