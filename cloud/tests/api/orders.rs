//! Orders end to end on the real app: the phone's endpoints, the sandbox provider's signed
//! notifications, the unlock dispatch (a recording dispatcher stands in for the gateway
//! link), gateway events, the order jobs at chosen clock times, refunds, the ledger,
//! settlement and reconciliation.

use crate::on_every_backend;

on_every_backend!(
    order_flow_from_scan_to_closed_door,
    door_events_applied_out_of_order_still_complete,
    unlocked_without_a_door_cycle_completes_after_the_paid_time,
    notifications_apply_once_and_forgeries_change_nothing,
    two_orders_for_one_lock_one_wins,
    expiry_and_payment_after_expiry_refunds,
    unlock_timeout_refunds_and_late_unlock_cancels,
    merchant_refunds_rules_and_isolation,
    settlement_and_reconciliation,
    bad_input_is_never_a_500,
    dashboard_summary_figures_and_isolation,
    dashboard_rollups_equal_the_ledger,
    order_list_total_is_bounded,
);

pub mod support {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use dmr_cloud::error::ApiError;
    use dmr_cloud::orders::dispatch::{DispatchFut, UnlockDispatcher};
    use dmr_protocol::token::{TokenClaims, UnlockToken};
    use reqwest::StatusCode;
    use serde_json::{Value, json};
    use uuid::Uuid;

    use crate::common::{Tenant, TestApp};

    /// Signs with a fixed test key and records every `cmd unlock` instead of sending it.
    #[derive(Debug)]
    pub struct Recorder {
        pub key: ed25519_dalek::SigningKey,
        pub sent: Mutex<Vec<(Uuid, String)>>,
        /// The command ids the dispatch chose, in the order sent.
        pub ids: Mutex<Vec<Uuid>>,
        pub fail_send: bool,
    }

    impl Recorder {
        pub fn new(fail_send: bool) -> Arc<Recorder> {
            Arc::new(Recorder {
                key: ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]),
                sent: Mutex::new(Vec::new()),
                ids: Mutex::new(Vec::new()),
                fail_send,
            })
        }
        pub fn sent(&self) -> Vec<(Uuid, String)> {
            self.sent.lock().unwrap().clone()
        }
    }

    impl UnlockDispatcher for Recorder {
        fn sign(&self, mut claims: TokenClaims) -> DispatchFut<'_, UnlockToken> {
            Box::pin(async move {
                claims.key_id = 9;
                Ok(claims.sign(&self.key).unwrap())
            })
        }
        fn send(&self, id: Uuid, gw: Uuid, token: String, _ttl: Duration) -> DispatchFut<'_, ()> {
            Box::pin(async move {
                if self.fail_send {
                    return Err(ApiError::Conflict("gateway offline".into()));
                }
                self.sent.lock().unwrap().push((gw, token));
                self.ids.lock().unwrap().push(id);
                Ok(())
            })
        }
    }

    pub async fn lock_qr_and_plan(app: &TestApp, t: &Tenant) -> (String, String) {
        let (s, l) = app
            .get(&format!("/api/v1/locks/{}", t.lock_id), &t.owner)
            .await;
        assert_eq!(s, StatusCode::OK, "{l}");
        (
            l["qr_code"].as_str().unwrap().to_string(),
            l["price_plans"][0]["id"].as_str().unwrap().to_string(),
        )
    }

    /// POST /api/v1/public/orders with the two headers.
    pub async fn create_order(
        app: &TestApp,
        qr: &str,
        plan: &str,
        session: &str,
        idem: &str,
    ) -> (StatusCode, Value) {
        let resp = app
            .client
            .post(app.url_of("/api/v1/public/orders"))
            .header("Idempotency-Key", idem)
            .header("X-Device-Session", session)
            .json(&json!({ "qr_code": qr, "plan_id": plan, "provider": "sandbox" }))
            .send()
            .await
            .unwrap();
        let s = resp.status();
        (s, resp.json().await.unwrap_or(Value::Null))
    }

    /// Creates an order and returns (order id, access key, payment id).
    pub async fn new_order(app: &TestApp, t: &Tenant) -> (String, String, String) {
        let (qr, plan) = lock_qr_and_plan(app, t).await;
        let (s, b) = create_order(
            app,
            &qr,
            &plan,
            &format!("session-{}", Uuid::new_v4()),
            &Uuid::new_v4().to_string(),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        let url = b["payment"]["redirect_url"].as_str().unwrap();
        let payment_id = url.rsplit('/').next().unwrap().to_string();
        (
            b["order"]["id"].as_str().unwrap().to_string(),
            b["access_key"].as_str().unwrap().to_string(),
            payment_id,
        )
    }

    /// Plays the payer on the sandbox page.
    pub async fn pay(app: &TestApp, payment_id: &str, query: &str) -> StatusCode {
        app.client
            .post(app.url_of(&format!("/pay/sandbox/{payment_id}{query}")))
            .send()
            .await
            .unwrap()
            .status()
    }

    pub async fn order_status(app: &TestApp, id: &str) -> String {
        let mut conn = app.state.db.pool.acquire().await.unwrap();
        dmr_cloud::orders::load(&mut conn, id)
            .await
            .unwrap()
            .unwrap()
            .status
    }

    pub async fn scalar(app: &TestApp, sql: &str, id: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_string()))
            .bind(id.to_string())
            .fetch_one(&app.state.db.pool)
            .await
            .unwrap()
    }

    pub async fn ledger_sum(app: &TestApp, order_id: &str) -> i64 {
        scalar(
            app,
            "SELECT CAST(COALESCE(SUM(amount_fen), 0) AS BIGINT) FROM ledger_entries WHERE order_id = $1",
            order_id,
        )
        .await
    }

    pub async fn ledger_count(app: &TestApp, order_id: &str, kind: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM ledger_entries WHERE order_id = $1 AND kind = $2",
        )
        .bind(order_id.to_string())
        .bind(kind.to_string())
        .fetch_one(&app.state.db.pool)
        .await
        .unwrap()
    }

    /// Feeds a gateway event through the orders hook, in a transaction as ingest does.
    pub async fn gateway_event(app: &TestApp, gw: &str, event: dmr_protocol::message::Event) {
        let mut conn = app.state.db.pool.acquire().await.unwrap();
        let mut tx = sqlx::Acquire::begin(&mut *conn).await.unwrap();
        dmr_cloud::orders::on_gateway_event(
            &mut tx,
            Uuid::parse_str(gw).unwrap(),
            Uuid::new_v4(),
            &event,
            dmr_cloud::db::now_ms(),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }

    pub fn unlock_event(
        lock: &str,
        order: &str,
        result: dmr_protocol::message::ResultCode,
        via: dmr_protocol::message::Presenter,
    ) -> dmr_protocol::message::Event {
        dmr_protocol::message::Event::Unlock(dmr_protocol::message::UnlockEvent {
            lock_id: Uuid::parse_str(lock).unwrap(),
            token_id: None,
            order_id: Some(Uuid::parse_str(order).unwrap()),
            result,
            via: Some(via),
            at: u64::try_from(dmr_cloud::db::now_ms()).unwrap(),
        })
    }

    pub fn door_event(
        lock: &str,
        door: dmr_protocol::message::DoorChange,
    ) -> dmr_protocol::message::Event {
        dmr_protocol::message::Event::Door(dmr_protocol::message::DoorEvent {
            lock_id: Uuid::parse_str(lock).unwrap(),
            door,
            at: u64::try_from(dmr_cloud::db::now_ms()).unwrap(),
        })
    }

    /// POSTs a raw notification body with headers.
    pub async fn notify(app: &TestApp, body: &[u8], headers: &axum::http::HeaderMap) -> StatusCode {
        let mut req = app
            .client
            .post(app.url_of("/api/v1/payments/notify/sandbox"))
            .body(body.to_vec());
        for (k, v) in headers {
            req = req.header(k.as_str(), v.to_str().unwrap());
        }
        req.send().await.unwrap().status()
    }

    /// Gives each tenant a paid, settled order (and a reconciliation report).
    pub async fn seed_money(app: &TestApp, mut w: crate::common::World) -> crate::common::World {
        app.state.orders.set_dispatcher(Recorder::new(false));
        for t in [&mut w.a, &mut w.b] {
            let (id, _, payment) = new_order(app, t).await;
            assert_eq!(pay(app, &payment, "").await, StatusCode::OK);
            t.order_id = id;
        }
        dmr_cloud::orders::jobs::run_once(&app.state, dmr_cloud::db::now_ms() + 24 * 3_600_000)
            .await
            .unwrap();
        for t in [&mut w.a, &mut w.b] {
            t.settlement_id = sqlx::query_scalar::<_, String>(
                "SELECT id FROM settlements WHERE merchant_id = $1",
            )
            .bind(t.merchant_id.clone())
            .fetch_one(&app.state.db.pool)
            .await
            .unwrap();
            t.report_id = sqlx::query_scalar::<_, String>(
                "SELECT id FROM reconciliation_reports WHERE merchant_id = $1",
            )
            .bind(t.merchant_id.clone())
            .fetch_one(&app.state.db.pool)
            .await
            .unwrap();
        }
        w
    }

    pub async fn out_trade_no(app: &TestApp, payment_id: &str) -> (String, i64) {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT out_trade_no, amount_fen FROM payments WHERE id = $1",
        )
        .bind(payment_id.to_string())
        .fetch_one(&app.state.db.pool)
        .await
        .unwrap()
    }
}

mod scenarios {
    use dmr_cloud::db::now_ms;
    use dmr_cloud::orders::jobs::run_once;
    use dmr_protocol::message::{DoorChange, Presenter, ResultCode};
    use dmr_protocol::token::{TokenKind, UnlockToken};
    use reqwest::StatusCode;
    use serde_json::json;
    use uuid::Uuid;

    use super::support::*;
    use crate::common::{DbKind, TestApp, error_code, seed_world};
    use crate::order_fixtures::*;

    const DAY_MS: i64 = 24 * 3_600_000;

    pub async fn order_flow_from_scan_to_closed_door(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        let rec = Recorder::new(false);
        app.state.orders.set_dispatcher(rec.clone());
        let (qr, plan) = lock_qr_and_plan(&app, &w.a).await;

        let (s, lock) = public_lock(&app, &qr).await;
        assert_eq!(s, StatusCode::OK, "{lock}");
        assert_eq!(lock["available"], true);
        assert_eq!(lock["price_plans"][0]["price_fen"], 300);

        // A double tap: one order, the same key, the replay answers 200.
        let (s1, a) = create_order(&app, &qr, &plan, "session-phone-1", "tap-0000001").await;
        let (s2, b) = create_order(&app, &qr, &plan, "session-phone-1", "tap-0000001").await;
        assert_eq!(s1, StatusCode::CREATED, "{a}");
        assert_eq!(s2, StatusCode::OK, "{b}");
        assert_eq!(a["order"]["id"], b["order"]["id"]);
        assert_eq!(a["access_key"], b["access_key"]);
        assert_eq!(a["order"]["amount_fen"], 300, "the amount is the plan's");
        let id = a["order"]["id"].as_str().unwrap().to_string();
        let key = a["access_key"].as_str().unwrap().to_string();
        let (s, l) = public_lock(&app, &qr).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(l["available"], false, "the lock is taken by the order");

        // The sandbox page, then paying on it.
        let url = a["payment"]["redirect_url"].as_str().unwrap();
        let payment_id = url.rsplit('/').next().unwrap();
        let page = app
            .client
            .get(app.url_of(&format!("/pay/sandbox/{payment_id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let html = page.text().await.unwrap();
        assert!(html.contains("确认支付"));
        // It returns to the order's H5 page without staying in the history.
        assert!(html.contains(&format!("\"/h5/o/{id}\"")), "{html}");
        assert!(html.contains("history.back()") && html.contains("location.replace"));
        assert_eq!(pay(&app, payment_id, "").await, StatusCode::OK);
        assert_eq!(order_status(&app, &id).await, "unlocking");

        // The token sent to the gateway is an order token for this lock and order.
        let sent = rec.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0.to_string(), w.a.gateway_id);
        let token = UnlockToken::from_text(&sent[0].1).unwrap();
        let c = token.claims();
        assert_eq!(c.kind, TokenKind::Order);
        assert_eq!(c.lock_id.to_string(), w.a.lock_id);
        assert_eq!(c.order_id.to_string(), id);
        assert_eq!(c.max_uses, 1);
        assert_eq!(c.not_after - c.not_before, 60 * 60, "plan duration");
        // The command id is recorded on the order with the transition, before the send.
        let recorded: Option<String> =
            sqlx::query_scalar("SELECT unlock_command_id FROM orders WHERE id = $1")
                .bind(id.clone())
                .fetch_one(&app.state.db.pool)
                .await
                .unwrap();
        let ids = rec.ids.lock().unwrap().clone();
        assert_eq!(recorded, Some(ids[0].to_string()));
        // The create answer names the lock and venue from what it read with the lock; the
        // replay reads them back from the stored order: the same.
        assert_eq!(a["order"]["lock_name"], b["order"]["lock_name"]);
        assert_eq!(a["order"]["venue_name"], b["order"]["venue_name"]);
        assert_eq!(a["payment"], b["payment"], "the same payment step");
        let (s, t) = offline_token(&app, &id, &key).await;
        assert_eq!(s, StatusCode::OK, "{t}");
        assert_eq!(t["token"].as_str().unwrap(), sent[0].1);

        // `accepted` is not proof of opening.
        unlock_reported(&app, &w.a, &id, ResultCode::Accepted, Presenter::Cloud).await;
        assert_eq!(order_status(&app, &id).await, "unlocking");
        lock_opened(&app, &w.a, &id).await;
        assert_eq!(order_status(&app, &id).await, "unlocked");
        door(&app, &w.a, DoorChange::Closed).await;
        assert_eq!(
            order_status(&app, &id).await,
            "unlocked",
            "closed before opening means nothing"
        );
        door_cycle(&app, &w.a).await;
        assert_eq!(order_status(&app, &id).await, "completed");

        // The phone's view, with and without the key.
        let (s, o) = app
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/public/orders/{id}?key={key}"),
                None,
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(o["status"], "completed");
        let (s, _) = app
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/public/orders/{id}?key=wrong"),
                None,
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let mine = app
            .client
            .get(app.url_of("/api/v1/public/my/orders"))
            .header("X-Device-Session", "session-phone-1")
            .send()
            .await
            .unwrap();
        let mine: serde_json::Value = mine.json().await.unwrap();
        assert_eq!(mine["items"].as_array().unwrap().len(), 1);
        assert_eq!(mine["items"][0]["access_key"], key.as_str());

        // SSE: a finished order streams its final state and ends.
        let sse = app
            .client
            .get(app.url_of(&format!("/api/v1/public/orders/{id}/events?key={key}")))
            .send()
            .await
            .unwrap();
        assert_eq!(sse.status(), StatusCode::OK);
        let text = tokio::time::timeout(std::time::Duration::from_secs(10), sse.text())
            .await
            .unwrap()
            .unwrap();
        assert!(text.contains("event: order"), "{text}");
        assert!(text.contains("\"completed\""), "{text}");

        // The console's one record: transitions, payment, unlock evidence; the ledger.
        let (s, d) = app.get(&format!("/api/v1/orders/{id}"), &w.a.owner).await;
        assert_eq!(s, StatusCode::OK, "{d}");
        let path: Vec<&str> = d["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["to_status"].as_str().unwrap())
            .collect();
        assert_eq!(
            path,
            ["created", "paid", "unlocking", "unlocked", "completed"]
        );
        assert_eq!(d["payments"][0]["status"], "succeeded");
        assert!(d["unlock_events"].as_array().unwrap().len() >= 4);
        assert_eq!(ledger_count(&app, &id, "payment").await, 1);
        assert_eq!(
            ledger_sum(&app, &id).await,
            300,
            "unsettled: the payment is held"
        );
        let (s, _) = app.get(&format!("/api/v1/orders/{id}"), &w.b.owner).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "another tenant's order is 404");
        let (s, list) = app.get("/api/v1/orders?status=completed", &w.a.staff).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(list["total"], 1);
        let (s, list) = app.get("/api/v1/orders", &w.b.owner).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(list["total"], 0, "tenant B sees none of A's orders");
        let (s, summary) = app.get("/api/v1/dashboard/summary", &w.a.owner).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(summary["today_revenue_fen"], 300);
        assert_eq!(summary["today_orders"], 1);
        assert_eq!(summary["revenue_by_day"].as_array().unwrap().len(), 7);
        // The transitions are counted for the alert rules (per process; other tests in this
        // binary may have added more, so at least this order's).
        let metrics = app.metrics().await;
        for to in ["paid", "unlocked", "completed"] {
            let line = format!("dmr_order_transitions_total{{to=\"{to}\"}} ");
            let n: u64 = metrics
                .lines()
                .find_map(|l| l.strip_prefix(line.as_str()))
                .unwrap_or_else(|| panic!("no {line} in /metrics"))
                .parse()
                .unwrap();
            assert!(n >= 1, "{line}{n}");
        }
        app.stop().await;
    }

    /// The ingest applies batches on several workers at once, so a gateway's `closed` can
    /// be applied before the `opened` that came first at the door (the online-flow bench
    /// saw orders stay `unlocked` for good that way). The gateway's times decide, not the
    /// order of arrival; a close older than the open still does not complete the order.
    pub async fn door_events_applied_out_of_order_still_complete(kind: &DbKind) {
        let (app, w) = spawn_order_world(kind).await;
        let door = |change, at: i64| {
            dmr_protocol::message::Event::Door(dmr_protocol::message::DoorEvent {
                lock_id: Uuid::parse_str(&w.a.lock_id).unwrap(),
                door: change,
                at: u64::try_from(at).unwrap(),
            })
        };
        let t = dmr_cloud::db::now_ms();

        // Unlocked by the unlock event, then the close arrives before the open.
        let (id, _) = opened_order(&app, &w.a).await;
        assert_eq!(order_status(&app, &id).await, "unlocked");
        gateway_event(&app, &w.a.gateway_id, door(DoorChange::Closed, t + 400)).await;
        assert_eq!(order_status(&app, &id).await, "unlocked");
        gateway_event(&app, &w.a.gateway_id, door(DoorChange::Opened, t + 100)).await;
        assert_eq!(
            order_status(&app, &id).await,
            "completed",
            "opened at +100 and closed at +400 is a full cycle, whatever order they came in"
        );

        // The next order on the lock: open and close both arrive while it is still
        // `unlocking` (the ack not applied yet), close first; the open completes it.
        let (id2, _) = paid_order(&app, &w.a).await;
        assert_ne!(id2, id);
        assert_eq!(order_status(&app, &id2).await, "unlocking");
        gateway_event(&app, &w.a.gateway_id, door(DoorChange::Closed, t + 2_400)).await;
        assert_eq!(order_status(&app, &id2).await, "unlocking");
        gateway_event(&app, &w.a.gateway_id, door(DoorChange::Opened, t + 2_100)).await;
        assert_eq!(order_status(&app, &id2).await, "completed");

        // A third: a close older than the open (a stray from before) is not a cycle.
        let (id3, _) = paid_order(&app, &w.a).await;
        gateway_event(&app, &w.a.gateway_id, door(DoorChange::Closed, t + 4_000)).await;
        gateway_event(&app, &w.a.gateway_id, door(DoorChange::Opened, t + 4_100)).await;
        assert_eq!(order_status(&app, &id3).await, "unlocked");
        gateway_event(&app, &w.a.gateway_id, door(DoorChange::Closed, t + 4_300)).await;
        assert_eq!(order_status(&app, &id3).await, "completed");
        app.stop().await;
    }

    /// The agent polls doors, so a quick open-and-close can leave no door events at all. The
    /// order must not hold its lock for good: once the plan's time and the grace have run
    /// out, the order job completes it (and not a moment before), and the lock sells again.
    pub async fn unlocked_without_a_door_cycle_completes_after_the_paid_time(kind: &DbKind) {
        use dmr_cloud::orders::jobs::{DOOR_GRACE_MS, run_once};
        let (app, w) = spawn_order_world(kind).await;
        let (id, _) = opened_order(&app, &w.a).await;
        assert_eq!(order_status(&app, &id).await, "unlocked");
        let (unlocked_at, minutes): (i64, i64) =
            sqlx::query_as("SELECT unlocked_at, duration_minutes FROM orders WHERE id = $1")
                .bind(id.clone())
                .fetch_one(&app.state.db.pool)
                .await
                .unwrap();
        let ends = unlocked_at + minutes * 60_000 + DOOR_GRACE_MS;

        let r = run_once(&app.state, ends - 1_000).await.unwrap();
        assert_eq!(r.door_timeouts, 0, "still within the paid time and grace");
        assert_eq!(order_status(&app, &id).await, "unlocked");

        let r = run_once(&app.state, ends + 1_000).await.unwrap();
        assert_eq!(r.door_timeouts, 1);
        assert_eq!(order_status(&app, &id).await, "completed");
        let why: String = sqlx::query_scalar(
            "SELECT reason FROM order_transitions WHERE order_id = $1 AND to_status = 'completed'",
        )
        .bind(id.clone())
        .fetch_one(&app.state.db.pool)
        .await
        .unwrap();
        assert!(why.contains("no door cycle"), "{why}");
        // Applied once: a second round finds nothing to do.
        let r = run_once(&app.state, ends + 2_000).await.unwrap();
        assert_eq!(r.door_timeouts, 0);

        // The lock is free for the next customer.
        let (id2, _, _) = new_order(&app, &w.a).await;
        assert_ne!(id2, id);
        app.stop().await;
    }

    pub async fn notifications_apply_once_and_forgeries_change_nothing(kind: &DbKind) {
        let (app, w) = spawn_order_world(kind).await;
        let sb = app.state.orders.sandbox.clone().unwrap();
        let (id, _key, payment_id) = new_order(&app, &w.a).await;
        let (no, amount) = out_trade_no(&app, &payment_id).await;
        let body = sb.pay(&no, amount, now_ms());

        // Forgeries first: nothing may change.
        let good = sb.signed_headers(&body, now_ms());
        let mut bad_sig = good.clone();
        bad_sig.insert("x-sandbox-signature", "AAAA".parse().unwrap());
        let mut tampered = body.clone();
        let pos = tampered.iter().position(|b| *b == b'3').unwrap();
        tampered[pos] = b'1'; // 300 -> 100 fen
        let stale = sb.signed_headers(&body, now_ms() - 6 * 60_000);
        for (what, b, h) in [
            ("bad signature", body.clone(), bad_sig),
            ("tampered body", tampered, good.clone()),
            ("stale timestamp", body.clone(), stale),
        ] {
            assert_eq!(
                notify(&app, &b, &h).await,
                StatusCode::BAD_REQUEST,
                "{what}"
            );
        }
        for missing in [
            "x-sandbox-signature",
            "x-sandbox-timestamp",
            "x-sandbox-nonce",
        ] {
            let mut h = good.clone();
            h.remove(missing);
            assert_eq!(
                notify(&app, &body, &h).await,
                StatusCode::BAD_REQUEST,
                "without {missing}"
            );
        }
        // Authentic, but the amount is not the order's: refused and alerted.
        let wrong = String::from_utf8(body.clone())
            .unwrap()
            .replace("\"amount_fen\":300", "\"amount_fen\":1");
        assert_ne!(wrong.as_bytes(), body.as_slice());
        let h = sb.signed_headers(wrong.as_bytes(), now_ms());
        assert_eq!(
            notify(&app, wrong.as_bytes(), &h).await,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(order_status(&app, &id).await, "created");
        assert_eq!(ledger_count(&app, &id, "payment").await, 0);
        assert!(
            scalar(
                &app,
                "SELECT COUNT(*) FROM payment_alerts WHERE order_id = $1",
                &id
            )
            .await
                >= 1
        );
        // The probe of an unknown provider.
        let r = app
            .client
            .post(app.url_of("/api/v1/payments/notify/nope"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);

        // The real one: twice at once, then ten more times. All 2xx, applied once.
        let (h1, h2) = (
            sb.signed_headers(&body, now_ms()),
            sb.signed_headers(&body, now_ms()),
        );
        let (a, b) = tokio::join!(notify(&app, &body, &h1), notify(&app, &body, &h2));
        assert!(a.is_success() && b.is_success(), "{a} {b}");
        for _ in 0..10 {
            let s = notify(&app, &body, &sb.signed_headers(&body, now_ms())).await;
            assert_eq!(s, StatusCode::NO_CONTENT);
        }
        assert_eq!(ledger_count(&app, &id, "payment").await, 1);
        assert_eq!(
            scalar(
                &app,
                "SELECT COUNT(*) FROM payments WHERE order_id = $1 AND status = 'succeeded'",
                &id
            )
            .await,
            1
        );
        assert_eq!(order_status(&app, &id).await, "unlocking");
        assert_eq!(
            scalar(
                &app,
                "SELECT COUNT(*) FROM order_transitions WHERE order_id = $1 AND to_status = 'paid'",
                &id
            )
            .await,
            1
        );

        // A "crash" between applying and answering: the sandbox redelivers; nothing doubles.
        let (id2, _, payment2) = new_order(&app, &w.b).await;
        assert_eq!(
            pay(&app, &payment2, "?fail=crash&duplicates=3").await,
            StatusCode::OK
        );
        assert_eq!(ledger_count(&app, &id2, "payment").await, 1);
        assert_eq!(order_status(&app, &id2).await, "unlocking");
        app.stop().await;
    }

    pub async fn two_orders_for_one_lock_one_wins(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        let (qr, plan) = lock_qr_and_plan(&app, &w.a).await;
        let (a, b) = tokio::join!(
            create_order(&app, &qr, &plan, "session-aaaaaaaa", "key-aaaaaaaa"),
            create_order(&app, &qr, &plan, "session-bbbbbbbb", "key-bbbbbbbb")
        );
        let mut statuses = [a.0, b.0];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::CREATED, StatusCode::CONFLICT],
            "{} / {}",
            a.1,
            b.1
        );
        let loser = if a.0 == StatusCode::CONFLICT {
            a.1
        } else {
            b.1
        };
        assert_eq!(error_code(&loser), "conflict");
        assert_eq!(
            scalar(
                &app,
                "SELECT COUNT(*) FROM orders WHERE lock_id = $1",
                &w.a.lock_id
            )
            .await,
            1
        );
        app.stop().await;
    }

    pub async fn expiry_and_payment_after_expiry_refunds(kind: &DbKind) {
        let (app, w) = spawn_order_world(kind).await;
        let (id, _, payment_id) = new_order(&app, &w.a).await;
        let r = run_once(&app.state, now_ms() + 60_000).await.unwrap();
        assert_eq!(r.expired, 0, "not yet");
        let r = run_once(&app.state, now_ms() + 5 * 60_000 + 1000)
            .await
            .unwrap();
        assert_eq!(r.expired, 1);
        assert_eq!(order_status(&app, &id).await, "expired");
        // The lock is free again.
        let (_, _, _) = new_order(&app, &w.a).await;
        // The payer pays anyway: the money goes back, the order stays expired.
        assert_eq!(pay(&app, &payment_id, "").await, StatusCode::OK);
        assert_eq!(order_status(&app, &id).await, "expired");
        assert_eq!(ledger_count(&app, &id, "payment").await, 1);
        run_once(&app.state, now_ms()).await.unwrap();
        assert_eq!(
            scalar(
                &app,
                "SELECT COUNT(*) FROM refunds WHERE order_id = $1 AND status = 'succeeded'",
                &id
            )
            .await,
            1
        );
        assert_eq!(ledger_sum(&app, &id).await, 0, "paid and refunded");
        app.stop().await;
    }

    pub async fn unlock_timeout_refunds_and_late_unlock_cancels(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        // The gateway is offline: the command cannot be sent.
        app.state.orders.set_dispatcher(Recorder::new(true));
        let (id, key) = paid_order(&app, &w.a).await;
        assert_eq!(order_status(&app, &id).await, "unlocking");
        let t0 = unlock_times_out(&app, &id).await;
        assert_eq!(
            scalar(
                &app,
                "SELECT COUNT(*) FROM refunds WHERE order_id = $1 AND status = 'pending'",
                &id
            )
            .await,
            1,
            "the refund waits its grace period"
        );
        // The phone shows the offline token; the venue scanner opens; the event arrives late.
        let (s, _) = offline_token(&app, &id, &key).await;
        assert_eq!(s, StatusCode::OK);
        unlock_reported(&app, &w.a, &id, ResultCode::Ok, Presenter::Scanner).await;
        assert_eq!(order_status(&app, &id).await, "unlocked");
        assert_eq!(
            scalar(
                &app,
                "SELECT COUNT(*) FROM refunds WHERE order_id = $1 AND status = 'cancelled'",
                &id
            )
            .await,
            1
        );
        run_once(&app.state, t0 + 10 * 60_000).await.unwrap();
        assert_eq!(
            ledger_count(&app, &id, "refund").await,
            0,
            "no refund went out"
        );

        // Second order: nobody opens; after the grace the refund goes out.
        let (id2, _) = paid_order(&app, &w.b).await;
        let t1 = now_ms();
        run_once(&app.state, t1 + 31_000).await.unwrap();
        assert_eq!(order_status(&app, &id2).await, "unlock_failed");
        let r = run_once(&app.state, t1 + 31_000 + 121_000).await.unwrap();
        assert_eq!(r.refunds_sent, 1);
        assert_eq!(order_status(&app, &id2).await, "refunded");
        assert_eq!(ledger_sum(&app, &id2).await, 0);
        // The refunded order's token is revoked at its gateway; the opened order's is not.
        let revoked = "SELECT COUNT(*) FROM token_revocations r JOIN orders o \
             ON o.token_id = r.token_id AND o.gateway_id = r.gateway_id WHERE o.id = $1";
        assert_eq!(
            scalar(&app, revoked, &id2).await,
            1,
            "refunded order's token revoked"
        );
        assert_eq!(
            scalar(&app, revoked, &id).await,
            0,
            "an opened order's token stays"
        );
        // Opening after the refund went out: flagged for review, not reversed.
        unlock_reported(&app, &w.b, &id2, ResultCode::Ok, Presenter::Scanner).await;
        assert_eq!(order_status(&app, &id2).await, "refunded");
        let (_, d) = app.get(&format!("/api/v1/orders/{id2}"), &w.b.owner).await;
        assert!(d["review_reason"].is_string(), "{d}");
        app.stop().await;
    }

    pub async fn merchant_refunds_rules_and_isolation(kind: &DbKind) {
        let (app, w) = spawn_order_world(kind).await;
        let (id, _, payment_id) = new_order(&app, &w.a).await;
        let path = format!("/api/v1/orders/{id}/refund");
        let (s, b) = app.post(&path, &w.a.owner, json!({ "reason": "x" })).await;
        assert_eq!(s, StatusCode::CONFLICT, "nothing paid yet: {b}");
        assert_eq!(pay(&app, &payment_id, "").await, StatusCode::OK);
        let (s, b) = app.post(&path, &w.a.owner, json!({})).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        assert_eq!(b["error"]["details"]["field"], "reason");
        let (s, _) = app.post(&path, &w.a.owner, json!({ "reason": "  " })).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        let (s, b) = app
            .post(
                &path,
                &w.a.owner,
                json!({ "reason": "too much", "amount_fen": 301 }),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        let (s, _) = app
            .post(&path, &w.b.owner, json!({ "reason": "not mine" }))
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = app
            .post(&path, &w.a.staff, json!({ "reason": "staff" }))
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, d) = app
            .post(
                &path,
                &w.a.owner,
                json!({ "reason": "broken hinge", "amount_fen": 100 }),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{d}");
        assert_eq!(d["refunds"][0]["status"], "succeeded");
        assert_eq!(d["refunded_fen"], 100);
        let (s, _) = app
            .post(
                &path,
                &w.a.owner,
                json!({ "reason": "again", "amount_fen": 201 }),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "over what is left");
        // A year and a day later: refused.
        sqlx::query("UPDATE payments SET paid_at = paid_at - $1 WHERE order_id = $2")
            .bind(366 * DAY_MS)
            .bind(id.clone())
            .execute(&app.state.db.pool)
            .await
            .unwrap();
        let (s, b) = app
            .post(
                &path,
                &w.a.owner,
                json!({ "reason": "late", "amount_fen": 1 }),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        assert!(b["error"]["message"].as_str().unwrap().contains("365"));
        assert_eq!(ledger_count(&app, &id, "refund").await, 1);
        app.stop().await;
    }

    pub async fn settlement_and_reconciliation(kind: &DbKind) {
        let (app, w) = spawn_order_world(kind).await;
        // Merchant A: 500 bp. Two orders of 300 fen; one opened, one refunded 100 fen.
        let (o1, _) = completed_order(&app, &w.a).await;
        let (o2, _) = opened_order(&app, &w.a).await;
        let (s, _) = merchant_refund(
            &app,
            &w.a.owner,
            &o2,
            json!({ "reason": "partial", "amount_fen": 100 }),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        // An order whose notification never comes: the reconciler finds it by query.
        let (o3, _, p3) = new_order(&app, &w.b).await;
        assert_eq!(pay(&app, &p3, "?fail=drop").await, StatusCode::OK);
        assert_eq!(order_status(&app, &o3).await, "created");
        let r = run_once(&app.state, now_ms() + 61_000).await.unwrap();
        assert_eq!(r.payments_found, 1);
        assert_ne!(order_status(&app, &o3).await, "created");

        let r = run_once(&app.state, now_ms() + DAY_MS).await.unwrap();
        assert_eq!(r.settlements, 2, "A and B");
        let (s, page) = app.get("/api/v1/settlements", &w.a.owner).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        assert_eq!(page["total"], 1);
        let st = &page["items"][0];
        assert_eq!(st["gross_fen"], 600);
        assert_eq!(st["refunds_fen"], 100);
        // Per order, half up: 300 × 5% = 15; 200 × 5% = 10.
        assert_eq!(st["commission_fen"], 25);
        assert_eq!(st["net_fen"], 475);
        assert_eq!(st["status"], "issued");
        for o in [&o1, &o2] {
            assert_eq!(
                ledger_sum(&app, o).await,
                0,
                "settled order {o} sums to zero"
            );
        }
        let sid = st["id"].as_str().unwrap().to_string();
        let csv = app
            .client
            .get(app.url_of(&format!("/api/v1/settlements/{sid}/csv")))
            .bearer_auth(&w.a.owner)
            .send()
            .await
            .unwrap();
        assert_eq!(csv.status(), StatusCode::OK);
        let text = csv.text().await.unwrap();
        assert!(text.contains(",600,100,25,475,issued"), "{text}");
        assert!(text.contains(&format!("{o1},300,0,15,285")), "{text}");
        let (s, _) = app
            .get(&format!("/api/v1/settlements/{sid}/csv"), &w.b.owner)
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        // Issued once: another round changes nothing.
        let r = run_once(&app.state, now_ms() + DAY_MS).await.unwrap();
        assert_eq!(r.settlements, 0);
        let (_, again) = app.get("/api/v1/settlements", &w.a.owner).await;
        assert_eq!(again["items"][0], *st);

        // Reconciliation of today (run as "yesterday" from tomorrow): A's orders both
        // opened and match the bill; B's payment came without a notification and its
        // lock never opened.
        let (s, reports) = app.get("/api/v1/reconciliation/reports", &w.a.owner).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(reports["total"], 1, "{reports}");
        assert_eq!(reports["items"][0]["items_count"], 0, "{reports}");
        let (_, rb) = app.get("/api/v1/reconciliation/reports", &w.b.owner).await;
        let summary = rb["items"][0]["summary"].as_str().unwrap();
        assert!(summary.contains("missing_notification"), "{rb}");
        assert!(summary.contains("paid_never_opened"), "{rb}");

        // The items behind the summary, paged and filtered by kind.
        let rid = rb["items"][0]["id"].as_str().unwrap().to_string();
        let items_url = format!("/api/v1/reconciliation/reports/{rid}/items");
        let (s, items) = app.get(&items_url, &w.b.owner).await;
        assert_eq!(s, StatusCode::OK, "{items}");
        assert_eq!(items["total"], rb["items"][0]["items_count"], "{items}");
        let kinds: Vec<&str> = items["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["kind"].as_str().unwrap())
            .collect();
        assert!(kinds.contains(&"missing_notification"), "{items}");
        assert!(kinds.contains(&"paid_never_opened"), "{items}");
        for i in items["items"].as_array().unwrap() {
            assert_eq!(i["report_id"], rid.as_str());
            assert_eq!(i["order_id"], o3.as_str(), "{i}");
        }
        let (s, one) = app
            .get(
                &format!("{items_url}?kind=paid_never_opened&per_page=1"),
                &w.b.owner,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{one}");
        assert_eq!(one["total"], 1, "{one}");
        assert_eq!(one["items"][0]["kind"], "paid_never_opened");
        let (s, b) = app
            .get(&format!("{items_url}?kind=bogus"), &w.b.owner)
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        assert_eq!(b["error"]["details"]["field"], "kind");
        // Another merchant's report is not found; the platform admin sees it.
        let (s, _) = app.get(&items_url, &w.a.owner).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, all) = app.get(&items_url, &w.admin).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(all["total"], items["total"]);
        let (s, _) = app
            .get(
                &format!(
                    "/api/v1/reconciliation/reports/{}/items",
                    uuid::Uuid::new_v4()
                ),
                &w.admin,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        app.stop().await;
    }

    pub async fn dashboard_summary_figures_and_isolation(kind: &DbKind) {
        let (app, w) = spawn_order_world(kind).await;
        // Tenant A: one order paid (300 fen) and partly refunded (100 fen) today.
        let (id, _) = paid_order(&app, &w.a).await;
        let (s, d) = merchant_refund(
            &app,
            &w.a.owner,
            &id,
            json!({ "reason": "broken hinge", "amount_fen": 100 }),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{d}");
        // A's lock reported online; B's lock offline. A deleted online lock counts nowhere.
        for (status, lock) in [("online", &w.a.lock_id), ("offline", &w.b.lock_id)] {
            sqlx::query("UPDATE locks SET status = $1 WHERE id = $2")
                .bind(status)
                .bind(lock.clone())
                .execute(&app.state.db.pool)
                .await
                .unwrap();
        }
        let (s, l2) = app
            .post(
                "/api/v1/locks",
                &w.a.owner,
                json!({ "gateway_id": w.a.gateway_id, "device_code": "DEV-a-2", "bus_address": 2 }),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{l2}");
        let l2 = l2["id"].as_str().unwrap().to_string();
        sqlx::query("UPDATE locks SET status = 'online' WHERE id = $1")
            .bind(l2.clone())
            .execute(&app.state.db.pool)
            .await
            .unwrap();
        let (s, _) = app.delete(&format!("/api/v1/locks/{l2}"), &w.a.owner).await;
        assert!(s.is_success(), "{s}");
        // B acknowledges its seeded alarm: only A's stays open.
        sqlx::query("UPDATE alarms SET acked_at = 2, acked_by = 'x' WHERE id = $1")
            .bind(w.b.alarm_id.clone())
            .execute(&app.state.db.pool)
            .await
            .unwrap();

        let (s, a) = app.get("/api/v1/dashboard/summary", &w.a.owner).await;
        assert_eq!(s, StatusCode::OK, "{a}");
        assert_eq!(a["today_revenue_fen"], 200, "{a}");
        assert_eq!(a["today_orders"], 1);
        assert_eq!(a["today_refunds_fen"], 100);
        assert_eq!(a["locks_online"], 1, "the deleted lock is not counted: {a}");
        assert_eq!(a["locks_offline"], 0);
        assert_eq!(a["open_alarms"], 1);
        let days = a["days"].as_array().unwrap();
        assert_eq!(days.len(), 30);
        let today = days.last().unwrap();
        assert_eq!(today["day"], a["revenue_by_day"][6]["day"]);
        assert_eq!(today["revenue_fen"], 200);
        assert_eq!(today["orders"], 1);
        assert!(
            days.windows(2)
                .all(|p| p[0]["day"].as_str().unwrap() < p[1]["day"].as_str().unwrap()),
            "oldest first, no repeats: {a}"
        );
        assert_eq!(
            days.iter()
                .map(|d| d["orders"].as_i64().unwrap())
                .sum::<i64>(),
            1
        );
        assert_eq!(a["revenue_by_day"].as_array().unwrap().len(), 7);
        assert_eq!(a["revenue_by_day"][6]["revenue_fen"], 200);
        let busiest = a["busiest_locks"].as_array().unwrap();
        assert_eq!(busiest.len(), 1, "{a}");
        assert_eq!(busiest[0]["lock_id"], w.a.lock_id.as_str());
        assert_eq!(busiest[0]["orders"], 1);
        assert_eq!(busiest[0]["revenue_fen"], 200);
        assert!(busiest[0]["name"].is_string());

        // Tenant B sees none of A's figures, only its own.
        let (s, b) = app.get("/api/v1/dashboard/summary", &w.b.owner).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["today_revenue_fen"], 0, "{b}");
        assert_eq!(b["today_orders"], 0);
        assert_eq!(b["today_refunds_fen"], 0);
        assert_eq!(b["locks_online"], 0);
        assert_eq!(b["locks_offline"], 1);
        assert_eq!(b["open_alarms"], 0);
        assert_eq!(b["busiest_locks"].as_array().unwrap().len(), 0);
        assert!(
            b["days"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d["orders"] == 0 && d["revenue_fen"] == 0),
            "{b}"
        );

        // The platform admin sees both tenants.
        let (s, all) = app.get("/api/v1/dashboard/summary", &w.admin).await;
        assert_eq!(s, StatusCode::OK, "{all}");
        assert_eq!(all["today_revenue_fen"], 200);
        assert_eq!(all["locks_online"], 1);
        assert_eq!(all["locks_offline"], 1);
        assert_eq!(all["open_alarms"], 1);
        assert_eq!(all["busiest_locks"], a["busiest_locks"], "{all}");

        // More orders on A's lock (written straight into its roll-up): A's own ranking is
        // live; the platform-wide one, which reads every merchant's locks, is ranked at most
        // once a minute, while the platform's other figures stay live.
        sqlx::query("UPDATE ledger_lock_days SET orders = orders + 4 WHERE lock_id = $1")
            .bind(w.a.lock_id.clone())
            .execute(&app.state.db.pool)
            .await
            .unwrap();
        let (_, a) = app.get("/api/v1/dashboard/summary", &w.a.owner).await;
        assert_eq!(a["busiest_locks"][0]["orders"], 5, "{a}");
        let (s, all) = app.get("/api/v1/dashboard/summary", &w.admin).await;
        assert_eq!(s, StatusCode::OK, "{all}");
        assert_eq!(
            all["busiest_locks"][0]["orders"], 1,
            "ranked less than a minute ago: {all}"
        );
        assert_eq!(all["today_revenue_fen"], 200);
        app.stop().await;
    }

    /// The dashboard reads daily roll-ups (migration 0007) that `money::book` keeps in the
    /// ledger's transaction. After payments, partial refunds, settlement (whose commission,
    /// share and payout entries are not revenue) and a payment after it, every roll-up row
    /// equals the aggregate of the raw entries, a rebuild from the ledger changes nothing, and
    /// the dashboard's figures equal what the ledger says.
    pub async fn dashboard_rollups_equal_the_ledger(kind: &DbKind) {
        let (app, w) = spawn_order_world(kind).await;
        let (o1, _) = paid_order(&app, &w.a).await;
        for amount in [100, 50] {
            let (s, d) = merchant_refund(
                &app,
                &w.a.owner,
                &o1,
                json!({ "reason": "partial", "amount_fen": amount }),
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{d}");
        }
        let (o2, _) = paid_order(&app, &w.b).await;
        let r = run_once(&app.state, now_ms() + DAY_MS).await.unwrap();
        assert_eq!(r.settlements, 2, "A and B");
        assert!(ledger_count(&app, &o1, "commission").await >= 1);
        // A payment after settlement lands in the same day's roll-up row of A's lock.
        let (o3, _) = paid_order(&app, &w.a).await;
        assert_eq!(ledger_count(&app, &o3, "payment").await, 1);
        assert_eq!(ledger_count(&app, &o2, "payment").await, 1);

        type Row = (String, String, String, i64, i64, i64);
        let pool = &app.state.db.pool;
        let by_lock = "SELECT merchant_id, day, lock_id, orders, revenue_fen, refunds_fen \
             FROM ledger_lock_days ORDER BY merchant_id, day, lock_id";
        let ledger_by_lock = "SELECT e.merchant_id, e.day, o.lock_id, \
             CAST(SUM(CASE WHEN e.kind = 'payment' THEN 1 ELSE 0 END) AS BIGINT), \
             CAST(SUM(e.amount_fen) AS BIGINT), \
             CAST(SUM(CASE WHEN e.kind = 'refund' THEN 0 - e.amount_fen ELSE 0 END) AS BIGINT) \
             FROM ledger_entries e JOIN orders o ON o.id = e.order_id \
             WHERE e.kind IN ('payment', 'refund') \
             GROUP BY e.merchant_id, e.day, o.lock_id ORDER BY e.merchant_id, e.day, o.lock_id";
        let rollup: Vec<Row> = sqlx::query_as(by_lock).fetch_all(pool).await.unwrap();
        let direct: Vec<Row> = sqlx::query_as(ledger_by_lock)
            .fetch_all(pool)
            .await
            .unwrap();
        assert_eq!(rollup, direct);
        assert_eq!(rollup.len(), 2, "one day and lock per tenant: {rollup:?}");
        let a_row = rollup.iter().find(|r| r.0 == w.a.merchant_id).unwrap();
        assert_eq!(a_row.2, w.a.lock_id);
        assert_eq!((a_row.3, a_row.4, a_row.5), (2, 300 + 300 - 150, 150));

        type DayRow = (String, String, i64, i64, i64);
        let by_day = "SELECT merchant_id, day, orders, revenue_fen, refunds_fen \
             FROM ledger_merchant_days ORDER BY merchant_id, day";
        let ledger_by_day = "SELECT merchant_id, day, \
             CAST(SUM(CASE WHEN kind = 'payment' THEN 1 ELSE 0 END) AS BIGINT), \
             CAST(SUM(amount_fen) AS BIGINT), \
             CAST(SUM(CASE WHEN kind = 'refund' THEN 0 - amount_fen ELSE 0 END) AS BIGINT) \
             FROM ledger_entries WHERE kind IN ('payment', 'refund') \
             GROUP BY merchant_id, day ORDER BY merchant_id, day";
        let days: Vec<DayRow> = sqlx::query_as(by_day).fetch_all(pool).await.unwrap();
        let direct_days: Vec<DayRow> = sqlx::query_as(ledger_by_day).fetch_all(pool).await.unwrap();
        assert_eq!(days, direct_days);

        // The backfill (migration 0007's statements) agrees with the incremental upkeep.
        let mut tx = pool.begin().await.unwrap();
        dmr_cloud::orders::money::rebuild_rollups(&mut tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let rebuilt: Vec<Row> = sqlx::query_as(by_lock).fetch_all(pool).await.unwrap();
        assert_eq!(rebuilt, rollup);
        let rebuilt_days: Vec<DayRow> = sqlx::query_as(by_day).fetch_all(pool).await.unwrap();
        assert_eq!(rebuilt_days, days);

        // The dashboard says what the ledger says.
        let (s, a) = app.get("/api/v1/dashboard/summary", &w.a.owner).await;
        assert_eq!(s, StatusCode::OK, "{a}");
        let today = a["days"].as_array().unwrap().last().unwrap().clone();
        let a_day = direct_days
            .iter()
            .find(|d| d.0 == w.a.merchant_id && d.1 == today["day"].as_str().unwrap())
            .unwrap();
        assert_eq!(a["today_orders"], a_day.2, "{a}");
        assert_eq!(a["today_revenue_fen"], a_day.3);
        assert_eq!(a["today_refunds_fen"], a_day.4);
        assert_eq!(a["busiest_locks"][0]["lock_id"], w.a.lock_id.as_str());
        assert_eq!(a["busiest_locks"][0]["orders"], a_row.3);
        assert_eq!(a["busiest_locks"][0]["revenue_fen"], a_row.4);
        let (_, all) = app.get("/api/v1/dashboard/summary", &w.admin).await;
        let ledger_today: i64 = direct_days
            .iter()
            .filter(|d| d.1 == today["day"].as_str().unwrap())
            .map(|d| d.3)
            .sum();
        assert_eq!(all["today_revenue_fen"], ledger_today, "{all}");
        assert_eq!(all["busiest_locks"].as_array().unwrap().len(), 2, "{all}");
        app.stop().await;
    }

    /// Order lists count at most 10,000 matches (or through the page after the requested
    /// one): past that, `total` is a lower bound and `total_exact` false, so a page view
    /// never counts a merchant's whole history. The page object matches the OpenAPI schema.
    pub async fn order_list_total_is_bounded(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        let (_, plan) = lock_qr_and_plan(&app, &w.a).await;
        let t = &w.a;
        // 10,050 ended orders straight into the table (the API would take minutes); 50 of
        // them `expired`, the rest `completed`.
        let n = 10_050;
        let mut conn = app.state.db.pool.acquire().await.unwrap();
        for start in (0..n).step_by(500) {
            let mut sql = String::from(
                "INSERT INTO orders (id, merchant_id, venue_id, lock_id, gateway_id, plan_id, plan_name, \
                 duration_minutes, amount_fen, status, device_session, idempotency_key, access_key_hash, \
                 provider, pay_deadline_at, created_at, updated_at) VALUES ",
            );
            for i in start..(start + 500).min(n) {
                let sep = if i == start { "" } else { ", " };
                let status = if i < 50 { "expired" } else { "completed" };
                sql.push_str(&format!(
                    "{sep}('{}', '{}', '{}', '{}', '{}', '{plan}', 'p', 60, 300, '{status}', 's{i}', 'k{i}', 'h{i}', \
                     'sandbox', {i}, {i}, {i})",
                    Uuid::new_v4(),
                    t.merchant_id,
                    t.venue_id,
                    t.lock_id,
                    t.gateway_id
                ));
            }
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut *conn)
                .await
                .unwrap();
        }
        drop(conn);

        let (s, p) = app.get("/api/v1/orders?per_page=20", &t.owner).await;
        assert_eq!(s, StatusCode::OK, "{p}");
        assert_eq!(p["total"], 10_000, "capped: {}", p["total"]);
        assert_eq!(p["total_exact"], false);
        assert_eq!(p["items"].as_array().unwrap().len(), 20);
        let (_, p) = app.get("/api/v1/orders?status=expired", &t.owner).await;
        assert_eq!(p["total"], 50);
        assert_eq!(p["total_exact"], true);
        // Deep pages count through the next page, so the pager can always step on ...
        let (_, p) = app
            .get("/api/v1/orders?per_page=20&page=500", &t.owner)
            .await;
        assert_eq!(p["total"], 10_020, "{}", p["total"]);
        assert_eq!(p["total_exact"], false);
        assert_eq!(p["items"].as_array().unwrap().len(), 20);
        // ... and a page that reaches the end knows the exact total.
        let (_, p) = app
            .get("/api/v1/orders?per_page=200&page=50", &t.owner)
            .await;
        assert_eq!(p["total"], n);
        assert_eq!(p["total_exact"], true);
        assert_eq!(p["items"].as_array().unwrap().len(), 200);
        let (_, p) = app
            .get("/api/v1/orders?per_page=200&page=51", &t.owner)
            .await;
        assert_eq!(p["total"], n);
        assert_eq!(p["items"].as_array().unwrap().len(), 50);
        // Another tenant's list is unaffected and exact.
        let (_, p) = app.get("/api/v1/orders", &w.b.owner).await;
        assert_eq!(
            (p["total"].as_i64(), p["total_exact"].as_bool()),
            (Some(0), Some(true))
        );

        // The page object has exactly the fields the OpenAPI schema lists, all required.
        let (_, doc) = app
            .call(reqwest::Method::GET, "/api/openapi.json", None, None)
            .await;
        let r = &doc["paths"]["/api/v1/orders"]["get"]["responses"]["200"]["content"]["application/json"]
            ["schema"]["$ref"];
        assert_eq!(r, "#/components/schemas/OrderPage");
        let schema = &doc["components"]["schemas"]["OrderPage"];
        let mut documented: Vec<&str> = schema["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("no page schema: {schema}"))
            .keys()
            .map(String::as_str)
            .collect();
        documented.sort_unstable();
        let mut served: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
        served.sort_unstable();
        assert_eq!(documented, served);
        let mut required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        required.sort_unstable();
        assert_eq!(required, served);
        app.stop().await;
    }

    pub async fn bad_input_is_never_a_500(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        let (qr, plan) = lock_qr_and_plan(&app, &w.a).await;
        let post = |body: String, idem: &'static str| {
            app.client
                .post(app.url_of("/api/v1/public/orders"))
                .header("content-type", "application/json")
                .header("Idempotency-Key", idem)
                .body(body)
                .send()
        };
        let r = post("{nope".into(), "key-00000001").await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let r = post(
            json!({ "qr_code": qr, "plan_id": plan, "amount_fen": 1 }).to_string(),
            "key-00000002",
        )
        .await
        .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "the client cannot set the amount"
        );
        let r = post(
            json!({ "qr_code": "NOPE", "plan_id": plan }).to_string(),
            "key-00000003",
        )
        .await
        .unwrap();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let r = post(
            json!({ "qr_code": qr, "plan_id": Uuid::new_v4().to_string() }).to_string(),
            "key-00000004",
        )
        .await
        .unwrap();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let r = post(
            json!({ "qr_code": qr, "plan_id": plan, "provider": "paypal" }).to_string(),
            "key-00000005",
        )
        .await
        .unwrap();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let r = post(
            json!({ "qr_code": qr, "plan_id": plan }).to_string(),
            "short",
        )
        .await
        .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad Idempotency-Key"
        );
        let big = "x".repeat(2 << 20);
        // Oversize bodies on clients of their own: after a 413 the server closes a
        // connection whose body it did not read, which a pooled connection would trip over.
        let r = reqwest::Client::new()
            .post(app.url_of("/api/v1/public/orders"))
            .header("content-type", "application/json")
            .header("Idempotency-Key", "key-00000006")
            .body(big.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let r = reqwest::Client::new()
            .post(app.url_of("/api/v1/payments/notify/sandbox"))
            .body(big)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        for path in [
            "/api/v1/public/locks/%00%01",
            "/api/v1/public/locks/NOSUCHLOCK",
            "/api/v1/public/orders/not-a-uuid?key=x",
            "/api/v1/public/orders/00000000-0000-0000-0000-000000000000/events",
            "/pay/sandbox/nope",
        ] {
            let (s, _) = app.call(reqwest::Method::GET, path, None, None).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
        }
        let (s, _) = app
            .call(reqwest::Method::GET, "/api/v1/public/my/orders", None, None)
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        for q in [
            "status=weird",
            "from=yesterday",
            "page=0",
            "sort=amount_fen;drop",
            "bogus=1",
        ] {
            let (s, b) = app.get(&format!("/api/v1/orders?{q}"), &w.a.owner).await;
            assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{q}: {b}");
        }
        let (s, _) = app
            .get("/api/v1/settlements?from=2026-02-31", &w.a.owner)
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        let (s, _) = app
            .post(
                &format!("/api/v1/orders/{}/refund", Uuid::new_v4()),
                &w.a.owner,
                json!({ "reason": "x" }),
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let r = app
            .client
            .post(app.url_of("/pay/sandbox/00000000-0000-0000-0000-000000000000?fail=explode"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        app.stop().await;
    }
}
