//! An in-test cloud that implements the gateway link contract (docs/protocol.md §6)
//! independently of the agent's code: it verifies the `DMR-Gateway` request signatures with
//! dmr_protocol (signature, |now-ts| <= 300 s, single-use nonce, method, path with query,
//! body hash), opens drained messages as the real ingest would, drops duplicates by message
//! id, and signs sync answers with a test cloud key. Knobs let a test take it down, make it
//! reject some events, or make it answer with a replayed or foreign-signed sync response.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dmr_protocol::jws::{self, Kid};
use dmr_protocol::keys::{SigningKey, VerifyingKey, public_b64u};
use dmr_protocol::message::{Envelope, Expect};
use ed25519_dalek::Verifier as _;
use serde_json::{Value, json};
use sha2::Digest as _;
use uuid::Uuid;

/// How the next sync answers are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Honest,
    /// Correctly signed, but echoing another request's nonce (a captured answer replayed).
    Replayed,
    /// Signed by a key the gateway does not trust, under a trusted key's kid.
    Foreign,
}

/// What `/sync` answers with (served on every pull until changed).
#[derive(Debug, Clone)]
pub struct SyncPlan {
    pub mode: Mode,
    /// `ts` of the answer; None = now.
    pub ts: Option<u64>,
    pub trusted_keys: Vec<Value>,
    pub cursor: Option<String>,
    pub put: Vec<String>,
    pub revocations: Option<(u64, Vec<Uuid>)>,
    pub config: Option<Value>,
    pub locks: Vec<Value>,
}

impl Default for SyncPlan {
    fn default() -> Self {
        SyncPlan {
            mode: Mode::Honest,
            ts: None,
            trusted_keys: Vec::new(),
            cursor: None,
            put: Vec::new(),
            revocations: None,
            config: None,
            locks: Vec::new(),
        }
    }
}

pub type Rejector = fn(&Envelope) -> Option<String>;

pub struct CloudState {
    pub gw: Mutex<Uuid>,
    /// The enrolled gateway key (set by enroll, or preset).
    pub gw_key: Mutex<Option<VerifyingKey>>,
    pub signer: (u32, SigningKey),
    pub up: AtomicBool,
    /// Delay before answering an events call, ms (to let the MQTT path overtake HTTP).
    pub events_delay_ms: AtomicU64,
    nonces: Mutex<HashSet<String>>,
    /// Messages applied, in arrival order.
    pub applied: Mutex<Vec<Envelope>>,
    /// Deliveries per message id (applied + duplicate).
    pub deliveries: Mutex<HashMap<Uuid, u32>>,
    pub rejected: Mutex<Vec<(Uuid, String)>>,
    pub reject: Mutex<Option<Rejector>>,
    pub plan: Mutex<SyncPlan>,
    /// Query strings of the sync requests that authenticated.
    pub sync_queries: Mutex<Vec<String>>,
    /// Reasons of refused authorizations.
    pub auth_failures: Mutex<Vec<String>>,
    pub events_calls: AtomicU64,
    pub max_batch_seen: AtomicU64,
    /// The enrollment code accepted once, and the answer's body (gateway_id filled in).
    pub enroll_code: Mutex<Option<String>>,
    pub enroll_answer: Mutex<Value>,
    pub enroll_calls: AtomicU64,
}

pub struct FakeCloud {
    pub addr: SocketAddr,
    pub state: Arc<CloudState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeCloud {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn api_error(status: StatusCode, code: &str, message: &str, details: Value) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message, "details": details}})),
    )
        .into_response()
}

impl FakeCloud {
    pub async fn start(gw: Uuid, gw_key: Option<VerifyingKey>, signer: (u32, SigningKey)) -> Self {
        let state = Arc::new(CloudState {
            gw: Mutex::new(gw),
            gw_key: Mutex::new(gw_key),
            signer,
            up: AtomicBool::new(true),
            events_delay_ms: AtomicU64::new(0),
            nonces: Mutex::new(HashSet::new()),
            applied: Mutex::new(Vec::new()),
            deliveries: Mutex::new(HashMap::new()),
            rejected: Mutex::new(Vec::new()),
            reject: Mutex::new(None),
            plan: Mutex::new(SyncPlan::default()),
            sync_queries: Mutex::new(Vec::new()),
            auth_failures: Mutex::new(Vec::new()),
            events_calls: AtomicU64::new(0),
            max_batch_seen: AtomicU64::new(0),
            enroll_code: Mutex::new(None),
            enroll_answer: Mutex::new(Value::Null),
            enroll_calls: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/api/v1/gateway/enroll", post(enroll))
            .route("/api/v1/gateway/events", post(events))
            .route("/api/v1/gateway/sync", get(sync))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeCloud { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_plan(&self, plan: SyncPlan) {
        *self.state.plan.lock().unwrap() = plan;
    }

    pub fn sync_count(&self) -> usize {
        self.state.sync_queries.lock().unwrap().len()
    }
}

/// The contract's checks on `Authorization: DMR-Gateway <JWS>`; Err(reason).
fn check_auth(
    st: &CloudState,
    method: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), &'static str> {
    let h = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or("mismatch")?;
    let compact = h.strip_prefix("DMR-Gateway ").ok_or("mismatch")?;
    let gw = *st.gw.lock().unwrap();
    let key = (*st.gw_key.lock().unwrap()).ok_or("unknown_gateway")?;
    let unverified = jws::parse(compact).map_err(|_| "bad_signature")?;
    if unverified.kid() != Kid::Gateway(gw) {
        return Err("unknown_gateway");
    }
    let payload = unverified.verify(&key).map_err(|_| "bad_signature")?;
    let p: Value = serde_json::from_slice(&payload).map_err(|_| "mismatch")?;
    if p["gw"].as_str() != Some(gw.hyphenated().to_string().as_str()) {
        return Err("mismatch");
    }
    let ts = p["ts"].as_u64().ok_or("mismatch")?;
    if now_ms().abs_diff(ts) > 300_000 {
        return Err("stale");
    }
    let nonce = p["nonce"].as_str().ok_or("mismatch")?;
    let nonce_uuid = Uuid::try_parse(nonce).map_err(|_| "mismatch")?;
    if nonce_uuid.get_version_num() != 4 {
        return Err("mismatch");
    }
    let path = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("");
    if p["method"].as_str() != Some(method) || p["path"].as_str() != Some(path) {
        return Err("mismatch");
    }
    let hash = dmr_protocol::b64::encode(sha2::Sha256::digest(body));
    if p["body_sha256"].as_str() != Some(hash.as_str()) {
        return Err("mismatch");
    }
    if !st.nonces.lock().unwrap().insert(nonce.to_string()) {
        return Err("replayed");
    }
    Ok(())
}

fn refuse(st: &CloudState, reason: &'static str) -> Response {
    st.auth_failures.lock().unwrap().push(reason.to_string());
    api_error(
        StatusCode::UNAUTHORIZED,
        "gateway_auth_failed",
        "gateway authentication failed",
        json!({ "reason": reason }),
    )
}

async fn enroll(State(st): State<Arc<CloudState>>, body: Bytes) -> Response {
    st.enroll_calls.fetch_add(1, Ordering::SeqCst);
    if !st.up.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "not JSON",
            Value::Null,
        );
    };
    let code: String = req["code"]
        .as_str()
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let mut slot = st.enroll_code.lock().unwrap();
    let valid = slot.as_deref().is_some_and(|c| {
        c.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_uppercase())
            .collect::<String>()
            == code
    });
    if !valid {
        return api_error(
            StatusCode::FORBIDDEN,
            "enrollment_code_invalid",
            "the enrollment code is unknown, used, revoked or expired",
            Value::Null,
        );
    }
    let Ok(pk) = dmr_protocol::keys::parse_public_b64u(req["public_key"].as_str().unwrap_or(""))
    else {
        return api_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_public_key",
            "bad key",
            Value::Null,
        );
    };
    let sig = dmr_protocol::b64::decode(req["pop"].as_str().unwrap_or("")).unwrap_or_default();
    let mut msg = b"DMR-ENROLL/1\0".to_vec();
    msg.extend_from_slice(code.as_bytes());
    msg.extend_from_slice(pk.as_bytes());
    let ok = ed25519_dalek::Signature::from_slice(&sig)
        .map(|s| pk.verify(&msg, &s).is_ok())
        .unwrap_or(false);
    if !ok {
        return api_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_proof",
            "proof of possession does not verify",
            Value::Null,
        );
    }
    *slot = None; // one use
    *st.gw_key.lock().unwrap() = Some(pk);
    let mut answer = st.enroll_answer.lock().unwrap().clone();
    answer["gateway_id"] = json!(st.gw.lock().unwrap().hyphenated().to_string());
    (StatusCode::CREATED, axum::Json(answer)).into_response()
}

async fn events(
    State(st): State<Arc<CloudState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !st.up.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if let Err(reason) = check_auth(&st, "POST", &uri, &headers, &body) {
        return refuse(&st, reason);
    }
    st.events_calls.fetch_add(1, Ordering::SeqCst);
    let delay = st.events_delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "not JSON",
                Value::Null,
            );
        }
    };
    let msgs = req["messages"].as_array().cloned().unwrap_or_default();
    if msgs.len() > 500 || body.len() > 1 << 20 {
        return api_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "too many",
            Value::Null,
        );
    }
    st.max_batch_seen
        .fetch_max(msgs.len() as u64, Ordering::SeqCst);
    let gw = *st.gw.lock().unwrap();
    let key = st.gw_key.lock().unwrap().unwrap();
    let reject = *st.reject.lock().unwrap();
    let mut results = Vec::new();
    for m in msgs {
        let text = m.as_str().unwrap_or("");
        match dmr_protocol::message::open(
            text,
            |_| Some(&key),
            Expect {
                gw,
                now_ms: now_ms(),
            },
        ) {
            Err(e) => {
                results.push(json!({"id": null, "status": "rejected", "error": e.to_string()}))
            }
            Ok((_, env)) => {
                let mut d = st.deliveries.lock().unwrap();
                let n = d.entry(env.id).or_insert(0);
                *n += 1;
                if *n > 1 {
                    results.push(json!({"id": env.id, "status": "duplicate"}));
                    continue;
                }
                drop(d);
                if let Some(why) = reject.and_then(|f| f(&env)) {
                    st.rejected.lock().unwrap().push((env.id, why.clone()));
                    results.push(json!({"id": env.id, "status": "rejected", "error": why}));
                } else {
                    st.applied.lock().unwrap().push(env.clone());
                    results.push(json!({"id": env.id, "status": "applied"}));
                }
            }
        }
    }
    axum::Json(json!({ "results": results })).into_response()
}

async fn sync(State(st): State<Arc<CloudState>>, uri: Uri, headers: HeaderMap) -> Response {
    if !st.up.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if let Err(reason) = check_auth(&st, "GET", &uri, &headers, b"") {
        return refuse(&st, reason);
    }
    st.sync_queries
        .lock()
        .unwrap()
        .push(uri.query().unwrap_or("").to_string());
    // The request's nonce, to echo.
    let compact = headers["authorization"]
        .to_str()
        .unwrap()
        .strip_prefix("DMR-Gateway ")
        .unwrap();
    let key = st.gw_key.lock().unwrap().unwrap();
    let p: Value =
        serde_json::from_slice(&jws::parse(compact).unwrap().verify(&key).unwrap()).unwrap();
    let plan = st.plan.lock().unwrap().clone();
    let nonce = match plan.mode {
        Mode::Replayed => {
            use rand_core::RngCore as _;
            let mut b = [0u8; 16];
            rand_core::OsRng.fill_bytes(&mut b);
            uuid::Builder::from_random_bytes(b)
                .into_uuid()
                .hyphenated()
                .to_string()
        }
        _ => p["nonce"].as_str().unwrap().to_string(),
    };
    let mut trusted = plan.trusted_keys.clone();
    if trusted.is_empty() {
        trusted.push(json!({
            "key_id": st.signer.0,
            "public_key": public_b64u(&st.signer.1.verifying_key()),
            "not_after_ms": null
        }));
    }
    let body = json!({
        "v": 1,
        "gw": st.gw.lock().unwrap().hyphenated().to_string(),
        "ts": plan.ts.unwrap_or_else(now_ms),
        "nonce": nonce,
        "trusted_keys": trusted,
        "tokens": {"cursor": plan.cursor, "put": plan.put},
        "revocations": plan.revocations.map(|(v, ids)| json!({"version": v, "token_ids": ids})),
        "config": plan.config,
        "locks": plan.locks,
    });
    let payload = serde_json::to_vec(&body).unwrap();
    let compact = match plan.mode {
        Mode::Foreign => jws::sign(
            &payload,
            Kid::Cloud(st.signer.0),
            &dmr_protocol::keys::signing_key_from_seed([0xEE; 32]),
        ),
        _ => jws::sign(&payload, Kid::Cloud(st.signer.0), &st.signer.1),
    };
    ([("content-type", "application/jose")], compact).into_response()
}
