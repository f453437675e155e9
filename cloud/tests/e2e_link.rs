//! End to end with the real binaries: a Mosquitto broker, the cloud (in-process, with its
//! MQTT bridge), the `dmr-lock-sim` lock simulator (Modbus TCP) and the `dmr-agent` daemon.
//! The gateway is enrolled through the cloud's enrollment endpoint with a fresh key, and the
//! agent's config is written from the enrollment answer (gateway id, trusted cloud keys,
//! MQTT account). Then: heartbeats mark the lock online; a console unlock (a cloud-signed
//! `cmd unlock`) opens the simulated lock and its ack settles the command; SIGKILL on the
//! agent makes the broker publish its Last Will, which marks the gateway offline.
//!
//! The binaries are not built by this test (cargo holds the build lock while tests run):
//! `cargo build -p dmr-edge-agent -p dmr-firmware-sim` first. They are looked up in
//! `DMR_E2E_BIN_DIR`, else `$CARGO_TARGET_DIR/debug`, else `<workspace>/target/debug`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "api/common.rs"]
#[allow(dead_code)]
mod common;
#[path = "api/link_support.rs"]
#[allow(dead_code)]
mod link_support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use common::{DbKind, TestApp, eventually, seed_world};

const WAIT: Duration = Duration::from_secs(30);

fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("DMR_E2E_BIN_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("debug")))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug"));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: run `cargo build -p dmr-edge-agent -p dmr-firmware-sim` first \
         (or set DMR_E2E_BIN_DIR)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16, what: &str) {
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{what} did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed (SIGKILL) on drop.
struct Proc(Option<Child>);

impl Proc {
    fn kill9(&mut self) {
        if let Some(mut c) = self.0.take() {
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

async fn gateway_online(app: &TestApp, gw: &str) -> i64 {
    sqlx::query_scalar("SELECT online FROM gateways WHERE id = $1")
        .bind(gw.to_string())
        .fetch_one(&app.state.db.pool)
        .await
        .unwrap()
}

async fn scenario(kind: &DbKind) {
    let agent_bin = bin("dmr-agent");
    let sim_bin = bin("dmr-lock-sim");
    let dir = tempfile::tempdir().unwrap();

    // Broker.
    let mqtt_port = free_port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {mqtt_port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence false\nlog_dest stderr\nlog_type error\n"),
    )
    .unwrap();
    let _broker = Proc(Some(
        Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .spawn()
            .expect("mosquitto installed"),
    ));
    wait_port(mqtt_port, "mosquitto");

    // Cloud with its bridge.
    let app = TestApp::spawn_with(kind, move |c| {
        c.mqtt.url = format!("mqtt://127.0.0.1:{mqtt_port}");
        c.mqtt.host = "127.0.0.1".into();
        c.mqtt.port = mqtt_port;
        c.mqtt.client_id = format!("cloud-e2e-{}", Uuid::new_v4().simple());
    })
    .await;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (bridge, liveness) = dmr_cloud::app::spawn_link(&app.state, "e2e", &stop_rx);
    let world = seed_world(&app).await;
    eventually("the cloud bridge to connect", WAIT, || async {
        app.state.mqtt.is_connected()
    })
    .await;

    // Enroll the tenant's (pending) gateway with a fresh key through the real endpoint.
    let key = dmr_protocol::keys::generate();
    let code = link_support::new_code(
        &app,
        &world.a.owner,
        &world.a.venue_id,
        Some(&world.a.gateway_id),
    )
    .await;
    let enrolled = link_support::enroll_with(&app, &code, key.clone()).await;
    assert_eq!(enrolled.id.to_string(), world.a.gateway_id);
    let e = &enrolled.enrolled;
    let key_file = dir.path().join("gateway.key");
    dmr_protocol::keys::save_signing_key(&key_file, &key).unwrap();
    let trusted: Vec<String> = e["trusted_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            format!(
                "\"{}\" = \"{}\"",
                k["key_id"],
                k["public_key"].as_str().unwrap()
            )
        })
        .collect();
    let lock = e["locks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["lock_id"] == world.a.lock_id)
        .unwrap_or_else(|| panic!("enrollment lists the lock: {e}"))
        .clone();
    assert_eq!(lock["addr"], 1, "{lock}");

    // Lock simulator on Modbus TCP, with its control API.
    let (sim_tcp, sim_ctl) = (free_port(), free_port());
    let _sim = Proc(Some(
        Command::new(&sim_bin)
            .args(["--locks", "1", "--door", "shut"])
            .arg("--tcp")
            .arg(format!("127.0.0.1:{sim_tcp}"))
            .arg("--control")
            .arg(format!("127.0.0.1:{sim_ctl}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    wait_port(sim_tcp, "dmr-lock-sim");
    wait_port(sim_ctl, "dmr-lock-sim control API");

    // The agent, configured from the enrollment answer.
    let state_dir = dir.path().join("agent");
    std::fs::create_dir_all(&state_dir).unwrap();
    let agent_toml = format!(
        r#"gateway_id = "{gw}"
state_dir = "{state}"
key_file = "{key}"
poll_interval_ms = 100
offline_after = 2
unlock_timeout_ms = 3000
heartbeat_interval_s = 1

[trusted_keys]
{trusted}

[http]
listen = "127.0.0.1:0"
status_listen = "127.0.0.1:0"

[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
username = "{user}"
password = "{password}"
keep_alive_s = 5
reconnect_min_ms = 100
reconnect_max_ms = 1000

[[bus]]
port = "tcp://127.0.0.1:{sim_tcp}"
locks = [ {{ addr = 1, lock_id = "{lock_id}" }} ]
"#,
        gw = world.a.gateway_id,
        state = state_dir.display(),
        key = key_file.display(),
        trusted = trusted.join("\n"),
        user = e["mqtt"]["username"].as_str().unwrap(),
        password = e["mqtt"]["password"].as_str().unwrap(),
        lock_id = world.a.lock_id,
    );
    let agent_conf = dir.path().join("agent.toml");
    std::fs::write(&agent_conf, agent_toml).unwrap();
    let agent_log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let mut agent = Proc(Some(
        Command::new(&agent_bin)
            .arg("run")
            .arg("--config")
            .arg(&agent_conf)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(agent_log)
            .spawn()
            .unwrap(),
    ));
    let show_log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();

    // 1. Heartbeats mark the lock (and the gateway) online.
    let lock_path = format!("/api/v1/locks/{}", world.a.lock_id);
    let started = std::time::Instant::now();
    loop {
        let (_, l) = app.get(&lock_path, &world.a.owner).await;
        if l["status"] == "online" {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "lock never online: {l}\nagent log:\n{}",
            show_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gateway_online(&app, &world.a.gateway_id).await, 1);

    // 2. A console unlock opens the simulated lock and the ack comes back.
    let http = reqwest::Client::new();
    let unlocks = || async {
        let v: Value = http
            .get(format!("http://127.0.0.1:{sim_ctl}/locks/1"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["unlock_count"]
            .as_u64()
            .unwrap_or_else(|| panic!("no unlock_count in {v}"))
    };
    let before = unlocks().await;
    let (s, sent) = app
        .post(
            &format!("/api/v1/locks/{}/unlock", world.a.lock_id),
            &world.a.owner,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{sent}");
    let started = std::time::Instant::now();
    while unlocks().await <= before {
        assert!(
            started.elapsed() < WAIT,
            "the lock never opened\nagent log:\n{}",
            show_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let commands = format!("/api/v1/gateways/{}/commands", world.a.gateway_id);
    let started = std::time::Instant::now();
    loop {
        let (_, list) = app.get(&commands, &world.a.owner).await;
        let item = &list["items"][0];
        assert_eq!(item["id"], sent["command_id"], "{list}");
        if item["status"] == "acked" {
            assert_eq!(item["result"], "ok", "{list}");
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "no ack: {list}\nagent log:\n{}",
            show_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 3. SIGKILL: no goodbye from the agent, the broker's Last Will marks it offline.
    agent.kill9();
    let started = std::time::Instant::now();
    while gateway_online(&app, &world.a.gateway_id).await != 0 {
        assert!(
            started.elapsed() < WAIT,
            "the Last Will never marked the gateway offline"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let _ = stop.send(true);
    for t in [bridge, liveness].into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_and_lock_sim_end_to_end() {
    for kind in common::kinds() {
        eprintln!("--- e2e on {kind:?}");
        scenario(&kind).await;
    }
}
