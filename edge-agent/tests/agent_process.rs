#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The real `dmr-agent` binary as a process: kill -9 in the middle of a burst of 1,000
//! unlocks, clean shutdown on SIGTERM, the signed Last Will, configuration errors (exit 78
//! before anything is opened), systemd readiness, `status` and `keygen`.

#[path = "common/agent_harness.rs"]
mod harness;

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dmr_protocol::message::{Event, Message, ResultCode};
use dmr_protocol::token::UnlockToken;
use dmr_protocol::topic::TopicKind;
use harness::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_dmr-agent");

struct Agent {
    child: Child,
    dir: PathBuf,
    conf: PathBuf,
}

/// Writes the key and config for the binary (fixed free ports so a restart reuses them).
fn prepare(
    dir: &Path,
    sim: std::net::SocketAddr,
    locks: u8,
    mqtt: Option<u16>,
) -> (PathBuf, u16, u16) {
    let lan = free_port();
    let status = free_port();
    let toml = config_toml(dir, sim, locks, mqtt, "")
        .replace(
            "\nlisten = \"127.0.0.1:0\"",
            &format!("\nlisten = \"127.0.0.1:{lan}\""),
        )
        .replace(
            "status_listen = \"127.0.0.1:0\"",
            &format!("status_listen = \"127.0.0.1:{status}\""),
        );
    let conf = dir.join("agent.toml");
    std::fs::write(&conf, toml).unwrap();
    let key = dir.join("gateway.key");
    if !key.exists() {
        dmr_protocol::keys::save_signing_key(&key, &gw_key()).unwrap();
    }
    (conf, lan, status)
}

fn spawn(dir: &Path, conf: &Path, lan: u16, status: u16, log: &str) -> Agent {
    let err = std::fs::File::create(dir.join(log)).unwrap();
    let child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(conf)
        .env("DMR_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .unwrap();
    let mut a = Agent {
        child,
        dir: dir.to_path_buf(),
        conf: conf.to_path_buf(),
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", status)).is_err() {
        let exited = a.child.try_wait().unwrap();
        if exited.is_some() || Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
            panic!("agent not serving (exit {exited:?}); log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = lan;
    a
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// POST /v1/unlock; None when the agent did not answer (killed mid-request).
async fn unlock(port: u16, text: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let body = serde_json::json!({ "token": text }).to_string();
    let req = format!(
        "POST /v1/unlock HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let status: u16 = out.get(9..12)?.parse().ok()?;
    let (_, b) = out.split_once("\r\n\r\n")?;
    let v: serde_json::Value = serde_json::from_str(b).ok()?;
    Some((status, v["result"].as_str()?.to_string()))
}

fn open_db(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("agent.db")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_of_1000_unlocks_loses_no_event_and_uses_no_token_twice() {
    let broker = Mosquitto::start();
    let obs = Observer::start(broker.port, "cloud-crash", true);
    let sim = sim(4).await;
    let dir = tempfile::tempdir().unwrap();
    let (conf, lan, status) = prepare(dir.path(), sim.tcp_addr().unwrap(), 4, Some(broker.port));
    let agent = spawn(dir.path(), &conf, lan, status, "run1.log");

    let tokens: Arc<Vec<UnlockToken>> = Arc::new(
        (0..1000)
            .map(|i| token(lock_id(1 + (i % 4) as u8), 1))
            .collect(),
    );
    let answered: Arc<std::sync::Mutex<HashMap<Uuid, String>>> = Arc::default();
    let next = Arc::new(AtomicUsize::new(0));
    // Eight concurrent presenters; the agent is killed after 300 answers.
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (tokens, answered, next) = (tokens.clone(), answered.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= tokens.len() {
                    return;
                }
                let t = &tokens[i];
                match unlock(lan, &t.to_text()).await {
                    Some((_, r)) => {
                        answered.lock().unwrap().insert(t.claims().token_id, r);
                    }
                    // The agent is gone: stop presenting.
                    None => return,
                }
            }
        }));
    }
    let a2 = answered.clone();
    wait_until_async(Duration::from_secs(60), "300 answers", || {
        let n = a2.lock().unwrap().len();
        async move { n >= 300 }
    })
    .await;
    let mut agent = agent;
    agent.child.kill().unwrap(); // SIGKILL
    agent.child.wait().unwrap();
    for w in workers {
        w.await.unwrap();
    }
    let before: HashMap<Uuid, String> = answered.lock().unwrap().clone();
    assert!(
        before.len() >= 300 && before.len() < 1000,
        "{}",
        before.len()
    );
    assert!(
        before.values().all(|r| r == "ok"),
        "every answered unlock opened"
    );

    // The dead agent's Last Will: state offline, signed by the gateway key.
    wait_for_state(&obs, false, 15).await;

    // Restart and present every token again: the ones already used are used_up, the rest open.
    drop(agent);
    let agent = spawn(dir.path(), &conf, lan, status, "run2.log");
    let mut second: HashMap<Uuid, String> = HashMap::new();
    for t in tokens.iter() {
        let (_, r) = unlock(lan, &t.to_text()).await.expect("agent answers");
        second.insert(t.claims().token_id, r);
    }
    for id in before.keys() {
        assert_eq!(
            second[id], "used_up",
            "token {id} answered ok before the crash"
        );
    }
    // Exactly one use per token, whether or not its answer got out before the kill.
    let db = open_db(dir.path());
    let twice: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM (SELECT token_id FROM token_uses GROUP BY token_id HAVING COUNT(*) > 1)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(twice, 0, "no token used twice");
    let uses: i64 = db
        .query_row("SELECT COUNT(*) FROM token_uses", [], |r| r.get(0))
        .unwrap();
    assert_eq!(uses, 1000);
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    // The controllers executed at most one UNLOCK per recorded use.
    let executed: u32 = (1..=4).map(|a| unlock_count(&sim, a)).sum();
    assert!((1000 - 8..=1000).contains(&executed), "{executed}");

    // Every recorded use's accepted event reaches the cloud, and every answered ok has its
    // ok outcome event.
    let event_ids: Vec<Uuid> = {
        let mut s = db.prepare("SELECT event_id FROM token_uses").unwrap();
        s.query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(|r| Uuid::parse_str(&r.unwrap()).unwrap())
            .collect()
    };
    wait_until_async(
        Duration::from_secs(60),
        "all accepted events at the cloud",
        || {
            let got: HashSet<Uuid> = obs.on(TopicKind::Event).iter().map(|e| e.id).collect();
            let all = event_ids.iter().all(|id| got.contains(id));
            async move { all }
        },
    )
    .await;
    let oks: HashSet<Uuid> = obs
        .on(TopicKind::Event)
        .into_iter()
        .filter_map(|e| match e.message {
            Message::Event(Event::Unlock(u)) if u.result == ResultCode::Ok => u.token_id,
            _ => None,
        })
        .collect();
    for id in before.keys() {
        assert!(oks.contains(id), "ok outcome of {id} lost");
    }
    wait_until(Duration::from_secs(30), "outbox drained", || {
        open_db(dir.path())
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get::<_, i64>(0))
            .unwrap()
            == 0
    });
    drop(agent);
    sim.shutdown().await;
}

async fn wait_for_state(obs: &Observer, online: bool, secs: u64) {
    wait_until_async(Duration::from_secs(secs), "gateway state message", || {
        let ok = obs
            .on(TopicKind::State)
            .last()
            .is_some_and(|e| matches!(e.message, Message::State(s) if s.online == online));
        async move { ok }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_says_offline_and_status_reports_health() {
    let broker = Mosquitto::start();
    let obs = Observer::start(broker.port, "cloud-term", false);
    let sim = sim(1).await;
    let dir = tempfile::tempdir().unwrap();
    let (conf, lan, status) = prepare(dir.path(), sim.tcp_addr().unwrap(), 1, Some(broker.port));
    let mut agent = spawn(dir.path(), &conf, lan, status, "run.log");
    wait_for_state(&obs, true, 10).await;
    let t = token(lock_id(1), 1);
    assert_eq!(unlock(lan, &t.to_text()).await.unwrap().1, "ok");

    // `dmr-agent status` talks to the loopback endpoint.
    wait_until(Duration::from_secs(10), "status shows the lock up", || {
        let out = Command::new(BIN)
            .args(["status", "--config"])
            .arg(&agent.conf)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        out.status.success()
            && text.contains("cloud link   up")
            && text.contains("bus link up")
            && text.contains("outbox")
            && text.contains("poll bus 0    round last")
    });
    let out = Command::new(BIN)
        .args(["status", "--json", "--config"])
        .arg(&agent.conf)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["unlocks"]["ok"], 1);
    // The poller reports its rounds over the bus.
    let rounds = &v["poll_rounds"][0];
    assert_eq!(rounds["bus"], 0, "{v}");
    assert!(rounds["rounds"].as_u64().unwrap() >= 1, "{v}");
    assert!(rounds["max_ms"].as_f64().unwrap() >= rounds["last_ms"].as_f64().unwrap());

    let pid = agent.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let code = loop {
        if let Some(st) = agent.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "agent did not exit on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(code.success(), "exit status {code:?}");
    wait_for_state(&obs, false, 10).await;
    let log = std::fs::read_to_string(agent.dir.join("run.log")).unwrap();
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(log.contains("agent stopped"), "{log}");
    // Not running: status says so and still reads the backlog from the state directory.
    let out = Command::new(BIN)
        .args(["status", "--config"])
        .arg(&agent.conf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("agent not running"));
    sim.shutdown().await;
}

#[test]
fn a_bad_configuration_exits_78_listing_every_problem_before_opening_anything() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state-not-created");
    let conf = dir.path().join("bad.toml");
    std::fs::write(
        &conf,
        format!(
            r#"gateway_id = "not-a-uuid"
state_dir = "{}"
token_skew_s = "soon"
heartbeat_intervall_s = 5
[mqtt]
url = "ftp://x"
[[bus]]
port = "/dev/does-not-exist"
locks = [ {{ addr = 0, lock_id = "0193a5e0-0000-7000-8000-000000000001" }} ]
"#,
            state.display()
        ),
    )
    .unwrap();
    for sub in ["run", "check-config"] {
        let out = Command::new(BIN)
            .args([sub, "--config"])
            .arg(&conf)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(78), "{sub}");
        let err = String::from_utf8_lossy(&out.stderr);
        for needle in [
            "gateway_id: expected a UUID",
            "token_skew_s: expected an integer",
            "heartbeat_intervall_s: unknown key",
            "mqtt.url: expected mqtt://",
            "bus[0].locks[0].addr: must be in 1..=247",
        ] {
            assert!(err.contains(needle), "{sub}: missing {needle:?} in {err}");
        }
    }
    assert!(!state.exists(), "nothing may be opened or created");
    // An environment override is validated the same way.
    let good = dir.path().join("good.toml");
    let (c, _, _) = prepare(dir.path(), "127.0.0.1:1".parse().unwrap(), 1, None);
    std::fs::copy(&c, &good).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&good)
        .env("DMR_MQTT_URL", "nope")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mqtt.url"));
}

#[test]
fn keygen_writes_a_private_key_only_the_owner_can_read_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let (conf, _, _) = prepare(dir.path(), "127.0.0.1:1".parse().unwrap(), 1, None);
    let key = dir.path().join("gateway.key");
    std::fs::remove_file(&key).unwrap();
    let out = Command::new(BIN)
        .args(["keygen", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let k = dmr_protocol::keys::load_signing_key(&key).unwrap();
    let pk = dmr_protocol::keys::public_b64u(&k.verifying_key());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&pk));
    let again = Command::new(BIN)
        .args(["keygen", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert_eq!(
        dmr_protocol::keys::load_signing_key(&key)
            .unwrap()
            .to_bytes(),
        k.to_bytes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_watchdog_pings_are_signalled_to_systemd() {
    let sim = sim(1).await;
    let dir = tempfile::tempdir().unwrap();
    let (conf, _, status) = prepare(dir.path(), sim.tcp_addr().unwrap(), 1, None);
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let started = Instant::now();
    // systemd sets WATCHDOG_PID to the service's pid: `exec` from a shell keeps its pid.
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "WATCHDOG_PID=$$ exec {BIN} run --config {}",
            conf.display()
        ))
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed on drop, also when an assertion below fails.
    let child = KillOnDrop(child);
    let mut buf = [0u8; 256];
    let mut ready_after = None;
    let mut pings = 0;
    // READY first, then watchdog pings every half period while the store answers.
    while pings < 3 {
        let n = sock.recv(&mut buf).unwrap();
        let msg = String::from_utf8_lossy(&buf[..n]).to_string();
        if msg.contains("READY=1") {
            ready_after = Some(started.elapsed());
        } else if msg.contains("WATCHDOG=1") {
            assert!(ready_after.is_some() || pings == 0);
            pings += 1;
        }
    }
    let ready_after = ready_after.expect("READY=1 was sent");
    // READY means serving: the status endpoint answers.
    assert!(std::net::TcpStream::connect(("127.0.0.1", status)).is_ok());
    eprintln!("start to READY: {ready_after:?}");
    assert!(ready_after < Duration::from_secs(5), "{ready_after:?}");
    drop(child);
    sim.shutdown().await;
}

/// The shipped example leaves out everything enrollment provides, so an installed copy
/// plus `dmr-agent enroll` runs as the enrolled gateway (a placeholder id or broker left in
/// the file would override the enrollment).
#[test]
fn the_shipped_example_configuration_is_valid_once_enrolled_and_enrollment_wins() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/agent.example.toml");
    let dir = tempfile::tempdir().unwrap();
    let gw = Uuid::now_v7();
    let (l1, l2) = (Uuid::now_v7(), Uuid::now_v7());
    let key = dmr_protocol::keys::generate();
    let enrollment = serde_json::json!({
        "gateway_id": gw,
        "trusted_keys": [{"key_id": 7, "public_key": dmr_protocol::keys::public_b64u(&key.verifying_key())}],
        "mqtt": {"url": "mqtt://broker.enrolled.test:1883", "username": format!("gw-{gw}"), "password": "enrolled-secret"},
        "sync_url": "https://cloud.enrolled.test",
        "locks": [{"lock_id": l1, "addr": 1}, {"lock_id": l2, "addr": 2}],
    });
    std::fs::write(
        dir.path().join("enrollment.json"),
        serde_json::to_vec(&enrollment).unwrap(),
    )
    .unwrap();
    let run = |state_dir: &Path| {
        Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&example)
            .env("DMR_STATE_DIR", state_dir)
            .env_remove("DMR_MQTT_URL")
            .env_remove("DMR_MQTT_USERNAME")
            .env_remove("DMR_MQTT_PASSWORD")
            .env_remove("DMR_GATEWAY_ID")
            .env_remove("DMR_CLOUD_URL")
            .output()
            .unwrap()
    };
    let out = run(dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("gateway {gw}")), "{stdout}");
    assert!(stdout.contains("2 lock(s)"), "{stdout}");
    assert!(stdout.contains("1 trusted key(s)"), "{stdout}");
    // The broker, credentials and sync URL are the enrollment's, not a placeholder's.
    let env = [(
        "DMR_STATE_DIR".to_string(),
        dir.path().display().to_string(),
    )];
    let c = dmr_edge_agent::agent::config::load(Some(&example), env).unwrap();
    let mqtt = c.mqtt.expect("mqtt from the enrollment");
    assert_eq!(mqtt.host, "broker.enrolled.test");
    assert_eq!(mqtt.username.as_deref(), Some(format!("gw-{gw}").as_str()));
    assert_eq!(mqtt.password.unwrap().expose(), "enrolled-secret");
    assert_eq!(c.cloud_url.as_deref(), Some("https://cloud.enrolled.test"));
    // Not enrolled yet: the example names what is missing instead of running as a placeholder.
    let empty = tempfile::tempdir().unwrap();
    let out = run(empty.path());
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("gateway_id"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_that_cannot_be_opened_at_start_is_retried_and_used_once_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    let sim_port = free_port();
    let sim_addr: std::net::SocketAddr = format!("127.0.0.1:{sim_port}").parse().unwrap();
    let (conf, lan, status) = prepare(dir.path(), sim_addr, 1, None);
    // Nothing listens on the bus address yet.
    let _agent = spawn(dir.path(), &conf, lan, status, "run.log");
    let t = token(lock_id(1), 1);
    assert_eq!(
        unlock(lan, &t.to_text()).await.unwrap().1,
        "lock_unreachable"
    );
    let mut cfg = dmr_firmware_sim::SimConfig::new(dmr_firmware_sim::LockSpec::numbered(1));
    cfg.tcp = Some(sim_addr);
    cfg.door = dmr_firmware_sim::DoorBehaviour::StaysShut;
    let sim = dmr_firmware_sim::start(cfg).await.unwrap();
    wait_until_async(
        Duration::from_secs(20),
        "unlock through the late bus",
        || async {
            unlock(lan, &token(lock_id(1), 1).to_text())
                .await
                .is_some_and(|r| r.1 == "ok")
        },
    )
    .await;
    assert!(unlock_count(&sim, 1) >= 1);
    sim.shutdown().await;
}
