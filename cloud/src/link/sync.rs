//! The gateway's HTTP side of the link, both routes authenticated by [`GatewayRequest`]:
//!
//! - `POST /api/v1/gateway/events`: the store-and-forward drain. The body carries the very
//!   messages the agent publishes over MQTT; they go through the same [`Ingest::submit`], so
//!   an event that came both ways is applied once. Each gets `applied`, `duplicate` or
//!   `rejected` (with the reason) in order; the agent deletes the first two from its outbox
//!   and dead-letters the third.
//! - `GET /api/v1/gateway/sync`: the pull. The answer is a JWS signed by the active cloud
//!   key (`application/jose`) carrying the trusted keys, tokens to cache after a cursor,
//!   the revocation list when newer than the caller's, the config when newer, the locks,
//!   the echoed request nonce and the cloud time (the gateway's signed time beacon).
//!
//! [`queue_token`] and [`revoke_token`] are how other features (orders, maintenance) put
//! work in front of a gateway's next sync.
//!
//! [`Ingest::submit`]: crate::link::ingest::Ingest::submit

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::AnyConnection;

use crate::AppState;
use crate::db::{new_id, now_ms};
use crate::error::{ApiError, ApiResult};
use crate::http::extract::{ApiQuery, RawJson};
use crate::link::enroll::locks_of;
use crate::link::gwauth::GatewayRequest;
use crate::link::ingest::{Outcome, Via};

/// Most messages in one events call.
pub const MAX_MESSAGES: usize = 500;
/// Most tokens in one sync answer; the cursor brings the rest next time.
pub const MAX_TOKENS: i64 = 1000;
/// Tokens younger than this are left for the next pull, so one committed a moment later
/// with an earlier timestamp is not jumped over by the cursor.
pub const TOKEN_LAG_MS: i64 = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsBody {
    messages: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct EventResult {
    pub id: Option<String>,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The message id, read without verification, only to label the answer.
fn message_id(raw: &str) -> Option<String> {
    let payload = raw.split('.').nth(1)?;
    let bytes = dmr_protocol::b64::decode(payload).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("id")?.as_str().map(str::to_string)
}

pub async fn events(State(state): State<AppState>, req: GatewayRequest) -> ApiResult<Response> {
    let body: EventsBody = RawJson::parse(&req.body)?.into_typed()?;
    if body.messages.len() > MAX_MESSAGES {
        return Err(ApiError::validation(
            "messages",
            format!(
                "at most {MAX_MESSAGES} messages per call, found {}",
                body.messages.len()
            ),
        ));
    }
    let refs: Vec<&str> = body.messages.iter().map(String::as_str).collect();
    let outcomes = state
        .ingest
        .submit(req.gateway_id, Via::Http, &refs)
        .await?;
    let results: Vec<EventResult> = refs
        .iter()
        .zip(outcomes)
        .map(|(raw, o)| {
            let id = message_id(raw);
            match o {
                Outcome::Applied => EventResult {
                    id,
                    status: "applied",
                    error: None,
                },
                Outcome::Duplicate => EventResult {
                    id,
                    status: "duplicate",
                    error: None,
                },
                Outcome::Rejected(r) => EventResult {
                    id,
                    status: "rejected",
                    error: Some(r.to_string()),
                },
            }
        })
        .collect();
    Ok(Json(json!({ "results": results })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncQuery {
    tokens_after: Option<String>,
    revocations_version: Option<String>,
    config_version: Option<String>,
}

fn version_param(field: &str, v: Option<&str>) -> Result<i64, ApiError> {
    match v.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(0),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| ApiError::validation(field, "must be a non-negative integer")),
    }
}

/// `created_at:id`, the opaque tokens cursor.
fn parse_cursor(c: Option<&str>) -> Result<Option<(i64, String)>, ApiError> {
    let Some(c) = c.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let bad = || ApiError::validation("tokens_after", "pass back the cursor of the last sync");
    let (t, id) = c.split_once(':').ok_or_else(bad)?;
    let t: i64 = t.parse().map_err(|_| bad())?;
    uuid::Uuid::try_parse(id).map_err(|_| bad())?;
    Ok(Some((t, id.to_string())))
}

pub async fn sync(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<SyncQuery>,
    req: GatewayRequest,
) -> ApiResult<Response> {
    let revocations_after = version_param("revocations_version", q.revocations_version.as_deref())?;
    let config_after = version_param("config_version", q.config_version.as_deref())?;
    let cursor = parse_cursor(q.tokens_after.as_deref())?;
    let gw = req.gateway_id.to_string();
    let now = now_ms();
    let mut conn = state.db.pool.acquire().await?;

    let (after_t, after_id) = cursor.clone().unwrap_or((i64::MIN, String::new()));
    let tokens: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT id, token, created_at FROM gateway_tokens \
         WHERE gateway_id = $1 AND not_after > $2 AND created_at <= $3 \
         AND (created_at > $4 OR (created_at = $4 AND id > $5)) \
         ORDER BY created_at, id LIMIT $6",
    )
    .bind(gw.clone())
    .bind(now / 1000)
    .bind(now - TOKEN_LAG_MS)
    .bind(after_t)
    .bind(after_id)
    .bind(MAX_TOKENS)
    .fetch_all(&mut *conn)
    .await?;
    let next_cursor = match tokens.last() {
        Some((id, _, t)) => format!("{t}:{id}"),
        None => cursor
            .map(|(t, id)| format!("{t}:{id}"))
            .unwrap_or_default(),
    };
    let put: Vec<String> = tokens.into_iter().map(|(_, t, _)| t).collect();

    let revocations = match revocation_list(&mut conn, &gw, revocations_after, now).await? {
        Some((v, ids)) => json!({ "version": v, "token_ids": ids }),
        None => Value::Null,
    };

    let config_version: i64 =
        sqlx::query_scalar("SELECT config_version FROM gateways WHERE id = $1")
            .bind(gw.clone())
            .fetch_one(&mut *conn)
            .await?;
    let cfg = &state.config.gateway;
    let config = if config_version > config_after {
        json!({ "version": config_version, "heartbeat_interval_s": cfg.heartbeat_interval_s,
                "token_skew_s": cfg.token_skew_s })
    } else {
        Value::Null
    };
    let locks = locks_of(&mut conn, &gw).await?;
    drop(conn);

    let payload = json!({
        "v": 1,
        "gw": gw,
        "ts": now,
        "nonce": req.nonce,
        "trusted_keys": state.keys.trusted().await?,
        "tokens": { "cursor": next_cursor, "put": put },
        "revocations": revocations,
        "config": config,
        "locks": locks,
    });
    let signer = state.keys.signer().await?;
    let jws = signer.sign_payload(payload.to_string().as_bytes());
    Ok(([(header::CONTENT_TYPE, "application/jose")], jws).into_response())
}

/// Queues a signed token (`DMR1.` text) for the gateway's next sync pull. `not_after` is the
/// token's expiry in Unix seconds; expired tokens are no longer handed out.
pub async fn queue_token(
    conn: &mut AnyConnection,
    gateway_id: &str,
    token_id: &str,
    token_text: &str,
    not_after: i64,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO gateway_tokens (id, gateway_id, token_id, token, not_after, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(new_id())
    .bind(gateway_id.to_string())
    .bind(token_id.to_string())
    .bind(token_text.to_string())
    .bind(not_after)
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
}

/// The gateway's whole revocation list (ids not yet expired) and its version, if that
/// version is newer than `after`. Sync sends it; so does the push after a refund
/// (`orders::push_revocations`): a gateway takes a list only if its version is not older
/// than the one it holds, so a pushed list must be the whole list, or a revocation whose
/// push was lost would never arrive by sync either.
pub async fn revocation_list(
    conn: &mut AnyConnection,
    gateway_id: &str,
    after: i64,
    now_ms: i64,
) -> Result<Option<(i64, Vec<String>)>, ApiError> {
    let current: Option<i64> =
        sqlx::query_scalar("SELECT MAX(version) FROM token_revocations WHERE gateway_id = $1")
            .bind(gateway_id.to_string())
            .fetch_one(&mut *conn)
            .await?;
    match current {
        Some(v) if v > after => {
            let ids: Vec<String> = sqlx::query_scalar(
                "SELECT token_id FROM token_revocations WHERE gateway_id = $1 AND not_after > $2 \
                 ORDER BY token_id",
            )
            .bind(gateway_id.to_string())
            .bind(now_ms / 1000)
            .fetch_all(&mut *conn)
            .await?;
            Ok(Some((v, ids)))
        }
        _ => Ok(None),
    }
}

/// Adds a token to the gateway's revocation list and bumps the list's version; returns the
/// new version (also what a `tokens.revoke` command should carry). The version is at least
/// the current time in ms and above every earlier one, so lists only move forward.
pub async fn revoke_token(
    conn: &mut AnyConnection,
    gateway_id: &str,
    token_id: &str,
    not_after: i64,
) -> Result<i64, ApiError> {
    let current: Option<i64> =
        sqlx::query_scalar("SELECT MAX(version) FROM token_revocations WHERE gateway_id = $1")
            .bind(gateway_id.to_string())
            .fetch_one(&mut *conn)
            .await?;
    let version = now_ms().max(current.unwrap_or(0) + 1);
    sqlx::query(
        "INSERT INTO token_revocations (gateway_id, token_id, not_after, version, created_at) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (gateway_id, token_id) DO UPDATE SET version = excluded.version",
    )
    .bind(gateway_id.to_string())
    .bind(token_id.to_string())
    .bind(not_after)
    .bind(version)
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(version)
}
