//! MQTT credentials and ACLs against the database: the EMQX HTTP hooks, and the embedded
//! broker with real rumqttc clients. Enrollment itself is another module's; here a
//! gateway is "enrolled" by writing what enrollment writes (status and password hash).

use crate::on_every_backend;

on_every_backend!(
    hooks_authenticate_against_the_database,
    hooks_authorize_with_the_gateway_policy,
    hooks_are_off_without_a_secret,
    embedded_broker_enforces_credentials_and_acl,
    embedded_broker_acks_a_gateway_event_only_once_the_cloud_applied_it,
);

mod scenarios {
    use std::time::Duration;

    use dmr_cloud::broker::auth::mqtt_password_hash;
    use reqwest::StatusCode;
    use rumqttc::{
        AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Packet,
        QoS, SubscribeReasonCode,
    };
    use serde_json::{Value, json};
    use tokio::sync::mpsc;

    use crate::common::{DbKind, TestApp, error_code, seed_world};

    const HOOK_SECRET: &str = "hook-secret-for-tests-0123";
    const CLOUD_PASSWORD: &str = "cloud-password-for-tests";

    async fn app_with_hooks(kind: &DbKind) -> TestApp {
        TestApp::spawn_with(kind, |c| {
            c.mqtt.hook_secret = Some(dmr_cloud::config::Secret::new(HOOK_SECRET.into()));
            c.mqtt.password = Some(dmr_cloud::config::Secret::new(CLOUD_PASSWORD.into()));
        })
        .await
    }

    /// What enrollment does to a gateway row, as far as the broker cares.
    async fn enroll(app: &TestApp, gateway: &str, password: &str) {
        sqlx::query(
            "UPDATE gateways SET status = 'enrolled', mqtt_password_hash = $1, enrolled_at = $2 \
             WHERE id = $3",
        )
        .bind(mqtt_password_hash(password))
        .bind(1_i64)
        .bind(gateway.to_string())
        .execute(&app.state.db.pool)
        .await
        .unwrap();
    }

    async fn set(app: &TestApp, gateway: &str, sql_set: &str) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE gateways SET {sql_set} WHERE id = $1"
        )))
        .bind(gateway.to_string())
        .execute(&app.state.db.pool)
        .await
        .unwrap();
    }

    async fn hook(
        app: &TestApp,
        path: &str,
        secret: Option<&str>,
        body: Value,
    ) -> (StatusCode, Value) {
        let mut req = app.client.post(app.url_of(path)).json(&body);
        if let Some(s) = secret {
            req = req.header("X-DMR-Hook-Secret", s);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap())
    }

    async fn login(app: &TestApp, username: &str, password: &str) -> Value {
        let (s, b) = hook(
            app,
            "/api/v1/broker/auth",
            Some(HOOK_SECRET),
            json!({ "clientid": "c", "username": username, "password": password, "peerhost": "10.0.0.9" }),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        b
    }

    fn allow(superuser: bool) -> Value {
        json!({ "result": "allow", "is_superuser": superuser })
    }

    fn deny() -> Value {
        json!({ "result": "deny", "is_superuser": false })
    }

    pub async fn hooks_authenticate_against_the_database(kind: &DbKind) {
        let app = app_with_hooks(kind).await;
        let w = seed_world(&app).await;
        let a = w.a.gateway_id.clone();
        let b = w.b.gateway_id.clone();
        let user_a = format!("gw:{a}");

        // The secret is checked first.
        let body = json!({ "username": "dmr-cloud", "password": CLOUD_PASSWORD });
        for secret in [None, Some("wrong"), Some("")] {
            let (s, e) = hook(&app, "/api/v1/broker/auth", secret, body.clone()).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{secret:?}");
            assert_eq!(error_code(&e), "unauthorized");
        }

        assert_eq!(login(&app, "dmr-cloud", CLOUD_PASSWORD).await, allow(true));
        assert_eq!(login(&app, "dmr-cloud", "nope").await, deny());
        // Pending (never enrolled) gateways have no password at all.
        assert_eq!(login(&app, &user_a, "").await, deny());
        assert_eq!(login(&app, &user_a, "anything").await, deny());

        enroll(&app, &a, "first-password").await;
        enroll(&app, &b, "b-password").await;
        assert_eq!(login(&app, &user_a, "first-password").await, allow(false));
        assert_eq!(
            login(&app, &user_a, "b-password").await,
            deny(),
            "another gateway's password"
        );
        assert_eq!(
            login(&app, &format!("gw:{b}"), "first-password").await,
            deny()
        );
        assert_eq!(
            login(&app, &user_a.to_uppercase(), "first-password").await,
            deny()
        );
        assert_eq!(
            login(
                &app,
                &format!("gw:{}", uuid::Uuid::new_v4()),
                "first-password"
            )
            .await,
            deny()
        );
        assert_eq!(login(&app, "admin", "first-password").await, deny());

        // Re-enrollment replaces the password: the old one is refused at once.
        enroll(&app, &a, "second-password").await;
        assert_eq!(login(&app, &user_a, "first-password").await, deny());
        assert_eq!(login(&app, &user_a, "second-password").await, allow(false));

        // Retired and deleted gateways are locked out even with the right password.
        set(&app, &a, "status = 'retired'").await;
        assert_eq!(login(&app, &user_a, "second-password").await, deny());
        set(&app, &b, "deleted_at = 5").await;
        assert_eq!(login(&app, &format!("gw:{b}"), "b-password").await, deny());

        // Missing fields are a denial, wrong types a 422, garbage a 400.
        let (s, v) = hook(&app, "/api/v1/broker/auth", Some(HOOK_SECRET), json!({})).await;
        assert_eq!((s, v), (StatusCode::OK, deny()));
        let (s, e) = hook(
            &app,
            "/api/v1/broker/auth",
            Some(HOOK_SECRET),
            json!({ "username": 5 }),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
        assert_eq!(error_code(&e), "validation_failed");
        let resp = app
            .client
            .post(app.url_of("/api/v1/broker/auth"))
            .header("X-DMR-Hook-Secret", HOOK_SECRET)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

        let metrics = app.metrics().await;
        assert!(
            metrics.contains("dmr_broker_hook_auth_total{result=\"allow\"} 3"),
            "{metrics}"
        );
        assert!(
            metrics.contains("dmr_broker_hook_bad_secret_total 3"),
            "{metrics}"
        );
        app.stop().await;
    }

    async fn acl(app: &TestApp, username: &str, action: &str, topic: &str) -> String {
        let (s, b) = hook(
            app,
            "/api/v1/broker/acl",
            Some(HOOK_SECRET),
            json!({ "clientid": "c", "username": username, "topic": topic, "action": action }),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        b["result"].as_str().unwrap().to_string()
    }

    pub async fn hooks_authorize_with_the_gateway_policy(kind: &DbKind) {
        let app = app_with_hooks(kind).await;
        let a = uuid::Uuid::new_v4();
        let b = uuid::Uuid::new_v4();
        let me = format!("gw:{a}");
        for leaf in ["state", "heartbeat", "event", "ack"] {
            assert_eq!(
                acl(&app, &me, "publish", &format!("dmr/v1/gw/{a}/{leaf}")).await,
                "allow"
            );
            assert_eq!(
                acl(&app, &me, "publish", &format!("dmr/v1/gw/{b}/{leaf}")).await,
                "deny"
            );
        }
        assert_eq!(
            acl(&app, &me, "publish", &format!("dmr/v1/gw/{a}/cmd")).await,
            "deny"
        );
        assert_eq!(
            acl(&app, &me, "subscribe", &format!("dmr/v1/gw/{a}/cmd")).await,
            "allow"
        );
        assert_eq!(
            acl(&app, &me, "subscribe", &format!("dmr/v1/gw/{b}/cmd")).await,
            "deny"
        );
        assert_eq!(acl(&app, &me, "subscribe", "dmr/v1/gw/+/cmd").await, "deny");
        assert_eq!(acl(&app, &me, "subscribe", "#").await, "deny");
        assert_eq!(
            acl(
                &app,
                "dmr-cloud",
                "subscribe",
                "$share/dmr-cloud/dmr/v1/gw/+/event"
            )
            .await,
            "allow"
        );
        assert_eq!(
            acl(&app, "dmr-cloud", "publish", &format!("dmr/v1/gw/{a}/cmd")).await,
            "allow"
        );
        assert_eq!(
            acl(&app, "stranger", "publish", &format!("dmr/v1/gw/{a}/state")).await,
            "deny"
        );

        let (s, e) = hook(
            &app,
            "/api/v1/broker/acl",
            Some(HOOK_SECRET),
            json!({ "username": me, "topic": "t", "action": "all" }),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e["error"]["details"]["field"], "action");
        let (s, e) = hook(
            &app,
            "/api/v1/broker/acl",
            Some(HOOK_SECRET),
            json!({ "username": me }),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
        app.stop().await;
    }

    pub async fn hooks_are_off_without_a_secret(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        for path in ["/api/v1/broker/auth", "/api/v1/broker/acl"] {
            let (s, e) = hook(&app, path, Some(""), json!({})).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED);
            assert!(
                e["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("mqtt.hook_secret"),
                "says how to turn them on: {e}"
            );
        }
        // The cloud's MQTT password was generated once and is kept for the next start.
        let generated = app.state.broker.auth.cloud_password().expose().clone();
        assert!(generated.len() >= 32);
        let url = app.url.clone();
        let dir = app.stop().await;
        let again = TestApp::spawn_on(kind, &url, |_| {}).await;
        assert_eq!(
            again.state.broker.auth.cloud_password().expose(),
            &generated
        );
        again.stop().await;
        drop(dir);
    }

    struct Client {
        client: AsyncClient,
        events: mpsc::UnboundedReceiver<Result<Event, String>>,
    }

    async fn mqtt(
        addr: std::net::SocketAddr,
        id: &str,
        user: &str,
        pass: &str,
    ) -> Result<Client, ConnectionError> {
        let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_credentials(user, pass);
        let (client, mut el) = AsyncClient::new(o, 100);
        loop {
            match tokio::time::timeout(Duration::from_secs(5), el.poll())
                .await
                .unwrap()
            {
                Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(drive(el, tx));
        Ok(Client { client, events })
    }

    async fn drive(mut el: EventLoop, tx: mpsc::UnboundedSender<Result<Event, String>>) {
        loop {
            let ev = el.poll().await;
            let end = ev.is_err();
            if tx.send(ev.map_err(|e| e.to_string())).is_err() || end {
                return;
            }
        }
    }

    impl Client {
        async fn next(&mut self) -> Result<Event, String> {
            tokio::time::timeout(Duration::from_secs(5), self.events.recv())
                .await
                .expect("an event within 5 s")
                .expect("event loop alive")
        }

        async fn subscribe(&mut self, filter: &str) -> Vec<SubscribeReasonCode> {
            self.client
                .subscribe(filter, QoS::AtLeastOnce)
                .await
                .unwrap();
            loop {
                if let Event::Incoming(Packet::SubAck(a)) = self.next().await.unwrap() {
                    return a.return_codes;
                }
            }
        }

        async fn publish_within(&mut self, wait: Duration) -> Option<rumqttc::Publish> {
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let ev = tokio::time::timeout_at(deadline, self.events.recv())
                    .await
                    .ok()??;
                if let Ok(Event::Incoming(Packet::Publish(p))) = ev {
                    return Some(p);
                }
            }
        }
    }

    fn refused(r: Result<Client, ConnectionError>) -> ConnectReturnCode {
        match r {
            Err(ConnectionError::ConnectionRefused(code)) => code,
            Err(e) => panic!("expected a CONNACK refusal, got {e}"),
            Ok(_) => panic!("expected a refusal, got connected"),
        }
    }

    pub async fn embedded_broker_enforces_credentials_and_acl(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let broker = dmr_cloud::broker::start_embedded(&app.state)
            .await
            .unwrap()
            .expect("enabled by default");
        let addr = broker.local_addr();
        let w = seed_world(&app).await;
        let (a, b) = (w.a.gateway_id.clone(), w.b.gateway_id.clone());
        enroll(&app, &a, "pw-a").await;
        enroll(&app, &b, "pw-b").await;

        let cloud_pw = app.state.broker.auth.cloud_password().expose().clone();
        let mut cloud = mqtt(addr, "dmr-cloud-1", "dmr-cloud", &cloud_pw)
            .await
            .unwrap();
        assert_eq!(
            cloud.subscribe("$share/dmr-cloud/dmr/v1/gw/+/state").await,
            vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );
        assert_eq!(
            refused(mqtt(addr, "x", "dmr-cloud", "guess").await),
            ConnectReturnCode::BadUserNamePassword
        );
        assert_eq!(
            refused(mqtt(addr, "x", &format!("gw:{a}"), "pw-b").await),
            ConnectReturnCode::BadUserNamePassword
        );
        assert_eq!(
            refused(mqtt(addr, "x", "someone", "pw-a").await),
            ConnectReturnCode::NotAuthorized
        );

        let mut gw_a = mqtt(addr, "agent-a", &format!("gw:{a}"), "pw-a")
            .await
            .unwrap();
        assert_eq!(
            gw_a.subscribe(&format!("dmr/v1/gw/{b}/cmd")).await,
            vec![SubscribeReasonCode::Failure]
        );
        assert_eq!(
            gw_a.subscribe(&format!("dmr/v1/gw/{a}/cmd")).await,
            vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );
        gw_a.client
            .publish(
                format!("dmr/v1/gw/{a}/state"),
                QoS::AtLeastOnce,
                true,
                "online",
            )
            .await
            .unwrap();
        let p = cloud
            .publish_within(Duration::from_secs(5))
            .await
            .expect("state reaches the cloud");
        assert_eq!(p.topic, format!("dmr/v1/gw/{a}/state"));
        cloud
            .client
            .publish(
                format!("dmr/v1/gw/{a}/cmd"),
                QoS::AtLeastOnce,
                false,
                "unlock",
            )
            .await
            .unwrap();
        let p = gw_a
            .publish_within(Duration::from_secs(5))
            .await
            .expect("command reaches the gateway");
        assert_eq!(&p.payload[..], b"unlock");

        // Forging another gateway's state ends the connection; nothing reaches the cloud.
        gw_a.client
            .publish(
                format!("dmr/v1/gw/{b}/state"),
                QoS::AtLeastOnce,
                true,
                "forged",
            )
            .await
            .unwrap();
        loop {
            if gw_a.next().await.is_err() {
                break;
            }
        }
        assert!(
            cloud
                .publish_within(Duration::from_millis(300))
                .await
                .is_none()
        );
        let st = broker.stats().snapshot();
        assert_eq!((st.publishes_denied, st.subscriptions_denied), (1, 1));

        // Re-enrollment: once enrollment tells the cache, the old password is refused.
        enroll(&app, &a, "pw-a2").await;
        app.state
            .broker
            .auth
            .forget(uuid::Uuid::parse_str(&a).unwrap());
        assert_eq!(
            refused(mqtt(addr, "agent-a", &format!("gw:{a}"), "pw-a").await),
            ConnectReturnCode::BadUserNamePassword
        );
        mqtt(addr, "agent-a", &format!("gw:{a}"), "pw-a2")
            .await
            .unwrap();
        // Retired: refused as not authorised, whatever the password.
        set(&app, &b, "status = 'retired'").await;
        app.state
            .broker
            .auth
            .forget(uuid::Uuid::parse_str(&b).unwrap());
        assert_eq!(
            refused(mqtt(addr, "agent-b", &format!("gw:{b}"), "pw-b").await),
            ConnectReturnCode::NotAuthorized
        );

        let metrics = app.metrics().await;
        assert!(
            metrics.contains("dmr_mqtt_events_total{kind=\"publish_denied\"} 1"),
            "{metrics}"
        );
        broker.shutdown().await;
        app.stop().await;
    }
    /// Promise 2 through the embedded broker: an agent deletes an outbox row once it is
    /// PUBACKed, and broker and bridge live in one process, so the PUBACK must mean "applied".
    /// With nobody to take the event (no bridge yet) the connection is closed unacknowledged;
    /// with the bridge up the PUBACK comes only once the event is in the database.
    pub async fn embedded_broker_acks_a_gateway_event_only_once_the_cloud_applied_it(
        kind: &DbKind,
    ) {
        use crate::link_support::{enroll as enroll_gateway, now_ms, signed};
        use dmr_protocol::message::{DoorChange, DoorEvent, Event as GwEvent, Message};

        let host = TestApp::spawn(kind).await;
        let broker = dmr_cloud::broker::start_embedded(&host.state)
            .await
            .unwrap()
            .expect("enabled by default");
        let addr = broker.local_addr();
        let w = seed_world(&host).await;
        let gw = enroll_gateway(&host, &w.a.owner, &w.a.venue_id, Some(&w.a.gateway_id)).await;
        let user = format!("gw:{}", gw.id);
        let password = gw.enrolled["mqtt"]["password"]
            .as_str()
            .unwrap()
            .to_string();
        let topic = format!("dmr/v1/gw/{}/event", gw.id);
        let t = now_ms();
        let (id, event) = signed(
            gw.id,
            &gw.key,
            t,
            Message::Event(GwEvent::Door(DoorEvent {
                lock_id: uuid::Uuid::parse_str(&w.a.lock_id).unwrap(),
                door: DoorChange::Opened,
                at: u64::try_from(t).unwrap(),
            })),
        );
        let applied = || async {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM gateway_messages WHERE id = $1")
                .bind(id.to_string())
                .fetch_one(&host.state.db.pool)
                .await
                .unwrap()
        };
        // Publishes the event on a fresh connection: Some(true) when PUBACKed, Some(false)
        // when the broker closed the connection first.
        let attempt = || async {
            let mut g = mqtt(addr, "agent-a", &user, &password).await.unwrap();
            g.client
                .publish(&topic, QoS::AtLeastOnce, false, event.clone())
                .await
                .unwrap();
            loop {
                match g.next().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        };

        // No bridge subscribed yet: nobody has taken the event, so no PUBACK.
        assert!(!attempt().await, "PUBACKed with nobody to take it");
        assert_eq!(applied().await, 0);
        assert_eq!(broker.stats().snapshot().undelivered_disconnects, 1);
        let metrics = host.metrics().await;
        assert!(
            metrics.contains("dmr_mqtt_events_total{kind=\"undelivered_disconnect\"} 1"),
            "{metrics}"
        );

        // The bridge of another instance on the same database (a restarted cloud, say).
        let ext = TestApp::spawn_bridged_to(kind, &host.url, addr).await;
        let (stop, rx) = tokio::sync::watch::channel(false);
        let (bridge, liveness) = dmr_cloud::app::spawn_link(&ext.state, "ack-test", &rx);
        // The agent's way: publish again after each closed connection (the bridge may not
        // have subscribed yet), until PUBACKed.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if attempt().await {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never PUBACKed with the bridge up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            applied().await,
            1,
            "PUBACKed before the cloud had the event in its database"
        );

        let _ = stop.send(true);
        for t in [bridge, liveness].into_iter().flatten() {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
        broker.shutdown().await;
        ext.stop().await;
        host.stop().await;
    }
}
