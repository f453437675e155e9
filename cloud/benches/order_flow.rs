#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The whole online order flow under an open-loop load: for every flow the generator creates
//! an order through the public H5 API (`POST /api/v1/public/orders`), pays it in the sandbox
//! (`POST /pay/sandbox/{payment}`, which delivers a signed notification to the cloud), and the
//! cloud signs the unlock token and publishes `cmd unlock` through a real Mosquitto to a real
//! `dmr-agent`, which drives a real `dmr-lock-sim` over a pty and acks; the ack (ingested by
//! the cloud's MQTT bridge) moves the order to `unlocked`. A flow's latency runs from the
//! moment it was *scheduled* (open loop: a slow cloud does not slow the generator down, and
//! queueing shows up in the figures) to the order's `unlocked_at`.
//!
//! One lock takes one active order at a time and an order stays active until the door opened
//! and closed again (`completed`), so the bench runs many locks: `G` gateways (one agent and
//! one simulator each, every simulator serving `M` lock addresses on its pty) and the
//! simulators open and close each door shortly after the latch releases. A lock goes back to
//! the generator's pool when its order leaves the active states. The pool starts interleaved
//! over the gateways, so consecutive flows go to different venues.
//!
//! Line time: the simulators run without `--line-baud`, so no wire time is simulated; what
//! remains of the bus is the pty round trip, which the agent's own ack latency (reported
//! separately, `gateway_command_acks.latency_ms`) bounds from above.
//!
//! `cargo bench -p dmr-cloud --bench order_flow` (SQLite in a temp dir; PostgreSQL too when
//! DMR_TEST_DATABASE_URL is set, e.g. through `scripts/run_postgres.sh`). Needs `mosquitto`
//! and the bench-profile binaries: `cargo build --profile bench -p dmr-edge-agent -p
//! dmr-firmware-sim` first (looked up in DMR_E2E_BIN_DIR, else `<target>/release`).
//! Sizing (environment): DMR_FLOW_GATEWAYS (8), DMR_FLOW_LOCKS (per gateway, 48),
//! DMR_FLOW_RATES (flows/s, comma separated, "100,250,500"), DMR_FLOW_SECS (measured seconds
//! per rate, 10), DMR_FLOW_WARMUP_SECS (3), DMR_FLOW_RUNS (rounds over the rates, 3),
//! DMR_FLOW_POLL_MS (the agents' `poll_interval_ms`, the round over all locks; 500, the
//! shipped default), DMR_FLOW_DOOR_WATCH_MS (the agents' `door_watch_interval_ms`, how often
//! a just-unlocked door is looked at; unset: the shipped default, 100 ms or the poll
//! interval if lower), DMR_FLOW_DB_CONNECTIONS (cloud pool, 8),
//! DMR_FLOW_DOOR_OPEN_MS (how long the simulated door stays open, 1000),
//! DMR_FLOW_MONITOR_MS (how often the bench looks for finished orders to free their locks,
//! 50; latencies come from the orders' own `unlocked_at`, not from this),
//! DMR_FLOW_LINE_BAUD (unset: no simulated wire time; e.g. 115200 to include it),
//! DMR_FLOW_ONLY_PG=1 (skip the SQLite pass), DMR_FLOW_MQTT_WORKERS and
//! DMR_FLOW_MQTT_BATCH_WAIT_MS (the cloud's `mqtt.workers` / `mqtt.batch_wait_ms`; unset: the
//! defaults, 4 and 5), DMR_FLOW_PIN_CPU (e.g. 0: pin this process, the cloud and the generator,
//! to that CPU once the agents, simulators and broker are up; unset: no pin).

#[path = "../tests/support/ports.rs"]
mod ports;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dmr_cloud::config::Config;
use dmr_cloud::db::now_ms;
use dmr_protocol::keys::{generate, public_b64u};
use serde_json::{Value, json};
use uuid::Uuid;

use ports::free_port;

const MASTER_KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rates() -> Vec<f64> {
    std::env::var("DMR_FLOW_RATES")
        .unwrap_or_else(|_| "100,250,500".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect()
}

/// Indexes into the flat list of locks (gateway 0's locks, then gateway 1's, ...), ordered
/// round-robin over the gateways: lock 0 of each gateway, then lock 1 of each, and so on.
fn interleaved(per_gateway: &[usize]) -> Vec<usize> {
    let starts: Vec<usize> = per_gateway
        .iter()
        .scan(0, |at, n| {
            let s = *at;
            *at += n;
            Some(s)
        })
        .collect();
    let most = per_gateway.iter().copied().max().unwrap_or(0);
    (0..most)
        .flat_map(|i| {
            per_gateway
                .iter()
                .zip(&starts)
                .filter(move |(n, _)| i < **n)
                .map(move |(_, s)| s + i)
        })
        .collect()
}

fn wall_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

fn bin_dir() -> PathBuf {
    std::env::var_os("DMR_E2E_BIN_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("release")))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release"))
}

fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} not found: `cargo build --profile bench -p dmr-edge-agent -p dmr-firmware-sim` first \
         (or set DMR_E2E_BIN_DIR)",
        p.display()
    );
    p
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mosquitto(dir: &Path) -> (u16, Proc) {
    let port = free_port();
    let conf = dir.join("m.conf");
    // No inflight cap and deep queues: the cloud acks after applying, and Mosquitto's default
    // of 20 in flight per client would make the broker, not the cloud, the limit. No Nagle
    // (Mosquitto's default keeps it): a forwarded publish would wait for the receiver's
    // delayed TCP ACK of the previous one, up to 40 ms on a quiet connection.
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence false\n\
             max_inflight_messages 0\nmax_queued_messages 0\nset_tcp_nodelay true\n\
             log_dest stderr\nlog_type error\n"
        ),
    )
    .unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .spawn()
        .expect("mosquitto installed (scripts/setup.sh)");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    (port, Proc(child))
}

struct Lock {
    id: Uuid,
    qr: String,
    plan: String,
}

struct Gateway {
    id: Uuid,
    key: dmr_protocol::keys::SigningKey,
    locks: Vec<(u8, Lock)>,
}

async fn seed(db: &dmr_cloud::db::Db, gws: usize, per_gw: usize) -> Vec<Gateway> {
    let now = now_ms();
    let mid = Uuid::new_v4().to_string();
    let vid = Uuid::new_v4().to_string();
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO merchants (id, name, commission_bp, created_at, updated_at) VALUES ($1, 'Bench', 500, $2, $2)")
        .bind(mid.clone()).bind(now).execute(&mut *tx).await.unwrap();
    sqlx::query("INSERT INTO venues (id, merchant_id, name, created_at, updated_at) VALUES ($1, $2, 'Venue', $3, $3)")
        .bind(vid.clone()).bind(mid.clone()).bind(now).execute(&mut *tx).await.unwrap();
    let mut out = Vec::new();
    for g in 0..gws {
        let gw = Gateway {
            id: Uuid::new_v4(),
            key: generate(),
            locks: Vec::new(),
        };
        sqlx::query("INSERT INTO gateways (id, merchant_id, venue_id, name, status, public_key, enrolled_at, created_at, updated_at) \
                     VALUES ($1, $2, $3, 'GW', 'enrolled', $4, $5, $5, $5)")
            .bind(gw.id.to_string()).bind(mid.clone()).bind(vid.clone())
            .bind(public_b64u(&gw.key.verifying_key())).bind(now)
            .execute(&mut *tx).await.unwrap();
        let mut gw = gw;
        for a in 1..=per_gw {
            let lock = Lock {
                id: Uuid::new_v4(),
                qr: format!("QR{}", Uuid::new_v4().simple()),
                plan: Uuid::new_v4().to_string(),
            };
            sqlx::query("INSERT INTO locks (id, merchant_id, venue_id, gateway_id, name, device_code, bus_address, qr_code, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, 'L', $5, $6, $7, $8, $8)")
                .bind(lock.id.to_string()).bind(mid.clone()).bind(vid.clone()).bind(gw.id.to_string())
                .bind(format!("DEV-{g}-{a}")).bind(a as i64).bind(lock.qr.clone()).bind(now)
                .execute(&mut *tx).await.unwrap();
            sqlx::query("INSERT INTO price_plans (id, merchant_id, lock_id, name, duration_minutes, price_fen, position, created_at) \
                         VALUES ($1, $2, $3, '1 hour', 60, 300, 0, $4)")
                .bind(lock.plan.clone()).bind(mid.clone()).bind(lock.id.to_string()).bind(now)
                .execute(&mut *tx).await.unwrap();
            gw.locks.push((a as u8, lock));
        }
        out.push(gw);
    }
    tx.commit().await.unwrap();
    out
}

/// How often the agents look at a just-unlocked door: DMR_FLOW_DOOR_WATCH_MS, else the
/// agent's default (100 ms, or the poll interval if that is lower).
fn door_watch_ms(poll_ms: usize) -> usize {
    env_usize("DMR_FLOW_DOOR_WATCH_MS", poll_ms.min(100))
}

/// How long the simulated person keeps the door open (DMR_FLOW_DOOR_OPEN_MS): long enough
/// for two looks of the door watch at the door.
fn door_open_ms(poll_ms: usize) -> usize {
    env_usize(
        "DMR_FLOW_DOOR_OPEN_MS",
        (door_watch_ms(poll_ms) * 2 + 50).max(1000),
    )
}

/// Starts one simulator (its pty linked at `dir/ttyN`) and one agent for `gw`; the agent's
/// status endpoint listens on `status_port`.
fn start_gateway(
    dir: &Path,
    n: usize,
    gw: &Gateway,
    trusted: &[(u32, String)],
    mqtt_port: u16,
    poll_ms: usize,
    status_port: u16,
) -> (Proc, Proc) {
    let tty = dir.join(format!("tty{n}"));
    let sim_out = std::fs::File::create(dir.join(format!("sim{n}.out"))).unwrap();
    let sim = Proc(
        Command::new(bin("dmr-lock-sim"))
            .args(["--locks", &gw.locks.len().to_string()])
            .arg("--link")
            .arg(&tty)
            // The person opens the door soon after the latch releases and closes it again,
            // long enough for the agent's poll to see both: the agent sees a door only
            // when its poller reaches that lock, and one round over M locks on a busy bus
            // takes longer than the poll interval, so the default leaves it a second.
            .args(["--door", "auto", "--door-open-after-ms", "30"])
            .args(["--door-close-after-ms", &door_open_ms(poll_ms).to_string()])
            .args(line_baud_args())
            .stdout(sim_out)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while !tty.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "sim {n} has no pty"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let state = dir.join(format!("agent{n}"));
    std::fs::create_dir_all(&state).unwrap();
    let key_file = dir.join(format!("gw{n}.key"));
    dmr_protocol::keys::save_signing_key(&key_file, &gw.key).unwrap();
    let trusted: Vec<String> = trusted
        .iter()
        .map(|(id, k)| format!("\"{id}\" = \"{k}\""))
        .collect();
    let locks: Vec<String> = gw
        .locks
        .iter()
        .map(|(a, l)| format!("{{ addr = {a}, lock_id = \"{}\" }}", l.id))
        .collect();
    let conf = format!(
        r#"gateway_id = "{gw}"
state_dir = "{state}"
key_file = "{key}"
poll_interval_ms = {poll_ms}
{watch}
offline_after = 3
unlock_timeout_ms = 3000
heartbeat_interval_s = 2

[trusted_keys]
{trusted}

[http]
listen = "127.0.0.1:0"
status_listen = "127.0.0.1:{status_port}"

[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
keep_alive_s = 30
reconnect_min_ms = 100
reconnect_max_ms = 1000

[[bus]]
port = "{tty}"
baud = 115200
locks = [ {locks} ]
"#,
        gw = gw.id,
        state = state.display(),
        key = key_file.display(),
        trusted = trusted.join("\n"),
        tty = tty.display(),
        locks = locks.join(", "),
        // Only when asked, so agents built before the knob existed still start (before/after
        // comparisons); unset, the agent's default is what door_watch_ms() reports.
        watch = std::env::var("DMR_FLOW_DOOR_WATCH_MS")
            .map(|_| format!("door_watch_interval_ms = {}", door_watch_ms(poll_ms)))
            .unwrap_or_default(),
    );
    let conf_file = dir.join(format!("agent{n}.toml"));
    std::fs::write(&conf_file, conf).unwrap();
    let log = std::fs::File::create(dir.join(format!("agent{n}.log"))).unwrap();
    let agent = Proc(
        Command::new(bin("dmr-agent"))
            .arg("run")
            .arg("--config")
            .arg(&conf_file)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    (sim, agent)
}

/// Not every lock came online: say which gateways are missing locks, with the tail of each
/// one's agent log, and keep the directory (agent and simulator logs, state) for a look.
async fn start_up_failed(
    db: &dmr_cloud::db::Db,
    dir: tempfile::TempDir,
    online: i64,
    total: usize,
) -> ! {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT gateway_id, CAST(SUM(CASE WHEN status = 'online' THEN 1 ELSE 0 END) AS BIGINT) \
         FROM locks GROUP BY gateway_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap_or_default();
    let kept = dir.keep();
    for (gw, up) in rows
        .iter()
        .filter(|(_, up)| (*up as usize) < total / rows.len().max(1))
    {
        eprintln!("gateway {gw}: {up} locks online");
    }
    for entry in std::fs::read_dir(&kept).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(8).collect();
            if !tail.is_empty() {
                eprintln!("--- {} (last lines, newest first)", path.display());
                for l in tail {
                    eprintln!("    {l}");
                }
            }
        }
    }
    panic!(
        "only {online} of {total} locks online after 60 s; logs and state kept in {}",
        kept.display()
    );
}

/// Every agent's poll rounds so far: (rounds, total ms, longest ms) summed / maxed over the
/// agents, from their `/status`.
async fn poll_rounds(http: &reqwest::Client, ports: &[u16]) -> (f64, f64, f64) {
    let (mut n, mut total, mut max) = (0.0, 0.0, 0.0f64);
    for p in ports {
        let Ok(r) = http
            .get(format!("http://127.0.0.1:{p}/status"))
            .send()
            .await
        else {
            continue;
        };
        let Ok(v) = r.json::<Value>().await else {
            continue;
        };
        for b in v["poll_rounds"].as_array().into_iter().flatten() {
            let rounds = b["rounds"].as_f64().unwrap_or(0.0);
            n += rounds;
            total += rounds * b["mean_ms"].as_f64().unwrap_or(0.0);
            max = max.max(b["max_ms"].as_f64().unwrap_or(0.0));
        }
    }
    (n, total, max)
}

/// CPU seconds (user + system) a process used so far, from `/proc/{pid}/stat` (Linux,
/// 100 ticks a second); 0 if it cannot be read.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name: state is the first, utime the 12th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// CPU seconds so far of: this process (cloud + load generator), the broker, all agents,
/// all simulators, and the whole machine (busy time over every core, from `/proc/stat`).
fn cpu_split(me: u32, broker: u32, agents: &[u32], sims: &[u32]) -> [f64; 5] {
    let machine = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let l = s.lines().next()?.to_string();
            let v: Vec<f64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
            Some(
                (v.iter().sum::<f64>() - v.get(3).unwrap_or(&0.0) - v.get(4).unwrap_or(&0.0))
                    / 100.0,
            )
        })
        .unwrap_or(0.0);
    [
        cpu_secs(me),
        cpu_secs(broker),
        agents.iter().map(|p| cpu_secs(*p)).sum(),
        sims.iter().map(|p| cpu_secs(*p)).sum(),
        machine,
    ]
}

/// The 1-minute load average: the machine is shared, and the figures move with it.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".into())
}

/// `DMR_FLOW_LINE_BAUD` (unset by default): simulate the wire time at that baud too, to
/// compare against the default run without line time.
fn line_baud_args() -> Vec<String> {
    match std::env::var("DMR_FLOW_LINE_BAUD") {
        Ok(b) if !b.is_empty() => vec!["--line-baud".into(), b],
        _ => Vec::new(),
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(mut v: Vec<f64>) -> (f64, f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (
        pct(&v, 0.5),
        pct(&v, 0.95),
        pct(&v, 0.99),
        v.last().copied().unwrap_or(f64::NAN),
    )
}

/// What one flow did, filled in by the generator task and the monitor.
#[derive(Clone, Debug)]
struct Flow {
    lock: usize,
    /// Scheduled start (wall-clock ms).
    t0: f64,
    /// Whether this flow counts (not warm-up).
    measured: bool,
    created_ms: f64,
    paid_ms: f64,
    /// When the generator registered it (the monitor's "gone" check must not race it).
    registered: Instant,
    unlocked_latency: Option<f64>,
}

#[derive(Default)]
struct Shared {
    free: Mutex<VecDeque<usize>>,
    flows: Mutex<HashMap<String, Flow>>,
    done: Mutex<Vec<(String, Flow, String)>>,
    errors: Mutex<HashMap<String, u64>>,
    no_free_lock: AtomicU64,
}

impl Shared {
    fn error(&self, what: String) {
        *self.errors.lock().unwrap().entry(what).or_default() += 1;
    }
}

#[allow(clippy::too_many_arguments)]
async fn one_flow(
    http: reqwest::Client,
    base: String,
    lock: usize,
    qr: String,
    plan: String,
    t0: f64,
    measured: bool,
    shared: Arc<Shared>,
) {
    let c0 = wall_ms();
    let r = http
        .post(format!("{base}/api/v1/public/orders"))
        .header("Idempotency-Key", Uuid::new_v4().to_string())
        .header("X-Device-Session", Uuid::new_v4().to_string())
        .json(&json!({ "qr_code": qr, "plan_id": plan, "provider": "sandbox" }))
        .send()
        .await;
    let created: Value = match r {
        Ok(r) if r.status() == reqwest::StatusCode::CREATED => r.json().await.unwrap(),
        Ok(r) => {
            shared.error(format!("create {}", r.status()));
            shared.free.lock().unwrap().push_back(lock);
            return;
        }
        Err(e) => {
            shared.error(format!("create: {e}"));
            shared.free.lock().unwrap().push_back(lock);
            return;
        }
    };
    let c1 = wall_ms();
    let order = created["order"]["id"].as_str().unwrap().to_string();
    let redirect = created["payment"]["redirect_url"].as_str().unwrap();
    let pay_path = &redirect[redirect.find("/pay/sandbox/").unwrap()..];
    // Registered before paying: the monitor may see it unlocked before the pay call returns.
    shared.flows.lock().unwrap().insert(
        order.clone(),
        Flow {
            lock,
            t0,
            measured,
            created_ms: c1 - c0,
            paid_ms: f64::NAN,
            registered: Instant::now(),
            unlocked_latency: None,
        },
    );
    match http.post(format!("{base}{pay_path}")).send().await {
        Ok(r) if r.status().is_success() => {
            let p = wall_ms() - c1;
            if let Some(f) = shared.flows.lock().unwrap().get_mut(&order) {
                f.paid_ms = p;
            }
        }
        Ok(r) => shared.error(format!("pay {}", r.status())),
        Err(e) => shared.error(format!("pay: {e}")),
    }
}

/// Every DMR_FLOW_MONITOR_MS: the active orders; a registered order seen unlocked gets its
/// latency (the order's own `unlocked_at`, so the interval does not blur it), one no longer
/// active is finished and its lock goes back to the pool. The query is the bench's, not the
/// system's: at every 10 ms it was 12% of PostgreSQL's statement time at 200 flows/s.
async fn monitor(db: dmr_cloud::db::Db, shared: Arc<Shared>, stop: Arc<AtomicU64>) {
    let every = Duration::from_millis(env_usize("DMR_FLOW_MONITOR_MS", 50).max(1) as u64);
    while stop.load(Ordering::Relaxed) == 0 {
        let q0 = Instant::now();
        let rows: Vec<(String, String, Option<i64>)> = match sqlx::query_as(
            "SELECT id, status, unlocked_at FROM orders \
             WHERE status IN ('created', 'paid', 'unlocking', 'unlocked')",
        )
        .fetch_all(&db.pool)
        .await
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("monitor: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut active = HashSet::with_capacity(rows.len());
        let gone: Vec<String> = {
            let mut flows = shared.flows.lock().unwrap();
            for (id, _status, unlocked_at) in rows {
                if let (Some(f), Some(at)) = (flows.get_mut(&id), unlocked_at)
                    && f.unlocked_latency.is_none()
                {
                    f.unlocked_latency = Some(at as f64 - f.t0);
                }
                active.insert(id);
            }
            flows
                .iter()
                .filter(|(id, f)| f.registered < q0 && !active.contains(*id))
                .map(|(id, _)| id.clone())
                .collect()
        };
        for id in gone {
            let Some(row) = final_status(&db, &id).await else {
                continue;
            };
            let Some(mut f) = shared.flows.lock().unwrap().remove(&id) else {
                continue;
            };
            if f.unlocked_latency.is_none()
                && let Some(at) = row.1
            {
                f.unlocked_latency = Some(at as f64 - f.t0);
            }
            shared.free.lock().unwrap().push_back(f.lock);
            shared.done.lock().unwrap().push((id, f, row.0));
        }
        tokio::time::sleep(every).await;
    }
}

/// Orders left `unlocked` for more than 5 s, by the door evidence they got: none (the
/// agent never saw the door move), opened only, or both (which should have completed).
async fn stuck_report(db: &dmr_cloud::db::Db) {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT COALESCE((SELECT MIN(e.result) || '/' || MAX(e.result) FROM order_unlock_events e \
         WHERE e.order_id = o.id AND e.source = 'door'), 'no door event'), COUNT(*) \
         FROM orders o WHERE o.status = 'unlocked' AND o.unlocked_at < $1 GROUP BY 1",
    )
    .bind(now_ms() - 5_000)
    .fetch_all(&db.pool)
    .await
    .unwrap_or_default();
    if !rows.is_empty() {
        println!("    orders unlocked > 5 s ago and not completed, by door events: {rows:?}");
    }
}

async fn final_status(db: &dmr_cloud::db::Db, id: &str) -> Option<(String, Option<i64>)> {
    match sqlx::query_as("SELECT status, unlocked_at FROM orders WHERE id = $1")
        .bind(id.to_string())
        .fetch_one(&db.pool)
        .await
    {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("monitor: {e}");
            None
        }
    }
}

struct RunResult {
    offered: f64,
    achieved: f64,
    lat: (f64, f64, f64, f64),
    create: (f64, f64, f64, f64),
    pay: (f64, f64, f64, f64),
    unlocked: usize,
    started: usize,
    failed: usize,
    no_lock: u64,
    errors: HashMap<String, u64>,
    stages: String,
}

#[allow(clippy::too_many_arguments)]
async fn run_rate(
    db: &dmr_cloud::db::Db,
    http: &reqwest::Client,
    base: &str,
    locks: &Arc<Vec<(String, String)>>,
    shared: &Arc<Shared>,
    rate: f64,
    warmup: Duration,
    secs: Duration,
) -> RunResult {
    shared.done.lock().unwrap().clear();
    // Flows still open from the previous rate belong to it, not to this one.
    shared.flows.lock().unwrap().clear();
    shared.errors.lock().unwrap().clear();
    shared.no_free_lock.store(0, Ordering::Relaxed);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let wall0 = wall_ms();
    let total = warmup + secs;
    let mut k: u64 = 0;
    let mut started = 0usize;
    let measure_from = wall0 + warmup.as_secs_f64() * 1000.0;
    loop {
        let due = interval.mul_f64(k as f64);
        if due >= total {
            break;
        }
        let now = start.elapsed();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
        k += 1;
        let t0 = wall0 + due.as_secs_f64() * 1000.0;
        let measured = t0 >= measure_from;
        let Some(lock) = shared.free.lock().unwrap().pop_front() else {
            if measured {
                shared.no_free_lock.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        };
        if measured {
            started += 1;
        }
        let (qr, plan) = locks[lock].clone();
        tokio::spawn(one_flow(
            http.clone(),
            base.to_string(),
            lock,
            qr,
            plan,
            t0,
            measured,
            shared.clone(),
        ));
    }
    // Drain: every flow either finished or 10 s passed.
    let drain = Instant::now();
    while !shared.flows.lock().unwrap().is_empty() && drain.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pending: Vec<(String, Flow)> = shared
        .flows
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let done = shared.done.lock().unwrap().clone();
    let mut lat = Vec::new();
    let mut create = Vec::new();
    let mut pay = Vec::new();
    let mut failed = 0;
    let mut ids = Vec::new();
    let window_end = measure_from + secs.as_secs_f64() * 1000.0;
    let mut unlocked_in_window = 0usize;
    for (id, f, status) in done.iter().map(|(i, f, s)| (i, f, s.as_str())).chain(
        pending
            .iter()
            .map(|(i, f)| (i, f, "still active after the drain")),
    ) {
        if !f.measured {
            continue;
        }
        create.push(f.created_ms);
        if f.paid_ms.is_finite() {
            pay.push(f.paid_ms);
        }
        match f.unlocked_latency {
            Some(l) => {
                lat.push(l);
                ids.push(id.clone());
                if f.t0 + l <= window_end + 1000.0 {
                    unlocked_in_window += 1;
                }
            }
            None => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("  flow {id} did not unlock: {status}");
                }
            }
        }
    }
    let stages = stages(db, &ids).await;
    RunResult {
        offered: rate,
        achieved: unlocked_in_window as f64 / secs.as_secs_f64(),
        unlocked: lat.len(),
        lat: summary(lat),
        create: summary(create),
        pay: summary(pay),
        started,
        failed,
        no_lock: shared.no_free_lock.load(Ordering::Relaxed),
        errors: shared.errors.lock().unwrap().clone(),
        stages,
    }
}

/// Where a flow's time went, from the database's own timestamps (ms; every process runs on
/// this machine, so the clocks agree): created → paid (the generator's pay call and the
/// notification), paid → unlocking (token signed, transition committed), unlocking →
/// unlocked (cmd published, broker, agent, bus, ack, ingest), and that last stage split at
/// the agent: the cmd's way to the agent (unlocking → the agent starts on it, which is its
/// ack's `ts` minus its `latency_ms`), the agent's own figure, and the result's way back (the
/// ack's `ts` → unlocked). The way back is measured to `unlocked_at`, not to the ack's
/// `received_at`: the agent's signed `unlock` event, written in the same commit as the ack,
/// moves the order too, and whichever of the two the cloud applies first does it.
async fn stages(db: &dmr_cloud::db::Db, ids: &[String]) -> String {
    let mut a = Vec::new();
    let mut b = Vec::new();
    let mut c = Vec::new();
    let mut to_agent = Vec::new();
    let mut agent = Vec::new();
    let mut back = Vec::new();
    for chunk in ids.chunks(200) {
        for id in chunk {
            let row: (i64, Option<i64>, Option<i64>, Option<i64>, Option<String>) = sqlx::query_as(
                "SELECT created_at, paid_at, unlocking_at, unlocked_at, unlock_command_id FROM orders WHERE id = $1",
            )
            .bind(id.clone())
            .fetch_one(&db.pool)
            .await
            .unwrap();
            if let (Some(p), Some(u), Some(d)) = (row.1, row.2, row.3) {
                a.push((p - row.0) as f64);
                b.push((u - p) as f64);
                c.push((d - u) as f64);
            }
            if let Some(cmd) = row.4 {
                let ack: Option<(i64, i64)> = sqlx::query_as(
                    "SELECT latency_ms, ts FROM gateway_command_acks WHERE command_id = $1 LIMIT 1",
                )
                .bind(cmd)
                .fetch_optional(&db.pool)
                .await
                .unwrap();
                if let Some((l, ts)) = ack {
                    agent.push(l as f64);
                    if let (Some(u), Some(d)) = (row.2, row.3) {
                        to_agent.push((ts - l - u) as f64);
                        back.push((d - ts) as f64);
                    }
                }
            }
        }
    }
    let f = |name: &str, v: Vec<f64>| {
        let n = v.len();
        let (p50, p95, p99, max) = summary(v);
        format!(
            "    {name:<44} n={n:>5}  p50 {p50:>6.1}  p95 {p95:>6.1}  p99 {p99:>6.1}  max {max:>6.1} ms\n"
        )
    };
    let mut s = String::new();
    s += &f("created -> paid (DB clock)", a);
    s += &f("paid -> unlocking (sign, commit)", b);
    s += &f("unlocking -> unlocked (cmd, agent, bus, ingest)", c);
    s += &f("  cmd to the agent (publish, broker, queue)", to_agent);
    s += &f("  agent's own ack latency (verify, bus, ack)", agent);
    s += &f("  result back (outbox, broker, bridge, apply)", back);
    s
}

/// Pins every thread of this process (the cloud and the load generator) to `cpu`, as an
/// operator would pin `dmr-cloud` with systemd's `CPUAffinity=`. Done once the agents,
/// simulators and broker run, so those child processes keep every CPU; threads this process
/// starts later (new database connections) inherit the pin.
fn pin_self(cpu: &str) {
    let pid = std::process::id().to_string();
    match Command::new("taskset")
        .args(["-a", "-p", "-c", cpu, &pid])
        .stdout(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => {
            println!(
                "the bench process (cloud + generator) is pinned to CPU {cpu}; its children are not"
            )
        }
        other => {
            panic!("taskset -a -p -c {cpu} {pid} failed ({other:?}); is util-linux installed?")
        }
    }
}

/// How busy SQLite's one writer connection is: a plain thread looks every 0.5 ms whether
/// the writer pool has its connection idle. On SQLite every write waits for that one
/// connection, so this share is what says when the writer, not the CPU, is the limit.
/// PostgreSQL has a pool of writers and no such single point, so nothing is sampled there.
struct WriterBusy {
    thread: std::thread::JoinHandle<f64>,
}

impl WriterBusy {
    fn start(db: &dmr_cloud::db::Db, span: Duration) -> Option<WriterBusy> {
        if db.backend != dmr_cloud::db::Backend::Sqlite {
            return None;
        }
        let pool = db.pool.clone();
        let thread = std::thread::spawn(move || {
            let t0 = Instant::now();
            let (mut looks, mut busy) = (0u64, 0u64);
            while t0.elapsed() < span {
                looks += 1;
                if pool.num_idle() == 0 {
                    busy += 1;
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            busy as f64 / looks.max(1) as f64
        });
        Some(WriterBusy { thread })
    }

    fn finish(self) -> f64 {
        self.thread.join().unwrap_or(f64::NAN)
    }
}

async fn run_backend(name: &str, url: &str) {
    let gws = env_usize("DMR_FLOW_GATEWAYS", 8);
    let per_gw = env_usize("DMR_FLOW_LOCKS", 48);
    let secs = Duration::from_secs(env_usize("DMR_FLOW_SECS", 10) as u64);
    let warmup = Duration::from_secs(env_usize("DMR_FLOW_WARMUP_SECS", 3) as u64);
    let runs = env_usize("DMR_FLOW_RUNS", 3);
    // The shipped round interval: the flow's latency ends at `unlocked`, which no poll
    // gates; polling only decides how soon a door cycle is seen and the lock is free
    // again, and just-unlocked doors are watched every door_watch_interval whatever the
    // round interval (docs/benchmarks.md, "flowagent (session 5)").
    let poll_ms = env_usize("DMR_FLOW_POLL_MS", 500);
    let dir = tempfile::tempdir().unwrap();
    let (mqtt_port, broker) = mosquitto(dir.path());
    let broker_pid = broker.0.id();
    let http_port = free_port();
    let env = vec![
        ("DMR_DATABASE_URL".to_string(), url.to_string()),
        ("DMR_MASTER_KEY".to_string(), MASTER_KEY.to_string()),
        (
            "DMR_MQTT_URL".to_string(),
            format!("mqtt://127.0.0.1:{mqtt_port}"),
        ),
        (
            "DMR_MQTT_CLIENT_ID".to_string(),
            format!("bench-cloud-{}", Uuid::new_v4().simple()),
        ),
        (
            "DMR_DATABASE_MAX_CONNECTIONS".to_string(),
            env_usize("DMR_FLOW_DB_CONNECTIONS", 8).to_string(),
        ),
        ("DMR_LOG_FILTER".to_string(), "error".to_string()),
        // One client address plays every payer here: no per-client limit.
        (
            "DMR_RATE_LIMIT_PER_MINUTE".to_string(),
            "1000000".to_string(),
        ),
        (
            "DMR_SERVER_LISTEN".to_string(),
            format!("127.0.0.1:{http_port}"),
        ),
        (
            "DMR_SERVER_PUBLIC_BASE_URL".to_string(),
            format!("http://127.0.0.1:{http_port}"),
        ),
    ];
    // The MQTT bridge's concurrency, for experiments (unset: the product's defaults).
    let mut env = env;
    for (ours, theirs) in [
        ("DMR_FLOW_MQTT_WORKERS", "DMR_MQTT_WORKERS"),
        ("DMR_FLOW_MQTT_BATCH_WAIT_MS", "DMR_MQTT_BATCH_WAIT_MS"),
    ] {
        if let Ok(v) = std::env::var(ours) {
            env.push((theirs.to_string(), v));
        }
    }
    let config = Config::load_from(None, env).unwrap();
    let app = dmr_cloud::build_app(config).await.unwrap();
    let state = app.state.clone();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", http_port))
        .await
        .unwrap();
    let (stop_http, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(dmr_cloud::serve(app, listener, async {
        let _ = stopped.await;
    }));
    let (stop, rx) = tokio::sync::watch::channel(false);
    let (bridge, liveness) = dmr_cloud::app::spawn_link(&state, "bench", &rx);
    let seeded = seed(&state.db, gws, per_gw).await;
    let trusted: Vec<(u32, String)> = state
        .keys
        .trusted_verifying_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|(id, k)| (id, public_b64u(&k)))
        .collect();
    let mut procs = Vec::new();
    let status_ports: Vec<u16> = seeded.iter().map(|_| free_port()).collect();
    for (n, gw) in seeded.iter().enumerate() {
        procs.push(start_gateway(
            dir.path(),
            n,
            gw,
            &trusted,
            mqtt_port,
            poll_ms,
            status_ports[n],
        ));
    }
    let agent_pids: Vec<u32> = procs.iter().map(|(_, a)| a.0.id()).collect();
    let sim_pids: Vec<u32> = procs.iter().map(|(s, _)| s.0.id()).collect();
    let total_locks = gws * per_gw;
    println!(
        "\n== {name}: {gws} gateways x {per_gw} locks ({total_locks} locks), agent poll {poll_ms} ms (door watch {} ms), door open {} ms, \
         bench monitor every {} ms, warm-up {}s + {}s measured per rate, {runs} round(s)",
        door_watch_ms(poll_ms),
        door_open_ms(poll_ms),
        env_usize("DMR_FLOW_MONITOR_MS", 50),
        warmup.as_secs(),
        secs.as_secs()
    );
    // Every lock online means every agent is connected (and subscribed to its commands).
    let t = Instant::now();
    loop {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM locks WHERE status = 'online'")
            .fetch_one(&state.db.pool)
            .await
            .unwrap();
        if n as usize == total_locks {
            break;
        }
        if t.elapsed() >= Duration::from_secs(60) {
            start_up_failed(&state.db, dir, n, total_locks).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("all locks online after {:.1} s", t.elapsed().as_secs_f64());
    if let Ok(cpu) = std::env::var("DMR_FLOW_PIN_CPU")
        && !cpu.is_empty()
    {
        pin_self(&cpu);
    }
    let locks: Arc<Vec<(String, String)>> = Arc::new(
        seeded
            .iter()
            .flat_map(|g| g.locks.iter().map(|(_, l)| (l.qr.clone(), l.plan.clone())))
            .collect(),
    );
    let shared = Arc::new(Shared::default());
    // The pool starts interleaved across gateways (the first lock of every gateway, then the
    // second, ...), so consecutive flows go to different venues as independent customers'
    // would. In gateway order (as seeded) the first 48 flows all went to one gateway, whose
    // agent handles its commands one at a time: at 150 flows/s that one agent was offered
    // 150/s while the other eleven idled, and commands queued in it for p50 25 ms, p95
    // 105 ms (measured with an instrumented agent).
    let per_gateway: Vec<usize> = seeded.iter().map(|g| g.locks.len()).collect();
    let order = interleaved(&per_gateway);
    let mut every = order.clone();
    every.sort_unstable();
    assert!(
        every.into_iter().eq(0..locks.len()),
        "the pool holds every lock once"
    );
    shared.free.lock().unwrap().extend(order);
    let stop_mon = Arc::new(AtomicU64::new(0));
    // The monitor reads through a pool of its own, so it never takes the cloud's connections.
    let mon_db = dmr_cloud::db::Db::connect(url, 2).await.unwrap();
    let mon = tokio::spawn(monitor(mon_db, shared.clone(), stop_mon.clone()));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{http_port}");
    let mut table: Vec<RunResult> = Vec::new();
    for round in 0..runs {
        for &rate in &rates() {
            let rounds0 = poll_rounds(&http, &status_ports).await;
            let cpu0 = cpu_split(std::process::id(), broker_pid, &agent_pids, &sim_pids);
            let wall0 = Instant::now();
            let writer = WriterBusy::start(&state.db, warmup + secs);
            let r = run_rate(&state.db, &http, &base, &locks, &shared, rate, warmup, secs).await;
            let writer = writer.map(WriterBusy::finish);
            let rounds1 = poll_rounds(&http, &status_ports).await;
            let cpu1 = cpu_split(std::process::id(), broker_pid, &agent_pids, &sim_pids);
            let wall = wall0.elapsed().as_secs_f64();
            println!(
                "round {round} (load average {}) offered {:>5.0}/s: achieved {:>6.1}/s, unlocked {}/{} (failed {}, no free lock {}), \
                 latency p50 {:.1} p95 {:.1} p99 {:.1} max {:.1} ms; create p99 {:.1} ms, pay p99 {:.1} ms; errors {:?}",
                loadavg(),
                r.offered,
                r.achieved,
                r.unlocked,
                r.started,
                r.failed,
                r.no_lock,
                r.lat.0,
                r.lat.1,
                r.lat.2,
                r.lat.3,
                r.create.2,
                r.pay.2,
                r.errors
            );
            print!("{}", r.stages);
            let dn = rounds1.0 - rounds0.0;
            println!(
                "    agents' poll round over {per_gw} locks (this rate, all agents): mean {:.1} ms over {dn:.0} rounds; longest since start {:.1} ms",
                if dn > 0.0 {
                    (rounds1.1 - rounds0.1) / dn
                } else {
                    f64::NAN
                },
                rounds1.2
            );
            // Every flow started in this rate's warm-up and window, whatever became of it.
            let flows = (rate * (warmup + secs).as_secs_f64()).max(1.0);
            let d: Vec<f64> = (0..5).map(|i| cpu1[i] - cpu0[i]).collect();
            println!(
                "    CPU over {wall:.1} s (cores busy: cloud+generator {:.2}, broker {:.2}, agents {:.2}, simulators {:.2}; machine {:.2} of 2); \
                 per flow offered: cloud+generator {:.2} ms, broker {:.2} ms, agents {:.2} ms, simulators {:.2} ms",
                d[0] / wall,
                d[1] / wall,
                d[2] / wall,
                d[3] / wall,
                d[4] / wall,
                d[0] * 1000.0 / flows,
                d[1] * 1000.0 / flows,
                d[2] * 1000.0 / flows,
                d[3] * 1000.0 / flows,
            );
            if let Some(busy) = writer {
                // Over the same warm-up and window as `flows`: the share of time some task
                // held the one writer connection, and that time per flow.
                println!(
                    "    SQLite writer connection checked out {:.1}% of the time, {:.2} ms per flow offered",
                    busy * 100.0,
                    busy * (warmup + secs).as_secs_f64() * 1000.0 / flows
                );
            }
            table.push(r);
            stuck_report(&state.db).await;
        }
    }
    println!("\n{name}: medians over {runs} round(s)");
    println!(
        "| offered/s | achieved/s | p50 ms | p95 ms | p99 ms | create p99 ms | pay p99 ms | not unlocked | no free lock |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &rate in &rates() {
        let rs: Vec<&RunResult> = table.iter().filter(|r| r.offered == rate).collect();
        let med = |f: &dyn Fn(&RunResult) -> f64| {
            let mut v: Vec<f64> = rs.iter().map(|r| f(r)).collect();
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v[v.len() / 2]
        };
        println!(
            "| {rate:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} |",
            med(&|r| r.achieved),
            med(&|r| r.lat.0),
            med(&|r| r.lat.1),
            med(&|r| r.lat.2),
            med(&|r| r.create.2),
            med(&|r| r.pay.2),
            med(&|r| r.failed as f64),
            med(&|r| r.no_lock as f64),
        );
    }
    stop_mon.store(1, Ordering::Relaxed);
    let _ = mon.await;
    drop(procs);
    drop(broker);
    let _ = stop.send(true);
    for t in [bridge, liveness].into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
    }
    let _ = stop_http.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), server).await;
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let only_pg = std::env::var("DMR_FLOW_ONLY_PG").is_ok_and(|v| v == "1");
        if !only_pg {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("bench.db").display());
            run_backend("SQLite", &url).await;
        }
        if let Ok(pg) = std::env::var("DMR_TEST_DATABASE_URL")
            && !pg.is_empty()
        {
            run_backend("PostgreSQL", &pg).await;
        }
    });
}
