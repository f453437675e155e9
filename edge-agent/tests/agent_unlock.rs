#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The unlock path end to end, in-process, against the lock simulator over Modbus TCP and a
//! real SQLite file: every refusal code (and the latch never moving), replays, cached
//! tokens by short code, the local HTTP API and its rate limit, the scanner, trusted time,
//! a full disk, and a lock that stops answering.

#[path = "common/agent_harness.rs"]
mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dmr_edge_agent::agent::{self, clock::WallClock, commands};
use dmr_protocol::message::{
    AlarmKind, Command, DoorChange, Envelope, Event, Message, Presenter, ResultCode,
};
use harness::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

async fn outbox(running: &agent::Running) -> Vec<Envelope> {
    let rows: Vec<String> = running
        .store
        .call(|db| {
            let mut s = db
                .conn()
                .prepare("SELECT jws FROM outbox ORDER BY seq")
                .unwrap();
            s.query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<Vec<String>, _>>()
                .unwrap()
        })
        .await
        .unwrap();
    rows.iter().map(|j| open_gw(j)).collect()
}

fn unlock_results(events: &[Envelope]) -> Vec<(Option<uuid::Uuid>, ResultCode)> {
    events
        .iter()
        .filter_map(|e| match &e.message {
            Message::Event(Event::Unlock(u)) => Some((u.token_id, u.result)),
            _ => None,
        })
        .collect()
}

async fn http_post(addr: std::net::SocketAddr, body: &str) -> (u16, serde_json::Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /v1/unlock HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status: u16 = out[9..12].parse().unwrap();
    let (_, b) = out.split_once("\r\n\r\n").unwrap();
    (status, serde_json::from_str(b).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_its_code_and_the_latch_never_moves() {
    let sim = sim(2).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(dir.path(), sim.tcp_addr().unwrap(), 2, None, "");
    let (running, _) = start_agent(&toml).await;
    let u = &running.unlocker;
    let lock = lock_id(1);

    // Revoke one token first (through the real command path).
    let revoked = token(lock, 1);
    let (_, kick) = (0, Arc::new(tokio::sync::Notify::new()));
    let (hb, _hb_rx) = tokio::sync::watch::channel(Duration::from_secs(30));
    let deps = commands::CommandDeps {
        store: running.store.clone(),
        unlocker: running.unlocker.clone(),
        kick,
        heartbeat: hb,
        sync_now: Arc::new(tokio::sync::Notify::new()),
    };
    let (_, revoke) = command(Command::TokensRevoke {
        token_ids: vec![revoked.claims().token_id],
        version: 1,
    });
    assert_eq!(commands::handle(&deps, revoke).await, Some(ResultCode::Ok));

    let good = token(lock, 1);
    let mut tampered = good.to_text().into_bytes();
    // Flip a character inside the signature part.
    let i = tampered.len() - 5;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let expired = token_with(
        lock,
        1,
        now_s() - 7200,
        now_s() - 3600,
        CLOUD_KEY_ID,
        &cloud_key(),
    );
    let future = token_with(
        lock,
        1,
        now_s() + 3600,
        now_s() + 7200,
        CLOUD_KEY_ID,
        &cloud_key(),
    );
    let wrong_lock = token(lock_id(99), 1);
    let stranger = dmr_protocol::keys::signing_key_from_seed([42; 32]);
    let unknown_key = token_with(lock, 1, now_s() - 60, now_s() + 3600, 77, &stranger);
    let cases: Vec<(String, ResultCode)> = vec![
        ("hello".into(), ResultCode::BadFormat),
        ("12345678".into(), ResultCode::BadFormat),
        (tampered, ResultCode::BadSignature),
        (expired.to_text(), ResultCode::Expired),
        (future.to_text(), ResultCode::NotYetValid),
        (revoked.to_text(), ResultCode::Revoked),
        (wrong_lock.to_text(), ResultCode::WrongLock),
        (unknown_key.to_text(), ResultCode::UnknownKey),
    ];
    for (text, want) in &cases {
        let r = u.present(text, Presenter::Lan).await;
        assert_eq!(r.result, *want, "for {text:.20}");
    }
    assert_eq!(
        actuations(&sim, 1),
        0,
        "no refused token may move the latch"
    );
    assert_eq!(count(&running, "SELECT COUNT(*) FROM token_uses").await, 0);

    // The valid one opens, once; its replay is used_up and the latch stays where it was.
    let r = u.present(&good.to_text(), Presenter::Lan).await;
    assert_eq!(r.result, ResultCode::Ok, "{}", r.detail);
    assert_eq!(actuations(&sim, 1), 1);
    let r = u.present(&good.to_text(), Presenter::Scanner).await;
    assert_eq!(r.result, ResultCode::UsedUp);
    assert_eq!(actuations(&sim, 1), 1);

    // Every attempt is an event; the good one is accepted then ok.
    let results = unlock_results(&outbox(&running).await);
    let codes: Vec<ResultCode> = results.iter().map(|r| r.1).collect();
    for (_, want) in &cases {
        assert!(codes.contains(want), "missing event {want:?}");
    }
    let good_events: Vec<ResultCode> = results
        .iter()
        .filter(|r| r.0 == Some(good.claims().token_id))
        .map(|r| r.1)
        .collect();
    // The tampered copy carries the same token id: its refusal comes first.
    assert_eq!(
        good_events,
        vec![
            ResultCode::BadSignature,
            ResultCode::Accepted,
            ResultCode::Ok,
            ResultCode::UsedUp
        ]
    );
    running.shutdown(Duration::from_secs(5)).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_tokens_open_by_short_code_and_revocations_are_versioned() {
    let sim = sim(1).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(dir.path(), sim.tcp_addr().unwrap(), 1, None, "");
    let (running, _) = start_agent(&toml).await;
    let (hb, hb_rx) = tokio::sync::watch::channel(Duration::from_secs(30));
    let deps = commands::CommandDeps {
        store: running.store.clone(),
        unlocker: running.unlocker.clone(),
        kick: Arc::new(tokio::sync::Notify::new()),
        heartbeat: hb,
        sync_now: Arc::new(tokio::sync::Notify::new()),
    };
    let a = token(lock_id(1), 2);
    let b = token(lock_id(1), 1);
    let (_, put) = command(Command::TokensPut {
        tokens: vec![a.to_text(), b.to_text(), "junk".into()],
    });
    assert_eq!(
        commands::handle(&deps, put.clone()).await,
        Some(ResultCode::Ok)
    );
    // The same command id again is a duplicate: dropped, no second ack.
    assert_eq!(commands::handle(&deps, put).await, None);
    assert_eq!(count(&running, "SELECT COUNT(*) FROM tokens").await, 2);

    let code = a.short_code().to_string();
    let r = running.unlocker.present(&code, Presenter::Scanner).await;
    assert_eq!(r.result, ResultCode::Ok, "{}", r.detail);
    assert_eq!(r.token_id, Some(a.claims().token_id));
    let r = running.unlocker.present(&code, Presenter::Scanner).await;
    assert_eq!(r.result, ResultCode::Ok);
    let r = running.unlocker.present(&code, Presenter::Scanner).await;
    assert_eq!(r.result, ResultCode::UsedUp);
    assert_eq!(unlock_count(&sim, 1), 2);

    // Revocation list version 5, then an older list (4) is stale and changes nothing,
    // the same version again is ok and changes nothing.
    let (_, rv5) = command(Command::TokensRevoke {
        token_ids: vec![b.claims().token_id],
        version: 5,
    });
    assert_eq!(commands::handle(&deps, rv5).await, Some(ResultCode::Ok));
    let (_, rv4) = command(Command::TokensRevoke {
        token_ids: vec![a.claims().token_id],
        version: 4,
    });
    assert_eq!(commands::handle(&deps, rv4).await, Some(ResultCode::Stale));
    let (_, rv5b) = command(Command::TokensRevoke {
        token_ids: vec![b.claims().token_id],
        version: 5,
    });
    assert_eq!(commands::handle(&deps, rv5b).await, Some(ResultCode::Ok));
    assert_eq!(count(&running, "SELECT COUNT(*) FROM revocations").await, 1);
    let r = running
        .unlocker
        .present(&b.short_code().to_string(), Presenter::Lan)
        .await;
    assert_eq!(r.result, ResultCode::Revoked);

    // config.set: version 3 applies, 2 is stale, 3 again changes nothing.
    let cs = |v, h| {
        command(Command::ConfigSet(dmr_protocol::message::ConfigSet {
            version: v,
            heartbeat_interval_s: Some(h),
            token_skew_s: None,
        }))
        .1
    };
    assert_eq!(
        commands::handle(&deps, cs(3, 7)).await,
        Some(ResultCode::Ok)
    );
    assert_eq!(*hb_rx.borrow(), Duration::from_secs(7));
    assert_eq!(
        commands::handle(&deps, cs(2, 9)).await,
        Some(ResultCode::Stale)
    );
    assert_eq!(
        commands::handle(&deps, cs(3, 11)).await,
        Some(ResultCode::Ok)
    );
    assert_eq!(*hb_rx.borrow(), Duration::from_secs(7));

    // An expired command and one signed by an unknown key get no ack and change nothing.
    let (_, old) = command_at(Command::Sync {}, now_ms() - 120_000, now_ms() - 60_000);
    assert_eq!(commands::handle(&deps, old).await, None);
    // Acks are in the outbox: tokens.put, revoke x3, config.set x3.
    assert_eq!(
        count(&running, "SELECT COUNT(*) FROM outbox WHERE topic = 'ack'").await,
        7
    );
    running.shutdown(Duration::from_secs(5)).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lan_api_answers_codes_and_rate_limits_per_client() {
    let sim = sim(1).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(dir.path(), sim.tcp_addr().unwrap(), 1, None, "")
        .replace("rate_per_min = 100000", "rate_per_min = 4");
    let (running, _) = start_agent(&toml).await;
    let addr = running.lan_addr.unwrap();
    let t = token(lock_id(1), 1);
    let body = serde_json::json!({ "token": t.to_text() }).to_string();
    let (st, v) = http_post(addr, &body).await;
    assert_eq!((st, v["result"].as_str()), (200, Some("ok")));
    let (st, v) = http_post(addr, &body).await;
    assert_eq!((st, v["result"].as_str()), (403, Some("used_up")));
    let (st, v) = http_post(addr, r#"{"token":"87654321"}"#).await;
    assert_eq!((st, v["result"].as_str()), (403, Some("bad_format")));
    let (st, v) = http_post(addr, r#"{"token":"x"}"#).await;
    assert_eq!((st, v["result"].as_str()), (403, Some("bad_format")));
    // Fifth attempt within the minute: refused before the verifier.
    let t2 = token(lock_id(1), 1);
    let (st, v) = http_post(
        addr,
        &serde_json::json!({ "token": t2.to_text() }).to_string(),
    )
    .await;
    assert_eq!((st, v["result"].as_str()), (429, Some("rate_limited")));
    assert_eq!(actuations(&sim, 1), 1);

    // Status and metrics on the loopback listener.
    let mut s = tokio::net::TcpStream::connect(running.status_addr)
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(
        out.contains("dmr_agent_unlocks_total{result=\"ok\"} 1"),
        "{out}"
    );
    assert!(out.contains("dmr_agent_outbox_pending "), "{out}");
    // The poller's rounds, per bus, as the last and the longest.
    for name in ["last", "max"] {
        assert!(
            out.contains(&format!("# TYPE dmr_agent_poll_round_{name}_seconds gauge"))
                && out.contains(&format!(
                    "dmr_agent_poll_round_{name}_seconds{{bus=\"0\"}} "
                )),
            "{out}"
        );
    }
    running.shutdown(Duration::from_secs(5)).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scanner_lines_go_through_the_same_verifier() {
    let sim = sim(1).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(dir.path(), sim.tcp_addr().unwrap(), 1, None, "");
    let (running, _) = start_agent(&toml).await;
    let (mut tx, rx) = tokio::io::duplex(4096);
    let t = token(lock_id(1), 1);
    let unlocker = running.unlocker.clone();
    let sd = CancellationToken::new();
    let reader = tokio::spawn(async move {
        agent::scanner::scan_lines(rx, &unlocker, &sd)
            .await
            .unwrap()
    });
    let long = "9".repeat(2000);
    tx.write_all(format!("{}\r\n\n{long}\n{}\n", t.to_text(), t.to_text()).as_bytes())
        .await
        .unwrap();
    drop(tx);
    let presented = reader.await.unwrap();
    assert_eq!(presented, 2, "blank and overlong lines are not presented");
    assert_eq!(actuations(&sim, 1), 1);
    let results = unlock_results(&outbox(&running).await);
    assert_eq!(
        results.iter().map(|r| r.1).collect::<Vec<_>>(),
        vec![ResultCode::Accepted, ResultCode::Ok, ResultCode::UsedUp]
    );
    running.shutdown(Duration::from_secs(5)).await;
    sim.shutdown().await;
}

#[derive(Clone)]
struct SteppedClock(Arc<AtomicU64>);
impl WallClock for SteppedClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_stepping_back_does_not_revive_an_expired_token() {
    let sim = sim(1).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(dir.path(), sim.tcp_addr().unwrap(), 1, None, "");
    let cfg = agent::config::parse(&toml, []).unwrap();
    let wall = SteppedClock(Arc::new(AtomicU64::new(now_ms())));
    let bus = dmr_edge_agent::bus::spawn(dmr_edge_agent::bus::BusConfig::tcp(
        sim.tcp_addr().unwrap().to_string(),
    ))
    .await
    .unwrap();
    let running = agent::start(cfg, gw_key(), vec![Arc::new(bus)], wall.clone())
        .await
        .unwrap();
    // Valid two hours ago for one hour: expired now.
    let old = token_with(
        lock_id(1),
        1,
        now_s() - 7200,
        now_s() - 3600,
        CLOUD_KEY_ID,
        &cloud_key(),
    );
    // A verified cloud command anchors trusted time at now.
    let (hb, _r) = tokio::sync::watch::channel(Duration::from_secs(30));
    let deps = commands::CommandDeps {
        store: running.store.clone(),
        unlocker: running.unlocker.clone(),
        kick: Arc::new(tokio::sync::Notify::new()),
        heartbeat: hb,
        sync_now: Arc::new(tokio::sync::Notify::new()),
    };
    assert_eq!(
        commands::handle(&deps, command(Command::Sync {}).1).await,
        Some(ResultCode::Ok)
    );
    // The wall clock steps back into the token's window.
    wall.0.store((now_s() - 5400) * 1000, Ordering::SeqCst);
    let r = running
        .unlocker
        .present(&old.to_text(), Presenter::Scanner)
        .await;
    assert_eq!(r.result, ResultCode::Expired);
    assert_eq!(actuations(&sim, 1), 0);
    assert!(running.clock.now_ms() >= now_ms() - 1000);
    running.shutdown(Duration::from_secs(5)).await;

    // After a restart the persisted anchor still holds the floor.
    let cfg = agent::config::parse(&toml, []).unwrap();
    let bus = dmr_edge_agent::bus::spawn(dmr_edge_agent::bus::BusConfig::tcp(
        sim.tcp_addr().unwrap().to_string(),
    ))
    .await
    .unwrap();
    let running = agent::start(cfg, gw_key(), vec![Arc::new(bus)], wall.clone())
        .await
        .unwrap();
    let r = running
        .unlocker
        .present(&old.to_text(), Presenter::Scanner)
        .await;
    assert_eq!(r.result, ResultCode::Expired);
    assert_eq!(actuations(&sim, 1), 0);
    running.shutdown(Duration::from_secs(5)).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_the_unlock_and_the_latch_stays_shut() {
    // Simulated with SQLite's max_page_count (max_db_pages): no small tmpfs or loop device
    // is available to the tests.
    let sim = sim(1).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(
        dir.path(),
        sim.tcp_addr().unwrap(),
        1,
        None,
        "max_db_pages = 80",
    );
    let (running, _) = start_agent(&toml).await;
    // Fill the database until SQLite says it is full.
    let filled = running
        .store
        .call(|db| {
            // Fill with rows shaped like the ones an unlock writes (signed unlock events,
            // token uses) until SQLite reports the database full, so no page has room left
            // for another of them.
            let mut n = 0;
            let last = loop {
                let ev = Event::Unlock(dmr_protocol::message::UnlockEvent {
                    lock_id: lock_id(1),
                    token_id: Some(uuid::Uuid::now_v7()),
                    order_id: Some(uuid::Uuid::now_v7()),
                    result: ResultCode::Accepted,
                    via: Some(Presenter::Lan),
                    at: now_ms(),
                });
                match db.append_event(ev) {
                    Ok(_) => n += 1,
                    Err(e) => break e.to_string(),
                }
            };
            let last = loop {
                let id = uuid::Uuid::now_v7();
                if let Err(e) = db.conn().execute(
                    "INSERT INTO token_uses (token_id, lock_id, at_ms, via, event_id) VALUES (?1, ?1, 0, 'lan', ?2)",
                    rusqlite::params![&id.as_bytes()[..], id.to_string()],
                ) {
                    break format!("{last}; {e}");
                }
                n += 1;
            };
            (n, last)
        })
        .await
        .unwrap();
    assert!(filled.1.contains("full"), "{}", filled.1);
    let t = token(lock_id(1), 1);
    let r = running.unlocker.present(&t.to_text(), Presenter::Lan).await;
    assert_eq!(r.result, ResultCode::StorageError);
    assert_eq!(
        actuations(&sim, 1),
        0,
        "a use that cannot be recorded must not open"
    );
    let tid = t.claims().token_id;
    assert_eq!(
        running
            .store
            .call(move |db| db.uses_of(&tid))
            .await
            .unwrap(),
        0
    );
    running.shutdown(Duration::from_secs(5)).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_lock_goes_offline_while_the_others_keep_working() {
    let sim = sim(2).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(dir.path(), sim.tcp_addr().unwrap(), 2, None, "");
    let (running, _) = start_agent(&toml).await;
    let health = running.health.clone();
    wait_until_async(Duration::from_secs(10), "both locks polled", || {
        let h = health.clone();
        async move {
            let s = h.status(Default::default(), 0);
            s.locks.iter().all(|l| l.bus_link == "up")
        }
    })
    .await;
    sim.control()
        .set_lock_faults(
            2,
            dmr_firmware_sim::Faults {
                silent: true,
                ..Default::default()
            },
        )
        .unwrap();
    let store = running.store.clone();
    wait_until_async(Duration::from_secs(15), "lock_offline event", || {
        let store = store.clone();
        async move {
            store
                .call(|db| {
                    let mut s = db.conn().prepare("SELECT jws FROM outbox").unwrap();
                    let rows: Vec<String> = s
                        .query_map([], |r| r.get(0))
                        .unwrap()
                        .collect::<Result<_, _>>()
                        .unwrap();
                    rows
                })
                .await
                .unwrap()
                .iter()
                .map(|j| open_gw(j))
                .any(|e| {
                    matches!(&e.message, Message::Event(Event::Alarm(a))
                        if a.alarm == AlarmKind::LockOffline && a.lock_id == lock_id(2))
                })
        }
    })
    .await;
    let s = running.health.status(Default::default(), 0);
    let l2 = s.locks.iter().find(|l| l.lock_id == lock_id(2)).unwrap();
    let l1 = s.locks.iter().find(|l| l.lock_id == lock_id(1)).unwrap();
    assert_eq!((l1.bus_link, l2.bus_link), ("up", "down"));
    let r = running
        .unlocker
        .present(&token(lock_id(1), 1).to_text(), Presenter::Lan)
        .await;
    assert_eq!(r.result, ResultCode::Ok, "{}", r.detail);
    let r = running
        .unlocker
        .present(&token(lock_id(2), 1).to_text(), Presenter::Lan)
        .await;
    assert_eq!(r.result, ResultCode::LockUnreachable, "{}", r.detail);
    assert_eq!((actuations(&sim, 1), actuations(&sim, 2)), (1, 0));

    // It answers again: lock_online.
    sim.control()
        .set_lock_faults(2, dmr_firmware_sim::Faults::default())
        .unwrap();
    let health = running.health.clone();
    wait_until_async(Duration::from_secs(40), "lock 2 back online", || {
        let h = health.clone();
        async move {
            h.status(Default::default(), 0)
                .locks
                .iter()
                .all(|l| l.bus_link == "up")
        }
    })
    .await;
    let events = outbox(&running).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.message, Message::Event(Event::Alarm(a))
        if a.alarm == AlarmKind::LockOnline && a.lock_id == lock_id(2)))
    );
    running.shutdown(Duration::from_secs(5)).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn door_and_alarm_changes_become_events() {
    let sim = sim(1).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(dir.path(), sim.tcp_addr().unwrap(), 1, None, "");
    let (running, _) = start_agent(&toml).await;
    let health = running.health.clone();
    wait_until_async(Duration::from_secs(10), "first poll", || {
        let h = health.clone();
        async move { h.status(Default::default(), 0).locks[0].bus_link == "up" }
    })
    .await;
    // Opening the door while the latch is locked is a forced entry.
    sim.control().set_door(1, true).unwrap();
    sim.control()
        .set_alarm(1, dmr_firmware_sim::AlarmInput::Tamper, true)
        .unwrap();
    let r = &running;
    wait_until_async(Duration::from_secs(10), "door, forced_open and tamper events", || async move {
        let ev = outbox(r).await;
        let door = ev.iter().any(|e| matches!(&e.message, Message::Event(Event::Door(d)) if d.door == DoorChange::Opened));
        let forced = ev.iter().any(|e| matches!(&e.message, Message::Event(Event::Alarm(a)) if a.alarm == AlarmKind::ForcedOpen));
        let tamper = ev.iter().any(|e| matches!(&e.message, Message::Event(Event::Alarm(a)) if a.alarm == AlarmKind::Tamper));
        door && forced && tamper
    })
    .await;
    let s = running.health.status(Default::default(), 0);
    assert!(s.locks[0].lock_state.contains("tamper"), "{:?}", s.locks[0]);
    running.shutdown(Duration::from_secs(5)).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qr_scanner_on_a_real_tty_presents_each_line() {
    use std::io::{BufRead as _, Write as _};
    // A pty pair made by Python: the agent opens the slave as its scanner UART, the test
    // types token lines into the master like a scanner would.
    let mut py = std::process::Command::new("python3")
        .args([
            "-u",
            "-c",
            "import os,sys,tty\nm,s=os.openpty()\ntty.setraw(s)\nprint(os.ttyname(s),flush=True)\nfor line in sys.stdin:\n    os.write(m,line.encode())\n",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(py.stdout.take().unwrap());
    let mut slave = String::new();
    out.read_line(&mut slave).unwrap();
    let slave = slave.trim().to_string();
    let sim = sim(1).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(dir.path(), sim.tcp_addr().unwrap(), 1, None, "").replace(
        "[http]",
        &format!("[scanner]\nport = \"{slave}\"\nbaud = 9600\n\n[http]"),
    );
    let (running, _) = start_agent(&toml).await;
    let t = token(lock_id(1), 1);
    let mut stdin = py.stdin.take().unwrap();
    writeln!(stdin, "{}\r", t.to_text()).unwrap();
    stdin.flush().unwrap();
    let r = &running;
    wait_until_async(
        Duration::from_secs(10),
        "scanned token opens the lock",
        || async move { count(r, "SELECT COUNT(*) FROM token_uses").await == 1 },
    )
    .await;
    wait_until(Duration::from_secs(5), "latch moved", || {
        actuations(&sim, 1) == 1
    });
    // The same code scanned again is used up; the latch does not move again.
    writeln!(stdin, "{}", t.to_text()).unwrap();
    stdin.flush().unwrap();
    wait_until_async(Duration::from_secs(10), "used_up event", || async move {
        unlock_results(&outbox(r).await)
            .iter()
            .any(|(_, c)| *c == ResultCode::UsedUp)
    })
    .await;
    assert_eq!(actuations(&sim, 1), 1);
    running.shutdown(Duration::from_secs(5)).await;
    drop(stdin);
    let _ = py.kill();
    let _ = py.wait();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_one_token_presented_by_many_at_once_opens_once() {
    let sim = sim(1).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(dir.path(), sim.tcp_addr().unwrap(), 1, None, "");
    let (running, _) = start_agent(&toml).await;
    let rounds = 5;
    for _ in 0..rounds {
        let text = token(lock_id(1), 1).to_text();
        let mut presenters = Vec::new();
        for _ in 0..16 {
            let (u, t) = (running.unlocker.clone(), text.clone());
            presenters.push(tokio::spawn(async move {
                u.present(&t, Presenter::Lan).await.result
            }));
        }
        let mut results = Vec::new();
        for p in presenters {
            results.push(p.await.unwrap());
        }
        assert_eq!(
            results.iter().filter(|r| **r == ResultCode::Ok).count(),
            1,
            "{results:?}"
        );
        assert!(
            results
                .iter()
                .all(|r| matches!(r, ResultCode::Ok | ResultCode::UsedUp)),
            "{results:?}"
        );
    }
    let uses: i64 = running
        .store
        .call(|db| {
            db.conn()
                .query_row("SELECT COUNT(*) FROM token_uses", [], |r| r.get(0))
                .unwrap()
        })
        .await
        .unwrap();
    assert_eq!(uses, rounds);
    assert_eq!(unlock_count(&sim, 1), rounds as u32);
    running.shutdown(Duration::from_secs(5)).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_requests_waiting_together_share_one_commit_and_answer_after_it() {
    let sim = sim(1).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(dir.path(), sim.tcp_addr().unwrap(), 1, None, "");
    let (running, _) = start_agent(&toml).await;
    let store = running.store.clone();
    // Let the agent settle (its own first writes), then hold the store thread busy so the
    // next requests all queue up behind it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
    let busy = {
        let st = store.clone();
        tokio::spawn(async move {
            st.call(move |db| {
                gate_rx.recv().unwrap();
                db.group_stats()
            })
            .await
            .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let texts: Vec<String> = (0..20).map(|_| token(lock_id(1), 1).to_text()).collect();
    let mut waiting = Vec::new();
    for t in &texts {
        let st = store.clone();
        let p = agent::store::Presented::classify(t);
        waiting.push(tokio::spawn(
            async move { st.redeem(p, Presenter::Lan).await },
        ));
    }
    // Every redeem is queued behind the busy request.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(waiting.iter().all(|w| !w.is_finished()));
    gate_tx.send(()).unwrap();
    let (g0, r0) = busy.await.unwrap();
    for w in waiting {
        let r = w.await.unwrap();
        assert_eq!(r.code(), ResultCode::Accepted, "{r:?}");
    }
    let (g1, r1) = store.call(|db| db.group_stats()).await.unwrap();
    // The monitor may add a grouped event of its own, but 20 redeems queued together must
    // not take 20 commits.
    assert!(r1 - r0 >= 20, "{} grouped requests", r1 - r0);
    assert!(
        g1 - g0 <= 3,
        "{} commits for {} grouped requests",
        g1 - g0,
        r1 - r0
    );
    // Each redeem's use is on disk (a second connection sees all 20).
    let db = rusqlite::Connection::open(dir.path().join("agent.db")).unwrap();
    let uses: i64 = db
        .query_row("SELECT COUNT(*) FROM token_uses", [], |r| r.get(0))
        .unwrap();
    assert_eq!(uses, 20);
    running.shutdown(Duration::from_secs(5)).await;
    sim.shutdown().await;
}
