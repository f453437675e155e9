#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Enrollment and the signed HTTP sync against an in-test cloud that implements the link
//! contract (tests/common/fake_cloud.rs), with real SQLite, the lock simulator and, where
//! MQTT is involved, a real Mosquitto.

#[path = "common/fake_cloud.rs"]
mod fake_cloud;
#[path = "common/agent_harness.rs"]
mod harness;

use std::collections::{BTreeMap, HashSet};
use std::process::Command as Proc;
use std::time::Duration;

use dmr_edge_agent::agent::{self, store::Delivery, store::OutboxStats};
use dmr_protocol::keys::{public_b64u, signing_key_from_seed};
use dmr_protocol::message::{
    AlarmEvent, AlarmKind, DoorChange, DoorEvent, Event, Message, Presenter, ResultCode,
};
use dmr_protocol::topic::TopicKind;
use fake_cloud::{FakeCloud, Mode, SyncPlan};
use harness::*;
use serde_json::json;
use uuid::Uuid;

const AGENT: &str = env!("CARGO_BIN_EXE_dmr-agent");

async fn wait_for<F: FnMut() -> bool>(secs: u64, what: &str, mut f: F) {
    wait_until_async(Duration::from_secs(secs), what, || {
        let r = f();
        async move { r }
    })
    .await;
}

async fn cloud() -> FakeCloud {
    FakeCloud::start(
        GW,
        Some(gw_key().verifying_key()),
        (CLOUD_KEY_ID, cloud_key()),
    )
    .await
}

fn sync_failures(r: &agent::Running) -> u64 {
    r.health.status(OutboxStats::default(), 0).sync_failures
}

async fn position(r: &agent::Running) -> agent::store::SyncPosition {
    r.store
        .call(|db| db.sync_position())
        .await
        .unwrap()
        .unwrap()
}

async fn run_agent_cli(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = Proc::new(AGENT).args(&args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_saves_the_answer_and_run_config_uses_it_403_and_cloud_down_are_clear() {
    let cloud = cloud().await;
    *cloud.state.gw_key.lock().unwrap() = None;
    *cloud.state.enroll_code.lock().unwrap() = Some("ABCDE-FGHJK".into());
    *cloud.state.enroll_answer.lock().unwrap() = json!({
        "merchant_id": Uuid::from_u128(1),
        "venue_id": Uuid::from_u128(2),
        "trusted_keys": [{"key_id": 1, "public_key": public_b64u(&cloud_key().verifying_key()), "not_after_ms": null}],
        "mqtt": {"url": "mqtt://127.0.0.1:18830", "username": format!("gw:{GW}"), "password": "once-only-secret"},
        "sync_url": cloud.url(),
        "locks": [
            {"lock_id": lock_id(1), "addr": 1, "name": "room 1"},
            {"lock_id": lock_id(2), "addr": 2, "name": "room 2"}
        ],
        "config": {"version": 3, "heartbeat_interval_s": 15, "token_skew_s": 90}
    });
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let conf = dir.path().join("agent.toml");
    // A fresh gateway: no gateway id, no keys, one bus port without a lock map.
    std::fs::write(
        &conf,
        format!(
            "state_dir = \"{}\"\n[[bus]]\nport = \"/dev/ttyUSB0\"\n",
            state.display()
        ),
    )
    .unwrap();
    let args = |code: &str, url: &str| {
        vec![
            "enroll".to_string(),
            "--config".into(),
            conf.display().to_string(),
            "--cloud".into(),
            url.to_string(),
            "--code".into(),
            code.to_string(),
            "--name".into(),
            "front desk".into(),
        ]
    };
    let (code, out, err) = run_agent_cli(args("abcde fghjk", &cloud.url())).await;
    assert_eq!(code, 0, "stdout {out}\nstderr {err}");
    assert!(out.contains(&GW.to_string()), "{out}");
    let saved = state.join("enrollment.json");
    assert_eq!(mode_of(&saved), 0o600);
    assert_eq!(mode_of(&state.join("gateway.key")), 0o600);
    // The cloud registered the key the agent generated.
    let key = dmr_protocol::keys::load_signing_key(&state.join("gateway.key")).unwrap();
    assert_eq!(
        *cloud.state.gw_key.lock().unwrap(),
        Some(key.verifying_key())
    );

    let c = agent::config::load(Some(&conf), []).unwrap();
    assert_eq!(c.gateway_id, GW);
    assert!(c.enrolled);
    assert_eq!(c.cloud_url.as_deref(), Some(cloud.url().as_str()));
    assert!(c.trusted_keys.is_empty());
    assert_eq!(c.enrolled_keys.len(), 1);
    let m = c.mqtt.as_ref().unwrap();
    assert_eq!((m.host.as_str(), m.port), ("127.0.0.1", 18830));
    assert_eq!(m.username.as_deref(), Some(format!("gw:{GW}").as_str()));
    assert_eq!(m.password.as_ref().unwrap().expose(), "once-only-secret");
    assert!(!format!("{c:?}").contains("once-only-secret"));
    let locks: Vec<_> = c.buses[0]
        .locks
        .iter()
        .map(|l| (l.addr, l.lock_id))
        .collect();
    assert_eq!(locks, vec![(1, lock_id(1)), (2, lock_id(2))]);
    assert_eq!(c.enrolled_config.as_ref().unwrap().version, 3);
    let (code, out, _) = run_agent_cli(vec![
        "check-config".into(),
        "--config".into(),
        conf.display().to_string(),
    ])
    .await;
    assert_eq!(code, 0);
    assert!(out.contains("2 lock(s)"), "{out}");

    // The code is used up now: 403, told to get a new one, the saved answer untouched.
    let before = std::fs::read(&saved).unwrap();
    let (code, _, err) = run_agent_cli(args("ABCDE-FGHJK", &cloud.url())).await;
    assert_eq!(code, 77, "{err}");
    assert!(err.contains("refused the enrollment code"), "{err}");
    assert!(err.contains("new code"), "{err}");
    assert_eq!(std::fs::read(&saved).unwrap(), before);

    // Nobody listening: 69, names the URL and what to check.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (code, _, err) = run_agent_cli(args("ABCDE-FGHJK", &dead)).await;
    assert_eq!(code, 69, "{err}");
    assert!(
        err.contains("cannot reach the cloud") && err.contains(&dead),
        "{err}"
    );

    // Two ports and no explicit map: a configuration error (78) saying what to do.
    std::fs::write(
        &conf,
        format!(
            "state_dir = \"{}\"\n[[bus]]\nport = \"/dev/ttyUSB0\"\n[[bus]]\nport = \"/dev/ttyUSB1\"\n",
            state.display()
        ),
    )
    .unwrap();
    let (code, _, err) = run_agent_cli(vec![
        "check-config".into(),
        "--config".into(),
        conf.display().to_string(),
    ])
    .await;
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("say which lock is on which port"), "{err}");
    // An explicit map wins over the enrollment's list.
    std::fs::write(
        &conf,
        format!(
            "state_dir = \"{}\"\n[[bus]]\nport = \"/dev/ttyUSB0\"\nlocks = [{{ addr = 9, lock_id = \"{}\" }}]\n[[bus]]\nport = \"/dev/ttyUSB1\"\n",
            state.display(),
            lock_id(9)
        ),
    )
    .unwrap();
    let c = agent::config::load(Some(&conf), []).unwrap();
    assert_eq!(c.buses[0].locks.len(), 1);
    assert!(c.buses[1].locks.is_empty());
    // A configured gateway id that is not the enrolled one is refused.
    std::fs::write(
        &conf,
        format!(
            "gateway_id = \"{}\"\nstate_dir = \"{}\"\n[[bus]]\nport = \"/dev/ttyUSB0\"\n",
            Uuid::from_u128(77),
            state.display()
        ),
    )
    .unwrap();
    let e = agent::config::load(Some(&conf), []).unwrap_err();
    assert!(
        e.to_string().contains("enrollment.json is for gateway"),
        "{e}"
    );
}

fn door_or_alarm(i: u64, base: u64) -> Event {
    let lock = lock_id(1 + (i % 3) as u8);
    if i % 100 == 50 {
        Event::Alarm(AlarmEvent {
            lock_id: lock,
            alarm: AlarmKind::LowVoltage,
            detail: Some(format!("n{i}")),
            at: base + i,
        })
    } else {
        Event::Door(DoorEvent {
            lock_id: lock,
            door: if i.is_multiple_of(2) {
                DoorChange::Opened
            } else {
                DoorChange::Closed
            },
            at: base + i,
        })
    }
}

fn event_at(e: &Event) -> u64 {
    match e {
        Event::Door(d) => d.at,
        Event::Alarm(a) => a.at,
        Event::Unlock(u) => u.at,
        Event::Fw(f) => f.at,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_drains_a_2000_event_backlog_while_the_broker_is_down_rejected_go_to_dead_letter() {
    // A real broker that has gone away for the whole test.
    let mut broker = Mosquitto::start();
    broker.stop();
    let cloud = cloud().await;
    cloud
        .state
        .up
        .store(false, std::sync::atomic::Ordering::SeqCst);
    *cloud.state.reject.lock().unwrap() = Some(|env| match &env.message {
        Message::Event(Event::Alarm(a)) if a.alarm == AlarmKind::LowVoltage => {
            Some("alarm for a lock this gateway does not own".into())
        }
        _ => None,
    });
    let sim = sim(3).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(
        dir.path(),
        sim.tcp_addr().unwrap(),
        3,
        Some(broker.port),
        &format!("cloud_url = \"{}\"\nsync_interval_s = 3600", cloud.url()),
    );
    let (running, _) = start_agent(&toml).await;
    // The backlog builds while both the broker and the cloud are unreachable.
    let base = now_ms();
    running
        .store
        .call(move |db| {
            for i in 0..2000u64 {
                db.append_event(door_or_alarm(i, base)).unwrap();
            }
        })
        .await
        .unwrap();
    wait_for(20, "a failed drain to be counted", || {
        sync_failures(&running) > 0
    })
    .await;
    let pending = count(&running, "SELECT COUNT(*) FROM outbox").await;
    assert!(pending >= 2000, "{pending}");

    cloud
        .state
        .up
        .store(true, std::sync::atomic::Ordering::SeqCst);
    running.sync_now.notify_one();
    let mut left = i64::MAX;
    for _ in 0..600 {
        left = count(&running, "SELECT COUNT(*) FROM outbox").await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "outbox not drained");

    let applied = cloud.state.applied.lock().unwrap().clone();
    let rejected = cloud.state.rejected.lock().unwrap().clone();
    let ours: Vec<_> = applied
        .iter()
        .filter_map(|e| match &e.message {
            Message::Event(ev @ (Event::Door(_) | Event::Alarm(_))) if event_at(ev) >= base => {
                Some((e.id, ev.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(ours.len(), 1980, "every accepted event arrives");
    assert_eq!(rejected.len(), 20);
    // Exactly once: nothing was sent twice.
    assert!(
        cloud
            .state
            .deliveries
            .lock()
            .unwrap()
            .values()
            .all(|n| *n == 1),
        "an event was delivered twice"
    );
    // In order per lock.
    let mut last: BTreeMap<Uuid, u64> = BTreeMap::new();
    for (_, ev) in &ours {
        let at = event_at(ev);
        let prev = last.insert(ev.lock_id(), at).unwrap_or(0);
        assert!(at > prev, "out of order for lock {}", ev.lock_id());
    }
    assert!(
        cloud
            .state
            .max_batch_seen
            .load(std::sync::atomic::Ordering::SeqCst)
            <= 500
    );
    assert!(
        cloud
            .state
            .events_calls
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 4
    );
    assert!(cloud.state.auth_failures.lock().unwrap().is_empty());

    // Rejected ones are kept with the reason, and shown.
    let dead = count(&running, "SELECT COUNT(*) FROM dead_letters").await;
    assert_eq!(dead, 20);
    let reason: String = running
        .store
        .call(|db| {
            db.conn()
                .query_row("SELECT error FROM dead_letters LIMIT 1", [], |r| r.get(0))
        })
        .await
        .unwrap()
        .unwrap();
    assert!(reason.contains("does not own"), "{reason}");
    let status: serde_json::Value = reqwest_get_json(running.status_addr, "/status").await;
    assert_eq!(status["outbox_dead_letters"], 20);
    assert_eq!(status["outbox_pending"], 0);
    let metrics = reqwest_get_text(running.status_addr, "/metrics").await;
    assert!(
        metrics.contains("dmr_agent_outbox_dead_letters 20"),
        "{metrics}"
    );
    running.shutdown(Duration::from_secs(5)).await;
}

async fn reqwest_get_text(addr: std::net::SocketAddr, path: &str) -> String {
    let c = agent::enroll::http_client(Duration::from_secs(5)).unwrap();
    c.get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn reqwest_get_json(addr: std::net::SocketAddr, path: &str) -> serde_json::Value {
    serde_json::from_str(&reqwest_get_text(addr, path).await).unwrap()
}

async fn cached(r: &agent::Running, t: &dmr_protocol::token::UnlockToken) -> bool {
    let code = t.short_code();
    !r.store
        .call(move |db| db.cached_by_code(code))
        .await
        .unwrap()
        .unwrap()
        .is_empty()
}

async fn pull_now(cloud: &FakeCloud, running: &agent::Running) {
    let before = cloud.sync_count();
    running.sync_now.notify_one();
    wait_for(10, "a sync pull", || cloud.sync_count() > before).await;
    // The answer is applied after the request is served; give the agent a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_pull_applies_state_and_forged_or_replayed_answers_change_nothing() {
    let cloud = cloud().await;
    let t1 = token(lock_id(1), 1);
    let revoked1 = token(lock_id(1), 1);
    cloud.set_plan(SyncPlan {
        put: vec![t1.to_text()],
        cursor: Some("c/1 +".into()),
        revocations: Some((1, vec![revoked1.claims().token_id])),
        config: Some(json!({"version": 1, "heartbeat_interval_s": 5})),
        ..SyncPlan::default()
    });
    let sim = sim(1).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(
        dir.path(),
        sim.tcp_addr().unwrap(),
        1,
        None,
        &format!("cloud_url = \"{}\"\nsync_interval_s = 3600", cloud.url()),
    );
    let (running, _) = start_agent(&toml).await;
    wait_for(10, "the first pull", || cloud.sync_count() >= 1).await;
    wait_until_async(Duration::from_secs(10), "cursor stored", || async {
        position(&running).await.tokens_after.as_deref() == Some("c/1 +")
    })
    .await;
    assert!(cached(&running, &t1).await);
    let pos1 = position(&running).await;
    assert_eq!((pos1.revocations_version, pos1.config_version), (1, 1));
    // The first query had an empty cursor; the cursor goes back percent-encoded.
    assert!(
        cloud.state.sync_queries.lock().unwrap()[0]
            .starts_with("tokens_after=&revocations_version=0&config_version=0"),
        "{:?}",
        cloud.state.sync_queries.lock().unwrap()
    );
    let anchor1 = running.clock.anchor_ms().unwrap();

    // A captured answer with new content, replayed (another request's nonce), then the
    // same content signed by a key we do not trust: both refused, nothing changes.
    let t2 = token(lock_id(1), 1);
    // Ahead of the wall clock but within the cloud's 300 s request window: the agent signs
    // its requests with trusted time.
    let future = now_ms() + 200_000;
    for mode in [Mode::Replayed, Mode::Foreign] {
        let fails = sync_failures(&running);
        cloud.set_plan(SyncPlan {
            mode,
            ts: Some(future),
            put: vec![t2.to_text()],
            cursor: Some("c2".into()),
            revocations: Some((2, vec![t1.claims().token_id])),
            config: Some(json!({"version": 2, "heartbeat_interval_s": 9})),
            trusted_keys: vec![json!({"key_id": 9, "public_key": public_b64u(&signing_key_from_seed([0xEE; 32]).verifying_key())})],
            ..SyncPlan::default()
        });
        pull_now(&cloud, &running).await;
        wait_for(10, "the refusal to be counted", || {
            sync_failures(&running) > fails
        })
        .await;
        assert_eq!(
            position(&running).await,
            pos1,
            "{mode:?} changed the position"
        );
        assert!(!cached(&running, &t2).await, "{mode:?} cached a token");
        assert!(
            running.clock.anchor_ms().unwrap() < future,
            "{mode:?} moved the clock"
        );
        let keys = running.store.call(|db| db.trusted_keys()).await.unwrap();
        assert!(!keys.contains_key(&9), "{mode:?} added a key");
    }
    // t1 is still good: present it.
    let r = running
        .unlocker
        .present(&t1.to_text(), Presenter::Lan)
        .await;
    assert_eq!(r.result, ResultCode::Ok, "{}", r.detail);

    // The honest answer with the same content is applied (and its ts moves the anchor).
    cloud.set_plan(SyncPlan {
        ts: Some(future),
        put: vec![t2.to_text()],
        cursor: Some("c2".into()),
        revocations: Some((2, vec![t2.claims().token_id])),
        config: Some(json!({"version": 2, "heartbeat_interval_s": 9})),
        ..SyncPlan::default()
    });
    pull_now(&cloud, &running).await;
    let pos = position(&running).await;
    assert_eq!(pos.tokens_after.as_deref(), Some("c2"));
    assert_eq!((pos.revocations_version, pos.config_version), (2, 2));
    assert!(cached(&running, &t2).await);
    assert_eq!(running.clock.anchor_ms(), Some(future));
    assert!(anchor1 < future);
    let r = running
        .unlocker
        .present(&t2.to_text(), Presenter::Lan)
        .await;
    assert_eq!(r.result, ResultCode::Revoked);
    let queries = cloud.state.sync_queries.lock().unwrap().clone();
    assert!(
        queries
            .iter()
            .any(|q| q.starts_with("tokens_after=c%2F1%20%2B&")),
        "{queries:?}"
    );
    running.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_and_config_versions_only_move_forward_and_the_beacon_never_goes_back() {
    let cloud = cloud().await;
    let a = token(lock_id(1), 1);
    let b = token(lock_id(1), 1);
    let c = token(lock_id(1), 1);
    let ahead = now_ms() + 200_000;
    cloud.set_plan(SyncPlan {
        ts: Some(ahead),
        revocations: Some((5, vec![a.claims().token_id, b.claims().token_id])),
        config: Some(json!({"version": 4, "heartbeat_interval_s": 7, "token_skew_s": 100})),
        ..SyncPlan::default()
    });
    let sim = sim(1).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(
        dir.path(),
        sim.tcp_addr().unwrap(),
        1,
        None,
        &format!("cloud_url = \"{}\"\nsync_interval_s = 3600", cloud.url()),
    );
    let (running, _) = start_agent(&toml).await;
    // The pull applies revocations and settings in two store calls: wait for both (waiting
    // for the revocations alone raced the settings on a loaded machine).
    wait_until_async(Duration::from_secs(10), "first pull applied", || async {
        let p = position(&running).await;
        p.revocations_version == 5 && p.config_version == 4
    })
    .await;
    assert_eq!(running.clock.anchor_ms(), Some(ahead));
    let persisted = count(&running, "SELECT cloud_ms FROM time_anchor WHERE id = 1").await;
    assert_eq!(persisted as u64, ahead);

    // Older revocations and settings, and an older time beacon: all ignored.
    cloud.set_plan(SyncPlan {
        ts: Some(ahead - 400_000),
        revocations: Some((3, vec![c.claims().token_id])),
        config: Some(json!({"version": 2, "heartbeat_interval_s": 99})),
        ..SyncPlan::default()
    });
    pull_now(&cloud, &running).await;
    let pos = position(&running).await;
    assert_eq!((pos.revocations_version, pos.config_version), (5, 4));
    assert_eq!(running.clock.anchor_ms(), Some(ahead));
    let persisted = count(&running, "SELECT cloud_ms FROM time_anchor WHERE id = 1").await;
    assert_eq!(persisted as u64, ahead);
    let hb = running
        .store
        .call(|db| db.heartbeat_override_s())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hb, Some(7));
    assert_eq!(running.store.call(|db| db.skew_s()).await.unwrap(), 100);
    assert_eq!(
        running
            .unlocker
            .present(&a.to_text(), Presenter::Lan)
            .await
            .result,
        ResultCode::Revoked
    );
    assert_eq!(
        running
            .unlocker
            .present(&c.to_text(), Presenter::Lan)
            .await
            .result,
        ResultCode::Ok
    );
    assert_eq!(sync_failures(&running), 0);

    // Key rotation: the cloud's list replaces the keys it manages; the file's key 1 stays.
    let k2 = signing_key_from_seed([0x22; 32]);
    let k3 = signing_key_from_seed([0x33; 32]);
    let key_json = |id: u32, k: &dmr_protocol::keys::SigningKey| json!({"key_id": id, "public_key": public_b64u(&k.verifying_key()), "not_after_ms": null});
    cloud.set_plan(SyncPlan {
        trusted_keys: vec![key_json(1, &cloud_key()), key_json(2, &k2)],
        ..SyncPlan::default()
    });
    pull_now(&cloud, &running).await;
    let by2 = token_with(lock_id(1), 1, now_s() - 60, now_s() + 3600, 2, &k2);
    let by3 = token_with(lock_id(1), 1, now_s() - 60, now_s() + 3600, 3, &k3);
    assert_eq!(
        running
            .unlocker
            .present(&by2.to_text(), Presenter::Lan)
            .await
            .result,
        ResultCode::Ok
    );
    cloud.set_plan(SyncPlan {
        trusted_keys: vec![key_json(3, &k3)],
        ..SyncPlan::default()
    });
    pull_now(&cloud, &running).await;
    let keys = running.store.call(|db| db.trusted_keys()).await.unwrap();
    assert_eq!(keys.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
    let by2b = token_with(lock_id(1), 1, now_s() - 60, now_s() + 3600, 2, &k2);
    assert_eq!(
        running
            .unlocker
            .present(&by2b.to_text(), Presenter::Lan)
            .await
            .result,
        ResultCode::UnknownKey
    );
    assert_eq!(
        running
            .unlocker
            .present(&by3.to_text(), Presenter::Lan)
            .await
            .result,
        ResultCode::Ok
    );
    running.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_and_http_both_delivering_the_same_event_is_harmless() {
    let mut broker = Mosquitto::start();
    let obs = Observer::start(broker.port, "cloud-dual", true);
    let cloud = cloud().await;
    let sim = sim(2).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(
        dir.path(),
        sim.tcp_addr().unwrap(),
        2,
        Some(broker.port),
        &format!(
            "cloud_url = \"{}\"\nsync_interval_s = 3600\nsync_drain_after_s = 1",
            cloud.url()
        ),
    );
    let (running, _) = start_agent(&toml).await;

    // The store level first: the PUBACK path and the HTTP verdict for the same row, in
    // both orders, leave the counters right.
    let (pending, count_rows) = running
        .store
        .call(|db| {
            let base = 1;
            let mut seqs = Vec::new();
            for i in 0..4 {
                db.append_event(door_or_alarm(i, base)).unwrap();
                let seq: i64 = db
                    .conn()
                    .query_row("SELECT MAX(seq) FROM outbox", [], |r| r.get(0))
                    .unwrap();
                seqs.push(seq);
            }
            db.outbox_resolve(&[Delivery::Delivered(seqs[0])]).unwrap();
            db.outbox_delete(&[seqs[0]]).unwrap();
            db.outbox_delete(&[seqs[1]]).unwrap();
            let again = db.outbox_resolve(&[Delivery::Delivered(seqs[1])]).unwrap();
            assert_eq!(again, (0, 0));
            let stats = db.outbox_stats().unwrap();
            let n: i64 = db
                .conn()
                .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
                .unwrap();
            (stats.pending, n)
        })
        .await
        .unwrap();
    assert_eq!(pending as i64, count_rows);

    // End to end: both links down while a backlog builds, then both back at once, with the
    // cloud slow to answer the HTTP drain so the MQTT link publishes (and deletes) the same
    // rows while the HTTP call is in flight.
    wait_for(10, "MQTT up", || running.health.cloud_up()).await;
    broker.stop();
    cloud
        .state
        .up
        .store(false, std::sync::atomic::Ordering::SeqCst);
    wait_for(20, "MQTT down", || !running.health.cloud_up()).await;
    let base = now_ms();
    let ids: Vec<Uuid> = running
        .store
        .call(move |db| {
            (0..300u64)
                .map(|i| db.append_event(door_or_alarm(i, base)).unwrap())
                .collect()
        })
        .await
        .unwrap();
    cloud
        .state
        .events_delay_ms
        .store(3000, std::sync::atomic::Ordering::SeqCst);
    let calls = cloud
        .state
        .events_calls
        .load(std::sync::atomic::Ordering::SeqCst);
    cloud
        .state
        .up
        .store(true, std::sync::atomic::Ordering::SeqCst);
    running.sync_now.notify_one();
    // The HTTP drain has the rows in flight (answer delayed); now the broker comes back.
    wait_for(20, "an HTTP drain call in flight", || {
        cloud
            .state
            .events_calls
            .load(std::sync::atomic::Ordering::SeqCst)
            > calls
    })
    .await;
    broker.start_again();
    wait_until_async(Duration::from_secs(60), "outbox empty", || async {
        count(&running, "SELECT COUNT(*) FROM outbox").await == 0
    })
    .await;
    let seen = || {
        let via_mqtt: HashSet<Uuid> = obs.on(TopicKind::Event).iter().map(|e| e.id).collect();
        let via_http: HashSet<Uuid> = cloud
            .state
            .deliveries
            .lock()
            .unwrap()
            .keys()
            .copied()
            .collect();
        (via_mqtt, via_http)
    };
    // Rows leave the outbox on the first acknowledgement; the slow HTTP answer and the
    // observer's copies arrive a little later. Every event must turn up (a timeout = lost).
    wait_for(30, "every event at the cloud over MQTT or HTTP", || {
        let (m, h) = seen();
        ids.iter().all(|id| m.contains(id) || h.contains(id))
    })
    .await;
    wait_for(30, "the slow HTTP call to be answered", || {
        !seen().1.is_empty()
    })
    .await;
    let (via_mqtt, via_http) = seen();
    let stats = running
        .store
        .call(|db| db.outbox_stats())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stats.pending, 0);
    assert_eq!(stats.dead_letters, 0);
    // Counters stay exact afterwards.
    running
        .store
        .call(move |db| {
            for i in 0..3 {
                db.append_event(door_or_alarm(i, base)).unwrap();
            }
        })
        .await
        .unwrap();
    wait_until_async(Duration::from_secs(20), "new events delivered", || async {
        count(&running, "SELECT COUNT(*) FROM outbox").await == 0
    })
    .await;
    let stats = running
        .store
        .call(|db| db.outbox_stats())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stats.pending, 0);
    let both = ids
        .iter()
        .filter(|i| via_mqtt.contains(i) && via_http.contains(i))
        .count();
    eprintln!(
        "dual delivery: {} via MQTT, {} via HTTP, {both} by both, of {}",
        ids.iter().filter(|i| via_mqtt.contains(i)).count(),
        ids.iter().filter(|i| via_http.contains(i)).count(),
        ids.len()
    );
    assert!(
        both > 0,
        "the test did not make both links deliver the same event"
    );
    running.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolled_keys_seed_the_store_until_a_sync_replaces_them_and_never_come_back() {
    use agent::clock::{SystemClock, TrustedClock};
    use agent::store::{LockPlace, Store, StoreConfig};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let k5 = signing_key_from_seed([0x55; 32]).verifying_key();
    let k6 = signing_key_from_seed([0x66; 32]).verifying_key();
    let open = |enrolled: Vec<(u32, dmr_protocol::keys::VerifyingKey)>| {
        Store::open(
            StoreConfig {
                path: dir.path().join("agent.db"),
                gateway_id: GW,
                key: gw_key(),
                skew_s: 120,
                locks: vec![(lock_id(1), LockPlace { bus: 0, addr: 1 })],
                trusted_keys: [(CLOUD_KEY_ID, cloud_key().verifying_key())].into(),
                enrolled_keys: enrolled.into_iter().collect(),
                max_db_pages: None,
                mmap_bytes: 0,
            },
            Arc::new(TrustedClock::new(SystemClock, None)),
        )
        .unwrap()
    };
    let ids = |s: Store| async move {
        let v: Vec<u32> = s
            .call(|db| db.trusted_keys().keys().copied().collect())
            .await
            .unwrap();
        s.close().await.unwrap();
        v
    };
    // First start: the file's key 1 and the enrollment's key 5.
    let (s, t) = open(vec![(5, k5)]);
    assert_eq!(ids(s.clone()).await, vec![1, 5]);
    drop(s);
    t.join().unwrap();
    // A sync retires key 5 in favour of key 6.
    let (s, t) = open(vec![(5, k5)]);
    s.call(move |db| db.set_cloud_keys(&[(6, k6, None)]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids(s.clone()).await, vec![1, 6]);
    drop(s);
    t.join().unwrap();
    // Restarting with the same enrollment.json does not bring key 5 back.
    let (s, t) = open(vec![(5, k5)]);
    assert_eq!(ids(s.clone()).await, vec![1, 6]);
    drop(s);
    t.join().unwrap();
}

async fn mapped(r: &agent::Running) -> Vec<(Uuid, u8)> {
    r.store
        .call(|db| db.locks())
        .await
        .unwrap()
        .into_iter()
        .map(|(id, p)| (id, p.addr))
        .collect()
}

fn lock_json(n: u8, addr: u16) -> serde_json::Value {
    json!({"lock_id": lock_id(n), "addr": addr})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pulled_lock_list_is_applied_on_the_one_bus_kept_over_a_restart_and_a_file_mapping_wins()
 {
    let cloud = cloud().await;
    cloud.set_plan(SyncPlan {
        locks: vec![lock_json(1, 1)],
        ..SyncPlan::default()
    });
    let sim = sim(2).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("cloud_url = \"{}\"\nsync_interval_s = 3600", cloud.url());
    // One bus and no locks in the file: the cloud's list manages the map.
    let toml = config_toml(dir.path(), sim.tcp_addr().unwrap(), 0, None, &extra);
    let (running, _) = start_agent(&toml).await;
    wait_until_async(
        Duration::from_secs(10),
        "lock 1 mapped by the pull",
        || async { mapped(&running).await == vec![(lock_id(1), 1)] },
    )
    .await;
    let r = running
        .unlocker
        .present(&token(lock_id(1), 1).to_text(), Presenter::Lan)
        .await;
    assert_eq!(r.result, ResultCode::Ok, "{r:?}");
    assert_eq!(unlock_count(&sim, 1), 1);
    // The poller follows the map: lock 1 gets polled and shows in the health report.
    wait_for(10, "lock 1 polled", || {
        running
            .health
            .lock_statuses()
            .iter()
            .any(|l| l.lock_id == lock_id(1) && l.online)
    })
    .await;

    // Lock 1 leaves, lock 2 arrives at address 2.
    cloud.set_plan(SyncPlan {
        locks: vec![lock_json(2, 2)],
        ..SyncPlan::default()
    });
    pull_now(&cloud, &running).await;
    assert_eq!(mapped(&running).await, vec![(lock_id(2), 2)]);
    let r = running
        .unlocker
        .present(&token(lock_id(1), 1).to_text(), Presenter::Lan)
        .await;
    assert_eq!(r.result, ResultCode::WrongLock, "{r:?}");
    assert_eq!(unlock_count(&sim, 1), 1, "a removed lock must not move");
    let r = running
        .unlocker
        .present(&token(lock_id(2), 1).to_text(), Presenter::Lan)
        .await;
    assert_eq!(r.result, ResultCode::Ok, "{r:?}");
    assert_eq!(unlock_count(&sim, 2), 1);
    assert!(
        !running
            .health
            .lock_statuses()
            .iter()
            .any(|l| l.lock_id == lock_id(1)),
        "a removed lock leaves the health report"
    );

    // An inconsistent list (two locks on one address) changes nothing.
    cloud.set_plan(SyncPlan {
        locks: vec![lock_json(1, 3), lock_json(3, 3)],
        ..SyncPlan::default()
    });
    pull_now(&cloud, &running).await;
    assert_eq!(mapped(&running).await, vec![(lock_id(2), 2)]);
    running.shutdown(Duration::from_secs(5)).await;

    // Restarted with the cloud unreachable: the last applied list holds, not the (empty)
    // configured one.
    let dead = free_port();
    let toml = config_toml(
        dir.path(),
        sim.tcp_addr().unwrap(),
        0,
        None,
        &format!("cloud_url = \"http://127.0.0.1:{dead}\"\nsync_interval_s = 3600"),
    );
    let (running, _) = start_agent(&toml).await;
    assert_eq!(mapped(&running).await, vec![(lock_id(2), 2)]);
    let r = running
        .unlocker
        .present(&token(lock_id(2), 1).to_text(), Presenter::Lan)
        .await;
    assert_eq!(r.result, ResultCode::Ok, "{r:?}");
    assert_eq!(unlock_count(&sim, 2), 2);
    running.shutdown(Duration::from_secs(5)).await;

    // A configuration file that maps locks itself wins over the cloud's list.
    let dir2 = tempfile::tempdir().unwrap();
    cloud.set_plan(SyncPlan {
        locks: vec![lock_json(2, 2)],
        ..SyncPlan::default()
    });
    let toml = config_toml(dir2.path(), sim.tcp_addr().unwrap(), 1, None, &extra);
    let before = cloud.sync_count();
    let (running, _) = start_agent(&toml).await;
    wait_for(10, "the first pull", || cloud.sync_count() > before).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mapped(&running).await, vec![(lock_id(1), 1)]);
    let r = running
        .unlocker
        .present(&token(lock_id(2), 1).to_text(), Presenter::Lan)
        .await;
    assert_eq!(r.result, ResultCode::WrongLock, "{r:?}");
    assert_eq!(unlock_count(&sim, 2), 2);
    running.shutdown(Duration::from_secs(5)).await;
    sim.shutdown().await;
}
