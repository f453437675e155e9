//! Helpers for the gateway-link tests: enrolling a gateway with a real Ed25519 key, signing
//! gateway requests and messages the way the agent does.

use dmr_cloud::link::gwauth::sign_request;
use dmr_protocol::jws::Kid;
use dmr_protocol::keys::{SigningKey, public_b64u};
use dmr_protocol::message::{Envelope, Heartbeat, LockStatus, Message};
use ed25519_dalek::Signer as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::common::TestApp;

/// An enrolled gateway as the agent would hold it.
#[derive(Debug)]
pub struct Gw {
    pub id: Uuid,
    pub key: SigningKey,
    pub enrolled: Value,
}

pub fn now_ms() -> i64 {
    dmr_cloud::db::now_ms()
}

pub fn pop(code: &str, key: &SigningKey) -> String {
    let pk = key.verifying_key().to_bytes();
    let msg = dmr_cloud::link::enroll::pop_message(code, &pk);
    dmr_protocol::b64::encode(key.sign(&msg).to_bytes())
}

/// A new enrollment code for `venue` (optionally naming a gateway).
pub async fn new_code(app: &TestApp, token: &str, venue: &str, gateway: Option<&str>) -> String {
    let mut body = json!({ "venue_id": venue });
    if let Some(g) = gateway {
        body["gateway_id"] = json!(g);
    }
    let (s, c) = app.post("/api/v1/enrollment-codes", token, body).await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    c["code"].as_str().unwrap().to_string()
}

pub async fn enroll_raw(app: &TestApp, body: Value) -> (StatusCode, Value) {
    app.call(Method::POST, "/api/v1/gateway/enroll", None, Some(body))
        .await
}

pub async fn enroll_with(app: &TestApp, code: &str, key: SigningKey) -> Gw {
    let (s, v) = enroll_raw(
        app,
        json!({ "code": code, "public_key": public_b64u(&key.verifying_key()),
                "pop": pop(code, &key), "agent_version": "test" }),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    Gw {
        id: Uuid::parse_str(v["gateway_id"].as_str().unwrap()).unwrap(),
        key,
        enrolled: v,
    }
}

/// Enrolls a new gateway in `venue` with a fresh key.
pub async fn enroll(app: &TestApp, token: &str, venue: &str, gateway: Option<&str>) -> Gw {
    let code = new_code(app, token, venue, gateway).await;
    enroll_with(app, &code, dmr_protocol::keys::generate()).await
}

/// A gateway-signed request with every knob a test may turn.
pub struct SignedReq<'a> {
    pub gw: Uuid,
    pub key: &'a SigningKey,
    pub method: Method,
    pub path: String,
    pub body: Vec<u8>,
    pub ts: i64,
    pub nonce: String,
    /// Send to this path instead of the signed one (mismatch tests).
    pub send_path: Option<String>,
    /// Send this body instead of the signed one.
    pub send_body: Option<Vec<u8>>,
}

impl<'a> SignedReq<'a> {
    pub fn new(gw: &'a Gw, method: Method, path: &str, body: Vec<u8>) -> Self {
        SignedReq {
            gw: gw.id,
            key: &gw.key,
            method,
            path: path.to_string(),
            body,
            ts: now_ms(),
            nonce: Uuid::new_v4().to_string(),
            send_path: None,
            send_body: None,
        }
    }

    pub async fn send(&self, app: &TestApp) -> (StatusCode, Option<String>, String) {
        let auth = sign_request(
            self.gw,
            self.key,
            self.method.as_str(),
            &self.path,
            &self.body,
            self.ts,
            &self.nonce,
        );
        let path = self.send_path.as_deref().unwrap_or(&self.path);
        let body = self.send_body.clone().unwrap_or_else(|| self.body.clone());
        let mut req = app
            .client
            .request(self.method.clone(), app.url_of(path))
            .header("authorization", auth);
        if self.method == Method::POST {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        (status, ct, resp.text().await.unwrap())
    }
}

/// Posts messages to the events drain; returns the status and body.
pub async fn post_events(app: &TestApp, gw: &Gw, messages: &[String]) -> (StatusCode, Value) {
    let body = serde_json::to_vec(&json!({ "messages": messages })).unwrap();
    let (s, _, text) = SignedReq::new(gw, Method::POST, "/api/v1/gateway/events", body)
        .send(app)
        .await;
    (
        s,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A message signed by `key` as gateway `gw`.
pub fn signed(gw: Uuid, key: &SigningKey, ts: i64, m: Message) -> (Uuid, String) {
    let id = Uuid::new_v4();
    let env = Envelope::new(id, gw, u64::try_from(ts).unwrap(), m);
    (id, env.sign(Kid::Gateway(gw), key))
}

pub fn heartbeat(locks: Vec<LockStatus>) -> Message {
    Message::Heartbeat(Heartbeat {
        uptime_s: 10,
        outbox_pending: 3,
        outbox_oldest_age_s: Some(7),
        locks,
    })
}

pub fn lock_status(lock: &str, addr: u8, online: bool, door_closed: bool, fw: &str) -> LockStatus {
    LockStatus {
        lock_id: Uuid::parse_str(lock).unwrap(),
        addr,
        online,
        door_closed,
        locked: door_closed,
        fw: fw.into(),
    }
}

/// One column of one row, as text (tests read the database directly).
pub async fn scalar_text(app: &TestApp, sql: &str, id: &str) -> Option<String> {
    sqlx::query_scalar::<_, Option<String>>(sqlx::AssertSqlSafe(sql.to_string()))
        .bind(id.to_string())
        .fetch_one(&app.state.db.pool)
        .await
        .unwrap()
}

pub async fn scalar_int(app: &TestApp, sql: &str, id: &str) -> Option<i64> {
    sqlx::query_scalar::<_, Option<i64>>(sqlx::AssertSqlSafe(sql.to_string()))
        .bind(id.to_string())
        .fetch_one(&app.state.db.pool)
        .await
        .unwrap()
}
