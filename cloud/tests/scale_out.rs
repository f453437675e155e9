//! Scale-out for real on this machine: two `dmr-cloud serve` processes share one PostgreSQL
//! database and one Mosquitto (embedded broker off, `$share/dmr-cloud/...` shared
//! subscriptions, persistent sessions), while simulated gateways (real Ed25519 keys,
//! enrolled rows) publish signed door events, some of them several times. Midway the
//! instance holding the liveness lease is SIGKILLed, publishing goes on, and the killed
//! instance is then restarted with the same MQTT client id (so the broker hands it the
//! messages queued for its session). At the end:
//!
//! - every distinct event id is in `gateway_events` exactly once, nothing else is, and the
//!   instances' `dmr_mqtt_messages_applied_total` add up to exactly that number
//!   (re-published and redelivered copies were counted as duplicates, not applied twice);
//! - both instances applied a share of the load before the kill (the broker splits it);
//! - the leased liveness job ran on one instance at a time (the `leases` row is sampled
//!   throughout: a new holder never takes over before the previous holder's lease ended),
//!   marked each silent lock offline exactly once, and after the kill the survivor took the
//!   job over (locks that fell silent after the kill were swept too).
//!
//! PostgreSQL only (SQLite is one file on one host, so it is no scale-out target): skipped with
//! a message when DMR_TEST_DATABASE_URL is unset, failed when DMR_REQUIRE_PG=1 as well.
//! Run: `scripts/run_postgres.sh bash -c 'env -u DATABASE_URL DMR_TEST_DATABASE_URL="$DATABASE_URL"
//! DMR_REQUIRE_PG=1 cargo test -p dmr-cloud --test scale_out -- --nocapture'`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/ports.rs"]
mod ports;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dmr_protocol::jws::Kid;
use dmr_protocol::keys::{SigningKey, generate, public_b64u};
use dmr_protocol::message::{DoorChange, DoorEvent, Envelope, Event, Message};
use dmr_protocol::topic::{TopicKind, topic};
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use sqlx::AnyPool;
use uuid::Uuid;

use ports::free_port;

const MASTER_KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const GATEWAYS: usize = 100;
/// Distinct events per gateway per phase (two phases: before and after the kill).
const EVENTS_PER_GW: usize = 15;
/// Locks that never send a heartbeat, per silent batch, for the liveness job to sweep.
const SILENT_LOCKS: usize = 10;
const PUBLISHERS: usize = 4;
/// Generous: on a loaded 2-core machine, with batches retried after PostgreSQL deadlocks
/// between concurrent ingest transactions, a phase has taken ~30 s; the test is about lost
/// or doubled work, not speed.
const WAIT: Duration = Duration::from_secs(90);

fn pg_url() -> Option<String> {
    match std::env::var("DMR_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => {
            assert!(
                url.starts_with("postgres://") || url.starts_with("postgresql://"),
                "DMR_TEST_DATABASE_URL={url:?} is not a postgres:// URL"
            );
            Some(url)
        }
        _ => {
            assert!(
                !std::env::var("DMR_REQUIRE_PG").is_ok_and(|v| v == "1"),
                "DMR_REQUIRE_PG=1 but DMR_TEST_DATABASE_URL is not set: the scale-out test cannot run"
            );
            None
        }
    }
}

fn wait_port(port: u16, what: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{what} did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A child process, SIGKILLed on drop so a failing test leaves nothing behind.
struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One `dmr-cloud` instance's fixed settings (kept across a restart).
struct Instance {
    name: &'static str,
    http_port: u16,
    client_id: String,
    proc: Proc,
}

fn cloud_env(cmd: &mut Command, db_url: &str, mqtt_port: u16) {
    cmd.env_remove("DATABASE_URL")
        .env("DMR_DATABASE_URL", db_url)
        .env("DMR_MASTER_KEY", MASTER_KEY)
        .env("DMR_MQTT_URL", format!("mqtt://127.0.0.1:{mqtt_port}"))
        .env("DMR_MQTT_EMBEDDED_ENABLED", "false")
        .env("DMR_MQTT_SHARED_SUBSCRIPTION", "true")
        .env("DMR_DATABASE_MAX_CONNECTIONS", "5")
        .env("DMR_GATEWAY_HEARTBEAT_INTERVAL_S", "5")
        .env("DMR_LOG_FILTER", "warn,dmr_cloud::link::liveness=info");
}

fn spawn_cloud(
    dir: &Path,
    name: &str,
    db_url: &str,
    mqtt_port: u16,
    http_port: u16,
    client_id: &str,
) -> Proc {
    let log = dir.join(format!("{name}-{}.log", Uuid::new_v4().simple()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dmr-cloud"));
    cmd.arg("serve");
    cloud_env(&mut cmd, db_url, mqtt_port);
    cmd.env("DMR_SERVER_LISTEN", format!("127.0.0.1:{http_port}"))
        .env("DMR_MQTT_CLIENT_ID", client_id)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let child = cmd.spawn().expect("spawning dmr-cloud serve");
    Proc {
        child: Some(child),
        log,
    }
}

/// The counters of one instance's /metrics (name -> value, unlabelled series only).
async fn metrics(client: &reqwest::Client, port: u16) -> Option<BTreeMap<String, u64>> {
    let body = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse::<f64>().ok()? as u64))
            })
            .collect(),
    )
}

async fn counter(client: &reqwest::Client, inst: &Instance, name: &str) -> u64 {
    let m = metrics(client, inst.http_port)
        .await
        .unwrap_or_else(|| panic!("{} /metrics unreachable", inst.name));
    *m.get(name)
        .unwrap_or_else(|| panic!("{} exposes no {name}", inst.name))
}

async fn wait_connected(client: &reqwest::Client, inst: &Instance) {
    let start = Instant::now();
    loop {
        if let Some(m) = metrics(client, inst.http_port).await
            && m.get("dmr_mqtt_connected") == Some(&1)
        {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "{} did not connect to the broker; log:\n{}",
            inst.name,
            tail(&inst.proc.log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The shared subscriptions follow the CONNACK; give the SUBACKs a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

struct Gw {
    id: Uuid,
    lock: Uuid,
    key: SigningKey,
}

struct World {
    merchant: String,
    venue: String,
    gws: Vec<Gw>,
    silent_gw: String,
}

async fn seed(pool: &AnyPool) -> World {
    let now = dmr_cloud::db::now_ms();
    let merchant = Uuid::new_v4().to_string();
    let venue = Uuid::new_v4().to_string();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO merchants (id, name, commission_bp, created_at, updated_at) VALUES ($1, 'Scale', 500, $2, $2)")
        .bind(merchant.clone()).bind(now).execute(&mut *tx).await.unwrap();
    sqlx::query("INSERT INTO venues (id, merchant_id, name, created_at, updated_at) VALUES ($1, $2, 'Venue', $3, $3)")
        .bind(venue.clone()).bind(merchant.clone()).bind(now).execute(&mut *tx).await.unwrap();
    let mut gws = Vec::new();
    for i in 0..GATEWAYS {
        let g = Gw {
            id: Uuid::new_v4(),
            lock: Uuid::new_v4(),
            key: generate(),
        };
        sqlx::query("INSERT INTO gateways (id, merchant_id, venue_id, name, status, public_key, enrolled_at, created_at, updated_at) \
                     VALUES ($1, $2, $3, 'GW', 'enrolled', $4, $5, $5, $5)")
            .bind(g.id.to_string()).bind(merchant.clone()).bind(venue.clone())
            .bind(public_b64u(&g.key.verifying_key())).bind(now)
            .execute(&mut *tx).await.unwrap();
        sqlx::query("INSERT INTO locks (id, merchant_id, venue_id, gateway_id, name, device_code, bus_address, qr_code, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, 'L', $5, 1, $6, $7, $7)")
            .bind(g.lock.to_string()).bind(merchant.clone()).bind(venue.clone()).bind(g.id.to_string())
            .bind(format!("DEV-{i}")).bind(format!("QR-{}", g.lock.simple())).bind(now)
            .execute(&mut *tx).await.unwrap();
        gws.push(g);
    }
    // A gateway whose locks never report: the liveness job's work.
    let silent_gw = Uuid::new_v4().to_string();
    sqlx::query("INSERT INTO gateways (id, merchant_id, venue_id, name, status, public_key, enrolled_at, created_at, updated_at) \
                 VALUES ($1, $2, $3, 'Silent', 'enrolled', $4, $5, $5, $5)")
        .bind(silent_gw.clone()).bind(merchant.clone()).bind(venue.clone())
        .bind(public_b64u(&generate().verifying_key())).bind(now)
        .execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    World {
        merchant,
        venue,
        gws,
        silent_gw,
    }
}

/// Inserts locks that claim to be online but last sent a heartbeat an hour ago, on bus
/// addresses `first..first+SILENT_LOCKS`.
async fn add_silent_locks(pool: &AnyPool, w: &World, first: usize) -> Vec<String> {
    let now = dmr_cloud::db::now_ms();
    let stale = now - 3_600_000;
    let mut ids = Vec::new();
    for addr in first..first + SILENT_LOCKS {
        let id = Uuid::new_v4().to_string();
        sqlx::query("INSERT INTO locks (id, merchant_id, venue_id, gateway_id, name, device_code, bus_address, qr_code, status, \
                     last_heartbeat_at, status_changed_at, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, 'S', $5, $6, $7, 'online', $8, $8, $8, $8)")
            .bind(id.clone()).bind(w.merchant.clone()).bind(w.venue.clone()).bind(w.silent_gw.clone())
            .bind(format!("SILENT-{addr}")).bind(addr as i64).bind(format!("QR-S-{addr}")).bind(stale)
            .execute(pool).await.unwrap();
        ids.push(id);
    }
    ids
}

struct Msg {
    id: Uuid,
    gw: Uuid,
    jws: String,
}

fn events(gws: &[Gw], per_gw: usize, base_ts: u64) -> Vec<Msg> {
    let mut out = Vec::new();
    for i in 0..per_gw {
        for g in gws {
            let ts = base_ts + i as u64;
            let id = Uuid::now_v7();
            let message = Message::Event(Event::Door(DoorEvent {
                lock_id: g.lock,
                door: if i % 2 == 0 {
                    DoorChange::Opened
                } else {
                    DoorChange::Closed
                },
                at: ts,
            }));
            let jws = Envelope::new(id, g.id, ts, message).sign(Kid::Gateway(g.id), &g.key);
            out.push(Msg { id, gw: g.id, jws });
        }
    }
    out
}

/// Publishes `msgs` at QoS 1 from `PUBLISHERS` connections and returns once the broker has
/// acknowledged every one (PUBACK), so "published" means "the broker has it".
async fn publish(port: u16, msgs: Vec<(Uuid, String)>) {
    let msgs = Arc::new(msgs);
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let msgs = msgs.clone();
        tasks.push(tokio::spawn(async move {
            let mut opts = MqttOptions::new(
                format!("scale-pub-{p}-{}", Uuid::new_v4().simple()),
                "127.0.0.1",
                port,
            );
            opts.set_inflight(200);
            opts.set_keep_alive(Duration::from_secs(30));
            let (client, mut el) = AsyncClient::new(opts, 500);
            let mine: Vec<(Uuid, String)> =
                msgs.iter().skip(p).step_by(PUBLISHERS).cloned().collect();
            let n = mine.len();
            let sender = tokio::spawn(async move {
                for (gw, jws) in mine {
                    client
                        .publish(topic(gw, TopicKind::Event), QoS::AtLeastOnce, false, jws)
                        .await
                        .unwrap();
                }
                client
            });
            let mut acked = 0;
            while acked < n {
                match el.poll().await {
                    Ok(MqttEvent::Incoming(Packet::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(e) => panic!("publisher {p}: {e}"),
                }
            }
            let client = sender.await.unwrap();
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(1), el.poll()).await;
        }));
    }
    for t in tasks {
        tokio::time::timeout(WAIT, t)
            .await
            .expect("publishing timed out")
            .unwrap();
    }
}

async fn event_count(pool: &AnyPool) -> (i64, i64) {
    sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT id) FROM gateway_events")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn wait_events(pool: &AnyPool, expected: i64, what: &str, logs: &[&Proc]) {
    let start = Instant::now();
    loop {
        let (n, _) = event_count(pool).await;
        if n >= expected {
            return;
        }
        if start.elapsed() > WAIT {
            let logs: Vec<String> = logs
                .iter()
                .map(|p| format!("{}:\n{}", p.log.display(), tail(&p.log)))
                .collect();
            panic!(
                "{what}: {n} of {expected} events applied after {WAIT:?}\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Offline-marks of each given lock by the liveness job (rows in the change feed).
async fn sweeps_per_lock(pool: &AnyPool, ids: &[String]) -> BTreeMap<String, i64> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT entity_id, COUNT(*) FROM live_changes WHERE kind = 'lock' \
         AND data LIKE '%heartbeat_timeout%' GROUP BY entity_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let wanted: HashSet<&String> = ids.iter().collect();
    rows.into_iter()
        .filter(|(id, _)| wanted.contains(id))
        .collect()
}

async fn wait_swept(pool: &AnyPool, ids: &[String], what: &str) {
    let start = Instant::now();
    loop {
        let done = sweeps_per_lock(pool, ids).await;
        if done.len() == ids.len() {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "{what}: only {} of {} silent locks marked offline after {WAIT:?}",
            done.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One sample of a lease row.
#[derive(Clone, Debug, PartialEq)]
struct LeaseSample {
    holder: String,
    acquired_at: i64,
    expires_at: i64,
}

/// Every distinct sample of each lease, by lease name.
type LeaseLog = Arc<Mutex<BTreeMap<String, Vec<LeaseSample>>>>;

/// Samples the `leases` table every 50 ms until stopped.
fn watch_leases(
    pool: AnyPool,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (LeaseLog, tokio::task::JoinHandle<()>) {
    let seen: LeaseLog = Arc::default();
    let out = seen.clone();
    let task = tokio::spawn(async move {
        while !*stop.borrow() {
            let rows: Vec<(String, String, i64, i64)> =
                sqlx::query_as("SELECT name, holder, acquired_at, expires_at FROM leases")
                    .fetch_all(&pool)
                    .await
                    .unwrap_or_default();
            {
                let mut seen = seen.lock().unwrap();
                for (name, holder, acquired_at, expires_at) in rows {
                    let s = LeaseSample {
                        holder,
                        acquired_at,
                        expires_at,
                    };
                    let v = seen.entry(name).or_default();
                    if v.last() != Some(&s) {
                        v.push(s);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (out, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_one_database_one_broker_survive_a_kill() {
    let Some(base) = pg_url() else {
        eprintln!(
            "SKIPPED scale_out: DMR_TEST_DATABASE_URL is not set (run under scripts/run_postgres.sh; \
             DMR_REQUIRE_PG=1 turns this skip into a failure)"
        );
        return;
    };
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();

    // A fresh schema of its own on the shared PostgreSQL.
    sqlx::any::install_default_drivers();
    let schema = format!("scale_{}", Uuid::new_v4().simple());
    let admin = AnyPool::connect(&base).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    let db_url = format!("{base}{sep}options=-c%20search_path%3D{schema}");

    // Broker: no inflight cap and an unbounded queue, so a session whose owner was killed
    // keeps every QoS 1 message until it comes back (the default 1000 would drop some).
    let mqtt_port = free_port();
    let conf = dir.path().join("mosquitto.conf");
    let mosq_log = dir.path().join("mosquitto.log");
    std::fs::write(
        &conf,
        format!(
            "listener {mqtt_port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence false\n\
             max_inflight_messages 0\nmax_queued_messages 0\nlog_dest stderr\nlog_type error\nlog_type warning\n"
        ),
    )
    .unwrap();
    let _broker = Proc {
        child: Some(
            Command::new("mosquitto")
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&mosq_log).unwrap())
                .spawn()
                .expect("mosquitto installed (scripts/setup.sh)"),
        ),
        log: mosq_log,
    };
    wait_port(mqtt_port, "mosquitto");

    // Migrate once, before either instance starts.
    let mut migrate = Command::new(env!("CARGO_BIN_EXE_dmr-cloud"));
    migrate.arg("migrate");
    cloud_env(&mut migrate, &db_url, mqtt_port);
    let out = migrate.output().unwrap();
    assert!(
        out.status.success(),
        "dmr-cloud migrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let pool = AnyPool::connect(&db_url).await.unwrap();
    let world = seed(&pool).await;
    let silent_before = add_silent_locks(&pool, &world, 1).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (leases, lease_task) = watch_leases(pool.clone(), stop_rx);

    let http = reqwest::Client::new();
    let mut insts = Vec::new();
    for name in ["a", "b"] {
        let http_port = free_port();
        let client_id = format!("scale-cloud-{name}-{}", Uuid::new_v4().simple());
        let proc = spawn_cloud(dir.path(), name, &db_url, mqtt_port, http_port, &client_id);
        insts.push(Instance {
            name,
            http_port,
            client_id,
            proc,
        });
    }
    for inst in &insts {
        wait_connected(&http, inst).await;
    }
    eprintln!("[{:?}] both instances connected", t0.elapsed());

    // Phase 1: distinct events plus re-publications of every 10th.
    let base_ts = dmr_cloud::db::now_ms() as u64;
    let phase1 = events(&world.gws, EVENTS_PER_GW, base_ts);
    let mut batch1: Vec<(Uuid, String)> = phase1.iter().map(|m| (m.gw, m.jws.clone())).collect();
    batch1.extend(phase1.iter().step_by(10).map(|m| (m.gw, m.jws.clone())));
    let dup1 = batch1.len() - phase1.len();
    publish(mqtt_port, batch1).await;
    eprintln!("[{:?}] phase 1 published (broker acked all)", t0.elapsed());
    wait_events(
        &pool,
        phase1.len() as i64,
        "phase 1",
        &[&insts[0].proc, &insts[1].proc],
    )
    .await;
    eprintln!("[{:?}] phase 1 applied", t0.elapsed());
    // Both liveness rounds at start-up have run by now (they run first thing).
    wait_swept(&pool, &silent_before, "silent locks before the kill").await;

    // Let in-flight duplicates settle, then read each instance's share.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut applied_before = Vec::new();
    for inst in &insts {
        applied_before.push(counter(&http, inst, "dmr_mqtt_messages_applied_total").await);
    }
    let mut dups_before = Vec::new();
    for inst in &insts {
        dups_before.push(counter(&http, inst, "dmr_mqtt_messages_duplicate_total").await);
    }
    eprintln!(
        "phase 1: {} distinct + {dup1} re-published; applied a={} b={}, duplicates a={} b={}",
        phase1.len(),
        applied_before[0],
        applied_before[1],
        dups_before[0],
        dups_before[1]
    );
    assert_eq!(
        applied_before.iter().sum::<u64>(),
        phase1.len() as u64,
        "phase 1: applied counters"
    );
    assert!(
        applied_before.iter().all(|&n| n > 0),
        "the broker did not split the load between the instances: {applied_before:?}"
    );

    // Kill whichever instance holds the liveness lease (the other must take the job over).
    let holder: String =
        sqlx::query_scalar("SELECT holder FROM leases WHERE name = 'link_liveness'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let pids: Vec<u32> = insts
        .iter()
        .map(|i| i.proc.child.as_ref().unwrap().id())
        .collect();
    let victim = pids
        .iter()
        .position(|pid| holder.ends_with(&format!(":{pid}")))
        .unwrap_or_else(|| panic!("lease holder {holder} is neither instance {pids:?}"));
    let survivor = 1 - victim;
    insts[victim].proc.kill9();
    eprintln!(
        "[{:?}] SIGKILLed {} (held link_liveness as {holder})",
        t0.elapsed(),
        insts[victim].name
    );

    // Phase 2, published while one instance is dead: new events, plus copies of phase-1
    // events (already applied) and of phase-2 events.
    let phase2 = events(&world.gws, EVENTS_PER_GW, base_ts + 1_000);
    let mut batch2: Vec<(Uuid, String)> = phase2.iter().map(|m| (m.gw, m.jws.clone())).collect();
    batch2.extend(
        phase1
            .iter()
            .skip(5)
            .step_by(10)
            .chain(phase2.iter().step_by(10))
            .map(|m| (m.gw, m.jws.clone())),
    );
    let dup2 = batch2.len() - phase2.len();
    let silent_after = add_silent_locks(&pool, &world, 1 + SILENT_LOCKS).await;
    publish(mqtt_port, batch2).await;
    eprintln!("[{:?}] phase 2 published", t0.elapsed());

    // Restart the killed instance under the same MQTT client id: its persistent session
    // holds whatever the broker routed to it while it was dead (Mosquitto keeps routing a
    // share of `$share` traffic to a disconnected persistent member), so until it is back
    // that share waits in the broker.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (stranded_at, _) = event_count(&pool).await;
    eprintln!(
        "[{:?}] before the restart: {} of {} events applied by the survivor alone",
        t0.elapsed(),
        stranded_at,
        phase1.len() + phase2.len()
    );
    let v = &mut insts[victim];
    v.proc = spawn_cloud(
        dir.path(),
        v.name,
        &db_url,
        mqtt_port,
        v.http_port,
        &v.client_id,
    );
    wait_connected(&http, &insts[victim]).await;
    eprintln!("[{:?}] {} restarted", t0.elapsed(), insts[victim].name);

    let total = (phase1.len() + phase2.len()) as i64;
    wait_events(&pool, total, "phase 2", &[&insts[0].proc, &insts[1].proc]).await;
    wait_swept(&pool, &silent_after, "silent locks after the kill").await;
    // Redeliveries and duplicates still in flight must not add rows.
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!("[{:?}] phase 2 applied", t0.elapsed());

    // Exactly once: every published id, once; nothing else.
    let (rows, distinct) = event_count(&pool).await;
    assert_eq!(
        (rows, distinct),
        (total, total),
        "gateway_events rows / distinct ids"
    );
    let stored: HashSet<String> = sqlx::query_scalar("SELECT id FROM gateway_events")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let published: HashSet<String> = phase1
        .iter()
        .chain(&phase2)
        .map(|m| m.id.to_string())
        .collect();
    assert_eq!(stored, published, "stored event ids = published event ids");

    let applied_survivor =
        counter(&http, &insts[survivor], "dmr_mqtt_messages_applied_total").await;
    let applied_restarted = counter(&http, &insts[victim], "dmr_mqtt_messages_applied_total").await;
    // The victim's counters restarted from zero: count its pre-kill duplicates too.
    let mut dups_end = dups_before[victim];
    let mut received_end = 0;
    for inst in &insts {
        dups_end += counter(&http, inst, "dmr_mqtt_messages_duplicate_total").await;
        received_end += counter(&http, inst, "dmr_mqtt_messages_received_total").await;
    }
    // The victim's counters restarted from zero; add what it applied before the kill.
    let applied_total = applied_survivor + applied_restarted + applied_before[victim];
    eprintln!(
        "phase 2: {} distinct + {dup2} re-published; applied: survivor {} = {} in total ({} in phase 2), \
         restarted {} = {applied_restarted} (from its session queue); duplicates dropped in total {}; \
         received since the restart/start {received_end}",
        phase2.len(),
        insts[survivor].name,
        applied_survivor,
        applied_survivor - applied_before[survivor],
        insts[victim].name,
        dups_end
    );
    assert_eq!(
        applied_total, total as u64,
        "applied counters across instances = distinct events"
    );
    assert!(
        dups_end >= (dup1 + dup2) as u64,
        "every re-published copy is counted as a duplicate ({} < {})",
        dups_end,
        dup1 + dup2
    );

    // Liveness: each silent lock marked offline exactly once, before and after the kill.
    for (what, ids) in [("before", &silent_before), ("after", &silent_after)] {
        let sweeps = sweeps_per_lock(&pool, ids).await;
        assert_eq!(
            sweeps.len(),
            ids.len(),
            "silent locks {what} the kill swept"
        );
        assert!(
            sweeps.values().all(|&n| n == 1),
            "each silent lock ({what} the kill) marked offline exactly once: {sweeps:?}"
        );
    }

    let _ = stop_tx.send(true);
    lease_task.await.unwrap();
    let leases = leases.lock().unwrap().clone();
    for (name, samples) in &leases {
        // A different holder only after the previous one's lease ended.
        for pair in samples.windows(2) {
            if pair[0].holder != pair[1].holder {
                assert!(
                    pair[1].acquired_at >= pair[0].expires_at,
                    "lease {name}: {} took over at {} while {} held it until {}",
                    pair[1].holder,
                    pair[1].acquired_at,
                    pair[0].holder,
                    pair[0].expires_at
                );
            }
        }
        let holders: Vec<&str> = samples.iter().map(|s| s.holder.as_str()).collect();
        let mut distinct_holders = holders.clone();
        distinct_holders.dedup();
        eprintln!(
            "lease {name}: {} samples, holder sequence {distinct_holders:?}",
            samples.len()
        );
    }
    let liveness = leases
        .get("link_liveness")
        .expect("the liveness lease was taken");
    assert!(
        liveness.iter().any(|s| s.holder != holder),
        "after the kill another instance took the liveness lease over: {liveness:?}"
    );
    for inst in &insts {
        let m = metrics(&http, inst.http_port).await.unwrap_or_default();
        let g = |k: &str| m.get(k).copied().unwrap_or(0);
        eprintln!(
            "{} (since its last start): received {}, batches {}, ingest {} s",
            inst.name,
            g("dmr_mqtt_messages_received_total"),
            g("dmr_mqtt_batches_total"),
            g("dmr_mqtt_apply_seconds_total")
        );
        let log = std::fs::read_to_string(&inst.proc.log).unwrap_or_default();
        let retries: Vec<&str> = log.lines().filter(|l| l.contains("retrying")).collect();
        eprintln!(
            "{}: {} batch retries in its log{}",
            inst.name,
            retries.len(),
            retries
                .first()
                .map(|l| format!(", first: {l}"))
                .unwrap_or_default()
        );
    }
    eprintln!(
        "scale_out: {} gateways, {} distinct events, {} re-published copies, in {:?}",
        GATEWAYS,
        total,
        dup1 + dup2,
        t0.elapsed()
    );
}
