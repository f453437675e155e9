use std::time::Duration;

use dmr_cloud::AppState;
use dmr_protocol::jws::Kid;
use dmr_protocol::keys::{generate, parse_public_b64u};
use dmr_protocol::message::{
    Ack, Command, DoorChange, DoorEvent, Event, Expect, GatewayState, Heartbeat, LockStatus,
    Message, ResultCode, open,
};
use dmr_protocol::token::{TokenKind, UnlockToken};
use dmr_protocol::topic::{TopicKind, topic};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::common::{DbKind, TestApp, eventually, seed_world};
use crate::mqtt::{FakeGateway, Mosquitto, enroll_directly, now_ms, sign};

const WAIT: Duration = Duration::from_secs(15);

struct Link {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Link {
    fn start(state: &AppState) -> Link {
        let (stop, rx) = tokio::sync::watch::channel(false);
        let (bridge, liveness) = dmr_cloud::app::spawn_link(state, "test-holder", &rx);
        Link {
            stop,
            tasks: [bridge, liveness].into_iter().flatten().collect(),
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .expect("link tasks stop")
                .unwrap();
        }
    }
}

async fn spawn(kind: &DbKind, broker: &Mosquitto) -> TestApp {
    let url = broker.url();
    TestApp::spawn_with(kind, move |c| {
        c.mqtt.url = url.clone();
        let (tls, host, port) = dmr_cloud::config::MqttConfig::parse_url(&url).unwrap();
        (c.mqtt.tls, c.mqtt.host, c.mqtt.port) = (tls, host, port);
        c.mqtt.client_id = format!("cloud-test-{}", Uuid::new_v4().simple());
        c.mqtt.batch_wait_ms = 2;
    })
    .await
}

async fn scalar(state: &AppState, sql: &str, id: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_string()))
        .bind(id.to_string())
        .fetch_one(&state.db.pool)
        .await
        .unwrap()
}

async fn lock_status(state: &AppState, lock: &str) -> String {
    sqlx::query_scalar("SELECT status FROM locks WHERE id = $1")
        .bind(lock.to_string())
        .fetch_one(&state.db.pool)
        .await
        .unwrap()
}

async fn metric(app: &TestApp, line_prefix: &str) -> u64 {
    let text = app.metrics().await;
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}

fn heartbeat(lock: Uuid, online: bool) -> Message {
    Message::Heartbeat(Heartbeat {
        uptime_s: 10,
        outbox_pending: 0,
        outbox_oldest_age_s: None,
        locks: vec![LockStatus {
            lock_id: lock,
            addr: 1,
            online,
            door_closed: true,
            locked: true,
            fw: "1.2.3".into(),
        }],
    })
}

fn door(lock: Uuid) -> Message {
    Message::Event(Event::Door(DoorEvent {
        lock_id: lock,
        door: DoorChange::Opened,
        at: now_ms(),
    }))
}

async fn events_with_id(state: &AppState, id: Uuid) -> i64 {
    scalar(
        state,
        "SELECT COUNT(*) FROM gateway_messages WHERE id = $1",
        &id.to_string(),
    )
    .await
}

async fn post_events(
    app: &TestApp,
    gw: Uuid,
    key: &dmr_protocol::keys::SigningKey,
    msgs: &[&str],
) -> Value {
    let body = serde_json::to_vec(&json!({ "messages": msgs })).unwrap();
    let auth = dmr_cloud::link::gwauth::sign_request(
        gw,
        key,
        "POST",
        "/api/v1/gateway/events",
        &body,
        now_ms() as i64,
        &Uuid::new_v4().to_string(),
    );
    let resp = app
        .client
        .post(app.url_of("/api/v1/gateway/events"))
        .header("Authorization", auth)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

pub async fn heartbeats_events_rejections_commands_and_last_will(kind: &DbKind) {
    let broker = Mosquitto::start();
    let app = spawn(kind, &broker).await;
    let world = seed_world(&app).await;
    let state = app.state.clone();
    let gw_a: Uuid = world.a.gateway_id.parse().unwrap();
    let gw_b: Uuid = world.b.gateway_id.parse().unwrap();
    let lock_a: Uuid = world.a.lock_id.parse().unwrap();
    let (key_a, key_b) = (generate(), generate());
    enroll_directly(&state, gw_a, &key_a).await;
    enroll_directly(&state, gw_b, &key_b).await;
    let link = Link::start(&state);
    eventually("the bridge to connect", WAIT, || async {
        state.mqtt.is_connected()
    })
    .await;
    // The subscriptions are made right after ConnAck; give the SubAck a moment by
    // publishing until something arrives.
    let fake_a = FakeGateway::connect(broker.port, gw_a, &key_a).await;
    let fake_b = FakeGateway::connect(broker.port, gw_b, &key_b).await;

    // 1. Heartbeats mark the lock online (QoS 0, like the agent sends them).
    assert_ne!(lock_status(&state, &world.a.lock_id).await, "online");
    eventually("the heartbeat to mark the lock online", WAIT, || async {
        let (_, hb) = sign(gw_a, &key_a, heartbeat(lock_a, true));
        fake_a.publish(TopicKind::Heartbeat, hb).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        lock_status(&state, &world.a.lock_id).await == "online"
    })
    .await;
    assert_eq!(
        scalar(
            &state,
            "SELECT online FROM gateways WHERE id = $1",
            &world.a.gateway_id
        )
        .await,
        1
    );

    // 2. One event, published twice over MQTT and once through the HTTP drain: applied once.
    let (ev_id, ev) = sign(gw_a, &key_a, door(lock_a));
    fake_a.publish(TopicKind::Event, ev.clone()).await;
    fake_a.publish(TopicKind::Event, ev.clone()).await;
    eventually("the event to be applied", WAIT, || async {
        events_with_id(&state, ev_id).await == 1
    })
    .await;
    eventually(
        "the second copy to be dropped as a duplicate",
        WAIT,
        || async {
            state
                .mqtt
                .stats
                .duplicates
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 1
        },
    )
    .await;
    let r = post_events(&app, gw_a, &key_a, &[&ev]).await;
    assert_eq!(r["results"][0]["status"], "duplicate", "{r}");
    assert_eq!(events_with_id(&state, ev_id).await, 1);
    // And the other way round: first by HTTP, then by MQTT.
    let (ev2_id, ev2) = sign(gw_a, &key_a, door(lock_a));
    let r = post_events(&app, gw_a, &key_a, &[&ev2]).await;
    assert_eq!(r["results"][0]["status"], "applied", "{r}");
    let dups = state
        .mqtt
        .stats
        .duplicates
        .load(std::sync::atomic::Ordering::Relaxed);
    fake_a.publish(TopicKind::Event, ev2.clone()).await;
    eventually(
        "the MQTT copy of an HTTP-applied event to be a duplicate",
        WAIT,
        || async {
            state
                .mqtt
                .stats
                .duplicates
                .load(std::sync::atomic::Ordering::Relaxed)
                > dups
        },
    )
    .await;
    assert_eq!(events_with_id(&state, ev2_id).await, 1);
    let events_before = scalar(
        &state,
        "SELECT COUNT(*) FROM gateway_events WHERE gateway_id = $1",
        &world.a.gateway_id,
    )
    .await;

    // 3. Forged, misplaced, tampered messages: nothing changes, each is counted.
    let rejected_before: u64 = state.mqtt.stats.rejected().values().sum();
    // a) claims to be gateway A, signed by B's key.
    let forged_id = Uuid::now_v7();
    let forged = dmr_protocol::message::Envelope::new(forged_id, gw_a, now_ms(), door(lock_a))
        .sign(Kid::Gateway(gw_a), &key_b);
    fake_a.publish(TopicKind::Event, forged).await;
    // b) B's own, validly signed message, published on A's topic.
    let (misplaced_id, misplaced) = sign(gw_b, &key_b, door(lock_a));
    fake_b
        .publish_on(topic(gw_a, TopicKind::Event), TopicKind::Event, misplaced)
        .await;
    // c) a valid message of A with its signature bytes altered.
    let (tampered_id, tampered) = sign(gw_a, &key_a, door(lock_a));
    let mut bytes = tampered.into_bytes();
    let last = bytes.len() - 3;
    bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
    fake_a
        .publish(TopicKind::Event, String::from_utf8(bytes).unwrap())
        .await;
    // d) an offline heartbeat signed by B for A's lock, on A's topic.
    let (_, hb_forged) = sign(gw_b, &key_b, heartbeat(lock_a, false));
    fake_b
        .publish_on(
            topic(gw_a, TopicKind::Heartbeat),
            TopicKind::Heartbeat,
            hb_forged,
        )
        .await;
    // e) a replay of the event applied above.
    let dups = state
        .mqtt
        .stats
        .duplicates
        .load(std::sync::atomic::Ordering::Relaxed);
    fake_a.publish(TopicKind::Event, ev.clone()).await;
    eventually("four rejections and one duplicate", WAIT, || async {
        let rejected: u64 = state.mqtt.stats.rejected().values().sum();
        rejected >= rejected_before + 4
            && state
                .mqtt
                .stats
                .duplicates
                .load(std::sync::atomic::Ordering::Relaxed)
                > dups
    })
    .await;
    for id in [forged_id, misplaced_id, tampered_id] {
        assert_eq!(
            events_with_id(&state, id).await,
            0,
            "{id} must not be applied"
        );
    }
    assert_eq!(
        scalar(
            &state,
            "SELECT COUNT(*) FROM gateway_events WHERE gateway_id = $1",
            &world.a.gateway_id
        )
        .await,
        events_before
    );
    assert_eq!(lock_status(&state, &world.a.lock_id).await, "online");
    let total_rejected = metric(&app, "dmr_mqtt_messages_rejected_total{").await;
    assert!(total_rejected >= 1, "rejections visible in /metrics");
    let text = app.metrics().await;
    let reasons: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("dmr_mqtt_messages_rejected_total{"))
        .collect();
    let sum: u64 = reasons
        .iter()
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(sum >= rejected_before + 4, "{reasons:?}");

    // 4. Console unlock: a cloud-signed cmd reaches the gateway, the ack comes back.
    let (s, sent) = app
        .post(
            &format!("/api/v1/locks/{}/unlock", world.a.lock_id),
            &world.a.staff,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{sent}");
    let cmd_id: Uuid = sent["command_id"].as_str().unwrap().parse().unwrap();
    // Another tenant cannot unlock A's lock, a technician lacks device:unlock.
    let (s, _) = app
        .post(
            &format!("/api/v1/locks/{}/unlock", world.a.lock_id),
            &world.b.owner,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app
        .post(
            &format!("/api/v1/locks/{}/unlock", world.a.lock_id),
            &world.a.tech,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let mut fake_a = fake_a;
    let payload = tokio::time::timeout(WAIT, fake_a.cmds.recv())
        .await
        .expect("the command reaches the gateway")
        .unwrap();
    let trusted = state.keys.trusted().await.unwrap();
    let keys: Vec<(u32, _)> = trusted
        .iter()
        .map(|t| (t.key_id, parse_public_b64u(&t.public_key).unwrap()))
        .collect();
    let (kid, env) = open(
        &payload,
        |kid| match kid {
            Kid::Cloud(n) => keys.iter().find(|(k, _)| k == n).map(|(_, v)| v),
            Kid::Gateway(_) => None,
        },
        Expect {
            gw: gw_a,
            now_ms: now_ms(),
        },
    )
    .expect("the command verifies with a trusted cloud key");
    assert!(matches!(kid, Kid::Cloud(_)));
    assert_eq!(env.id, cmd_id);
    let Message::Cmd(Command::Unlock { token }) = env.message else {
        panic!("expected cmd unlock, got {:?}", env.message);
    };
    let token = UnlockToken::from_text(&token).unwrap();
    let claims = token.claims();
    assert_eq!(claims.kind, TokenKind::Maintenance);
    assert_eq!(claims.lock_id, lock_a);
    assert_eq!(claims.max_uses, 1);
    assert!(claims.not_after - claims.not_before <= 300);
    let (_, list) = app
        .get(
            &format!("/api/v1/gateways/{}/commands", world.a.gateway_id),
            &world.a.owner,
        )
        .await;
    assert_eq!(list["items"][0]["status"], "sent", "{list}");
    assert!(
        !list.to_string().contains(&token.to_text()),
        "the token itself is never listed"
    );
    let (_, ack) = sign(
        gw_a,
        &key_a,
        Message::Ack(Ack {
            cmd: cmd_id,
            result: ResultCode::Ok,
            latency_ms: 42,
        }),
    );
    fake_a.publish(TopicKind::Ack, ack).await;
    eventually("the ack to settle the command", WAIT, || async {
        let (_, list) = app
            .get(
                &format!("/api/v1/gateways/{}/commands", world.a.gateway_id),
                &world.a.owner,
            )
            .await;
        list["items"][0]["status"] == "acked" && list["items"][0]["result"] == "ok"
    })
    .await;
    assert!(metric(&app, "dmr_commands_acked_total{result=\"ok\"}").await >= 1);
    let (s, _) = app
        .get(
            &format!("/api/v1/gateways/{}/commands", world.a.gateway_id),
            &world.b.owner,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "another tenant's gateway");

    // 5. Last Will: the gateway says it is online, then vanishes; the broker's will
    // (signed by the gateway at connect) marks it offline.
    let (_, online) = sign(gw_a, &key_a, Message::State(GatewayState { online: true }));
    fake_a.publish(TopicKind::State, online).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        scalar(
            &state,
            "SELECT online FROM gateways WHERE id = $1",
            &world.a.gateway_id
        )
        .await,
        1
    );
    fake_a.vanish();
    eventually(
        "the Last Will to mark the gateway offline",
        WAIT,
        || async {
            scalar(
                &state,
                "SELECT online FROM gateways WHERE id = $1",
                &world.a.gateway_id,
            )
            .await
                == 0
        },
    )
    .await;
    let _ = fake_b;
    link.stop().await;
    app.stop().await;
}

pub async fn liveness_marks_silent_locks_and_gateways_offline(kind: &DbKind) {
    let app = TestApp::spawn_with(kind, |c| c.mqtt.enabled = false).await;
    let world = seed_world(&app).await;
    let state = app.state.clone();
    let now = now_ms() as i64;
    let stale = now - 4 * 30_000;
    sqlx::query("UPDATE locks SET status = 'online', last_heartbeat_at = $1 WHERE id = $2")
        .bind(stale)
        .bind(world.a.lock_id.clone())
        .execute(&state.db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE locks SET status = 'online', last_heartbeat_at = $1 WHERE id = $2")
        .bind(now - 10_000)
        .bind(world.b.lock_id.clone())
        .execute(&state.db.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE gateways SET status = 'enrolled', online = 1, last_seen_at = $1 WHERE id = $2",
    )
    .bind(stale)
    .bind(world.a.gateway_id.clone())
    .execute(&state.db.pool)
    .await
    .unwrap();
    let swept = dmr_cloud::link::liveness::sweep_once(&state.db, now, 30_000)
        .await
        .unwrap();
    assert_eq!((swept.locks_offline, swept.gateways_offline), (1, 1));
    assert_eq!(lock_status(&state, &world.a.lock_id).await, "offline");
    assert_eq!(
        lock_status(&state, &world.b.lock_id).await,
        "online",
        "heard from 10 s ago"
    );
    assert_eq!(
        scalar(
            &state,
            "SELECT COUNT(*) FROM live_changes WHERE entity_id = $1",
            &world.a.lock_id
        )
        .await,
        1
    );
    // A second round changes nothing.
    let again = dmr_cloud::link::liveness::sweep_once(&state.db, now, 30_000)
        .await
        .unwrap();
    assert_eq!((again.locks_offline, again.gateways_offline), (0, 0));
    // Unanswered commands past their expiry are expired by the same round.
    sqlx::query(
        "INSERT INTO gateway_commands (id, gateway_id, merchant_id, op, body, key_id, exp_ms, status, created_at) \
         VALUES ($1, $2, $3, 'sync', '{}', 1, $4, 'sent', $5)",
    )
    .bind(Uuid::now_v7().to_string())
    .bind(world.a.gateway_id.clone())
    .bind(world.a.merchant_id.clone())
    .bind(now - 1)
    .bind(now - 1000)
    .execute(&state.db.pool)
    .await
    .unwrap();
    let third = dmr_cloud::link::liveness::sweep_once(&state.db, now, 30_000)
        .await
        .unwrap();
    assert_eq!(third.commands_expired, 1);
    app.stop().await;
}
