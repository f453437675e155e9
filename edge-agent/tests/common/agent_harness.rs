//! Shared pieces of the agent's integration tests: a real Mosquitto broker on a free port,
//! an MQTT observer (`mosquitto_sub`) standing in for the cloud, the lock simulator over
//! Modbus TCP, cloud-side token and command signing, and an in-process agent.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dmr_edge_agent::agent::{self, clock::SystemClock, config::AgentConfig, locks::LockPort};
use dmr_edge_agent::bus;
use dmr_protocol::jws::Kid;
use dmr_protocol::keys::{SigningKey, VerifyingKey, public_b64u, signing_key_from_seed};
use dmr_protocol::message::{Command as Cmd, Envelope, Expect, Message};
use dmr_protocol::token::{TokenClaims, TokenKind, UnlockToken};
use dmr_protocol::topic::{TopicKind, topic};
use uuid::Uuid;

// One copy for the workspace's tests (dmr-cloud owns it).
#[path = "../../../cloud/tests/support/ports.rs"]
mod ports;
pub use ports::free_port;

pub const GW: Uuid = Uuid::from_u128(0x0193_a5e0_0000_7000_8000_0000_0000_00cc);
pub const CLOUD_KEY_ID: u32 = 1;

pub fn lock_id(n: u8) -> Uuid {
    Uuid::from_u128(0x0193_a5e0_0000_7000_8000_0000_0000_1000 + u128::from(n))
}

pub fn cloud_key() -> SigningKey {
    signing_key_from_seed([7; 32])
}

pub fn gw_key() -> SigningKey {
    signing_key_from_seed([9; 32])
}

pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A token for `lock`, valid now for an hour.
pub fn token(lock: Uuid, max_uses: u8) -> UnlockToken {
    token_with(
        lock,
        max_uses,
        now_s() - 60,
        now_s() + 3600,
        CLOUD_KEY_ID,
        &cloud_key(),
    )
}

pub fn token_with(
    lock: Uuid,
    max_uses: u8,
    not_before: u64,
    not_after: u64,
    key_id: u32,
    key: &SigningKey,
) -> UnlockToken {
    TokenClaims {
        kind: TokenKind::Order,
        key_id,
        token_id: Uuid::now_v7(),
        lock_id: lock,
        order_id: Uuid::now_v7(),
        not_before,
        not_after,
        max_uses,
    }
    .sign(key)
    .unwrap()
}

/// A cloud command for the test gateway, valid for a minute. Returns (id, compact JWS).
pub fn command(cmd: Cmd) -> (Uuid, String) {
    command_at(cmd, now_ms(), now_ms() + 60_000)
}

pub fn command_at(cmd: Cmd, ts: u64, exp_ms: u64) -> (Uuid, String) {
    let id = Uuid::now_v7();
    let mut env = Envelope::new(id, GW, ts, Message::Cmd(cmd));
    env.exp_ms = Some(exp_ms);
    (id, env.sign(Kid::Cloud(CLOUD_KEY_ID), &cloud_key()))
}

/// Opens a message the gateway signed (as the cloud would).
pub fn open_gw(compact: &str) -> Envelope {
    let vk: VerifyingKey = gw_key().verifying_key();
    dmr_protocol::message::open(compact, |_| Some(&vk), Expect { gw: GW, now_ms: 0 })
        .expect("gateway message verifies")
        .1
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Async variant.
pub async fn wait_until_async<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A Mosquitto broker on a free loopback port, with persistence so a graceful stop keeps
/// persistent sessions and their queued messages.
pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Mosquitto {
            port: free_port(),
            dir,
            child: None,
        };
        m.launch();
        m
    }

    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    fn launch(&mut self) {
        let conf = format!(
            "listener {} 127.0.0.1\nallow_anonymous true\nuser root\npersistence true\npersistence_location {}/\nautosave_interval 0\nmax_inflight_messages 0\nmax_queued_messages 200000\nlog_dest stderr\nlog_type error\n",
            self.port,
            self.dir.path().display()
        );
        std::fs::write(self.conf(), conf).unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.conf())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto installed (apt-get install mosquitto)");
        self.child = Some(child);
        let port = self.port;
        wait_until(Duration::from_secs(10), "mosquitto to listen", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// Graceful stop (SIGTERM): sessions and queued messages are saved.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }

    /// SIGKILL: the broker vanishes mid-session.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    pub fn start_again(&mut self) {
        assert!(self.child.is_none());
        self.launch();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One message seen by the observer.
#[derive(Debug, Clone)]
pub struct Seen {
    pub topic: String,
    pub env: Envelope,
}

/// `mosquitto_sub` subscribed to everything under `dmr/v1/gw/`, standing in for the cloud.
/// Messages are verified with the gateway key as they arrive.
pub struct Observer {
    child: Child,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Observer {
    /// `persistent`: a non-clean session with a fixed client id, so messages published while
    /// it is disconnected are queued for it by the broker.
    /// Returns once the subscription is in place (a probe published through the broker has
    /// come back), so nothing published after `start` can be missed.
    pub fn start(port: u16, client_id: &str, persistent: bool) -> Self {
        let probe = format!("dmr-test/probe/{client_id}");
        let mut cmd = Command::new("mosquitto_sub");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            "dmr/v1/gw/+/+",
            "-t",
            &probe,
            "-v",
            "-i",
            client_id,
            "-k",
            "5",
        ]);
        if persistent {
            cmd.arg("-c");
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub installed");
        let out = child.stdout.take().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ready2 = ready.clone();
        let probe2 = probe.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let Some((topic, payload)) = line.split_once(' ') else {
                    continue;
                };
                if topic == probe2 {
                    ready2.store(true, std::sync::atomic::Ordering::SeqCst);
                    continue;
                }
                // Commands are the cloud's own messages, not the gateway's.
                if topic.ends_with("/cmd") {
                    continue;
                }
                let env = open_gw(payload);
                s2.lock().unwrap().push(Seen {
                    topic: topic.to_string(),
                    env,
                });
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(
                Instant::now() < deadline,
                "observer {client_id} did not subscribe within 10 s"
            );
            let _ = Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
                .args(["-t", &probe, "-m", "probe"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let wait_until = Instant::now() + Duration::from_millis(200);
            while Instant::now() < wait_until && !ready.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Observer { child, seen }
    }

    pub fn snapshot(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn on(&self, kind: TopicKind) -> Vec<Envelope> {
        let t = topic(GW, kind);
        self.snapshot()
            .into_iter()
            .filter(|s| s.topic == t)
            .map(|s| s.env)
            .collect()
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes a command on the gateway's cmd topic with `mosquitto_pub`.
pub fn publish_cmd(port: u16, jws: &str) {
    let st = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            &topic(GW, TopicKind::Cmd),
            "-m",
            jws,
        ])
        .status()
        .unwrap();
    assert!(st.success());
}

/// The simulator with `n` locks (addresses 1..=n) on Modbus TCP. Nobody opens the door
/// after an unlock, so door events come only from the control API.
pub async fn sim(n: u8) -> dmr_firmware_sim::SimHandle {
    let mut cfg = dmr_firmware_sim::SimConfig::new(dmr_firmware_sim::LockSpec::numbered(n));
    cfg.tcp = Some("127.0.0.1:0".parse().unwrap());
    cfg.door = dmr_firmware_sim::DoorBehaviour::StaysShut;
    dmr_firmware_sim::start(cfg).await.unwrap()
}

/// Physical latch movements of the lock at `addr`.
pub fn actuations(sim: &dmr_firmware_sim::SimHandle, addr: u8) -> u64 {
    sim.control().lock(addr).unwrap().actuations
}

/// UNLOCK commands the controller executed (counts a pulse even if the latch was still
/// released from the previous one).
pub fn unlock_count(sim: &dmr_firmware_sim::SimHandle, addr: u8) -> u32 {
    sim.control().lock(addr).unwrap().unlock_count
}

/// Agent configuration TOML for `n` locks on the simulator at `sim_addr`.
pub fn config_toml(
    state_dir: &Path,
    sim_addr: SocketAddr,
    n: u8,
    mqtt_port: Option<u16>,
    extra: &str,
) -> String {
    let locks: Vec<String> = (1..=n)
        .map(|a| format!("{{ addr = {a}, lock_id = \"{}\" }}", lock_id(a)))
        .collect();
    let mqtt = mqtt_port
        .map(|p| {
            format!(
                "[mqtt]\nurl = \"mqtt://127.0.0.1:{p}\"\nkeep_alive_s = 5\nreconnect_min_ms = 50\nreconnect_max_ms = 500\n"
            )
        })
        .unwrap_or_default();
    format!(
        r#"gateway_id = "{GW}"
state_dir = "{dir}"
key_file = "{dir}/gateway.key"
poll_interval_ms = 100
offline_after = 2
unlock_timeout_ms = 3000
{extra}
[trusted_keys]
"{CLOUD_KEY_ID}" = "{pk}"

[http]
listen = "127.0.0.1:0"
status_listen = "127.0.0.1:0"
rate_per_min = 100000

{mqtt}
[[bus]]
port = "tcp://{sim_addr}"
locks = [ {locks} ]
"#,
        dir = state_dir.display(),
        pk = public_b64u(&cloud_key().verifying_key()),
        locks = locks.join(", "),
    )
}

/// Logs to the test's output (shown for failing tests); `DMR_LOG` sets the filter.
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DMR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Parses a config and starts the agent in-process against the simulator.
pub async fn start_agent(toml: &str) -> (agent::Running, AgentConfig) {
    init_logs();
    let cfg = agent::config::parse(toml, []).unwrap();
    let mut ports: Vec<Arc<dyn LockPort>> = Vec::new();
    for b in &cfg.buses {
        let addr = b.port.strip_prefix("tcp://").unwrap();
        let mut bc = bus::BusConfig::tcp(addr);
        bc.offline_after = cfg.offline_after;
        ports.push(Arc::new(bus::spawn(bc).await.unwrap()));
    }
    let running = agent::start(cfg.clone(), gw_key(), ports, SystemClock)
        .await
        .unwrap();
    (running, cfg)
}

/// Counts rows in a table of the agent's store.
pub async fn count(running: &agent::Running, sql: &'static str) -> i64 {
    running
        .store
        .call(move |db| db.conn().query_row(sql, [], |r| r.get::<_, i64>(0)))
        .await
        .unwrap()
        .unwrap()
}
