//! Authentication of gateway HTTP requests (every `/api/v1/gateway/*` route but enroll).
//!
//! A gateway signs each request with its own key: `Authorization: DMR-Gateway <compact JWS>`
//! with kid `gw:<gateway_id>` and payload `{"gw","ts","nonce","method","path","body_sha256"}`.
//! The cloud checks, in this order: the gateway is enrolled and live (`unknown_gateway`),
//! the signature is by its registered key (`bad_signature`), the signed time is within
//! ±300 s (`stale`), method, path with query and body hash are this request's
//! (`mismatch`), and the nonce was not used before (`replayed`, table `gateway_nonces`).
//! Nonces are only stored after the signature verified, so strangers cannot fill the table,
//! and are pruned after 10 minutes (twice the window) by a job under a database lease.
//! Every refusal is 401 `gateway_auth_failed` with `details.reason`, and counted.

use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use dmr_protocol::b64;
use dmr_protocol::jws::{self, Kid};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use uuid::Uuid;

use crate::AppState;
use crate::db::{Db, lease, now_ms};
use crate::error::ApiError;

/// Largest accepted difference between the signed time and the cloud's clock.
pub const WINDOW_MS: i64 = 300_000;
/// Nonces older than this are pruned (the window both ways).
pub const NONCE_KEEP_MS: i64 = 600_000;
/// Applied message ids are kept this long for duplicate detection: longer than any outbox
/// is expected to hold an event.
pub const MESSAGE_KEEP_MS: i64 = 30 * 24 * 3600 * 1000;
/// The live feed only serves recent changes.
pub const LIVE_KEEP_MS: i64 = 3600 * 1000;

/// The authorization scheme.
pub const SCHEME: &str = "DMR-Gateway ";

/// An authenticated gateway request: who, and the raw body that was hashed.
#[derive(Debug)]
pub struct GatewayRequest {
    pub gateway_id: Uuid,
    pub merchant_id: String,
    pub nonce: String,
    pub ts: i64,
    pub body: Bytes,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthClaims {
    gw: Uuid,
    ts: i64,
    nonce: String,
    method: String,
    path: String,
    body_sha256: String,
}

fn fail(reason: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::GatewayAuth {
        reason,
        message: message.into(),
    }
}

/// The `body_sha256` of a body: unpadded base64url of its SHA-256.
pub fn body_hash(body: &[u8]) -> String {
    b64::encode(Sha256::digest(body))
}

/// Builds the Authorization header value for a request (the agent does the same; tests use
/// this).
pub fn sign_request(
    gw: Uuid,
    key: &dmr_protocol::keys::SigningKey,
    method: &str,
    path: &str,
    body: &[u8],
    ts: i64,
    nonce: &str,
) -> String {
    let payload = serde_json::json!({
        "gw": gw, "ts": ts, "nonce": nonce, "method": method, "path": path,
        "body_sha256": body_hash(body),
    });
    format!(
        "{SCHEME}{}",
        jws::sign(payload.to_string().as_bytes(), Kid::Gateway(gw), key)
    )
}

async fn authenticate(req: Request, state: &AppState) -> Result<GatewayRequest, ApiError> {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            fail(
                "bad_signature",
                "missing Authorization: DMR-Gateway <signed request>",
            )
        })?;
    let compact = header
        .strip_prefix(SCHEME)
        .ok_or_else(|| fail("bad_signature", "Authorization scheme must be DMR-Gateway"))?
        .trim()
        .to_string();
    let unverified = jws::parse(&compact)
        .map_err(|e| fail("bad_signature", format!("request signature: {e}")))?;
    let Kid::Gateway(gw) = unverified.kid() else {
        return Err(fail(
            "bad_signature",
            "request must be signed with kid gw:<gateway_id>",
        ));
    };
    let row: Option<(Option<String>, String)> = sqlx::query_as(
        "SELECT public_key, merchant_id FROM gateways \
         WHERE id = $1 AND status = 'enrolled' AND deleted_at IS NULL",
    )
    .bind(gw.to_string())
    .fetch_optional(&state.db.pool)
    .await?;
    let Some((Some(pk), merchant_id)) = row else {
        return Err(fail(
            "unknown_gateway",
            "no enrolled gateway with this id; enroll it again",
        ));
    };
    let key = dmr_protocol::keys::parse_public_b64u(&pk).map_err(|_| {
        fail(
            "unknown_gateway",
            "the gateway's registered key is unusable",
        )
    })?;
    let payload = unverified.verify(&key).map_err(|_| {
        fail(
            "bad_signature",
            "signature does not verify with the gateway's key",
        )
    })?;
    let claims: AuthClaims = serde_json::from_slice(&payload)
        .map_err(|e| fail("bad_signature", format!("signed request payload: {e}")))?;
    if claims.gw != gw {
        return Err(fail("mismatch", "payload gw differs from the kid"));
    }
    let now = now_ms();
    if (now - claims.ts).abs() > WINDOW_MS {
        return Err(fail(
            "stale",
            format!(
                "signed time {} is more than 300 s from the cloud's {now}; check the gateway clock",
                claims.ts
            ),
        ));
    }
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    if claims.method != req.method().as_str() || claims.path != path {
        return Err(fail(
            "mismatch",
            format!(
                "signed for {} {}, sent as {} {path}",
                claims.method,
                claims.path,
                req.method()
            ),
        ));
    }
    if Uuid::try_parse(&claims.nonce).is_err() {
        return Err(fail("mismatch", "nonce must be a UUID"));
    }
    let body = Bytes::from_request(req, state).await.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest {
                code: "unreadable_body",
                message: "the request body could not be read".into(),
            }
        }
    })?;
    if body_hash(&body) != claims.body_sha256 {
        return Err(fail("mismatch", "body_sha256 does not match the body sent"));
    }
    let fresh = sqlx::query(
        "INSERT INTO gateway_nonces (gateway_id, nonce, seen_at) VALUES ($1, $2, $3) \
         ON CONFLICT (gateway_id, nonce) DO NOTHING",
    )
    .bind(gw.to_string())
    .bind(claims.nonce.clone())
    .bind(now)
    .execute(&state.db.pool)
    .await?
    .rows_affected()
        == 1;
    if !fresh {
        return Err(fail("replayed", "this request nonce was already used"));
    }
    Ok(GatewayRequest {
        gateway_id: gw,
        merchant_id,
        nonce: claims.nonce,
        ts: claims.ts,
        body,
    })
}

impl FromRequest<AppState> for GatewayRequest {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let result = authenticate(req, state).await;
        if let Err(ApiError::GatewayAuth { reason, message }) = &result {
            tracing::info!(reason, %message, "gateway request refused");
            state.link_metrics.auth_failed(reason);
        }
        result
    }
}

/// What one prune round removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub nonces: u64,
    pub messages: u64,
    pub live_changes: u64,
    pub keys_retired: u64,
}

/// One prune round of the link's tables (the caller holds the lease).
pub async fn prune_once(state: &AppState, now: i64) -> anyhow::Result<Pruned> {
    let db: &Db = &state.db;
    let nonces = sqlx::query("DELETE FROM gateway_nonces WHERE seen_at < $1")
        .bind(now - NONCE_KEEP_MS)
        .execute(&db.pool)
        .await
        .context("pruning gateway nonces")?
        .rows_affected();
    let messages = sqlx::query("DELETE FROM gateway_messages WHERE received_at < $1")
        .bind(now - MESSAGE_KEEP_MS)
        .execute(&db.pool)
        .await
        .context("pruning gateway message ids")?
        .rows_affected();
    let live_changes = sqlx::query("DELETE FROM live_changes WHERE created_at < $1")
        .bind(now - LIVE_KEEP_MS)
        .execute(&db.pool)
        .await
        .context("pruning the live feed")?
        .rows_affected();
    let keys_retired = state.keys.retire_expired().await?;
    Ok(Pruned {
        nonces,
        messages,
        live_changes,
        keys_retired,
    })
}

/// Runs [`prune_once`] every `every` under the `link-prune` lease until `stop`.
pub async fn run_prune(
    state: AppState,
    holder: String,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        match lease::try_acquire(&state.db, "link-prune", &holder, every).await {
            Ok(true) => match prune_once(&state, now_ms()).await {
                Ok(p) => tracing::debug!(?p, "link prune round"),
                Err(e) => tracing::warn!(error = format!("{e:#}"), "link prune round failed"),
            },
            Ok(false) => tracing::debug!("link-prune lease held elsewhere"),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "cannot take the link-prune lease"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
    }
}
