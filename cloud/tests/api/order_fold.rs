//! The payment notification's one transaction (issue 6, flowpay): a first notification for a
//! waiting order moves it `created` → `paid` → `unlocking` and records the `cmd unlock` row
//! in the same transaction, and the command is published only after that commit. A crash
//! between the commit and the publish (the command recorded, never sent) is covered by the
//! unlock timeout. Also: a concurrent double tap on create answers one order.

use crate::on_every_backend;

on_every_backend!(
    crash_between_commit_and_publish_is_covered_by_the_unlock_timeout,
    concurrent_double_tap_creates_one_order,
    unsigned_payment_stops_at_paid_and_the_stuck_paid_job_dispatches,
);

mod scenarios {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use dmr_cloud::db::{Db, now_ms};
    use dmr_cloud::link::commands::{CommandMeta, Commands};
    use dmr_cloud::orders::dispatch::{DispatchFut, PreparedCommand, UnlockDispatcher};
    use dmr_cloud::orders::jobs::run_once;
    use dmr_protocol::token::{TokenClaims, UnlockToken};
    use reqwest::StatusCode;
    use uuid::Uuid;

    use crate::common::{DbKind, TestApp, seed_world};
    use crate::order_fixtures::unlock_times_out;
    use crate::orders::support::*;

    /// Prepares real commands (the link's `Commands`), then "dies" at publish: it looks at
    /// what another connection sees of the command row at that moment and publishes nothing.
    #[derive(Debug)]
    struct DiesBeforePublish {
        key: ed25519_dalek::SigningKey,
        commands: Arc<Commands>,
        db: Db,
        /// (command id, its row's status as seen from another connection at publish time).
        published: Mutex<Vec<(Uuid, Option<String>)>>,
        sends: Mutex<usize>,
        /// While set, signing fails (the key ring unavailable, say).
        sign_fails: std::sync::atomic::AtomicBool,
    }

    impl DiesBeforePublish {
        fn new(app: &TestApp) -> Arc<DiesBeforePublish> {
            Arc::new(DiesBeforePublish {
                key: ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]),
                commands: app.state.commands.clone(),
                db: app.state.db.clone(),
                published: Mutex::new(Vec::new()),
                sends: Mutex::new(0),
                sign_fails: std::sync::atomic::AtomicBool::new(false),
            })
        }
    }

    async fn enroll(app: &TestApp, gateway_id: &str) {
        sqlx::query("UPDATE gateways SET status = 'enrolled' WHERE id = $1")
            .bind(gateway_id.to_string())
            .execute(&app.state.db.pool)
            .await
            .unwrap();
    }

    impl UnlockDispatcher for DiesBeforePublish {
        fn sign(&self, mut claims: TokenClaims) -> DispatchFut<'_, UnlockToken> {
            Box::pin(async move {
                if self.sign_fails.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(dmr_cloud::error::ApiError::Unavailable {
                        code: "keys_unavailable",
                        message: "no signing key".into(),
                    });
                }
                claims.key_id = 9;
                Ok(claims.sign(&self.key).unwrap())
            })
        }
        fn send(&self, _: Uuid, _: Uuid, _: String, _: Duration) -> DispatchFut<'_, ()> {
            Box::pin(async move {
                *self.sends.lock().unwrap() += 1;
                Ok(())
            })
        }
        fn prepare(
            &self,
            id: Uuid,
            gw: Uuid,
            gateway: Option<(String, String)>,
            token: String,
            ttl: Duration,
        ) -> DispatchFut<'_, Option<PreparedCommand>> {
            Box::pin(async move {
                let (merchant, status) = gateway.expect("the gateway was read with the payment");
                self.commands
                    .prepare(
                        id,
                        gw,
                        merchant,
                        &status,
                        dmr_protocol::message::Command::Unlock { token },
                        ttl,
                        CommandMeta::default(),
                    )
                    .await
                    .map(Some)
            })
        }
        fn publish(&self, p: PreparedCommand) -> DispatchFut<'_, ()> {
            Box::pin(async move {
                let seen: Option<String> =
                    sqlx::query_scalar("SELECT status FROM gateway_commands WHERE id = $1")
                        .bind(p.id().to_string())
                        .fetch_optional(&self.db.pool)
                        .await
                        .unwrap();
                self.published.lock().unwrap().push((p.id(), seen));
                Ok(())
            })
        }
    }

    pub async fn crash_between_commit_and_publish_is_covered_by_the_unlock_timeout(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        enroll(&app, &w.a.gateway_id).await;
        let d = DiesBeforePublish::new(&app);
        app.state.orders.set_dispatcher(d.clone());
        let (id, _key, payment_id) = new_order(&app, &w.a).await;
        assert_eq!(pay(&app, &payment_id, "").await, StatusCode::OK);
        assert_eq!(order_status(&app, &id).await, "unlocking");

        // Both transitions recorded, in order, each with its own actor.
        let history: Vec<(Option<String>, String, String)> = sqlx::query_as(
            "SELECT from_status, to_status, actor FROM order_transitions WHERE order_id = $1 \
             ORDER BY at, id",
        )
        .bind(id.clone())
        .fetch_all(&app.state.db.pool)
        .await
        .unwrap();
        let history: Vec<(Option<&str>, &str, &str)> = history
            .iter()
            .map(|(f, t, a)| (f.as_deref(), t.as_str(), a.as_str()))
            .collect();
        assert_eq!(
            history,
            vec![
                (None, "created", "payer"),
                (Some("created"), "paid", "provider:sandbox"),
                (Some("paid"), "unlocking", "system"),
            ]
        );
        let (cmd_id, token_id, token_text, paid_at, unlocking_at): (String, String, String, i64, i64) =
            sqlx::query_as(
            "SELECT unlock_command_id, token_id, token_text, paid_at, unlocking_at FROM orders WHERE id = $1",
        )
        .bind(id.clone())
        .fetch_one(&app.state.db.pool)
        .await
        .unwrap();
        assert!(paid_at > 0 && unlocking_at >= paid_at);

        // The command row committed with the order: published (here: "crashed") only after,
        // and it names the token by id only.
        let published = d.published.lock().unwrap().clone();
        assert_eq!(
            published,
            vec![(Uuid::try_parse(&cmd_id).unwrap(), Some("sent".to_string()))],
            "publish came after the commit of the command row"
        );
        assert_eq!(
            *d.sends.lock().unwrap(),
            0,
            "a prepared command is not sent twice"
        );
        let body: String = sqlx::query_scalar("SELECT body FROM gateway_commands WHERE id = $1")
            .bind(cmd_id.clone())
            .fetch_one(&app.state.db.pool)
            .await
            .unwrap();
        assert!(body.contains(&token_id), "{body}");
        assert!(
            !body.contains(&token_text),
            "no bearer token stored: {body}"
        );

        // A redelivery of the notification changes nothing and publishes nothing.
        assert_eq!(pay(&app, &payment_id, "").await, StatusCode::OK);
        assert_eq!(d.published.lock().unwrap().len(), 1);
        assert_eq!(ledger_count(&app, &id, "payment").await, 1);

        // The command never reached the gateway: the unlock timeout fails the order over to
        // a refund, and the command expires unanswered.
        let t0 = unlock_times_out(&app, &id).await;
        assert_eq!(
            scalar(
                &app,
                "SELECT COUNT(*) FROM refunds WHERE order_id = $1",
                &id
            )
            .await,
            1
        );
        assert_eq!(
            dmr_cloud::link::commands::expire_once(&app.state.db, t0 + 31_000)
                .await
                .unwrap(),
            1
        );
        app.stop().await;
    }

    pub async fn concurrent_double_tap_creates_one_order(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        app.state.orders.set_dispatcher(Recorder::new(false));
        let (qr, plan) = lock_qr_and_plan(&app, &w.a).await;
        let taps =
            (0..4).map(|_| create_order(&app, &qr, &plan, "session-twin-1", "tap-twin-0001"));
        let answers = futures_util::future::join_all(taps).await;
        let created = answers
            .iter()
            .filter(|(s, _)| *s == StatusCode::CREATED)
            .count();
        assert_eq!(created, 1, "{answers:?}");
        for (s, b) in &answers {
            assert!(*s == StatusCode::CREATED || *s == StatusCode::OK, "{s} {b}");
            assert_eq!(b["order"]["id"], answers[0].1["order"]["id"]);
            assert_eq!(b["access_key"], answers[0].1["access_key"]);
        }
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE lock_id = $1")
            .bind(w.a.lock_id.clone())
            .fetch_one(&app.state.db.pool)
            .await
            .unwrap();
        assert_eq!(n, 1);
        // A different key for the taken lock is told the lock is busy.
        let (s, _) = create_order(&app, &qr, &plan, "session-twin-1", "tap-twin-0002").await;
        assert_eq!(s, StatusCode::CONFLICT);
        app.stop().await;
    }

    pub async fn unsigned_payment_stops_at_paid_and_the_stuck_paid_job_dispatches(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        enroll(&app, &w.a.gateway_id).await;
        let d = DiesBeforePublish::new(&app);
        d.sign_fails
            .store(true, std::sync::atomic::Ordering::SeqCst);
        app.state.orders.set_dispatcher(d.clone());
        let (id, _key, payment_id) = new_order(&app, &w.a).await;
        // The payment is applied (and answered 2xx) even though no token can be signed.
        assert_eq!(pay(&app, &payment_id, "").await, StatusCode::OK);
        assert_eq!(order_status(&app, &id).await, "paid");
        assert_eq!(ledger_count(&app, &id, "payment").await, 1);
        assert!(d.published.lock().unwrap().is_empty());
        assert_eq!(
            scalar(
                &app,
                "SELECT COUNT(*) FROM gateway_commands WHERE lock_id IS NULL AND gateway_id = $1",
                &w.a.gateway_id
            )
            .await,
            0
        );
        // Signing works again: the stuck-paid job dispatches, recording the command in the
        // transition's transaction and publishing after it.
        d.sign_fails
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let r = run_once(&app.state, now_ms() + 6_000).await.unwrap();
        assert_eq!(r.redispatched, 1);
        assert_eq!(order_status(&app, &id).await, "unlocking");
        let cmd_id: String =
            sqlx::query_scalar("SELECT unlock_command_id FROM orders WHERE id = $1")
                .bind(id.clone())
                .fetch_one(&app.state.db.pool)
                .await
                .unwrap();
        assert_eq!(
            d.published.lock().unwrap().clone(),
            vec![(Uuid::try_parse(&cmd_id).unwrap(), Some("sent".to_string()))]
        );
        let history: Vec<(String, String)> = sqlx::query_as(
            "SELECT to_status, actor FROM order_transitions WHERE order_id = $1 ORDER BY at, id",
        )
        .bind(id.clone())
        .fetch_all(&app.state.db.pool)
        .await
        .unwrap();
        let history: Vec<(&str, &str)> = history
            .iter()
            .map(|(t, a)| (t.as_str(), a.as_str()))
            .collect();
        assert_eq!(
            history,
            vec![
                ("created", "payer"),
                ("paid", "provider:sandbox"),
                ("unlocking", "system")
            ]
        );
        app.stop().await;
    }
}
