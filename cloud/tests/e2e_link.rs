//! End to end with the real binaries: a Mosquitto broker, the cloud (in-process, with its
//! MQTT bridge), the `dmr-lock-sim` lock simulator (Modbus TCP) and the `dmr-agent` daemon.
//! The gateway is enrolled through the cloud's enrollment endpoint with a fresh key, and the
//! agent's config is written from the enrollment answer (gateway id, trusted cloud keys,
//! MQTT account). Then: heartbeats mark the lock online; a console unlock (a cloud-signed
//! `cmd unlock`) opens the simulated lock and its ack settles the command; SIGKILL on the
//! agent makes the broker publish its Last Will, which marks the gateway offline.
//!
//! A second scenario follows an order through the same rig: paid in the sandbox, unlocked by
//! the agent's ack (found through the token the command carried), completed by the door;
//! then an order whose `cmd unlock` never reached the gateway is refunded, and the pushed
//! `tokens.revoke` makes the connected agent refuse its offline token with no sync at all.
//!
//! The binaries are not built by this test (cargo holds the build lock while tests run):
//! `cargo build -p dmr-edge-agent -p dmr-firmware-sim` first. They are looked up in
//! `DMR_E2E_BIN_DIR`, else `$CARGO_TARGET_DIR/debug`, else `<workspace>/target/debug`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/ports.rs"]
mod ports;
#[path = "support/procs.rs"]
mod procs;

#[path = "api/common.rs"]
#[allow(dead_code)]
mod common;
#[path = "api/link_support.rs"]
#[allow(dead_code)]
mod link_support;

use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use ports::free_port;
use procs::{Proc, bin, wait_port};

use common::{DbKind, TestApp, eventually, seed_world};

const WAIT: Duration = Duration::from_secs(30);

async fn gateway_online(app: &TestApp, gw: &str) -> i64 {
    sqlx::query_scalar("SELECT online FROM gateways WHERE id = $1")
        .bind(gw.to_string())
        .fetch_one(&app.state.db.pool)
        .await
        .unwrap()
}

/// Everything one scenario runs against; processes are killed on drop.
struct Rig {
    app: TestApp,
    world: common::World,
    dir: tempfile::TempDir,
    agent: Proc,
    _sim: Proc,
    _broker: Proc,
    sim_ctl: u16,
    lan_port: u16,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Rig {
    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    async fn finish(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
        }
        self.app.stop().await;
    }

    /// Waits until heartbeats mark the lock (and the gateway) online.
    async fn online(&self) {
        let lock_path = format!("/api/v1/locks/{}", self.world.a.lock_id);
        let started = std::time::Instant::now();
        loop {
            let (_, l) = self.app.get(&lock_path, &self.world.a.owner).await;
            if l["status"] == "online" {
                break;
            }
            assert!(
                started.elapsed() < WAIT,
                "lock never online: {l}\nagent log:\n{}",
                self.agent_log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The simulated lock's unlock counter (from its control API).
    async fn unlocks(&self) -> u64 {
        let v: Value = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/locks/1", self.sim_ctl))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["unlock_count"]
            .as_u64()
            .unwrap_or_else(|| panic!("no unlock_count in {v}"))
    }
}

/// Broker, cloud (with its bridge), an enrolled gateway running the real agent (LAN API on
/// a known port, no cloud URL: it never syncs) and the lock simulator.
async fn start_rig(kind: &DbKind) -> Rig {
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
    let broker = Proc(Some(
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
    let sim = Proc(Some(
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
    let lan_port = free_port();
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
listen = "127.0.0.1:{lan_port}"
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
    let agent = Proc(Some(
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
    Rig {
        app,
        world,
        dir,
        agent,
        _sim: sim,
        _broker: broker,
        sim_ctl,
        lan_port,
        stop,
        tasks: [bridge, liveness].into_iter().flatten().collect(),
    }
}

async fn scenario(kind: &DbKind) {
    let mut rig = start_rig(kind).await;
    let (app, world) = (&rig.app, &rig.world);

    // 1. Heartbeats mark the lock (and the gateway) online.
    rig.online().await;
    assert_eq!(gateway_online(app, &world.a.gateway_id).await, 1);

    // 2. A console unlock opens the simulated lock and the ack comes back.
    let before = rig.unlocks().await;
    let (s, sent) = app
        .post(
            &format!("/api/v1/locks/{}/unlock", world.a.lock_id),
            &world.a.owner,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{sent}");
    let started = std::time::Instant::now();
    while rig.unlocks().await <= before {
        assert!(
            started.elapsed() < WAIT,
            "the lock never opened\nagent log:\n{}",
            rig.agent_log()
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
            rig.agent_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 3. SIGKILL: no goodbye from the agent, the broker's Last Will marks it offline.
    rig.agent.kill9();
    let (app, world) = (&rig.app, &rig.world);
    let started = std::time::Instant::now();
    while gateway_online(app, &world.a.gateway_id).await != 0 {
        assert!(
            started.elapsed() < WAIT,
            "the Last Will never marked the gateway offline"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rig.finish().await;
}

/// Signs with the link's real key ring but "loses" every `cmd unlock`: the order's token
/// is then valid and unused, the way a person holding the offline QR code has it.
#[derive(Debug)]
struct LostCommands(dmr_cloud::orders::dispatch::LinkDispatcher);

impl dmr_cloud::orders::dispatch::UnlockDispatcher for LostCommands {
    fn sign(
        &self,
        claims: dmr_protocol::token::TokenClaims,
    ) -> dmr_cloud::orders::dispatch::DispatchFut<'_, dmr_protocol::token::UnlockToken> {
        self.0.sign(claims)
    }

    fn send(
        &self,
        _id: Uuid,
        _gw: Uuid,
        _token: String,
        _ttl: Duration,
    ) -> dmr_cloud::orders::dispatch::DispatchFut<'_, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// Creates an order for tenant a's lock and pays it in the sandbox; (order id, access key).
async fn paid_order(app: &TestApp, world: &common::World) -> (String, String) {
    let (s, l) = app
        .get(
            &format!("/api/v1/locks/{}", world.a.lock_id),
            &world.a.owner,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{l}");
    let resp = app
        .client
        .post(app.url_of("/api/v1/public/orders"))
        .header("Idempotency-Key", Uuid::new_v4().to_string())
        .header("X-Device-Session", Uuid::new_v4().to_string())
        .json(&json!({ "qr_code": l["qr_code"], "plan_id": l["price_plans"][0]["id"], "provider": "sandbox" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let created: Value = resp.json().await.unwrap();
    let url = created["payment"]["redirect_url"].as_str().unwrap();
    let payment = url.rsplit('/').next().unwrap();
    let paid = app
        .client
        .post(app.url_of(&format!("/pay/sandbox/{payment}")))
        .send()
        .await
        .unwrap();
    assert!(paid.status().is_success(), "{}", paid.status());
    (
        created["order"]["id"].as_str().unwrap().to_string(),
        created["access_key"].as_str().unwrap().to_string(),
    )
}

async fn order_status(app: &TestApp, id: &str) -> String {
    sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
        .bind(id.to_string())
        .fetch_one(&app.state.db.pool)
        .await
        .unwrap()
}

async fn wait_status(rig: &Rig, id: &str, want: &str) {
    let started = std::time::Instant::now();
    loop {
        let s = order_status(&rig.app, id).await;
        if s == want {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "order {id} is {s}, never {want}\nagent log:\n{}",
            rig.agent_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn orders_scenario(kind: &DbKind) {
    let rig = start_rig(kind).await;
    let (app, world) = (&rig.app, &rig.world);
    rig.online().await;

    // 1. Paid in the sandbox: the real dispatcher sends `cmd unlock`, the agent opens the
    // lock and acks, and the ack (matched to the order through its token) unlocks the order.
    let before = rig.unlocks().await;
    let (order, _) = paid_order(app, world).await;
    wait_status(&rig, &order, "unlocked").await;
    assert!(rig.unlocks().await > before, "the simulated latch moved");
    let acks: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM order_unlock_events WHERE order_id = $1 AND source = 'ack' AND result = 'ok'",
    )
    .bind(order.clone())
    .fetch_one(&app.state.db.pool)
    .await
    .unwrap();
    assert_eq!(acks, 1, "the cmd ack is recorded as the order's evidence");
    // The person opens the door and closes it: the order completes and frees the lock.
    let http = reqwest::Client::new();
    for open in [true, false] {
        let r = http
            .post(format!("http://127.0.0.1:{}/locks/1/door", rig.sim_ctl))
            .json(&json!({ "open": open }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    wait_status(&rig, &order, "completed").await;

    // 2. An order whose command never reached the gateway: its token is valid and unused.
    let link = dmr_cloud::orders::dispatch::LinkDispatcher::new(
        app.state.keys.clone(),
        app.state.commands.clone(),
    );
    app.state
        .orders
        .set_dispatcher(std::sync::Arc::new(LostCommands(link)));
    let (order, key) = paid_order(app, world).await;
    wait_status(&rig, &order, "unlocking").await;
    let r = app
        .client
        .get(app.url_of(&format!(
            "/api/v1/public/orders/{order}/offline-token?key={key}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let token = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();

    // 3. The merchant refunds it in full: the cloud pushes the revocation list at once.
    let (s, v) = app
        .post(
            &format!("/api/v1/orders/{order}/refund"),
            &world.a.owner,
            json!({ "reason": "customer changed their mind" }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let started = std::time::Instant::now();
    loop {
        let row: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT status, result FROM gateway_commands WHERE gateway_id = $1 AND op = 'tokens.revoke'",
        )
        .bind(world.a.gateway_id.clone())
        .fetch_optional(&app.state.db.pool)
        .await
        .unwrap();
        if let Some((status, result)) = &row
            && status == "acked"
        {
            assert_eq!(result.as_deref(), Some("ok"), "{row:?}");
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "no acked tokens.revoke: {row:?}\nagent log:\n{}",
            rig.agent_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 4. The person presents the offline token on the venue LAN: refused as revoked, and
    // the latch does not move. The agent has no cloud URL, so this is not sync's doing.
    let before = rig.unlocks().await;
    let r = http
        .post(format!("http://127.0.0.1:{}/v1/unlock", rig.lan_port))
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["result"], "revoked", "{body}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        rig.unlocks().await,
        before,
        "a revoked token opened the lock"
    );
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_and_lock_sim_end_to_end() {
    for kind in common::kinds() {
        eprintln!("--- e2e on {kind:?}");
        scenario(&kind).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_unlocks_by_ack_and_refund_revokes_at_the_connected_agent() {
    for kind in common::kinds() {
        eprintln!("--- orders e2e on {kind:?}");
        orders_scenario(&kind).await;
    }
}
