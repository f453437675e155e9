//! The `wechatpay` provider end to end, on both backends: the cloud talks to a fake WeChat
//! Pay server on loopback (which checks every request's `WECHATPAY2-SHA256-RSA2048` signature
//! with the merchant public key and signs its answers with the platform keys, using the RSA
//! crate directly rather than dmr-wechatpay), and receives notifications made by an
//! independent implementation (`wechatpay_notify.py`, Python `cryptography`). Keys are the
//! throwaway test keys of the crate's conformance vectors.

use crate::on_every_backend;

on_every_backend!(
    wechatpay_order_paid_by_notification_once,
    wechatpay_forged_and_mismatched_notifications_change_nothing,
    wechatpay_outage_opens_the_breaker_with_clear_errors,
    wechatpay_refunds_reuse_their_number_and_the_reconciler_queries,
);

pub mod fake {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use axum::response::{IntoResponse, Response};
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use rsa::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};
    use rsa::{Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
    use serde_json::{Value, json};
    use sha2::{Digest as _, Sha256};

    /// The test keys (cloud/wechatpay/tests/vectors/vectors.json, made by its generate.py).
    #[derive(Clone, Debug)]
    pub struct Keys {
        pub mchid: String,
        pub appid: String,
        pub merchant_serial_no: String,
        pub merchant_private_key_pem: String,
        pub merchant_public_key_pem: String,
        pub platform_private_key_pem: String,
        pub platform_certificate_pem: String,
        pub platform_serial_no: String,
        pub public_key_id: String,
        pub wechatpay_private_key_pem: String,
        pub wechatpay_public_key_pem: String,
        pub api_v3_key: String,
    }

    pub fn keys() -> Keys {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/wechatpay/tests/vectors/vectors.json"
        );
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let k = &v["keys"];
        let s = |n: &str| k[n].as_str().unwrap().to_string();
        Keys {
            mchid: s("mchid"),
            appid: s("appid"),
            merchant_serial_no: s("merchant_serial_no"),
            merchant_private_key_pem: s("merchant_private_key_pem"),
            merchant_public_key_pem: s("merchant_public_key_pem"),
            platform_private_key_pem: s("platform_private_key_pem"),
            platform_certificate_pem: s("platform_certificate_pem"),
            platform_serial_no: s("platform_serial_no"),
            public_key_id: s("wechatpay_public_key_id"),
            wechatpay_private_key_pem: s("wechatpay_private_key_pem"),
            wechatpay_public_key_pem: s("wechatpay_public_key_pem"),
            api_v3_key: s("api_v3_key"),
        }
    }

    /// One request as the fake saw it.
    #[derive(Clone, Debug)]
    pub struct Seen {
        pub method: String,
        pub path: String,
        pub body: Value,
    }

    #[derive(Debug, Default)]
    pub struct World {
        pub outage: bool,
        /// Answer this many of the next refund requests with 500 (a flaky WeChat Pay).
        pub fail_next_refunds: u32,
        pub seen: Vec<Seen>,
        /// Requests whose signature did not verify (must stay empty).
        pub bad_signatures: Vec<String>,
        /// out_trade_no -> (transaction_id, amount) for payments made "in WeChat".
        pub paid: HashMap<String, (String, i64)>,
        /// out_refund_no -> (refund_id, status).
        pub refunds: HashMap<String, (String, String)>,
        pub refund_requests: Vec<String>,
    }

    #[derive(Clone)]
    pub struct Fake {
        pub world: Arc<Mutex<World>>,
        keys: Arc<Keys>,
        merchant: RsaPublicKey,
        platform: RsaPrivateKey,
        wechatpay: RsaPrivateKey,
        pub addr: SocketAddr,
    }

    impl Fake {
        pub async fn start(keys: &Keys) -> Fake {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let fake = Fake {
                world: Arc::new(Mutex::new(World::default())),
                keys: Arc::new(keys.clone()),
                merchant: RsaPublicKey::from_public_key_pem(&keys.merchant_public_key_pem).unwrap(),
                platform: RsaPrivateKey::from_pkcs8_pem(&keys.platform_private_key_pem).unwrap(),
                wechatpay: RsaPrivateKey::from_pkcs8_pem(&keys.wechatpay_private_key_pem).unwrap(),
                addr: listener.local_addr().unwrap(),
            };
            let app = axum::Router::new()
                .fallback(handle)
                .with_state(fake.clone());
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            fake
        }

        pub fn base_url(&self) -> String {
            format!("http://{}", self.addr)
        }

        pub fn world(&self) -> std::sync::MutexGuard<'_, World> {
            self.world.lock().unwrap()
        }

        /// Requests to a path prefix so far.
        pub fn hits(&self, prefix: &str) -> Vec<Seen> {
            self.world()
                .seen
                .iter()
                .filter(|s| s.path.starts_with(prefix))
                .cloned()
                .collect()
        }

        fn check_signature(
            &self,
            method: &Method,
            uri: &Uri,
            headers: &HeaderMap,
            body: &[u8],
        ) -> Result<(), String> {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .ok_or("no Authorization")?;
            let rest = auth
                .strip_prefix("WECHATPAY2-SHA256-RSA2048 ")
                .ok_or("wrong scheme")?;
            let mut fields = HashMap::new();
            for part in rest.split(',') {
                let (k, v) = part.split_once('=').ok_or("bad field")?;
                fields.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
            }
            let get = |k: &str| fields.get(k).cloned().ok_or(format!("no {k}"));
            if get("mchid")? != self.keys.mchid {
                return Err("wrong mchid".into());
            }
            if get("serial_no")? != self.keys.merchant_serial_no {
                return Err("wrong serial_no".into());
            }
            let ts: i64 = get("timestamp")?.parse().map_err(|_| "timestamp")?;
            let now = dmr_cloud::db::now_ms() / 1000;
            if (now - ts).abs() > 300 {
                return Err("stale timestamp".into());
            }
            let message = format!(
                "{}\n{}\n{}\n{}\n{}\n",
                method.as_str(),
                uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                ts,
                get("nonce_str")?,
                String::from_utf8_lossy(body)
            );
            let sig = STANDARD
                .decode(get("signature")?)
                .map_err(|_| "signature b64")?;
            self.merchant
                .verify(
                    Pkcs1v15Sign::new::<Sha256>(),
                    &Sha256::digest(message.as_bytes()),
                    &sig,
                )
                .map_err(|_| "signature does not verify".to_string())
        }

        /// An answer signed as WeChat Pay signs it: with the public key when the request
        /// named its id in `Wechatpay-Serial`, with the platform certificate otherwise.
        fn signed(&self, request: &HeaderMap, status: StatusCode, body: &Value) -> Response {
            let body = if body.is_null() {
                String::new()
            } else {
                body.to_string()
            };
            let wants_public_key = request
                .get("wechatpay-serial")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v == self.keys.public_key_id);
            let (key, serial) = if wants_public_key {
                (&self.wechatpay, self.keys.public_key_id.clone())
            } else {
                (&self.platform, self.keys.platform_serial_no.clone())
            };
            let ts = (dmr_cloud::db::now_ms() / 1000).to_string();
            let nonce = uuid::Uuid::new_v4().simple().to_string();
            let message = format!("{ts}\n{nonce}\n{body}\n");
            let sig = key
                .sign(
                    Pkcs1v15Sign::new::<Sha256>(),
                    &Sha256::digest(message.as_bytes()),
                )
                .unwrap();
            let mut resp = (status, body).into_response();
            let h = resp.headers_mut();
            h.insert("content-type", "application/json".parse().unwrap());
            h.insert("wechatpay-serial", serial.parse().unwrap());
            h.insert("wechatpay-timestamp", ts.parse().unwrap());
            h.insert("wechatpay-nonce", nonce.parse().unwrap());
            h.insert("wechatpay-signature", STANDARD.encode(sig).parse().unwrap());
            h.insert("request-id", "fake-request".parse().unwrap());
            resp
        }

        fn transaction(&self, no: &str) -> Value {
            let w = self.world();
            match w.paid.get(no) {
                Some((txn, amount)) => json!({
                    "appid": self.keys.appid, "mchid": self.keys.mchid, "out_trade_no": no,
                    "transaction_id": txn, "trade_type": "JSAPI", "trade_state": "SUCCESS",
                    "trade_state_desc": "支付成功", "bank_type": "OTHERS",
                    "success_time": "2026-11-26T10:34:56+08:00",
                    "payer": { "openid": "oTestPayer" },
                    "amount": { "total": amount, "payer_total": amount, "currency": "CNY", "payer_currency": "CNY" }
                }),
                None => json!({
                    "appid": self.keys.appid, "mchid": self.keys.mchid, "out_trade_no": no,
                    "trade_state": "NOTPAY", "trade_state_desc": "订单未支付"
                }),
            }
        }
    }

    fn refund_body(no: &str, id: &str, status: &str, req: &Value) -> Value {
        json!({
            "refund_id": id, "out_refund_no": no, "out_trade_no": req["out_trade_no"],
            "transaction_id": "4200000000000000000000000001", "channel": "ORIGINAL",
            "user_received_account": "支付用户零钱", "create_time": "2026-11-26T10:40:00+08:00",
            "status": status,
            "amount": { "total": req["amount"]["total"], "refund": req["amount"]["refund"],
                        "payer_total": req["amount"]["total"], "payer_refund": req["amount"]["refund"],
                        "currency": "CNY" }
        })
    }

    async fn handle(
        State(fake): State<Fake>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let path = uri.path().to_string();
        let json_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        {
            let mut w = fake.world();
            w.seen.push(Seen {
                method: method.to_string(),
                path: path.clone(),
                body: json_body.clone(),
            });
            if w.outage {
                return (StatusCode::INTERNAL_SERVER_ERROR, "upstream down").into_response();
            }
        }
        if let Err(why) = fake.check_signature(&method, &uri, &headers, &body) {
            fake.world().bad_signatures.push(format!("{path}: {why}"));
            return fake.signed(
                &headers,
                StatusCode::UNAUTHORIZED,
                &json!({ "code": "SIGN_ERROR", "message": why }),
            );
        }
        // Slow enough that concurrency would show, fast enough for a test.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let ok = StatusCode::OK;
        match (method.as_str(), path.as_str()) {
            ("POST", "/v3/pay/transactions/jsapi") => fake.signed(
                &headers,
                ok,
                &json!({ "prepay_id": format!("wx{}", uuid::Uuid::new_v4().simple()) }),
            ),
            ("POST", "/v3/pay/transactions/native") => fake.signed(
                &headers,
                ok,
                &json!({ "code_url": format!("weixin://wxpay/bizpayurl?pr={}", &uuid::Uuid::new_v4().simple().to_string()[..8]) }),
            ),
            ("POST", p) if p.ends_with("/close") => {
                fake.signed(&headers, StatusCode::NO_CONTENT, &Value::Null)
            }
            ("GET", p) if p.starts_with("/v3/pay/transactions/out-trade-no/") => {
                let no = p.trim_start_matches("/v3/pay/transactions/out-trade-no/");
                let t = fake.transaction(no);
                fake.signed(&headers, ok, &t)
            }
            ("POST", "/v3/refund/domestic/refunds") => {
                let no = json_body["out_refund_no"].as_str().unwrap_or("").to_string();
                let mut w = fake.world();
                w.refund_requests.push(no.clone());
                if w.fail_next_refunds > 0 {
                    w.fail_next_refunds -= 1;
                    drop(w);
                    return (StatusCode::INTERNAL_SERVER_ERROR, "try later").into_response();
                }
                let (id, status) = w
                    .refunds
                    .entry(no.clone())
                    .or_insert_with(|| {
                        (
                            format!("5030{}", uuid::Uuid::new_v4().simple()),
                            "PROCESSING".to_string(),
                        )
                    })
                    .clone();
                drop(w);
                fake.signed(&headers, ok, &refund_body(&no, &id, &status, &json_body))
            }
            ("GET", p) if p.starts_with("/v3/refund/domestic/refunds/") => {
                let no = p.trim_start_matches("/v3/refund/domestic/refunds/");
                let found = fake.world().refunds.get(no).cloned();
                match found {
                    Some((id, status)) => {
                        let req = json!({ "out_trade_no": "x", "amount": { "total": 300, "refund": 300 } });
                        fake.signed(&headers, ok, &refund_body(no, &id, &status, &req))
                    }
                    None => fake.signed(
                        &headers,
                        StatusCode::NOT_FOUND,
                        &json!({ "code": "RESOURCE_NOT_EXISTS", "message": "退款单不存在" }),
                    ),
                }
            }
            _ => fake.signed(
                &headers,
                StatusCode::NOT_FOUND,
                &json!({ "code": "NOT_FOUND", "message": "no such API in the fake" }),
            ),
        }
    }
}

pub mod notes {
    //! Notifications from the independent Python implementation.
    use serde_json::{Value, json};

    use super::fake::Keys;

    /// One notification to make.
    #[derive(Clone, Debug)]
    pub struct Spec {
        pub id: String,
        pub event_type: String,
        pub original_type: &'static str,
        pub resource: Value,
        pub timestamp: i64,
        pub serial: String,
        pub tamper: Option<&'static str>,
    }

    /// A made notification: headers and the exact body bytes.
    #[derive(Clone, Debug)]
    pub struct Made {
        pub headers: Vec<(String, String)>,
        pub body: String,
    }

    pub fn now_s() -> i64 {
        dmr_cloud::db::now_ms() / 1000
    }

    pub fn payment(k: &Keys, id: &str, out_trade_no: &str, amount: i64, cert: bool) -> Spec {
        Spec {
            id: id.into(),
            event_type: "TRANSACTION.SUCCESS".into(),
            original_type: "transaction",
            resource: json!({
                "mchid": k.mchid, "appid": k.appid, "out_trade_no": out_trade_no,
                "transaction_id": format!("42000{}", &id.replace('-', "")),
                "trade_type": "JSAPI", "trade_state": "SUCCESS", "trade_state_desc": "支付成功",
                "bank_type": "CMC", "attach": "", "success_time": "2026-11-26T10:34:56+08:00",
                "payer": { "openid": "oTestPayer" },
                "amount": { "total": amount, "payer_total": amount, "currency": "CNY", "payer_currency": "CNY" }
            }),
            timestamp: now_s(),
            serial: if cert {
                k.platform_serial_no.clone()
            } else {
                k.public_key_id.clone()
            },
            tamper: None,
        }
    }

    pub fn refund(
        k: &Keys,
        id: &str,
        out_trade_no: &str,
        out_refund_no: &str,
        amount: i64,
    ) -> Spec {
        Spec {
            id: id.into(),
            event_type: "REFUND.SUCCESS".into(),
            original_type: "refund",
            resource: json!({
                "mchid": k.mchid, "out_trade_no": out_trade_no,
                "transaction_id": "4200000000000000000000000001", "out_refund_no": out_refund_no,
                "refund_id": "50300000000000000000000000001", "refund_status": "SUCCESS",
                "success_time": "2026-11-26T10:45:00+08:00", "user_received_account": "支付用户零钱",
                "amount": { "total": amount, "refund": amount, "payer_total": amount, "payer_refund": amount }
            }),
            timestamp: now_s(),
            serial: k.public_key_id.clone(),
            tamper: None,
        }
    }

    /// Runs wechatpay_notify.py once for all specs.
    pub async fn make(k: &Keys, specs: &[Spec]) -> Vec<Made> {
        let input = json!({
            "api_v3_key": k.api_v3_key,
            "signers": {
                k.platform_serial_no.clone(): k.platform_private_key_pem,
                k.public_key_id.clone(): k.wechatpay_private_key_pem,
            },
            "items": specs.iter().map(|s| json!({
                "id": s.id, "event_type": s.event_type, "original_type": s.original_type,
                "resource": s.resource, "timestamp": s.timestamp, "serial": s.serial,
                "tamper": s.tamper,
            })).collect::<Vec<_>>(),
        })
        .to_string();
        let out = tokio::task::spawn_blocking(move || {
            use std::io::Write as _;
            let python = std::env::var("DMR_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/wechatpay_notify.py");
            let mut child = std::process::Command::new(&python)
                .arg(script)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run {python} ({e}): install python3 and python3-cryptography (scripts/setup.sh)")
                });
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "wechatpay_notify.py failed (python3-cryptography installed? scripts/setup.sh): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        })
        .await
        .unwrap();
        let v: Vec<Value> = serde_json::from_slice(&out).unwrap();
        v.into_iter()
            .map(|m| Made {
                headers: m["headers"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect(),
                body: m["body"].as_str().unwrap().to_string(),
            })
            .collect()
    }
}

pub mod support {
    use std::time::Duration;

    use reqwest::StatusCode;
    use serde_json::{Value, json};
    use uuid::Uuid;

    use super::fake::{Fake, Keys};
    use super::notes::Made;
    use crate::common::{DbKind, TestApp};

    pub const NOTIFY_URL: &str = "https://cloud.example.invalid/api/v1/payments/notify/wechatpay";

    /// The cloud's wechatpay configuration against the fake: both the platform certificate
    /// and the WeChat Pay public key trusted, quick retries, a small breaker.
    pub fn config(k: &Keys, fake: &Fake) -> dmr_wechatpay::WechatPayConfig {
        let mut c = dmr_wechatpay::WechatPayConfig::new(
            k.mchid.clone(),
            k.appid.clone(),
            k.merchant_serial_no.clone(),
            k.merchant_private_key_pem.clone(),
            k.api_v3_key.clone(),
            NOTIFY_URL,
        );
        c.refund_notify_url = Some(NOTIFY_URL.into());
        c.platform_certificates_pem = vec![k.platform_certificate_pem.clone()];
        c.wechatpay_public_key = Some(dmr_wechatpay::PublicKeyConfig {
            id: k.public_key_id.clone(),
            pem: k.wechatpay_public_key_pem.clone(),
        });
        c.base_url = fake.base_url();
        c.request_timeout = Duration::from_secs(3);
        c.retry.max_attempts = 2;
        c.retry.initial_backoff = Duration::from_millis(10);
        c.retry.max_backoff = Duration::from_millis(20);
        c.breaker.failure_threshold = 3;
        c.breaker.cool_down = Duration::from_millis(1500);
        c
    }

    pub async fn spawn(kind: &DbKind) -> (TestApp, Fake, Keys) {
        let k = super::fake::keys();
        let fake = Fake::start(&k).await;
        let c = config(&k, &fake);
        let app = TestApp::spawn_with(kind, move |cfg| cfg.wechatpay = Some(c)).await;
        (app, fake, k)
    }

    /// POST /api/v1/public/orders for WeChat Pay (JSAPI with an openid, Native without).
    pub async fn create_order(
        app: &TestApp,
        qr: &str,
        plan: &str,
        idem: &str,
        openid: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut body = json!({ "qr_code": qr, "plan_id": plan, "provider": "wechat" });
        if let Some(o) = openid {
            body["openid"] = json!(o);
        }
        let resp = app
            .client
            .post(app.url_of("/api/v1/public/orders"))
            .header("Idempotency-Key", idem)
            .header("X-Device-Session", format!("session-{idem}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = resp.status();
        (s, resp.json().await.unwrap_or(Value::Null))
    }

    /// A new JSAPI order on the tenant's lock: (order id, access key, out_trade_no).
    pub async fn new_order(app: &TestApp, t: &crate::common::Tenant) -> (String, String, String) {
        let (qr, plan) = crate::orders::support::lock_qr_and_plan(app, t).await;
        let (s, b) = create_order(
            app,
            &qr,
            &plan,
            &Uuid::new_v4().to_string(),
            Some("oTestPayer"),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        let id = b["order"]["id"].as_str().unwrap().to_string();
        let no = out_trade_no(app, &id).await;
        (id, b["access_key"].as_str().unwrap().to_string(), no)
    }

    pub async fn out_trade_no(app: &TestApp, order_id: &str) -> String {
        sqlx::query_scalar::<_, String>("SELECT out_trade_no FROM payments WHERE order_id = $1")
            .bind(order_id.to_string())
            .fetch_one(&app.state.db.pool)
            .await
            .unwrap()
    }

    /// Delivers one notification; returns the status and the body text.
    pub async fn deliver(app: &TestApp, m: &Made) -> (StatusCode, String) {
        deliver_without(app, m, None).await
    }

    pub async fn deliver_without(
        app: &TestApp,
        m: &Made,
        drop_header: Option<&str>,
    ) -> (StatusCode, String) {
        let mut req = app
            .client
            .post(app.url_of("/api/v1/payments/notify/wechatpay"))
            .body(m.body.clone().into_bytes());
        for (k, v) in &m.headers {
            if Some(k.as_str()) != drop_header {
                req = req.header(k.as_str(), v.as_str());
            }
        }
        let resp = req.send().await.unwrap();
        let s = resp.status();
        (s, resp.text().await.unwrap())
    }

    pub async fn count(app: &TestApp, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&app.state.db.pool)
            .await
            .unwrap()
    }

    /// What a refused notification may not change: counts of the rows a payment touches.
    pub async fn footprint(app: &TestApp) -> Vec<i64> {
        let mut v = Vec::new();
        for sql in [
            "SELECT COUNT(*) FROM payment_notifications",
            "SELECT COUNT(*) FROM ledger_entries",
            "SELECT COUNT(*) FROM payments WHERE status <> 'pending'",
            "SELECT COUNT(*) FROM orders WHERE status <> 'created'",
            "SELECT COUNT(*) FROM refunds",
        ] {
            v.push(count(app, sql).await);
        }
        v
    }
}

mod scenarios {
    use std::time::Duration;

    use dmr_cloud::db::now_ms;
    use dmr_cloud::orders::jobs::run_once;
    use dmr_protocol::token::UnlockToken;
    use reqwest::StatusCode;
    use serde_json::{Value, json};
    use uuid::Uuid;

    use super::notes::{self, make};
    use super::support::*;
    use crate::common::{DbKind, error_code, eventually, seed_world};
    use crate::order_fixtures::{
        door_cycle, lock_opened, merchant_refund, offline_token, public_lock,
    };
    use crate::orders::support::{
        Recorder, ledger_count, ledger_sum, lock_qr_and_plan, order_status,
    };

    pub async fn wechatpay_order_paid_by_notification_once(kind: &DbKind) {
        let (app, fake, k) = spawn(kind).await;
        let w = seed_world(&app).await;
        let rec = Recorder::new(false);
        app.state.orders.set_dispatcher(rec.clone());

        // The lock page offers WeChat Pay next to the sandbox.
        let (qr, plan) = lock_qr_and_plan(&app, &w.a).await;
        let (s, lock) = public_lock(&app, &qr).await;
        assert_eq!(s, StatusCode::OK, "{lock}");
        let offered: Vec<&str> = lock["providers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert!(
            offered.contains(&"wechat") && offered.contains(&"sandbox"),
            "{offered:?}"
        );

        // JSAPI: the phone gets the parameters for getBrandWCPayRequest.
        let (s, a) = create_order(&app, &qr, &plan, "wx-tap-000001", Some("oTestPayer")).await;
        assert_eq!(s, StatusCode::CREATED, "{a}");
        let id = a["order"]["id"].as_str().unwrap().to_string();
        let key = a["access_key"].as_str().unwrap().to_string();
        let p = &a["payment"];
        assert_eq!(p["provider"], "wechat");
        assert_eq!(p["jsapi"]["appId"], k.appid.as_str());
        assert_eq!(p["jsapi"]["signType"], "RSA");
        assert!(
            p["jsapi"]["package"]
                .as_str()
                .unwrap()
                .starts_with("prepay_id=wx")
        );
        assert!(!p["jsapi"]["paySign"].as_str().unwrap().is_empty());
        let no = out_trade_no(&app, &id).await;
        let prepay = fake.hits("/v3/pay/transactions/jsapi");
        assert_eq!(prepay.len(), 1);
        assert_eq!(prepay[0].method, "POST");
        let sent = &prepay[0].body;
        assert_eq!(sent["out_trade_no"], no.as_str());
        assert_eq!(sent["amount"]["total"], 300, "the plan's price, in fen");
        assert_eq!(sent["payer"]["openid"], "oTestPayer");
        assert_eq!(sent["mchid"], k.mchid.as_str());
        assert_eq!(sent["notify_url"], NOTIFY_URL);
        assert!(sent["time_expire"].as_str().unwrap().ends_with("+08:00"));

        // An openid that cannot be one is bad input, not a provider problem.
        let (qr_b, plan_b) = lock_qr_and_plan(&app, &w.b).await;
        let (s, e) =
            create_order(&app, &qr_b, &plan_b, "wx-tap-bad-openid", Some("o<script>")).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
        assert_eq!(e["error"]["details"]["field"], "openid", "{e}");

        // Native (outside WeChat): a code_url for a QR code.
        let (s, b) = create_order(&app, &qr_b, &plan_b, "wx-tap-000002", None).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        assert!(
            b["payment"]["code_url"]
                .as_str()
                .unwrap()
                .starts_with("weixin://wxpay/")
        );
        assert!(b["payment"].get("jsapi").is_none());
        let id_b = b["order"]["id"].as_str().unwrap().to_string();
        let no_b = out_trade_no(&app, &id_b).await;
        assert_eq!(fake.hits("/v3/pay/transactions/native").len(), 1);
        assert!(
            fake.world().bad_signatures.is_empty(),
            "{:?}",
            fake.world().bad_signatures
        );

        // Paid: a notification signed with the platform certificate for order a, one signed
        // with the WeChat Pay public key for order b.
        let made = make(
            &k,
            &[
                notes::payment(&k, "EV-a-0001", &no, 300, true),
                notes::payment(&k, "EV-b-0001", &no_b, 300, false),
            ],
        )
        .await;
        let (s, text) = deliver(&app, &made[0]).await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{text}");
        assert_eq!(order_status(&app, &id).await, "unlocking");
        assert_eq!(ledger_count(&app, &id, "payment").await, 1);
        assert_eq!(ledger_sum(&app, &id).await, 300);
        let (s, text) = deliver(&app, &made[1]).await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{text}");
        assert_eq!(order_status(&app, &id_b).await, "unlocking");

        // The same notification ten times, then twice at once: one payment, one entry, 2xx.
        for _ in 0..10 {
            let (s, text) = deliver(&app, &made[0]).await;
            assert_eq!(s, StatusCode::NO_CONTENT, "{text}");
        }
        let (r1, r2) = tokio::join!(deliver(&app, &made[0]), deliver(&app, &made[0]));
        assert_eq!(r1.0, StatusCode::NO_CONTENT, "{}", r1.1);
        assert_eq!(r2.0, StatusCode::NO_CONTENT, "{}", r2.1);
        assert_eq!(ledger_count(&app, &id, "payment").await, 1);
        assert_eq!(ledger_sum(&app, &id).await, 300);
        assert_eq!(
            count(
                &app,
                "SELECT COUNT(*) FROM payment_notifications WHERE notification_id = 'EV-a-0001'"
            )
            .await,
            1
        );
        let (txn, status): (String, String) =
            sqlx::query_as("SELECT provider_txn_id, status FROM payments WHERE out_trade_no = $1")
                .bind(no.clone())
                .fetch_one(&app.state.db.pool)
                .await
                .unwrap();
        assert_eq!(
            (txn.as_str(), status.as_str()),
            ("42000EVa0001", "succeeded")
        );

        // A fresh delivery of the same payment under a new notification id (WeChat Pay
        // resends with new ids at times) is idempotent by transaction too.
        let mut resent = notes::payment(&k, "EV-a-0002", &no, 300, false);
        resent.resource["transaction_id"] = json!("42000EVa0001");
        let again = make(&k, &[resent]).await;
        let (s, text) = deliver(&app, &again[0]).await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{text}");
        assert_eq!(ledger_count(&app, &id, "payment").await, 1);

        // Token → unlock → door, as with the sandbox.
        let sent = rec.sent();
        let mine: Vec<_> = sent
            .iter()
            .filter(|(gw, _)| gw.to_string() == w.a.gateway_id)
            .collect();
        assert_eq!(mine.len(), 1, "one cmd unlock for order a");
        let token = UnlockToken::from_text(&mine[0].1).unwrap();
        assert_eq!(token.claims().order_id.to_string(), id);
        let (s, t) = offline_token(&app, &id, &key).await;
        assert_eq!(s, StatusCode::OK, "{t}");
        assert_eq!(t["token"].as_str().unwrap(), mine[0].1);
        lock_opened(&app, &w.a, &id).await;
        assert_eq!(order_status(&app, &id).await, "unlocked");
        door_cycle(&app, &w.a).await;
        assert_eq!(order_status(&app, &id).await, "completed");
        assert!(fake.world().bad_signatures.is_empty());
        app.stop().await;
    }

    pub async fn wechatpay_forged_and_mismatched_notifications_change_nothing(kind: &DbKind) {
        let (app, _fake, k) = spawn(kind).await;
        let w = seed_world(&app).await;
        app.state.orders.set_dispatcher(Recorder::new(false));
        let (id, _, no) = new_order(&app, &w.a).await;
        let before = footprint(&app).await;

        let good = notes::payment(&k, "EV-forged-1", &no, 300, true);
        let with = |tamper: &'static str| notes::Spec {
            tamper: Some(tamper),
            ..good.clone()
        };
        let mut specs = vec![
            with("ciphertext"),
            with("tag"),
            with("nonce"),
            with("associated_data"),
            with("body_after_signing"),
            with("signature"),
            with("signtest"),
            notes::Spec {
                timestamp: notes::now_s() - 360,
                ..good.clone()
            },
            notes::Spec {
                timestamp: notes::now_s() + 360,
                ..good.clone()
            },
            // Signed by the public key but claiming the certificate's serial.
            notes::Spec {
                serial: k.public_key_id.clone(),
                ..good.clone()
            },
        ];
        // The wrong key entirely: a serial nobody configured (signed by the platform key).
        let mut unknown = good.clone();
        unknown.serial = "PUB_KEY_ID_0000000000000000000000000000000000".into();
        specs.push(good.clone());
        let made = make(&k, &specs).await;
        let mut made_unknown = make(&k, std::slice::from_ref(&good)).await.remove(0);
        for (h, v) in made_unknown.headers.iter_mut() {
            if h == "Wechatpay-Serial" {
                *v = unknown.serial.clone();
            }
        }
        // The public-key-signed body presented under the certificate's serial.
        let mut cross = made[9].clone();
        for (h, v) in cross.headers.iter_mut() {
            if h == "Wechatpay-Serial" {
                *v = k.platform_serial_no.clone();
            }
        }
        let genuine = made[10].clone();
        let names = [
            "ciphertext",
            "tag",
            "nonce",
            "associated_data",
            "body_after_signing",
            "signature",
            "signtest",
            "stale",
            "future",
        ];
        let mut cases: Vec<(String, super::notes::Made, Option<&str>)> = names
            .iter()
            .zip(made.iter())
            .map(|(n, m)| (n.to_string(), m.clone(), None))
            .collect();
        cases.push(("cross-signed".into(), cross, None));
        cases.push(("unknown serial".into(), made_unknown, None));
        for h in [
            "Wechatpay-Serial",
            "Wechatpay-Timestamp",
            "Wechatpay-Nonce",
            "Wechatpay-Signature",
        ] {
            cases.push((format!("missing {h}"), genuine.clone(), Some(h)));
        }
        for (name, m, drop) in &cases {
            let (s, text) = deliver_without(&app, m, *drop).await;
            assert!(s.is_client_error(), "{name}: {s} {text}");
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{name}: {text}"));
            assert_eq!(v["code"], "FAIL", "{name}: WeChat's failure body: {text}");
            assert!(
                v["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{name}: {text}"
            );
            assert_eq!(footprint(&app).await, before, "{name} changed something");
        }
        assert_eq!(order_status(&app, &id).await, "created");

        // Authentic but wrong: amount, merchant id, app id. Refused and alerted.
        let alerts = || {
            count(
                &app,
                "SELECT COUNT(*) FROM payment_alerts WHERE kind = 'notification_mismatch'",
            )
        };
        assert_eq!(alerts().await, 0);
        let mut amount = notes::payment(&k, "EV-mis-amount", &no, 299, true);
        amount.resource["amount"]["payer_total"] = json!(299);
        let mut mchid = notes::payment(&k, "EV-mis-mchid", &no, 300, true);
        mchid.resource["mchid"] = json!("1900000000");
        let mut appid = notes::payment(&k, "EV-mis-appid", &no, 300, false);
        appid.resource["appid"] = json!("wx0000000000000000");
        let made = make(&k, &[amount, mchid, appid]).await;
        for (i, m) in made.iter().enumerate() {
            let (s, text) = deliver(&app, m).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "mismatch {i}: {text}");
            assert!(text.contains("\"FAIL\""), "{text}");
            assert_eq!(
                footprint(&app).await,
                before,
                "mismatch {i} changed something"
            );
            assert_eq!(alerts().await, i as i64 + 1, "mismatch {i} alerted");
        }

        // The genuine one still works afterwards.
        let (s, text) = deliver(&app, &genuine).await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{text}");
        assert_eq!(order_status(&app, &id).await, "unlocking");
        assert_eq!(ledger_count(&app, &id, "payment").await, 1);
        app.stop().await;
    }

    pub async fn wechatpay_outage_opens_the_breaker_with_clear_errors(kind: &DbKind) {
        let (app, fake, _k) = spawn(kind).await;
        let w = seed_world(&app).await;
        let (qr, plan) = lock_qr_and_plan(&app, &w.a).await;
        fake.world().outage = true;

        // Two attempts (the same out_trade_no both times), then a clear 503.
        let (s, b) = create_order(&app, &qr, &plan, "outage-key-1", Some("oTestPayer")).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
        assert_eq!(error_code(&b), "payment_unavailable");
        let hits = fake.hits("/v3/pay/transactions/jsapi");
        assert_eq!(hits.len(), 2, "bounded retries");
        assert_eq!(hits[0].body["out_trade_no"], hits[1].body["out_trade_no"]);

        // The replay (the payer taps "pay" again) fails once more and opens the breaker.
        let (s, b) = create_order(&app, &qr, &plan, "outage-key-1", Some("oTestPayer")).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
        assert_eq!(fake.hits("/v3/pay/transactions/jsapi").len(), 3);

        // Open: answered at once, nothing sent, the message says why.
        for _ in 0..5 {
            let (s, b) = create_order(&app, &qr, &plan, "outage-key-1", Some("oTestPayer")).await;
            assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
            assert_eq!(error_code(&b), "payment_unavailable");
            assert!(
                b["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("circuit breaker"),
                "{b}"
            );
        }
        assert_eq!(
            fake.hits("/v3/pay/transactions/jsapi").len(),
            3,
            "no pile-up while open"
        );
        // Other lock, other order: the same quick refusal.
        let (qr_b, plan_b) = lock_qr_and_plan(&app, &w.b).await;
        let (s, b) = create_order(&app, &qr_b, &plan_b, "outage-key-2", None).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
        assert_eq!(fake.hits("/v3/pay/transactions/native").len(), 0);

        // WeChat Pay is back: after the cool-down one trial goes through and closes it.
        fake.world().outage = false;
        eventually(
            "the breaker lets a trial through",
            Duration::from_secs(10),
            || {
                let app = &app;
                let (qr, plan) = (qr.clone(), plan.clone());
                async move {
                    let (s, _) =
                        create_order(app, &qr, &plan, "outage-key-1", Some("oTestPayer")).await;
                    s == StatusCode::OK
                }
            },
        )
        .await;
        let (s, last) = create_order(&app, &qr, &plan, "outage-key-1", Some("oTestPayer")).await;
        assert_eq!(s, StatusCode::OK, "{last}");
        assert!(last["payment"]["jsapi"]["paySign"].is_string(), "{last}");
        let hits = fake.hits("/v3/pay/transactions/jsapi");
        let nos: std::collections::BTreeSet<_> = hits
            .iter()
            .map(|h| h.body["out_trade_no"].to_string())
            .collect();
        assert_eq!(nos.len(), 1, "every attempt carried the same out_trade_no");
        assert!(fake.world().bad_signatures.is_empty());
        app.stop().await;
    }

    pub async fn wechatpay_refunds_reuse_their_number_and_the_reconciler_queries(kind: &DbKind) {
        let (app, fake, k) = spawn(kind).await;
        let w = seed_world(&app).await;
        app.state.orders.set_dispatcher(Recorder::new(false));

        // The reconciler: paid in WeChat, notification never came.
        let (id, _, no) = new_order(&app, &w.a).await;
        fake.world()
            .paid
            .insert(no.clone(), ("4200000000000000000000000009".into(), 300));
        run_once(&app.state, now_ms() + 5_000).await.unwrap();
        assert_eq!(order_status(&app, &id).await, "created", "too early to ask");
        assert!(fake.hits("/v3/pay/transactions/out-trade-no/").is_empty());
        run_once(&app.state, now_ms() + 31_000).await.unwrap();
        let queries = fake.hits(&format!("/v3/pay/transactions/out-trade-no/{no}"));
        assert_eq!(queries.len(), 1, "asked once about the silent payment");
        assert_eq!(order_status(&app, &id).await, "unlocking");
        assert_eq!(ledger_count(&app, &id, "payment").await, 1);
        // The late real notification changes nothing more (same transaction).
        let mut late = notes::payment(&k, "EV-late-1", &no, 300, true);
        late.resource["transaction_id"] = json!("4200000000000000000000000009");
        let made = make(&k, &[late]).await;
        let (s, text) = deliver(&app, &made[0]).await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{text}");
        assert_eq!(ledger_count(&app, &id, "payment").await, 1);

        // A merchant refund; WeChat Pay fails the first request, the retry reuses the number.
        fake.world().fail_next_refunds = 1;
        let (s, r) =
            merchant_refund(&app, &w.a.owner, &id, json!({ "reason": "门锁未打开" })).await;
        assert!(s.is_success(), "{r}");
        let mut t = now_ms() + 1_000;
        run_once(&app.state, t).await.unwrap();
        let (out_refund_no, status): (String, String) =
            sqlx::query_as("SELECT out_refund_no, status FROM refunds WHERE order_id = $1")
                .bind(id.clone())
                .fetch_one(&app.state.db.pool)
                .await
                .unwrap();
        let requests = fake.world().refund_requests.clone();
        assert_eq!(requests.len(), 2, "one failure, one retry: {requests:?}");
        assert!(requests.iter().all(|n| *n == out_refund_no), "{requests:?}");
        assert_eq!(status, "processing", "WeChat Pay said PROCESSING");
        let body = &fake.hits("/v3/refund/domestic/refunds")[0].body;
        assert_eq!(body["amount"]["refund"], 300);
        assert_eq!(body["amount"]["total"], 300);
        assert_eq!(body["reason"], "门锁未打开");
        assert_eq!(body["notify_url"], NOTIFY_URL);
        assert_eq!(
            ledger_count(&app, &id, "refund").await,
            0,
            "not booked while processing"
        );

        // Later rounds ask about it with the same number; still processing, nothing booked.
        t += 10 * 60_000;
        run_once(&app.state, t).await.unwrap();
        let asked = fake.hits(&format!("/v3/refund/domestic/refunds/{out_refund_no}"));
        assert_eq!(asked.len(), 1, "queried, not re-requested");
        assert_eq!(fake.world().refund_requests.len(), 2);
        assert_eq!(ledger_count(&app, &id, "refund").await, 0);

        // The refund notification finishes it, once, however often it comes.
        let made = make(
            &k,
            &[notes::refund(&k, "EV-refund-1", &no, &out_refund_no, 300)],
        )
        .await;
        for _ in 0..3 {
            let (s, text) = deliver(&app, &made[0]).await;
            assert_eq!(s, StatusCode::NO_CONTENT, "{text}");
        }
        let status: String = sqlx::query_scalar("SELECT status FROM refunds WHERE order_id = $1")
            .bind(id.clone())
            .fetch_one(&app.state.db.pool)
            .await
            .unwrap();
        assert_eq!(status, "succeeded");
        assert_eq!(ledger_count(&app, &id, "refund").await, 1);
        assert_eq!(
            ledger_sum(&app, &id).await,
            0,
            "paid and refunded: sums to zero"
        );
        assert_eq!(order_status(&app, &id).await, "refunded");
        // A refund notification for a number we never issued is refused.
        let made = make(
            &k,
            &[notes::refund(
                &k,
                "EV-refund-2",
                &no,
                &format!("R{}", Uuid::new_v4().simple()),
                300,
            )],
        )
        .await;
        let (s, text) = deliver(&app, &made[0]).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{text}");
        assert!(fake.world().bad_signatures.is_empty());
        app.stop().await;
    }
}
