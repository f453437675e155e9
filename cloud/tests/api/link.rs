//! The gateway link over HTTP: enrollment, gateway request authentication, the events
//! drain (applied once), the signed sync pull, key rotation and encryption at rest, the
//! tenant-scoped live stream and alarms. Real Ed25519 keys throughout.

use crate::on_every_backend;

on_every_backend!(
    enrollment_happy_path_and_refusals,
    enrollment_reenrolls_a_named_gateway,
    enrollment_on_one_connection_reads_keys_outside_its_transaction,
    gateway_auth_failures_are_401_and_counted,
    events_are_applied_once_and_checked,
    heartbeats_and_states_move_forward_only,
    sync_is_signed_and_versioned,
    keys_rotate_with_overlap_and_stay_encrypted,
    live_stream_is_tenant_scoped,
    alarms_are_listed_per_tenant_and_acknowledged,
    gateway_bad_input_gets_the_error_body,
    overlapping_batches_race_and_apply_once,
    prune_job_removes_old_nonces_and_ids,
);

mod scenarios {
    use std::time::Duration;

    use dmr_cloud::link::ingest::{Outcome, RejectReason, Via};
    use dmr_protocol::jws::{self, Kid};
    use dmr_protocol::keys::{VerifyingKey, parse_public_b64u, public_b64u};
    use dmr_protocol::message::{
        AlarmEvent, AlarmKind, DoorChange, DoorEvent, Event, GatewayState, Message,
    };
    use reqwest::{Method, StatusCode};
    use serde_json::{Value, json};
    use uuid::Uuid;

    use crate::common::{DbKind, TestApp, error_code, seed_world};
    use crate::link_support::*;

    pub async fn enrollment_happy_path_and_refusals(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        let code = new_code(&app, &w.a.owner, &w.a.venue_id, None).await;
        let key = dmr_protocol::keys::generate();

        // A bad proof of possession is 422 and does not burn the code.
        let other = dmr_protocol::keys::generate();
        let (s, b) = enroll_raw(
            &app,
            json!({ "code": code, "public_key": public_b64u(&key.verifying_key()), "pop": pop(&code, &other) }),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        assert_eq!(b["error"]["details"]["field"], "pop");
        // A proof for another code does not transfer either.
        let (s, _) = enroll_raw(
            &app,
            json!({ "code": code, "public_key": public_b64u(&key.verifying_key()), "pop": pop("AAAAA-BBBBB", &key) }),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);

        // Lower case and without the dash works: codes are normalized.
        let typed = code.to_lowercase().replace('-', "");
        let gw = enroll_with(&app, &typed, key).await;
        let v = &gw.enrolled;
        assert_eq!(v["merchant_id"], w.a.merchant_id.as_str());
        assert_eq!(v["venue_id"], w.a.venue_id.as_str());
        assert_eq!(v["mqtt"]["username"], format!("gw:{}", gw.id));
        assert_eq!(v["mqtt"]["url"], "mqtt://127.0.0.1:1883");
        assert_eq!(v["config"]["heartbeat_interval_s"], 30);
        assert_eq!(v["config"]["token_skew_s"], 120);
        assert_eq!(v["locks"], json!([]));
        let trusted = v["trusted_keys"].as_array().unwrap();
        assert_eq!(trusted.len(), 1);
        assert_eq!(trusted[0]["key_id"], 1);
        assert!(trusted[0]["not_after_ms"].is_null());
        let signer = app.state.keys.signer().await.unwrap();
        assert_eq!(
            trusted[0]["public_key"].as_str().unwrap(),
            public_b64u(&signer.key.verifying_key())
        );
        // Only a hash of the MQTT password is stored, in the documented format.
        let password = v["mqtt"]["password"].as_str().unwrap();
        assert!(password.len() >= 43);
        let stored = scalar_text(
            &app,
            "SELECT mqtt_password_hash FROM gateways WHERE id = $1",
            &gw.id.to_string(),
        )
        .await
        .unwrap();
        assert_eq!(
            stored,
            dmr_cloud::link::enroll::mqtt_password_hash(password)
        );
        assert_ne!(stored, password);
        assert_eq!(stored.len(), 64);
        let (s, g) = app
            .get(&format!("/api/v1/gateways/{}", gw.id), &w.a.owner)
            .await;
        assert_eq!(s, StatusCode::OK, "{g}");
        assert_eq!(g["status"], "enrolled");
        assert_eq!(
            g["public_key"].as_str().unwrap(),
            public_b64u(&gw.key.verifying_key())
        );
        let (_, codes) = app.get("/api/v1/enrollment-codes", &w.a.owner).await;
        assert!(
            codes["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["used_by_gateway"] == gw.id.to_string().as_str()),
            "{codes}"
        );

        // The same code again: 403 with the one message for every bad code.
        let k2 = dmr_protocol::keys::generate();
        let (s, b) = enroll_raw(
            &app,
            json!({ "code": code, "public_key": public_b64u(&k2.verifying_key()), "pop": pop(&code, &k2) }),
        )
        .await;
        assert_eq!(
            (s, error_code(&b)),
            (StatusCode::FORBIDDEN, "enrollment_code_invalid")
        );
        let unknown_msg = b["error"]["message"].clone();
        // Expired.
        let expired = new_code(&app, &w.a.owner, &w.a.venue_id, None).await;
        sqlx::query("UPDATE enrollment_codes SET expires_at = 1 WHERE used_at IS NULL")
            .execute(&app.state.db.pool)
            .await
            .unwrap();
        let (s, b) = enroll_raw(
            &app,
            json!({ "code": expired, "public_key": public_b64u(&k2.verifying_key()), "pop": pop(&expired, &k2) }),
        )
        .await;
        assert_eq!(
            (s, error_code(&b)),
            (StatusCode::FORBIDDEN, "enrollment_code_invalid")
        );
        assert_eq!(b["error"]["message"], unknown_msg, "no oracle");
        // Unknown and revoked codes look the same.
        let (s, b) = enroll_raw(
            &app,
            json!({ "code": "ZZZZZ-ZZZZZ", "public_key": public_b64u(&k2.verifying_key()), "pop": pop("ZZZZZ-ZZZZZ", &k2) }),
        )
        .await;
        assert_eq!(
            (s, b["error"]["message"].clone()),
            (StatusCode::FORBIDDEN, unknown_msg.clone())
        );
        let (_, c) = app
            .post(
                "/api/v1/enrollment-codes",
                &w.a.owner,
                json!({ "venue_id": w.a.venue_id }),
            )
            .await;
        let (s, _) = app
            .delete(
                &format!("/api/v1/enrollment-codes/{}", c["id"].as_str().unwrap()),
                &w.a.owner,
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let revoked = c["code"].as_str().unwrap();
        let (s, _) = enroll_raw(
            &app,
            json!({ "code": revoked, "public_key": public_b64u(&k2.verifying_key()), "pop": pop(revoked, &k2) }),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        app.stop().await;
    }

    /// Enrollment with a cold key ring on a database of one connection: PostgreSQL with
    /// `max_connections = 1` (one pool for reads and writes) and, on SQLite, `:memory:` (one
    /// connection both ways). The key ring's reload inside the enrollment transaction used to
    /// ask that pool for a second connection and wait for itself until the 10 s acquire
    /// timeout (then 503); now the keys are read before the transaction.
    pub async fn enrollment_on_one_connection_reads_keys_outside_its_transaction(kind: &DbKind) {
        let one = |c: &mut dmr_cloud::config::Config| c.database.max_connections = 1;
        let app = match kind {
            DbKind::Sqlite => TestApp::spawn_on(kind, "sqlite::memory:", one).await,
            DbKind::Postgres(_) => TestApp::spawn_with(kind, one).await,
        };
        let w = seed_world(&app).await;
        for round in 0..2 {
            let code = new_code(&app, &w.a.owner, &w.a.venue_id, None).await;
            let key = dmr_protocol::keys::generate();
            // Cold cache: the next read of the trusted keys goes to the database.
            app.state.keys.invalidate();
            let started = std::time::Instant::now();
            let (s, b) = enroll_raw(
                &app,
                json!({ "code": code, "public_key": public_b64u(&key.verifying_key()),
                        "pop": pop(&code, &key) }),
            )
            .await;
            assert_eq!(s, StatusCode::CREATED, "round {round}: {b}");
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "round {round}: enrollment took {:?} (a nested acquire waits 10 s)",
                started.elapsed()
            );
            assert_eq!(b["trusted_keys"].as_array().map(Vec::len), Some(1), "{b}");
        }
        app.stop().await;
    }

    pub async fn enrollment_reenrolls_a_named_gateway(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        // A code naming tenant B's gateway is refused to tenant A.
        let (s, b) = app
            .post(
                "/api/v1/enrollment-codes",
                &w.a.owner,
                json!({ "venue_id": w.a.venue_id, "gateway_id": w.b.gateway_id }),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        assert_eq!(b["error"]["details"]["field"], "gateway_id");

        let first = enroll(&app, &w.a.owner, &w.a.venue_id, Some(&w.a.gateway_id)).await;
        assert_eq!(first.id.to_string(), w.a.gateway_id);
        let locks = first.enrolled["locks"].as_array().unwrap();
        assert_eq!(locks.len(), 1);
        assert_eq!(locks[0]["lock_id"], w.a.lock_id.as_str());
        assert_eq!(locks[0]["addr"], 1);
        let (s, _, _) = SignedReq::new(&first, Method::GET, "/api/v1/gateway/sync", vec![])
            .send(&app)
            .await;
        assert_eq!(s, StatusCode::OK);

        // Replacing the gateway's key: same id, same locks, the old key no longer works.
        let second = enroll(&app, &w.a.owner, &w.a.venue_id, Some(&w.a.gateway_id)).await;
        assert_eq!(second.id, first.id);
        assert_eq!(second.enrolled["locks"], first.enrolled["locks"]);
        let (s, _, body) = SignedReq::new(&first, Method::GET, "/api/v1/gateway/sync", vec![])
            .send(&app)
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
        let (s, _, _) = SignedReq::new(&second, Method::GET, "/api/v1/gateway/sync", vec![])
            .send(&app)
            .await;
        assert_eq!(s, StatusCode::OK);
        // Messages signed with the old key are refused by ingest too (its key cache is
        // refreshed on a signature failure).
        let (_, old) = signed(
            first.id,
            &first.key,
            now_ms(),
            Message::State(GatewayState { online: true }),
        );
        let out = app
            .state
            .ingest
            .submit(first.id, Via::Mqtt, &[&old])
            .await
            .unwrap();
        assert_eq!(out, vec![Outcome::Rejected(RejectReason::BadSignature)]);
        app.stop().await;
    }

    pub async fn gateway_auth_failures_are_401_and_counted(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        let gw = enroll(&app, &w.a.owner, &w.a.venue_id, None).await;
        let gw2 = enroll(&app, &w.b.owner, &w.b.venue_id, None).await;
        let m = &app.state.link_metrics;
        let path = "/api/v1/gateway/sync?config_version=0";

        let check = |s: StatusCode, body: &str, reason: &str| {
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{reason}: {body}");
            let v: Value = serde_json::from_str(body).unwrap();
            assert_eq!(error_code(&v), "gateway_auth_failed");
            assert_eq!(v["error"]["details"]["reason"], reason, "{body}");
        };

        let ok = SignedReq::new(&gw, Method::GET, path, vec![]);
        let (s, ct, _) = ok.send(&app).await;
        assert_eq!(
            (s, ct.as_deref()),
            (StatusCode::OK, Some("application/jose"))
        );
        // The same request again (same nonce): replayed.
        let (s, _, b) = ok.send(&app).await;
        check(s, &b, "replayed");
        assert_eq!(m.auth_failed_count("replayed"), 1);

        // Signed with a key that is not the gateway's (kid still names it).
        let stranger = dmr_protocol::keys::generate();
        let mut r = SignedReq::new(&gw, Method::GET, path, vec![]);
        r.key = &stranger;
        let (s, _, b) = r.send(&app).await;
        check(s, &b, "bad_signature");
        // Another enrolled gateway's key, claiming to be this one.
        let mut r = SignedReq::new(&gw, Method::GET, path, vec![]);
        r.key = &gw2.key;
        let (s, _, b) = r.send(&app).await;
        check(s, &b, "bad_signature");
        assert_eq!(m.auth_failed_count("bad_signature"), 2);
        // No header at all, or a bearer token.
        let resp = app.client.get(app.url_of(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let resp = app
            .client
            .get(app.url_of(path))
            .bearer_auth(&w.a.owner)
            .send()
            .await
            .unwrap();
        check(resp.status(), &resp.text().await.unwrap(), "bad_signature");

        // An id that is no enrolled gateway (a pending one, and a random one).
        let mut r = SignedReq::new(&gw, Method::GET, path, vec![]);
        let pending = Uuid::parse_str(&w.b.gateway_id).unwrap();
        r.gw = pending;
        let (s, _, b) = r.send(&app).await;
        check(s, &b, "unknown_gateway");
        r.gw = Uuid::new_v4();
        let (s, _, b) = r.send(&app).await;
        check(s, &b, "unknown_gateway");
        assert_eq!(m.auth_failed_count("unknown_gateway"), 2);

        // Stale: 301 s in the past or the future.
        for off in [-301_000, 301_000] {
            let mut r = SignedReq::new(&gw, Method::GET, path, vec![]);
            r.ts = now_ms() + off;
            let (s, _, b) = r.send(&app).await;
            check(s, &b, "stale");
        }
        assert_eq!(m.auth_failed_count("stale"), 2);

        // Path, method and body must be the signed ones.
        let mut r = SignedReq::new(&gw, Method::GET, path, vec![]);
        r.send_path = Some("/api/v1/gateway/sync?config_version=1".into());
        let (s, _, b) = r.send(&app).await;
        check(s, &b, "mismatch");
        let body = serde_json::to_vec(&json!({ "messages": [] })).unwrap();
        let mut r = SignedReq::new(&gw, Method::POST, "/api/v1/gateway/events", body);
        r.send_body = Some(serde_json::to_vec(&json!({ "messages": ["x"] })).unwrap());
        let (s, _, b) = r.send(&app).await;
        check(s, &b, "mismatch");
        let mut r = SignedReq::new(&gw, Method::GET, "/api/v1/gateway/events", vec![]);
        r.method = Method::POST;
        r.path = "/api/v1/gateway/sync".into();
        r.send_path = Some("/api/v1/gateway/events".into());
        let (s, _, b) = r.send(&app).await;
        check(s, &b, "mismatch");
        assert_eq!(m.auth_failed_count("mismatch"), 3);

        // A retired gateway is refused.
        sqlx::query("UPDATE gateways SET status = 'retired' WHERE id = $1")
            .bind(gw.id.to_string())
            .execute(&app.state.db.pool)
            .await
            .unwrap();
        let (s, _, b) = SignedReq::new(&gw, Method::GET, path, vec![])
            .send(&app)
            .await;
        check(s, &b, "unknown_gateway");

        let (_, metrics) = app.call(Method::GET, "/metrics", None, None).await;
        let text = metrics.as_str().unwrap();
        assert!(
            text.contains("dmr_link_gateway_auth_failed_total{reason=\"replayed\"} 1"),
            "{text}"
        );
        app.stop().await;
    }

    pub async fn events_are_applied_once_and_checked(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        let gw = enroll(&app, &w.a.owner, &w.a.venue_id, Some(&w.a.gateway_id)).await;
        let gw2 = enroll(&app, &w.b.owner, &w.b.venue_id, Some(&w.b.gateway_id)).await;
        let lock = Uuid::parse_str(&w.a.lock_id).unwrap();
        let t = now_ms();
        let door = |at: i64, change: DoorChange| {
            Message::Event(Event::Door(DoorEvent {
                lock_id: lock,
                door: change,
                at: u64::try_from(at).unwrap(),
            }))
        };
        let (id1, e1) = signed(gw.id, &gw.key, t, door(t, DoorChange::Opened));
        let (_, e2) = signed(gw.id, &gw.key, t + 1, door(t + 1, DoorChange::Closed));
        // The same message twice in one batch: applied, then duplicate.
        let (s, b) = post_events(&app, &gw, &[e1.clone(), e2.clone(), e1.clone()]).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let r = b["results"].as_array().unwrap();
        assert_eq!(r[0]["status"], "applied");
        assert_eq!(r[0]["id"], id1.to_string().as_str());
        assert_eq!(r[1]["status"], "applied");
        assert_eq!(r[2]["status"], "duplicate");
        // Again in a second call, and once more by "MQTT": duplicates.
        let (_, b) = post_events(&app, &gw, std::slice::from_ref(&e1)).await;
        assert_eq!(b["results"][0]["status"], "duplicate");
        let out = app
            .state
            .ingest
            .submit(gw.id, Via::Mqtt, &[&e1, &e2])
            .await
            .unwrap();
        assert_eq!(out, vec![Outcome::Duplicate, Outcome::Duplicate]);
        let n = scalar_int(
            &app,
            "SELECT COUNT(*) FROM gateway_events WHERE id = $1",
            &id1.to_string(),
        )
        .await
        .unwrap();
        assert_eq!(n, 1, "applied once");
        let door_closed = scalar_int(
            &app,
            "SELECT door_closed FROM locks WHERE id = $1",
            &w.a.lock_id,
        )
        .await;
        assert_eq!(door_closed, Some(1), "the newer door event wins");
        assert_eq!(app.state.link_metrics.duplicates_count(), 4);

        // Signed by another gateway (its own kid), or naming another gateway: rejected.
        let (_, foreign) = signed(gw2.id, &gw2.key, t, door(t + 5, DoorChange::Opened));
        let (_, forged) = signed(gw.id, &gw2.key, t, door(t + 5, DoorChange::Opened));
        let (s, b) = post_events(&app, &gw, &[foreign.clone(), forged, "garbage".into()]).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let r = b["results"].as_array().unwrap();
        assert!(r.iter().all(|x| x["status"] == "rejected"), "{b}");
        assert!(
            r[0]["error"].as_str().unwrap().starts_with("wrong_signer"),
            "{b}"
        );
        assert!(
            r[1]["error"].as_str().unwrap().starts_with("bad_signature"),
            "{b}"
        );
        assert!(
            r[2]["error"].as_str().unwrap().starts_with("malformed"),
            "{b}"
        );
        // Through "MQTT" on gateway 1's topic, the foreign message is refused too.
        let out = app
            .state
            .ingest
            .submit(gw.id, Via::Mqtt, &[&foreign])
            .await
            .unwrap();
        assert_eq!(out, vec![Outcome::Rejected(RejectReason::WrongSigner)]);
        // A message that names gateway 2 but is signed by gateway 1's key as gw 1.
        let env = dmr_protocol::message::Envelope::new(
            Uuid::new_v4(),
            gw2.id,
            u64::try_from(t).unwrap(),
            door(t + 9, DoorChange::Opened),
        );
        let naming_other = env.sign(Kid::Gateway(gw.id), &gw.key);
        let out = app
            .state
            .ingest
            .submit(gw.id, Via::Mqtt, &[&naming_other])
            .await
            .unwrap();
        assert_eq!(out, vec![Outcome::Rejected(RejectReason::WrongSigner)]);
        let m = &app.state.link_metrics;
        assert_eq!(m.rejected_count("wrong_signer"), 3);
        assert_eq!(m.rejected_count("bad_signature"), 1);
        assert_eq!(m.rejected_count("malformed"), 1);
        // None of them changed the door.
        assert_eq!(
            scalar_int(
                &app,
                "SELECT door_closed FROM locks WHERE id = $1",
                &w.a.lock_id
            )
            .await,
            Some(1)
        );
        let n = scalar_int(
            &app,
            "SELECT COUNT(*) FROM gateway_events WHERE gateway_id = $1",
            &gw.id.to_string(),
        )
        .await
        .unwrap();
        assert_eq!(n, 2);
        // Unknown gateway through MQTT.
        let out = app
            .state
            .ingest
            .submit(Uuid::new_v4(), Via::Mqtt, &[&e1])
            .await
            .unwrap();
        assert_eq!(out, vec![Outcome::Rejected(RejectReason::UnknownGateway)]);

        // A heartbeat cannot touch another gateway's lock.
        let (_, hb) = signed(
            gw.id,
            &gw.key,
            t,
            heartbeat(vec![lock_status(&w.b.lock_id, 1, true, true, "9.9.9")]),
        );
        let out = app
            .state
            .ingest
            .submit(gw.id, Via::Mqtt, &[&hb])
            .await
            .unwrap();
        assert_eq!(out, vec![Outcome::Applied]);
        assert_eq!(
            scalar_text(&app, "SELECT status FROM locks WHERE id = $1", &w.b.lock_id).await,
            Some("unknown".into())
        );
        let (_, metrics) = app.call(Method::GET, "/metrics", None, None).await;
        let text = metrics.as_str().unwrap();
        assert!(
            text.contains("dmr_link_messages_applied_total{type=\"event\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("dmr_link_duplicates_dropped_total 4"),
            "{text}"
        );
        assert!(
            text.contains("dmr_link_messages_rejected_total{reason=\"wrong_signer\"} 3"),
            "{text}"
        );
        app.stop().await;
    }

    pub async fn heartbeats_and_states_move_forward_only(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        let gw = enroll(&app, &w.a.owner, &w.a.venue_id, Some(&w.a.gateway_id)).await;
        let g = gw.id.to_string();
        let t = now_ms();
        let (_, hb_new) = signed(
            gw.id,
            &gw.key,
            t,
            heartbeat(vec![lock_status(&w.a.lock_id, 1, true, true, "1.2.3")]),
        );
        let (_, hb_old) = signed(
            gw.id,
            &gw.key,
            t - 10_000,
            heartbeat(vec![lock_status(&w.a.lock_id, 1, false, false, "1.0.0")]),
        );
        let (s, b) = post_events(&app, &gw, &[hb_new, hb_old]).await;
        assert_eq!(s, StatusCode::OK);
        assert!(
            b["results"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["status"] == "applied"),
            "{b}"
        );
        let (_, l) = app
            .get(&format!("/api/v1/locks/{}", w.a.lock_id), &w.a.owner)
            .await;
        assert_eq!(l["status"], "online", "{l}");
        assert_eq!(
            scalar_text(
                &app,
                "SELECT fw_version FROM locks WHERE id = $1",
                &w.a.lock_id
            )
            .await,
            Some("1.2.3".into())
        );
        assert_eq!(
            scalar_int(
                &app,
                "SELECT door_closed FROM locks WHERE id = $1",
                &w.a.lock_id
            )
            .await,
            Some(1)
        );
        assert_eq!(
            scalar_int(&app, "SELECT locked FROM locks WHERE id = $1", &w.a.lock_id).await,
            Some(1)
        );
        assert_eq!(
            scalar_int(
                &app,
                "SELECT last_heartbeat_at FROM locks WHERE id = $1",
                &w.a.lock_id
            )
            .await,
            Some(t)
        );
        assert_eq!(
            scalar_int(
                &app,
                "SELECT outbox_pending FROM gateways WHERE id = $1",
                &g
            )
            .await,
            Some(3)
        );
        assert_eq!(
            scalar_int(&app, "SELECT last_seen_at FROM gateways WHERE id = $1", &g).await,
            Some(t)
        );
        assert_eq!(
            scalar_int(&app, "SELECT online FROM gateways WHERE id = $1", &g).await,
            Some(1)
        );
        let (_, gv) = app.get(&format!("/api/v1/gateways/{g}"), &w.a.owner).await;
        assert_eq!(gv["online"], true, "{gv}");
        assert_eq!(gv["outbox_pending"], 3);
        assert_eq!(gv["agent_version"], "test");
        let (_, metrics) = app.call(Method::GET, "/metrics", None, None).await;
        let text = metrics.as_str().unwrap();
        assert!(text.contains("dmr_locks_online 1"), "{text}");
        assert!(text.contains("dmr_gateways_online 1"), "{text}");

        // State: the Will (signed at connect, older) still takes the gateway offline; an
        // old online replayed afterwards does not bring it back.
        let state = |online| Message::State(GatewayState { online });
        let (_, will) = signed(gw.id, &gw.key, t + 100, state(false));
        let (_, online) = signed(gw.id, &gw.key, t + 200, state(true));
        let (_, old_online) = signed(gw.id, &gw.key, t + 150, state(true));
        let ing = &app.state.ingest;
        assert_eq!(
            ing.submit(gw.id, Via::Mqtt, &[&online]).await.unwrap(),
            vec![Outcome::Applied]
        );
        assert_eq!(
            scalar_int(&app, "SELECT online FROM gateways WHERE id = $1", &g).await,
            Some(1)
        );
        ing.submit(gw.id, Via::Mqtt, &[&will]).await.unwrap();
        assert_eq!(
            scalar_int(&app, "SELECT online FROM gateways WHERE id = $1", &g).await,
            Some(0),
            "the Will wins"
        );
        ing.submit(gw.id, Via::Mqtt, &[&old_online]).await.unwrap();
        assert_eq!(
            scalar_int(&app, "SELECT online FROM gateways WHERE id = $1", &g).await,
            Some(0),
            "older online ignored"
        );
        // A newer session's online brings it back.
        let (_, online2) = signed(gw.id, &gw.key, t + 300, state(true));
        ing.submit(gw.id, Via::Mqtt, &[&online2]).await.unwrap();
        assert_eq!(
            scalar_int(&app, "SELECT online FROM gateways WHERE id = $1", &g).await,
            Some(1)
        );
        // lock_offline alarm sets the lock offline and raises an alarm; lock_online clears it.
        let lock = Uuid::parse_str(&w.a.lock_id).unwrap();
        let alarm = |k, at: i64| {
            Message::Event(Event::Alarm(AlarmEvent {
                lock_id: lock,
                alarm: k,
                detail: None,
                at: u64::try_from(at).unwrap(),
            }))
        };
        let (_, off) = signed(
            gw.id,
            &gw.key,
            t + 400,
            alarm(AlarmKind::LockOffline, t + 400),
        );
        ing.submit(gw.id, Via::Http, &[&off]).await.unwrap();
        let (_, l) = app
            .get(&format!("/api/v1/locks/{}", w.a.lock_id), &w.a.owner)
            .await;
        assert_eq!(l["status"], "offline");
        let (_, on) = signed(
            gw.id,
            &gw.key,
            t + 500,
            alarm(AlarmKind::LockOnline, t + 500),
        );
        ing.submit(gw.id, Via::Http, &[&on]).await.unwrap();
        let (_, l) = app
            .get(&format!("/api/v1/locks/{}", w.a.lock_id), &w.a.owner)
            .await;
        assert_eq!(l["status"], "online");
        let (_, a) = app
            .get("/api/v1/alarms?kind=lock_offline", &w.a.owner)
            .await;
        assert_eq!(a["total"], 1, "{a}");
        assert_eq!(a["items"][0]["cleared_at"], t + 500);
        app.stop().await;
    }

    fn verify_sync(body: &str, trusted: &[(u32, VerifyingKey)]) -> (Kid, Value) {
        let (kid, payload) = jws::verify(body, |k| match k {
            Kid::Cloud(id) => trusted.iter().find(|(i, _)| i == id).map(|(_, k)| k),
            Kid::Gateway(_) => None,
        })
        .unwrap();
        (kid, serde_json::from_slice(&payload).unwrap())
    }

    fn trusted_of(v: &Value) -> Vec<(u32, VerifyingKey)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    u32::try_from(k["key_id"].as_u64().unwrap()).unwrap(),
                    parse_public_b64u(k["public_key"].as_str().unwrap()).unwrap(),
                )
            })
            .collect()
    }

    pub async fn sync_is_signed_and_versioned(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        let gw = enroll(&app, &w.a.owner, &w.a.venue_id, Some(&w.a.gateway_id)).await;
        let trusted = trusted_of(&gw.enrolled["trusted_keys"]);
        let r = SignedReq::new(
            &gw,
            Method::GET,
            "/api/v1/gateway/sync?tokens_after=&revocations_version=0&config_version=0",
            vec![],
        );
        let before = now_ms();
        let (s, ct, body) = r.send(&app).await;
        assert_eq!(
            (s, ct.as_deref()),
            (StatusCode::OK, Some("application/jose")),
            "{body}"
        );
        let (kid, p) = verify_sync(&body, &trusted);
        assert_eq!(kid, Kid::Cloud(1));
        assert_eq!(p["v"], 1);
        assert_eq!(p["gw"], gw.id.to_string().as_str());
        assert_eq!(p["nonce"], r.nonce.as_str(), "nonce echoed");
        assert!(p["ts"].as_i64().unwrap() >= before);
        assert!(p["revocations"].is_null());
        assert!(p["config"].is_null());
        assert_eq!(p["tokens"]["put"], json!([]));
        assert_eq!(p["locks"][0]["lock_id"], w.a.lock_id.as_str());
        // A response tampered with does not verify.
        let tampered = format!("{}x", &body[..body.len() - 1]);
        assert!(jws::verify(&tampered, |_| Some(&trusted[0].1)).is_err());

        // Tokens by cursor, revocations only when newer.
        let g = gw.id.to_string();
        let mut conn = app.state.db.pool.acquire().await.unwrap();
        let far = now_ms() / 1000 + 3600;
        dmr_cloud::link::sync::queue_token(
            &mut conn,
            &g,
            &Uuid::new_v4().to_string(),
            "DMR1.one",
            far,
        )
        .await
        .unwrap();
        dmr_cloud::link::sync::queue_token(
            &mut conn,
            &g,
            &Uuid::new_v4().to_string(),
            "DMR1.two",
            far,
        )
        .await
        .unwrap();
        dmr_cloud::link::sync::queue_token(
            &mut conn,
            &g,
            &Uuid::new_v4().to_string(),
            "DMR1.expired",
            5,
        )
        .await
        .unwrap();
        let revoked = Uuid::new_v4().to_string();
        let v1 = dmr_cloud::link::sync::revoke_token(&mut conn, &g, &revoked, far)
            .await
            .unwrap();
        drop(conn);
        tokio::time::sleep(Duration::from_millis(
            dmr_cloud::link::sync::TOKEN_LAG_MS as u64 + 100,
        ))
        .await;
        let (_, _, body) = SignedReq::new(&gw, Method::GET, "/api/v1/gateway/sync", vec![])
            .send(&app)
            .await;
        let (_, p) = verify_sync(&body, &trusted);
        // Both live tokens, not the expired one (two queued in the same ms come in id order).
        let mut put: Vec<&str> = p["tokens"]["put"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        put.sort_unstable();
        assert_eq!(put, vec!["DMR1.one", "DMR1.two"]);
        assert_eq!(p["revocations"]["version"], v1);
        assert_eq!(p["revocations"]["token_ids"], json!([revoked]));
        let cursor = p["tokens"]["cursor"].as_str().unwrap().to_string();
        let path = format!("/api/v1/gateway/sync?tokens_after={cursor}&revocations_version={v1}");
        let (_, _, body) = SignedReq::new(&gw, Method::GET, &path, vec![])
            .send(&app)
            .await;
        let (_, p) = verify_sync(&body, &trusted);
        assert_eq!(p["tokens"]["put"], json!([]), "nothing after the cursor");
        assert_eq!(p["tokens"]["cursor"], cursor.as_str());
        assert!(p["revocations"].is_null(), "not newer than the caller's");
        let path = format!("/api/v1/gateway/sync?revocations_version={}", v1 - 1);
        let (_, _, body) = SignedReq::new(&gw, Method::GET, &path, vec![])
            .send(&app)
            .await;
        let (_, p) = verify_sync(&body, &trusted);
        assert_eq!(p["revocations"]["version"], v1);
        // Config when newer.
        sqlx::query("UPDATE gateways SET config_version = 2 WHERE id = $1")
            .bind(g.clone())
            .execute(&app.state.db.pool)
            .await
            .unwrap();
        let (_, _, body) = SignedReq::new(
            &gw,
            Method::GET,
            "/api/v1/gateway/sync?config_version=1",
            vec![],
        )
        .send(&app)
        .await;
        let (_, p) = verify_sync(&body, &trusted);
        assert_eq!(p["config"]["version"], 2);
        assert_eq!(p["config"]["heartbeat_interval_s"], 30);
        // Bad query values are 422 naming the parameter.
        let (s, _, body) = SignedReq::new(
            &gw,
            Method::GET,
            "/api/v1/gateway/sync?revocations_version=x",
            vec![],
        )
        .send(&app)
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body.contains("revocations_version"));
        let (s, _, _) = SignedReq::new(
            &gw,
            Method::GET,
            "/api/v1/gateway/sync?tokens_after=nope",
            vec![],
        )
        .send(&app)
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        app.stop().await;
    }

    pub async fn keys_rotate_with_overlap_and_stay_encrypted(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        let gw = enroll(&app, &w.a.owner, &w.a.venue_id, None).await;
        let old_trust = trusted_of(&gw.enrolled["trusted_keys"]);
        let keys = &app.state.keys;
        let first = keys.signer().await.unwrap();
        // Not stored in clear: neither the seed, its PEM, nor the seed's base64url.
        let enc: String =
            sqlx::query_scalar("SELECT private_key_enc FROM cloud_keys WHERE key_id = $1")
                .bind(1_i64)
                .fetch_one(&app.state.db.pool)
                .await
                .unwrap();
        let seed = first.key.to_bytes();
        assert!(!enc.contains(&dmr_protocol::b64::encode(seed)));
        assert!(!enc.contains("PRIVATE KEY"));
        let raw = dmr_protocol::b64::decode(&enc).unwrap();
        assert!(
            !raw.windows(32).any(|w| w == seed),
            "seed bytes appear in the stored column"
        );

        let new_id = keys.rotate(Duration::from_secs(3600)).await.unwrap();
        assert_eq!(new_id, 2);
        let signer = keys.signer().await.unwrap();
        assert_eq!(signer.key_id, 2);
        let trusted = keys.trusted().await.unwrap();
        assert_eq!(trusted.len(), 2, "{trusted:?}");
        let old = trusted.iter().find(|k| k.key_id == 1).unwrap();
        let overlap_end = old.not_after_ms.unwrap();
        assert!(overlap_end > now_ms() + 3_500_000);
        assert!(
            trusted
                .iter()
                .any(|k| k.key_id == 2 && k.not_after_ms.is_none())
        );
        // The sync answer is signed by key 2, verifiable by a gateway that only knew key 1?
        // No: the gateway must learn key 2, and learns it from an answer signed by key 2
        // only if it already trusts it; so during the overlap the answer lists both keys
        // and is signed by the active one, which the gateway got at enrollment or earlier
        // syncs. Here: the new key verifies it, the old trust does not.
        let (_, _, body) = SignedReq::new(&gw, Method::GET, "/api/v1/gateway/sync", vec![])
            .send(&app)
            .await;
        let (kid, p) = verify_sync(&body, &keys.trusted_verifying_keys().await.unwrap());
        assert_eq!(kid, Kid::Cloud(2));
        assert_eq!(p["trusted_keys"].as_array().unwrap().len(), 2);
        assert!(jws::verify(&body, |_| Some(&old_trust[0].1)).is_err());

        // After the overlap, key 1 is no longer trusted; rotating again retires it.
        sqlx::query("UPDATE cloud_keys SET retire_after = $1 WHERE key_id = 1")
            .bind(now_ms() - 1)
            .execute(&app.state.db.pool)
            .await
            .unwrap();
        keys.invalidate();
        let trusted = keys.trusted().await.unwrap();
        assert_eq!(
            trusted.iter().map(|k| k.key_id).collect::<Vec<_>>(),
            vec![2]
        );
        keys.rotate(Duration::from_secs(0)).await.unwrap();
        let list = keys.list().await.unwrap();
        let status: Vec<(i64, String)> =
            list.iter().map(|k| (k.key_id, k.status.clone())).collect();
        assert_eq!(
            status,
            vec![
                (3, "active".into()),
                (2, "retiring".into()),
                (1, "retired".into())
            ]
        );

        // A wrong master key stops the start-up with a message that says so.
        let url = app.url.clone();
        let mut config = crate::common::test_config(&url);
        config.keys.master_key = Some(dmr_cloud::config::Secret::new([2u8; 32]));
        let err = dmr_cloud::build_app(config).await.unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("DMR_MASTER_KEY"), "{text}");
        // And no master key at all is refused too.
        let mut config = crate::common::test_config(&url);
        config.keys.master_key = None;
        let err = dmr_cloud::build_app(config).await.unwrap_err();
        assert!(format!("{err:#}").contains("openssl rand -base64 32"));
        app.stop().await;
    }

    /// Reads SSE text from a streaming response until `pred` holds or `deadline` passes.
    async fn read_until(
        resp: &mut reqwest::Response,
        buf: &mut String,
        deadline: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> bool {
        let end = tokio::time::Instant::now() + deadline;
        while !pred(buf) {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            match tokio::time::timeout(left, resp.chunk()).await {
                Ok(Ok(Some(c))) => buf.push_str(&String::from_utf8_lossy(&c)),
                _ => return pred(buf),
            }
        }
        true
    }

    async fn open_live(app: &TestApp, token: &str, last: Option<&str>) -> reqwest::Response {
        let mut req = app
            .client
            .get(app.url_of("/api/v1/live"))
            .bearer_auth(token);
        if let Some(l) = last {
            req = req.header("last-event-id", l);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        resp
    }

    pub async fn live_stream_is_tenant_scoped(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        let gw_a = enroll(&app, &w.a.owner, &w.a.venue_id, Some(&w.a.gateway_id)).await;
        let gw_b = enroll(&app, &w.b.owner, &w.b.venue_id, Some(&w.b.gateway_id)).await;
        let mut a = open_live(&app, &w.a.staff, None).await;
        let mut b = open_live(&app, &w.b.owner, None).await;
        let mut admin = open_live(&app, &w.admin, None).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t = now_ms();
        let (_, hb) = signed(
            gw_a.id,
            &gw_a.key,
            t,
            heartbeat(vec![lock_status(&w.a.lock_id, 1, true, false, "2.0.0")]),
        );
        app.state
            .ingest
            .submit(gw_a.id, Via::Mqtt, &[&hb])
            .await
            .unwrap();
        let (mut ba, mut bb, mut bad) = (String::new(), String::new(), String::new());
        let lock_a = w.a.lock_id.clone();
        assert!(
            read_until(&mut a, &mut ba, Duration::from_secs(5), |s| s
                .contains(&lock_a))
            .await,
            "tenant A sees its lock change: {ba}"
        );
        assert!(ba.contains("event: lock"), "{ba}");
        assert!(ba.contains("\"status\":\"online\""), "{ba}");
        assert!(
            read_until(&mut admin, &mut bad, Duration::from_secs(5), |s| s
                .contains(&lock_a))
            .await,
            "the platform admin sees every tenant: {bad}"
        );
        // Tenant B's own change arrives; A's never does.
        let (_, hb) = signed(
            gw_b.id,
            &gw_b.key,
            t,
            heartbeat(vec![lock_status(&w.b.lock_id, 1, true, true, "2.0.0")]),
        );
        app.state
            .ingest
            .submit(gw_b.id, Via::Mqtt, &[&hb])
            .await
            .unwrap();
        let lock_b = w.b.lock_id.clone();
        assert!(
            read_until(&mut b, &mut bb, Duration::from_secs(5), |s| s
                .contains(&lock_b))
            .await,
            "{bb}"
        );
        read_until(&mut b, &mut bb, Duration::from_millis(1200), |_| false).await;
        assert!(!bb.contains(&lock_a), "tenant B saw tenant A's lock: {bb}");
        assert!(!bb.contains(&w.a.merchant_id), "{bb}");
        read_until(&mut a, &mut ba, Duration::from_millis(600), |_| false).await;
        assert!(!ba.contains(&lock_b), "tenant A saw tenant B's lock: {ba}");

        // Resuming with Last-Event-ID replays what came after it, not before.
        let first_id = ba
            .lines()
            .find_map(|l| l.strip_prefix("id: ").or_else(|| l.strip_prefix("id:")))
            .unwrap()
            .trim()
            .to_string();
        let door = Message::Event(Event::Door(DoorEvent {
            lock_id: Uuid::parse_str(&w.a.lock_id).unwrap(),
            door: DoorChange::Closed,
            at: u64::try_from(t + 50).unwrap(),
        }));
        let (_, ev) = signed(gw_a.id, &gw_a.key, t + 50, door);
        app.state
            .ingest
            .submit(gw_a.id, Via::Http, &[&ev])
            .await
            .unwrap();
        drop(a);
        let mut again = open_live(&app, &w.a.owner, Some(&first_id)).await;
        let mut buf = String::new();
        assert!(
            read_until(&mut again, &mut buf, Duration::from_secs(5), |s| s
                .contains("\"door_closed\":true"))
            .await,
            "{buf}"
        );
        assert!(
            !buf.contains(&format!("id: {first_id}")),
            "the resumed-from event is not resent: {buf}"
        );
        drop((b, admin, again));
        // A technician has device:read too; an anonymous caller gets 401.
        let (s, _) = app.call(Method::GET, "/api/v1/live", None, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        app.stop().await;
    }

    pub async fn alarms_are_listed_per_tenant_and_acknowledged(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        let gw = enroll(&app, &w.a.owner, &w.a.venue_id, Some(&w.a.gateway_id)).await;
        let lock = Uuid::parse_str(&w.a.lock_id).unwrap();
        let t = now_ms();
        let (_, m) = signed(
            gw.id,
            &gw.key,
            t,
            Message::Event(Event::Alarm(AlarmEvent {
                lock_id: lock,
                alarm: AlarmKind::ForcedOpen,
                detail: Some("door opened while locked".into()),
                at: u64::try_from(t).unwrap(),
            })),
        );
        let (_, b) = post_events(&app, &gw, &[m]).await;
        assert_eq!(b["results"][0]["status"], "applied", "{b}");
        let (s, list) = app.get("/api/v1/alarms?open=true", &w.a.staff).await;
        assert_eq!(s, StatusCode::OK, "{list}");
        let mine: Vec<&Value> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["kind"] == "forced_open")
            .collect();
        assert_eq!(mine.len(), 1, "{list}");
        assert_eq!(mine[0]["lock_id"], w.a.lock_id.as_str());
        assert_eq!(mine[0]["raised_at"], t);
        let id = mine[0]["id"].as_str().unwrap().to_string();
        let (_, other) = app.get("/api/v1/alarms", &w.b.owner).await;
        assert!(
            other["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|a| a["merchant_id"] == w.b.merchant_id.as_str()),
            "{other}"
        );
        // Tenant B cannot acknowledge it; A can, and it leaves the open list.
        let (s, _) = app
            .post(&format!("/api/v1/alarms/{id}/ack"), &w.b.owner, json!({}))
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, a) = app
            .post(&format!("/api/v1/alarms/{id}/ack"), &w.a.owner, json!({}))
            .await;
        assert_eq!(s, StatusCode::OK, "{a}");
        assert!(a["acked_at"].is_i64());
        let (_, list) = app
            .get("/api/v1/alarms?open=true&kind=forced_open", &w.a.owner)
            .await;
        assert_eq!(list["total"], 0);
        let (s, b) = app.get("/api/v1/alarms?open=maybe", &w.a.owner).await;
        assert_eq!(
            (s, b["error"]["details"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("open"))
        );
        app.stop().await;
    }

    pub async fn gateway_bad_input_gets_the_error_body(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        // Enrollment: garbage JSON 400, wrong types 422, unknown fields 422, oversize 413.
        let resp = app
            .client
            .post(app.url_of("/api/v1/gateway/enroll"))
            .header("content-type", "application/json")
            .body("{\"code\": ")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let b: Value = resp.json().await.unwrap();
        assert_eq!(error_code(&b), "malformed_json");
        let (s, b) = enroll_raw(&app, json!({ "code": 5, "public_key": "x", "pop": "y" })).await;
        assert_eq!(
            (s, b["error"]["details"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("code"))
        );
        let (s, b) = enroll_raw(
            &app,
            json!({ "code": "ABCDE-FGHJK", "public_key": "short", "pop": "y" }),
        )
        .await;
        assert_eq!(
            (s, b["error"]["details"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("public_key"))
        );
        let (s, b) = enroll_raw(
            &app,
            json!({ "code": "ABCDE-FGHJK", "public_key": "x", "pop": "y", "merchant_id": "m" }),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        let big = "x".repeat(2 << 20);
        // Its own client: the server closes a connection whose oversize body it did not
        // read, and a pooled connection reused afterwards would fail the next request.
        let resp = reqwest::Client::new()
            .post(app.url_of("/api/v1/gateway/enroll"))
            .header("content-type", "application/json")
            .body(format!("{{\"code\":\"{big}\"}}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let b: Value = resp.json().await.unwrap();
        assert_eq!(error_code(&b), "payload_too_large");

        // Events drain: garbage JSON, wrong types, too many messages, oversize.
        let gw = enroll(&app, &w.a.owner, &w.a.venue_id, None).await;
        let send =
            |body: Vec<u8>| SignedReq::new(&gw, Method::POST, "/api/v1/gateway/events", body);
        let (s, _, b) = send(b"{not json".to_vec()).send(&app).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
        assert!(b.contains("malformed_json"));
        let (s, _, b) = send(br#"{"messages": "one"}"#.to_vec()).send(&app).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        assert!(b.contains("messages"));
        let (s, _, b) = send(br#"{"messages": [1, 2]}"#.to_vec()).send(&app).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        let many = serde_json::to_vec(&json!({ "messages": vec!["x"; 501] })).unwrap();
        let (s, _, b) = send(many).send(&app).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        assert!(b.contains("at most 500"), "{b}");
        let huge = serde_json::to_vec(&json!({ "messages": [big] })).unwrap();
        let (s, _, b) = send(huge).send(&app).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{b}");
        assert!(b.contains("payload_too_large"));
        app.stop().await;
    }

    pub async fn overlapping_batches_race_and_apply_once(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        let gw = enroll(&app, &w.a.owner, &w.a.venue_id, Some(&w.a.gateway_id)).await;
        let lock = Uuid::parse_str(&w.a.lock_id).unwrap();
        let t = now_ms();
        let msgs: Vec<String> = (0..40)
            .map(|i| {
                let at = u64::try_from(t + i).unwrap();
                let m = if i % 2 == 0 {
                    heartbeat(vec![lock_status(
                        &w.a.lock_id,
                        1,
                        true,
                        i % 4 == 0,
                        "1.0.0",
                    )])
                } else {
                    Message::Event(Event::Door(DoorEvent {
                        lock_id: lock,
                        door: DoorChange::Opened,
                        at,
                    }))
                };
                signed(gw.id, &gw.key, t + i, m).1
            })
            .collect();
        let mut reversed = msgs.clone();
        reversed.reverse();
        // The same messages by "MQTT" and by HTTP at once, in opposite orders, three times.
        let mut tasks = Vec::new();
        for batch in [msgs.clone(), reversed.clone(), msgs.clone()] {
            let ingest = app.state.ingest.clone();
            let id = gw.id;
            tasks.push(tokio::spawn(async move {
                let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
                ingest.submit(id, Via::Mqtt, &refs).await
            }));
        }
        let (s, b) = post_events(&app, &gw, &reversed).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let mut applied = b["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["status"] == "applied")
            .count();
        for t in tasks {
            let out = t.await.unwrap().expect("no batch fails (no deadlock)");
            applied += out.iter().filter(|o| **o == Outcome::Applied).count();
        }
        assert_eq!(
            applied, 40,
            "every message applied exactly once across the racing batches"
        );
        let n = scalar_int(
            &app,
            "SELECT COUNT(*) FROM gateway_events WHERE gateway_id = $1",
            &gw.id.to_string(),
        )
        .await
        .unwrap();
        assert_eq!(n, 20);
        assert_eq!(
            scalar_int(
                &app,
                "SELECT last_heartbeat_at FROM locks WHERE id = $1",
                &w.a.lock_id
            )
            .await,
            Some(t + 38),
            "the newest heartbeat is the one that stays"
        );
        app.stop().await;
    }

    pub async fn prune_job_removes_old_nonces_and_ids(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        let gw = enroll(&app, &w.a.owner, &w.a.venue_id, None).await;
        let r = SignedReq::new(&gw, Method::GET, "/api/v1/gateway/sync", vec![]);
        assert_eq!(r.send(&app).await.0, StatusCode::OK);
        let (_, m) = signed(
            gw.id,
            &gw.key,
            now_ms(),
            Message::State(GatewayState { online: true }),
        );
        app.state
            .ingest
            .submit(gw.id, Via::Mqtt, &[&m])
            .await
            .unwrap();
        let count = |sql: &'static str| {
            let pool = app.state.db.pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>(sql)
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            }
        };
        // Within the windows nothing goes.
        let p = dmr_cloud::link::gwauth::prune_once(&app.state, now_ms())
            .await
            .unwrap();
        assert_eq!((p.nonces, p.messages), (0, 0));
        assert_eq!(count("SELECT COUNT(*) FROM gateway_nonces").await, 1);
        // Eleven minutes later the nonce is gone (the request is stale by then anyway);
        // message ids stay for 30 days.
        let later = now_ms() + 11 * 60_000;
        let p = dmr_cloud::link::gwauth::prune_once(&app.state, later)
            .await
            .unwrap();
        assert_eq!(p.nonces, 1);
        assert_eq!(p.messages, 0);
        assert_eq!(count("SELECT COUNT(*) FROM gateway_messages").await, 1);
        let p = dmr_cloud::link::gwauth::prune_once(&app.state, now_ms() + 31 * 86_400_000)
            .await
            .unwrap();
        assert_eq!(p.messages, 1);
        assert!(p.live_changes >= 1);
        app.stop().await;
    }
}
