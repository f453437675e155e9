//! HTTP sync with the cloud: the second way events get out and the way state comes in when
//! MQTT cannot carry it (docs/protocol.md §6).
//!
//! Every request is signed with the gateway key: `Authorization: DMR-Gateway <JWS>` whose
//! payload binds the gateway id, the time, a fresh nonce, the method, the path with its
//! query and the SHA-256 of the body ([`auth_header`]), so a captured request cannot be
//! replayed or re-aimed.
//!
//! - **Drain** (`POST /api/v1/gateway/events`): outbox rows, the same signed messages MQTT
//!   carries, in `seq` order, at most 500 and 1 MiB per call. It runs while the MQTT link is
//!   down (or not configured), and with the link up only for rows older than
//!   `sync_drain_after_s` (a link that is up but not getting rows acknowledged). Rows the
//!   cloud answers `applied` or `duplicate` are deleted, `rejected` ones move to the
//!   dead-letter table with the cloud's reason (logged, counted in status and metrics). The
//!   MQTT link may have the same row in flight: the cloud drops the second copy by message
//!   id and deleting an already deleted row is a no-op, so both delivering is harmless.
//! - **Pull** (`GET /api/v1/gateway/sync`): every `sync_interval_s`, at start, and on the
//!   `sync` command. The answer is a JWS that must verify against a trusted cloud key and
//!   echo our nonce (otherwise nothing is applied). Its `ts` is a signed time beacon that
//!   moves the trusted-time anchor forward only. Tokens, revocations and settings go through
//!   the very functions the MQTT commands use ([`super::commands`]); trusted keys are
//!   replaced by the cloud's list; the token cursor is persisted after the tokens it covers.
//!   An answer that carried tokens is followed by another pull at once (the cloud pages them).
//!   The lock list is applied the way the configuration maps enrolled locks
//!   ([`LockPolicy`]): with one bus and no locks mapped in the configuration file, locks are
//!   added, removed and re-addressed on that bus (kept across restarts); a file that maps
//!   locks itself wins, and with several buses the list cannot say which port a lock is on,
//!   so it is refused with a log line saying what to do. An empty list is taken as "not
//!   sent" (older clouds send none), never as "remove every lock".
//!
//! Failures back off exponentially (1 s doubling up to the sync interval) and are counted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use dmr_protocol::jws::{self, Kid};
use dmr_protocol::keys::{SigningKey, VerifyingKey};
use dmr_protocol::message::{ConfigSet, ResultCode};
use rand_core::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::clock::TrustedClock;
use super::cloud_http::{self, CloudRequest, GatewaySignature};
use super::commands::{self, CommandDeps};
use super::enroll::{EnrolledLock, TrustedKeyInfo};
use super::health::Health;
use super::store::{Delivery, LockPlace, OutRow, Store, StoreError};

/// Messages per events call, at most (the cloud's limit).
pub const MAX_BATCH: usize = 500;
/// Body bytes per events call, at most (the cloud's limit is 1 MiB; keep room for JSON).
pub const MAX_BODY: usize = (1 << 20) - 4096;
/// Path of the events endpoint.
pub const EVENTS_PATH: &str = "/api/v1/gateway/events";
/// Path of the sync endpoint (without its query).
pub const SYNC_PATH: &str = "/api/v1/gateway/sync";

/// The signed payload of the `DMR-Gateway` authorization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestAuth {
    pub gw: Uuid,
    pub ts: u64,
    pub nonce: String,
    pub method: String,
    /// Path with its query, exactly as sent.
    pub path: String,
    /// base64url SHA-256 of the raw body (of the empty string for GET).
    pub body_sha256: String,
}

/// base64url SHA-256 of `body`.
pub fn body_sha256(body: &[u8]) -> String {
    dmr_protocol::b64::encode(Sha256::digest(body))
}

/// A fresh random (version 4) nonce.
pub fn new_nonce() -> Uuid {
    let mut b = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut b);
    uuid::Builder::from_random_bytes(b).into_uuid()
}

/// The `Authorization` header value for one request.
pub fn auth_header(
    gw: Uuid,
    key: &SigningKey,
    ts: u64,
    nonce: Uuid,
    method: &str,
    path: &str,
    body: &[u8],
) -> String {
    let auth = RequestAuth {
        gw,
        ts,
        nonce: nonce.hyphenated().to_string(),
        method: method.to_string(),
        path: path.to_string(),
        body_sha256: body_sha256(body),
    };
    // Serializing a struct of strings and integers cannot fail.
    let payload = serde_json::to_vec(&auth).unwrap_or_default();
    format!("DMR-Gateway {}", jws::sign(&payload, Kid::Gateway(gw), key))
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
pub fn encode_query(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `tokens` part of a sync answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TokensPart {
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub put: Vec<String>,
}

/// The full revocation list, sent when newer than the caller's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationsPart {
    pub version: u64,
    pub token_ids: Vec<Uuid>,
}

/// Runtime settings, sent when newer than the caller's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigPart {
    pub version: u64,
    #[serde(default)]
    pub heartbeat_interval_s: Option<u32>,
    #[serde(default)]
    pub token_skew_s: Option<u32>,
}

/// The signed payload of a sync answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResponse {
    pub v: u32,
    pub gw: Uuid,
    pub ts: u64,
    pub nonce: String,
    #[serde(default)]
    pub trusted_keys: Vec<TrustedKeyInfo>,
    #[serde(default)]
    pub tokens: TokensPart,
    #[serde(default)]
    pub revocations: Option<RevocationsPart>,
    #[serde(default)]
    pub config: Option<ConfigPart>,
    #[serde(default)]
    pub locks: Vec<EnrolledLock>,
}

/// One verdict of the events endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EventResult {
    #[serde(default)]
    pub id: Option<String>,
    pub status: String,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct EventsAnswer {
    results: Vec<EventResult>,
}

/// Why a sync call failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("cloud unreachable: {0}")]
    Unreachable(String),
    #[error("cloud refused the gateway's signature ({reason}): {message}")]
    Auth { reason: String, message: String },
    #[error("cloud answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("sync answer refused, nothing applied: {0}")]
    Refused(String),
    #[error("events answer malformed: {0}")]
    BadAnswer(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a pull applied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PullReport {
    pub tokens_put: usize,
    pub revocations: Option<ResultCode>,
    pub config: Option<ResultCode>,
    pub keys: usize,
    pub anchor_moved: bool,
    /// Whether the cloud's lock list changed the lock map.
    pub locks_changed: bool,
}

/// What one drain pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DrainReport {
    pub sent: u64,
    pub delivered: u64,
    pub dead: u64,
    pub calls: u64,
}

/// What the sync needs.
#[derive(Debug, Clone)]
pub struct SyncDeps {
    /// Cloud API base URL (`https://cloud.example`); request paths start at `/api/v1`.
    pub base_url: String,
    pub gw: Uuid,
    pub key: SigningKey,
    pub store: Store,
    pub clock: Arc<TrustedClock>,
    pub health: Arc<Health>,
    /// The command handler's dependencies: pulls apply state through the same functions.
    pub commands: CommandDeps,
    pub interval: Duration,
    pub drain_after: Duration,
    /// Woken by the `sync` command.
    pub sync_now: Arc<Notify>,
    /// Whether an MQTT link is configured at all (without one, HTTP carries every event).
    pub mqtt_configured: bool,
    /// The lock map every part of the agent follows (monitor, health, unlock via the store).
    pub locks: Arc<watch::Sender<Vec<(Uuid, LockPlace)>>>,
    /// Whether the cloud's lock list may change it.
    pub lock_policy: LockPolicy,
}

/// What a pulled lock list may do, decided from the configuration the way enrolled locks
/// are mapped ([`super::config`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockPolicy {
    /// One bus and no locks in the configuration file: the list is applied on this bus.
    Apply { bus: usize },
    /// The configuration file maps locks itself and wins; a different list is logged.
    FileWins,
    /// Zero or several buses and no mapping in the file: the list does not say which port a
    /// lock is on, so it is refused (logged).
    NoSingleBus { buses: usize },
}

impl LockPolicy {
    /// The policy for a configuration with `buses` buses, whose file maps locks or not.
    pub fn for_config(buses: usize, locks_in_file: bool) -> Self {
        match (locks_in_file, buses) {
            (true, _) => LockPolicy::FileWins,
            (false, 1) => LockPolicy::Apply { bus: 0 },
            (false, n) => LockPolicy::NoSingleBus { buses: n },
        }
    }
}

/// Checks a pulled lock list: addresses 1..=247, no address and no lock id twice.
pub fn check_lock_list(locks: &[EnrolledLock]) -> Result<Vec<(Uuid, u8)>, String> {
    let mut ids = BTreeSet::new();
    let mut addrs = BTreeSet::new();
    let mut out = Vec::with_capacity(locks.len());
    for l in locks {
        let addr = u8::try_from(l.addr)
            .ok()
            .filter(|a| (1..=247).contains(a))
            .ok_or_else(|| {
                format!(
                    "lock {} has Modbus address {}, outside 1..=247",
                    l.lock_id, l.addr
                )
            })?;
        if !ids.insert(l.lock_id) {
            return Err(format!("lock {} is listed twice", l.lock_id));
        }
        if !addrs.insert(addr) {
            return Err(format!("address {addr} is given to two locks"));
        }
        out.push((l.lock_id, addr));
    }
    Ok(out)
}

/// The HTTP sync client.
#[derive(Debug, Clone)]
pub struct SyncClient {
    deps: SyncDeps,
    http: reqwest::Client,
}

fn auth_failure(status: u16, body: &str) -> SyncError {
    let e = cloud_http::api_error(body);
    if status == 401 {
        SyncError::Auth {
            reason: e.reason.unwrap_or_else(|| "unknown".into()),
            message: e.message,
        }
    } else {
        SyncError::Status {
            status,
            message: e.message,
        }
    }
}

impl SyncClient {
    /// A client over `deps`.
    pub fn new(deps: SyncDeps) -> Result<Self, reqwest::Error> {
        let http = cloud_http::http_client(Duration::from_secs(30))?;
        Ok(SyncClient { deps, http })
    }

    /// Sends a request signed with the gateway key (fresh trusted time, the given nonce) and
    /// returns the body of a 200 answer.
    async fn signed(
        &self,
        method: reqwest::Method,
        path: &str,
        json: Option<Vec<u8>>,
        nonce: Uuid,
    ) -> Result<String, SyncError> {
        let req = CloudRequest {
            method,
            base: &self.deps.base_url,
            path,
            json,
            sign: Some(GatewaySignature {
                gw: self.deps.gw,
                key: &self.deps.key,
                ts: self.deps.clock.now_ms(),
                nonce,
            }),
        };
        let a = cloud_http::send(&self.http, req)
            .await
            .map_err(SyncError::Unreachable)?;
        if a.status != 200 {
            return Err(auth_failure(a.status, &a.text));
        }
        Ok(a.text)
    }

    /// Posts one batch of outbox rows; returns the verdicts, one per row in order.
    pub async fn post_events(&self, rows: &[OutRow]) -> Result<Vec<EventResult>, SyncError> {
        let messages: Vec<&str> = rows.iter().map(|r| r.jws.as_str()).collect();
        let body = serde_json::to_vec(&serde_json::json!({ "messages": messages }))
            .map_err(|e| SyncError::BadAnswer(e.to_string()))?;
        let text = self
            .signed(reqwest::Method::POST, EVENTS_PATH, Some(body), new_nonce())
            .await?;
        let answer: EventsAnswer =
            serde_json::from_str(&text).map_err(|e| SyncError::BadAnswer(e.to_string()))?;
        if answer.results.len() != rows.len() {
            return Err(SyncError::BadAnswer(format!(
                "{} results for {} messages",
                answer.results.len(),
                rows.len()
            )));
        }
        Ok(answer.results)
    }

    /// Drains outbox rows created before `before_ms` until none is left or a call fails.
    pub async fn drain(
        &self,
        before_ms: u64,
        shutdown: &CancellationToken,
    ) -> Result<DrainReport, SyncError> {
        let mut report = DrainReport::default();
        let mut limit = MAX_BATCH;
        loop {
            if shutdown.is_cancelled() {
                return Ok(report);
            }
            let mut rows = self
                .deps
                .store
                .call(move |db| db.outbox_older(before_ms, limit))
                .await??;
            if rows.is_empty() {
                return Ok(report);
            }
            // Keep under the body limit; a single row always goes (a JWS is at most 1 MiB).
            let mut size = 16;
            let mut keep = 0;
            for r in &rows {
                size += r.jws.len() + 3;
                if keep > 0 && size > MAX_BODY {
                    break;
                }
                keep += 1;
            }
            rows.truncate(keep);
            let results = match self.post_events(&rows).await {
                Ok(r) => r,
                Err(SyncError::Status { status: 413, .. }) if limit > 1 => {
                    limit = (rows.len() / 2).max(1);
                    continue;
                }
                Err(e) => return Err(e),
            };
            report.calls += 1;
            report.sent += rows.len() as u64;
            let mut verdicts = Vec::with_capacity(rows.len());
            for (row, res) in rows.iter().zip(&results) {
                match res.status.as_str() {
                    "applied" | "duplicate" => verdicts.push(Delivery::Delivered(row.seq)),
                    "rejected" => {
                        let why = res
                            .error
                            .clone()
                            .unwrap_or_else(|| "rejected without a reason".into());
                        tracing::error!(seq = row.seq, id = ?res.id, reason = %why,
                            "the cloud rejected an outbox event; moved to the dead-letter table");
                        verdicts.push(Delivery::Rejected(row.seq, why));
                    }
                    other => tracing::warn!(
                        seq = row.seq,
                        status = other,
                        "unknown events verdict; keeping the row for a later attempt"
                    ),
                }
            }
            let kept_back = verdicts.len() < rows.len();
            let (removed, dead) = self
                .deps
                .store
                .call(move |db| db.outbox_resolve(&verdicts))
                .await??;
            report.delivered += removed - dead.min(removed);
            report.dead += dead;
            self.deps
                .health
                .sync_drained(removed - dead.min(removed), dead);
            if kept_back {
                // Rows with an unknown verdict are still first in line: stop this pass
                // rather than send them again in a tight loop.
                return Ok(report);
            }
        }
    }

    /// Pulls and applies the sync answer. Nothing is applied unless the answer verifies
    /// against a trusted key, names this gateway and echoes this request's nonce.
    pub async fn pull(&self) -> Result<PullReport, SyncError> {
        let pos = self.deps.store.call(|db| db.sync_position()).await??;
        let path = format!(
            "{SYNC_PATH}?tokens_after={}&revocations_version={}&config_version={}",
            encode_query(pos.tokens_after.as_deref().unwrap_or("")),
            pos.revocations_version,
            pos.config_version
        );
        let nonce = new_nonce();
        let text = self
            .signed(reqwest::Method::GET, &path, None, nonce)
            .await?;
        let keys = self.deps.store.call(|db| db.trusted_keys()).await?;
        let r = verify_response(&text, &keys, self.deps.gw, nonce)?;
        self.apply(r).await
    }

    async fn apply(&self, r: SyncResponse) -> Result<PullReport, SyncError> {
        // Everything is parsed before anything is applied: a bad entry refuses the whole
        // answer instead of applying half of it.
        let mut new_keys = Vec::new();
        for k in &r.trusted_keys {
            let vk = dmr_protocol::keys::parse_public_b64u(&k.public_key)
                .map_err(|e| SyncError::Refused(format!("trusted key {}: {e}", k.key_id)))?;
            new_keys.push((k.key_id, vk, k.not_after_ms));
        }
        let mut report = PullReport {
            keys: new_keys.len(),
            ..PullReport::default()
        };
        let ts = r.ts;
        report.anchor_moved = self
            .deps
            .store
            .call(move |db| db.observe_cloud_time(ts))
            .await??;
        if !new_keys.is_empty() {
            self.deps
                .store
                .call(move |db| db.set_cloud_keys(&new_keys))
                .await??;
        }
        let deps = &self.deps.commands;
        if !r.tokens.put.is_empty() {
            report.tokens_put = r.tokens.put.len();
            let code = commands::put_tokens(deps, r.tokens.put).await;
            if code == ResultCode::StorageError {
                return Err(SyncError::Refused(
                    "cannot cache the pulled tokens (storage error); cursor not advanced".into(),
                ));
            }
        }
        if let Some(rv) = r.revocations {
            let code = commands::revoke(deps, rv.token_ids, rv.version).await;
            if code == ResultCode::StorageError {
                return Err(SyncError::Refused("cannot store revocations".into()));
            }
            report.revocations = Some(code);
        }
        if let Some(c) = r.config {
            let code = commands::config_set(
                deps,
                ConfigSet {
                    version: c.version,
                    heartbeat_interval_s: c.heartbeat_interval_s,
                    token_skew_s: c.token_skew_s,
                },
            )
            .await;
            if code == ResultCode::StorageError {
                return Err(SyncError::Refused("cannot store settings".into()));
            }
            report.config = Some(code);
        }
        if let Some(cursor) = r.tokens.cursor {
            self.deps
                .store
                .call(move |db| db.set_tokens_cursor(&cursor))
                .await??;
        }
        if !r.locks.is_empty() {
            report.locks_changed = self.apply_locks(&r.locks).await?;
        }
        self.deps.health.sync_ok(self.deps.clock.now_ms());
        Ok(report)
    }
}

impl SyncClient {
    /// Applies the cloud's lock list under the [`LockPolicy`]; returns whether the map
    /// changed. A list that cannot be applied is logged and skipped (the rest of the pull
    /// stands): the agent keeps driving the locks it drives.
    async fn apply_locks(&self, listed: &[EnrolledLock]) -> Result<bool, SyncError> {
        let listed = match check_lock_list(listed) {
            Ok(l) => l,
            Err(why) => {
                tracing::error!(reason = %why, "the cloud's lock list is inconsistent; not applied, the current lock map stays (fix the lock addresses in the console)");
                return Ok(false);
            }
        };
        let current: Vec<(Uuid, LockPlace)> = self.deps.locks.borrow().clone();
        let now: BTreeSet<(Uuid, u8)> = current.iter().map(|(id, p)| (*id, p.addr)).collect();
        let want: BTreeSet<(Uuid, u8)> = listed.iter().copied().collect();
        if now == want {
            return Ok(false);
        }
        let bus = match self.deps.lock_policy {
            LockPolicy::Apply { bus } => bus,
            LockPolicy::FileWins => {
                tracing::warn!(
                    cloud = want.len(),
                    configured = now.len(),
                    "the cloud's lock list differs from the locks mapped in the configuration file, which wins; update [[bus]] locks (or remove them to let the cloud's list apply) and restart"
                );
                return Ok(false);
            }
            LockPolicy::NoSingleBus { buses } => {
                tracing::error!(
                    cloud = want.len(),
                    buses,
                    "the cloud's lock list differs from the locks this agent drives, but it does not say which port each lock is on and {buses} buses are configured; not applied: map the locks in [[bus]] locks = [...] and restart"
                );
                return Ok(false);
            }
        };
        let places: Vec<(Uuid, LockPlace)> = listed
            .iter()
            .map(|(id, addr)| (*id, LockPlace { bus, addr: *addr }))
            .collect();
        let stored = places.clone();
        self.deps
            .store
            .call(move |db| db.set_cloud_locks(&stored))
            .await??;
        self.deps.health.set_locks(
            &places
                .iter()
                .map(|(id, p)| (*id, p.bus, p.addr))
                .collect::<Vec<_>>(),
        );
        let added = want.difference(&now).count();
        let removed = now.difference(&want).count();
        self.deps.locks.send_replace(places);
        tracing::info!(
            added,
            removed,
            locks = want.len(),
            "applied the cloud's lock list (a re-addressed lock counts as removed and added)"
        );
        Ok(true)
    }
}

/// Verifies a sync answer: signed by a trusted cloud key, version 1, for `gw`, echoing
/// `nonce` (a replayed answer carries someone else's nonce).
pub fn verify_response(
    compact: &str,
    keys: &BTreeMap<u32, VerifyingKey>,
    gw: Uuid,
    nonce: Uuid,
) -> Result<SyncResponse, SyncError> {
    let (_kid, payload) = jws::verify(compact.trim(), |kid| match kid {
        Kid::Cloud(n) => keys.get(n),
        Kid::Gateway(_) => None,
    })
    .map_err(|e| SyncError::Refused(e.to_string()))?;
    let r: SyncResponse = serde_json::from_slice(&payload)
        .map_err(|e| SyncError::Refused(format!("payload: {e}")))?;
    if r.v != 1 {
        return Err(SyncError::Refused(format!("version {} (expected 1)", r.v)));
    }
    if r.gw != gw {
        return Err(SyncError::Refused(format!(
            "answer is for gateway {}, not {gw}",
            r.gw
        )));
    }
    if r.nonce != nonce.hyphenated().to_string() {
        return Err(SyncError::Refused(
            "nonce does not echo this request's (a replayed answer?)".into(),
        ));
    }
    Ok(r)
}

/// Runs the drain and the pull until `shutdown`.
pub async fn run(deps: SyncDeps, shutdown: CancellationToken) -> anyhow::Result<()> {
    let client = SyncClient::new(deps.clone())?;
    let min_backoff = Duration::from_secs(1);
    let mut pull_backoff = min_backoff;
    let mut drain_backoff = min_backoff;
    let mut next_pull = tokio::time::Instant::now();
    let mut next_drain = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let mut force = false;
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = deps.sync_now.notified() => force = true,
            _ = tick.tick() => {}
        }
        let now = tokio::time::Instant::now();
        if force || now >= next_pull {
            match client.pull().await {
                Ok(r) => {
                    tracing::debug!(tokens = r.tokens_put, revocations = ?r.revocations, config = ?r.config, keys = r.keys, "sync pulled");
                    pull_backoff = min_backoff;
                    // The cloud pages tokens (1,000 per answer): an answer that carried some
                    // may have left more behind the cursor, so ask again on the next tick.
                    next_pull = if r.tokens_put > 0 {
                        tokio::time::Instant::now()
                    } else {
                        tokio::time::Instant::now() + deps.interval
                    };
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_s = pull_backoff.as_secs(), "sync pull failed");
                    deps.health.sync_failed(&e.to_string());
                    next_pull = tokio::time::Instant::now() + pull_backoff;
                    pull_backoff = (pull_backoff * 2).min(deps.interval.max(min_backoff));
                }
            }
        }
        if force || now >= next_drain {
            let link_up = deps.mqtt_configured && deps.health.cloud_up();
            let now_ms = deps.clock.now_ms();
            let before_ms = if link_up {
                now_ms.saturating_sub(deps.drain_after.as_millis() as u64)
            } else {
                u64::MAX
            };
            // A store that cannot answer is the store's fault to report, not a reason to
            // stop syncing: skip this round.
            let oldest = match deps.store.call(|db| db.outbox_stats()).await {
                Ok(Ok(s)) => s.oldest_ms,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read the outbox backlog");
                    None
                }
                Err(_) if shutdown.is_cancelled() => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, "store not answering");
                    None
                }
            };
            if oldest.is_some_and(|o| o < before_ms) {
                match client.drain(before_ms, &shutdown).await {
                    Ok(r) => {
                        if r.sent > 0 {
                            tracing::info!(
                                sent = r.sent,
                                delivered = r.delivered,
                                dead = r.dead,
                                calls = r.calls,
                                "outbox drained over HTTP"
                            );
                        }
                        drain_backoff = min_backoff;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in_s = drain_backoff.as_secs(), "outbox drain over HTTP failed");
                        deps.health.sync_failed(&e.to_string());
                        next_drain = tokio::time::Instant::now() + drain_backoff;
                        drain_backoff = (drain_backoff * 2).min(Duration::from_secs(60));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn auth_header_verifies_and_binds_the_request() {
        let key = dmr_protocol::keys::signing_key_from_seed([5; 32]);
        let gw = Uuid::from_u128(42);
        let nonce = new_nonce();
        assert_eq!(nonce.get_version_num(), 4);
        let h = auth_header(gw, &key, 1000, nonce, "POST", EVENTS_PATH, b"{}");
        let jws_text = h.strip_prefix("DMR-Gateway ").unwrap();
        let vk = key.verifying_key();
        let (kid, payload) = jws::verify(jws_text, |_| Some(&vk)).unwrap();
        assert_eq!(kid, Kid::Gateway(gw));
        let a: RequestAuth = serde_json::from_slice(&payload).unwrap();
        assert_eq!(a.path, EVENTS_PATH);
        assert_eq!(a.body_sha256, body_sha256(b"{}"));
        assert_eq!(a.nonce, nonce.hyphenated().to_string());
        assert_eq!(encode_query("a b/+=é"), "a%20b%2F%2B%3D%C3%A9");
    }
}
