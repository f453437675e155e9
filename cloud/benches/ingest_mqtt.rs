#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Gateway-message ingest through a real broker: N simulated gateways (real Ed25519 keys,
//! enrolled rows) publish signed heartbeats (QoS 0) and door events (QoS 1) through a real
//! Mosquitto to the cloud's MQTT bridge, which verifies and applies them durably. Prints the
//! sustained applied messages/s (median of 3 runs) and, to say where it saturates, the cost
//! of each stage measured on its own:
//!
//! - verify: `message::open` (Ed25519 + JSON) per message on one core, and `open_many`
//!   (Ed25519 batch verification, as ingest does it);
//! - ingest: `Ingest::submit_many` called in-process with the bridge's batches (no broker);
//! - broker: the same publishes to a plain subscriber that only counts and acks (no ingest);
//! - end to end: publishers -> Mosquitto -> bridge -> ingest -> database.
//!
//! `cargo bench -p dmr-cloud --bench ingest_mqtt` (SQLite in a temp dir; PostgreSQL too when
//! DMR_TEST_DATABASE_URL is set). `DMR_BENCH_GATEWAYS` (default 2000) and
//! `DMR_BENCH_MSGS_PER_GW` (default 10) size a run; `DMR_MQTT_WORKERS`, `DMR_MQTT_BATCH_MAX`
//! and `DMR_MQTT_BATCH_WAIT_MS` set the bridge as in the cloud's configuration. Publishers,
//! broker and cloud share the machine's cores, so the end-to-end figure is a lower bound for a dedicated cloud host.

#[path = "../tests/support/ports.rs"]
mod ports;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dmr_cloud::config::Config;
use dmr_cloud::db::now_ms;
use dmr_cloud::link::ingest::Via;
use dmr_protocol::jws::Kid;
use dmr_protocol::keys::{SigningKey, VerifyingKey, generate, public_b64u};
use dmr_protocol::message::{
    DoorChange, DoorEvent, Envelope, Event, Expect, Heartbeat, LockStatus, Message, open, open_many,
};
use dmr_protocol::topic::{TopicKind, topic};
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use uuid::Uuid;

use ports::free_port;

const MASTER_KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const PUBLISHERS: usize = 4;

struct Gw {
    id: Uuid,
    lock: Uuid,
    key: SigningKey,
}

struct Msg {
    gw: Uuid,
    kind: TopicKind,
    jws: String,
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Broker {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("m.conf");
        // No inflight cap and a deep queue: the cloud acks after applying, and the default
        // 20 in flight would make the broker, not the cloud, the limit.
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence false\n\
                 max_inflight_messages 0\nmax_queued_messages 0\nlog_dest stderr\nlog_type error\n"
            ),
        )
        .unwrap();
        let child = std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .spawn()
            .expect("mosquitto installed");
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn seed(db: &dmr_cloud::db::Db, n: usize) -> Vec<Gw> {
    let now = now_ms();
    let mid = Uuid::new_v4().to_string();
    let vid = Uuid::new_v4().to_string();
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO merchants (id, name, commission_bp, created_at, updated_at) VALUES ($1, 'Bench', 500, $2, $2)")
        .bind(mid.clone()).bind(now).execute(&mut *tx).await.unwrap();
    sqlx::query("INSERT INTO venues (id, merchant_id, name, created_at, updated_at) VALUES ($1, $2, 'Venue', $3, $3)")
        .bind(vid.clone()).bind(mid.clone()).bind(now).execute(&mut *tx).await.unwrap();
    let mut gws = Vec::with_capacity(n);
    for i in 0..n {
        let g = Gw {
            id: Uuid::new_v4(),
            lock: Uuid::new_v4(),
            key: generate(),
        };
        sqlx::query("INSERT INTO gateways (id, merchant_id, venue_id, name, status, public_key, enrolled_at, created_at, updated_at) \
                     VALUES ($1, $2, $3, 'GW', 'enrolled', $4, $5, $5, $5)")
            .bind(g.id.to_string()).bind(mid.clone()).bind(vid.clone())
            .bind(public_b64u(&g.key.verifying_key())).bind(now)
            .execute(&mut *tx).await.unwrap();
        sqlx::query("INSERT INTO locks (id, merchant_id, venue_id, gateway_id, name, device_code, bus_address, qr_code, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, 'L', $5, 1, $6, $7, $7)")
            .bind(g.lock.to_string()).bind(mid.clone()).bind(vid.clone()).bind(g.id.to_string())
            .bind(format!("DEV-{i}")).bind(format!("QR-{}", g.lock.simple())).bind(now)
            .execute(&mut *tx).await.unwrap();
        gws.push(g);
    }
    tx.commit().await.unwrap();
    gws
}

/// Heartbeats and door events alternating, `per_gw` per gateway, interleaved across
/// gateways the way real traffic arrives.
fn messages(gws: &[Gw], per_gw: usize, round: u64) -> Vec<Msg> {
    let base = now_ms() as u64 + round * 1_000_000;
    let mut out = Vec::with_capacity(gws.len() * per_gw);
    for i in 0..per_gw {
        for g in gws {
            let ts = base + i as u64;
            let (kind, message) = if i % 2 == 0 {
                (
                    TopicKind::Heartbeat,
                    Message::Heartbeat(Heartbeat {
                        uptime_s: ts / 1000,
                        outbox_pending: 0,
                        outbox_oldest_age_s: None,
                        locks: vec![LockStatus {
                            lock_id: g.lock,
                            addr: 1,
                            online: true,
                            door_closed: i % 4 == 0,
                            locked: true,
                            fw: "1.0.0".into(),
                        }],
                    }),
                )
            } else {
                (
                    TopicKind::Event,
                    Message::Event(Event::Door(DoorEvent {
                        lock_id: g.lock,
                        door: DoorChange::Opened,
                        at: ts,
                    })),
                )
            };
            let jws =
                Envelope::new(Uuid::now_v7(), g.id, ts, message).sign(Kid::Gateway(g.id), &g.key);
            out.push(Msg {
                gw: g.id,
                kind,
                jws,
            });
        }
    }
    out
}

async fn publish_all(port: u16, msgs: Arc<Vec<Msg>>) {
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let msgs = msgs.clone();
        tasks.push(tokio::spawn(async move {
            let mut opts = MqttOptions::new(
                format!("bench-pub-{p}-{}", Uuid::new_v4().simple()),
                "127.0.0.1",
                port,
            );
            opts.set_inflight(1000);
            opts.set_keep_alive(Duration::from_secs(30));
            let (client, mut el) = AsyncClient::new(opts, 2000);
            let poller = tokio::spawn(async move { while el.poll().await.is_ok() {} });
            for m in msgs.iter().skip(p).step_by(PUBLISHERS) {
                let qos = if m.kind == TopicKind::Heartbeat {
                    QoS::AtMostOnce
                } else {
                    QoS::AtLeastOnce
                };
                client
                    .publish(topic(m.gw, m.kind), qos, false, m.jws.clone())
                    .await
                    .unwrap();
            }
            // Let the event loop flush before the task ends.
            tokio::time::sleep(Duration::from_millis(200)).await;
            (client, poller)
        }));
    }
    for t in tasks {
        let (_client, poller) = t.await.unwrap();
        // Keep the connection until everything is delivered (the caller waits for that).
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(120)).await;
            poller.abort();
        });
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn verify_cost(gws: &[Gw], msgs: &[Msg]) -> f64 {
    let keys: std::collections::HashMap<Uuid, VerifyingKey> =
        gws.iter().map(|g| (g.id, g.key.verifying_key())).collect();
    let sample = &msgs[..msgs.len().min(5000)];
    let t = Instant::now();
    for m in sample {
        let k = &keys[&m.gw];
        open(
            &m.jws,
            |_| Some(k),
            Expect {
                gw: m.gw,
                now_ms: 0,
            },
        )
        .unwrap();
    }
    t.elapsed().as_secs_f64() * 1e6 / sample.len() as f64
}

/// The same sample through `open_many` (Ed25519 batch verification), 250-message batches as
/// each of the bridge's two verification halves sees them.
fn verify_batch_cost(gws: &[Gw], msgs: &[Msg]) -> f64 {
    let keys: std::collections::HashMap<Uuid, VerifyingKey> =
        gws.iter().map(|g| (g.id, g.key.verifying_key())).collect();
    let sample = &msgs[..msgs.len().min(5000)];
    let t = Instant::now();
    for chunk in sample.chunks(250) {
        let items: Vec<(&str, Expect)> = chunk
            .iter()
            .map(|m| {
                (
                    m.jws.as_str(),
                    Expect {
                        gw: m.gw,
                        now_ms: 0,
                    },
                )
            })
            .collect();
        let out = open_many(&items, |i, _| keys.get(&chunk[i].gw));
        assert!(out.iter().all(Result::is_ok));
    }
    t.elapsed().as_secs_f64() * 1e6 / sample.len() as f64
}

async fn broker_only(port: u16, msgs: Arc<Vec<Msg>>) -> f64 {
    let total = msgs.len() as u64;
    let mut opts = MqttOptions::new(
        format!("bench-sub-{}", Uuid::new_v4().simple()),
        "127.0.0.1",
        port,
    );
    opts.set_manual_acks(true);
    opts.set_inflight(1000);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(opts, 4000);
    for k in ["state", "heartbeat", "event", "ack"] {
        client
            .subscribe(format!("$share/bench/dmr/v1/gw/+/{k}"), QoS::AtLeastOnce)
            .await
            .unwrap();
    }
    let mut subacks = 0;
    while subacks < 4 {
        if let Ok(MqttEvent::Incoming(Packet::SubAck(_))) = el.poll().await {
            subacks += 1;
        }
    }
    let pubs = tokio::spawn(publish_all(port, msgs));
    let t = Instant::now();
    let mut got = 0u64;
    while got < total {
        match tokio::time::timeout(Duration::from_secs(30), el.poll()).await {
            Ok(Ok(MqttEvent::Incoming(Packet::Publish(p)))) => {
                got += 1;
                if p.qos != QoS::AtMostOnce {
                    client.try_ack(&p).unwrap();
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("subscriber: {e}"),
            Err(_) => break,
        }
    }
    pubs.await.unwrap();
    if got < total {
        eprintln!(
            "broker-only: received {got} of {total} (QoS 0 messages may be dropped under load)"
        );
    }
    got as f64 / t.elapsed().as_secs_f64()
}

async fn run_backend(name: &str, url: &str) {
    let n = env_usize("DMR_BENCH_GATEWAYS", 2000);
    let per_gw = env_usize("DMR_BENCH_MSGS_PER_GW", 10);
    let broker = Broker::start();
    let env = vec![
        ("DMR_DATABASE_URL".to_string(), url.to_string()),
        ("DMR_MASTER_KEY".to_string(), MASTER_KEY.to_string()),
        (
            "DMR_MQTT_URL".to_string(),
            format!("mqtt://127.0.0.1:{}", broker.port),
        ),
        (
            "DMR_MQTT_CLIENT_ID".to_string(),
            format!("bench-cloud-{}", Uuid::new_v4().simple()),
        ),
        ("DMR_DATABASE_MAX_CONNECTIONS".to_string(), "8".to_string()),
        ("DMR_LOG_FILTER".to_string(), "error".to_string()),
    ];
    // The bridge's knobs (DMR_MQTT_WORKERS, DMR_MQTT_BATCH_MAX, DMR_MQTT_BATCH_WAIT_MS) pass
    // through from the bench's environment, so they can be compared without a rebuild.
    let mut env = env;
    for knob in [
        "DMR_MQTT_WORKERS",
        "DMR_MQTT_BATCH_MAX",
        "DMR_MQTT_BATCH_WAIT_MS",
    ] {
        if let Ok(v) = std::env::var(knob) {
            println!("{knob}={v}");
            env.push((knob.to_string(), v));
        }
    }
    let config = Config::load_from(None, env).unwrap();
    let app = dmr_cloud::build_app(config).await.unwrap();
    let state = app.state.clone();
    let gws = seed(&state.db, n).await;
    println!(
        "\n== {name}: {n} gateways x {per_gw} messages per run (half heartbeats QoS 0, half door events QoS 1)"
    );

    // Stage 1: verification alone.
    let sample = messages(&gws, 2, 100);
    let us = verify_cost(&gws, &sample);
    println!(
        "verify (message::open, one core): {us:.1} us/message -> {:.0} msg/s per core",
        1e6 / us
    );
    let us = verify_batch_cost(&gws, &sample);
    println!(
        "verify (message::open_many, batch verification, one core): {us:.1} us/message -> {:.0} msg/s per core",
        1e6 / us
    );

    // Stage 2: ingest alone (no broker), 500-message mixed batches like the bridge's.
    let msgs = messages(&gws, per_gw, 200);
    let t = Instant::now();
    let mut applied = 0usize;
    for chunk in msgs.chunks(500) {
        let items: Vec<(Uuid, &str)> = chunk.iter().map(|m| (m.gw, m.jws.as_str())).collect();
        applied += state
            .ingest
            .submit_many(Via::Mqtt, &items)
            .await
            .unwrap()
            .len();
    }
    let ingest_rate = applied as f64 / t.elapsed().as_secs_f64();
    println!(
        "ingest only (Ingest::submit_many, 500-message batches, sequential): {ingest_rate:.0} msg/s"
    );
    // The same through per-gateway submit calls (one transaction per gateway per batch).
    let msgs = messages(&gws, 2, 250);
    let t = Instant::now();
    let mut applied = 0usize;
    for chunk in msgs.chunks(500) {
        let mut groups: std::collections::BTreeMap<Uuid, Vec<&str>> = Default::default();
        for m in chunk {
            groups.entry(m.gw).or_default().push(&m.jws);
        }
        for (gw, raws) in groups {
            applied += state
                .ingest
                .submit(gw, Via::Mqtt, &raws)
                .await
                .unwrap()
                .len();
        }
    }
    println!(
        "ingest only (Ingest::submit per gateway, for comparison): {:.0} msg/s",
        applied as f64 / t.elapsed().as_secs_f64()
    );

    // Stage 3: broker alone.
    let bmsgs = Arc::new(messages(&gws, per_gw, 300));
    let broker_rate = broker_only(broker.port, bmsgs).await;
    println!(
        "broker only (4 publishers -> Mosquitto -> 1 counting subscriber): {broker_rate:.0} msg/s"
    );

    // Stage 4: end to end, 3 runs.
    let (stop, rx) = tokio::sync::watch::channel(false);
    let (bridge, liveness) = dmr_cloud::app::spawn_link(&state, "bench", &rx);
    while !state.mqtt.is_connected() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let done = |s: &dmr_cloud::link::bridge::MqttLink| {
        s.stats.applied.load(Ordering::Relaxed)
            + s.stats.duplicates.load(Ordering::Relaxed)
            + s.stats.rejected().values().sum::<u64>()
    };
    let mut rates = Vec::new();
    for run in 0..3u64 {
        let msgs = Arc::new(messages(&gws, per_gw, 400 + run));
        let total = msgs.len() as u64;
        let before = done(&state.mqtt);
        let (b0, a0) = (
            state.mqtt.stats.batches.load(Ordering::Relaxed),
            state.mqtt.stats.apply_micros.load(Ordering::Relaxed),
        );
        let recv0 = state.mqtt.stats.received.load(Ordering::Relaxed);
        let t = Instant::now();
        publish_all(broker.port, msgs).await;
        let published = t.elapsed();
        let deadline = Instant::now() + Duration::from_secs(300);
        while done(&state.mqtt) - before < total && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let secs = t.elapsed().as_secs_f64();
        let handled = done(&state.mqtt) - before;
        let received = state.mqtt.stats.received.load(Ordering::Relaxed) - recv0;
        let batches = state.mqtt.stats.batches.load(Ordering::Relaxed) - b0;
        let apply_s = (state.mqtt.stats.apply_micros.load(Ordering::Relaxed) - a0) as f64 / 1e6;
        let rate = handled as f64 / secs;
        println!(
            "run {run}: {handled}/{total} applied in {secs:.2} s = {rate:.0} msg/s (publishing took {:.2} s; received {received}; \
             {batches} batches, mean {:.0} msgs/batch, {:.2} ms in ingest per batch, ingest busy {:.0}% of wall time summed over workers)",
            published.as_secs_f64(),
            handled as f64 / batches.max(1) as f64,
            apply_s * 1000.0 / batches.max(1) as f64,
            apply_s / secs * 100.0
        );
        if handled < total {
            println!(
                "  (incomplete: {} not handled within the deadline)",
                total - handled
            );
        }
        rates.push(rate);
    }
    println!(
        "{name}: end-to-end median of 3 runs: {:.0} msg/s",
        median(rates)
    );
    let rejected = state.mqtt.stats.rejected();
    if !rejected.is_empty() {
        println!("  rejected: {rejected:?}");
    }
    let _ = stop.send(true);
    for t in [bridge, liveness].into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        run_backend("SQLite", &url).await;
        if let Ok(pg) = std::env::var("DMR_TEST_DATABASE_URL")
            && !pg.is_empty()
        {
            run_backend("PostgreSQL", &pg).await;
        }
    });
}
