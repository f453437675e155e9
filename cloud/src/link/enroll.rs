//! `POST /api/v1/gateway/enroll`: a gateway trades a one-time enrollment code and its
//! public key for its identity (gateway id, tenant, venue), the cloud keys it must trust,
//! MQTT credentials and its locks.
//!
//! The request proves possession of the private key: `pop` is an Ed25519 signature over
//! `"DMR-ENROLL/1\0" ‖ normalized code ‖ the 32 public-key bytes`, so a code overheard on
//! its way to the gateway cannot bind someone else's key without also having that key, and
//! a captured request cannot be replayed with another key. The proof is checked before the
//! code is spent, so a bad proof does not burn a good code. The code is then claimed in the
//! same transaction that creates or re-enrolls the gateway; unknown, used, revoked and
//! expired codes all get the same 403 (no oracle for guessing).
//!
//! MQTT passwords are 32 random bytes (base64url), returned once. Only
//! [`mqtt_password_hash`] of it is stored in `gateways.mqtt_password_hash`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use dmr_protocol::b64;
use dmr_protocol::keys::{Signature, parse_public_b64u};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::AppState;
use crate::auth::store::secret_hash;
use crate::db::{new_id, now_ms};
use crate::enrollment::store::code_hash;
use crate::enrollment::types::normalize_code;
use crate::error::{ApiError, ApiResult};
use crate::http::extract::ApiJson;
use crate::link::ingest::record_change;
use crate::link::keys::TrustedKey;

/// Domain separation prefix of the proof of possession.
pub const POP_DOMAIN: &[u8] = b"DMR-ENROLL/1\0";

/// The bytes a gateway signs to prove it holds the key it enrolls.
pub fn pop_message(code: &str, public_key: &[u8; 32]) -> Vec<u8> {
    let mut m = POP_DOMAIN.to_vec();
    m.extend_from_slice(normalize_code(code).as_bytes());
    m.extend_from_slice(public_key);
    m
}

/// The stored form of a gateway's MQTT password: lower-case hex SHA-256 of the UTF-8
/// password (64 characters). The password is 32 random bytes, so a fast hash is enough: it
/// cannot be guessed, only stolen, and the hash keeps a database leak from handing it out.
/// Brokers check `mqtt_password_hash(offered) == gateways.mqtt_password_hash` in constant
/// time for username `gw:<gateway_id>` of an enrolled, not deleted gateway.
pub fn mqtt_password_hash(password: &str) -> String {
    secret_hash(password)
}

/// A fresh MQTT password: 32 random bytes, base64url (43 characters).
pub fn new_mqtt_password() -> String {
    crate::auth::store::new_refresh_secret()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub code: String,
    pub public_key: String,
    pub pop: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub agent_version: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct MqttCredentials {
    pub url: String,
    pub username: String,
    pub password: String,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct LockInfo {
    pub lock_id: String,
    pub addr: i64,
    pub name: String,
}

#[derive(Debug, Serialize)]
pub struct GatewayConfig {
    pub version: i64,
    pub heartbeat_interval_s: u32,
    pub token_skew_s: u32,
}

#[derive(Debug, Serialize)]
pub struct EnrollResponse {
    pub gateway_id: String,
    pub merchant_id: String,
    pub venue_id: String,
    pub trusted_keys: Vec<TrustedKey>,
    pub mqtt: MqttCredentials,
    pub sync_url: String,
    pub locks: Vec<LockInfo>,
    pub config: GatewayConfig,
}

/// A gateway's locks as enrollment and sync list them.
pub async fn locks_of(
    conn: &mut sqlx::AnyConnection,
    gateway_id: &str,
) -> Result<Vec<LockInfo>, ApiError> {
    Ok(sqlx::query_as::<_, LockInfo>(
        "SELECT id AS lock_id, bus_address AS addr, name FROM locks \
         WHERE gateway_id = $1 AND deleted_at IS NULL ORDER BY bus_address",
    )
    .bind(gateway_id.to_string())
    .fetch_all(conn)
    .await?)
}

fn validate(req: &EnrollRequest) -> Result<[u8; 32], ApiError> {
    let code = normalize_code(&req.code);
    if code.is_empty() || req.code.len() > 64 {
        return Err(ApiError::validation(
            "code",
            "must be the enrollment code shown when it was created (e.g. ABCDE-FGHJK)",
        ));
    }
    let key = parse_public_b64u(&req.public_key)
        .map_err(|e| ApiError::validation("public_key", e.to_string()))?;
    let sig = b64::decode(req.pop.trim()).map_err(|_| {
        ApiError::validation(
            "pop",
            "must be a base64url Ed25519 signature (86 characters)",
        )
    })?;
    let sig: [u8; 64] = sig
        .as_slice()
        .try_into()
        .map_err(|_| ApiError::validation("pop", "an Ed25519 signature is 64 bytes"))?;
    let pk = *key.as_bytes();
    key.verify_strict(&pop_message(&req.code, &pk), &Signature::from_bytes(&sig))
        .map_err(|_| {
            ApiError::validation(
                "pop",
                "does not verify: sign \"DMR-ENROLL/1\\0\" + the normalized code + the 32 \
                 public key bytes with the private key of public_key",
            )
        })?;
    if req
        .name
        .as_ref()
        .is_some_and(|n| n.trim().is_empty() || n.len() > 100)
    {
        return Err(ApiError::validation("name", "1..=100 characters"));
    }
    if req.agent_version.as_ref().is_some_and(|v| v.len() > 64) {
        return Err(ApiError::validation(
            "agent_version",
            "at most 64 characters",
        ));
    }
    Ok(pk)
}

pub async fn enroll(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> ApiResult<(StatusCode, Json<EnrollResponse>)> {
    validate(&req)?;
    let public_key = req.public_key.trim().to_string();
    let password = new_mqtt_password();
    let now = now_ms();
    let hash = code_hash(&req.code);
    // Read before the transaction: a cold key ring reloads from the database, and inside the
    // transaction that would be a second connection while this one is held. On SQLite the
    // writer pool is one connection (and `:memory:` or a one-connection PostgreSQL pool
    // serves reads from that same connection), so it would wait for itself until the
    // acquire timeout. The list does not depend on anything this transaction writes.
    let trusted_keys = state.keys.trusted().await?;
    let mut tx = state.db.pool.begin().await?;
    let won = sqlx::query(
        "UPDATE enrollment_codes SET used_at = $1 \
         WHERE code_hash = $2 AND used_at IS NULL AND deleted_at IS NULL AND expires_at > $1",
    )
    .bind(now)
    .bind(hash.clone())
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !won {
        return Err(ApiError::EnrollmentCodeInvalid);
    }
    let (code_id, merchant_id, venue_id, named): (String, String, String, Option<String>) =
        sqlx::query_as(
            "SELECT id, merchant_id, venue_id, gateway_id FROM enrollment_codes WHERE code_hash = $1",
        )
        .bind(hash)
        .fetch_one(&mut *tx)
        .await?;
    let gateway_id = match named {
        Some(gw) => {
            let n = sqlx::query(
                "UPDATE gateways SET status = 'enrolled', public_key = $1, enrolled_at = $2, \
                 mqtt_password_hash = $3, agent_version = $4, name = COALESCE($5, name), \
                 online = 0, state_ts = NULL, offline_ts = NULL, heartbeat_ts = NULL, updated_at = $2 \
                 WHERE id = $6 AND merchant_id = $7 AND deleted_at IS NULL \
                 AND status IN ('pending', 'enrolled')",
            )
            .bind(public_key.clone())
            .bind(now)
            .bind(mqtt_password_hash(&password))
            .bind(req.agent_version.clone())
            .bind(req.name.as_ref().map(|n| n.trim().to_string()))
            .bind(gw.clone())
            .bind(merchant_id.clone())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n != 1 {
                // The named gateway was deleted or retired since: the code is useless. The
                // transaction rolls back; the answer is the same as for any bad code.
                return Err(ApiError::EnrollmentCodeInvalid);
            }
            gw
        }
        None => {
            let live: Option<(String,)> =
                sqlx::query_as("SELECT id FROM venues WHERE id = $1 AND deleted_at IS NULL")
                    .bind(venue_id.clone())
                    .fetch_optional(&mut *tx)
                    .await?;
            if live.is_none() {
                return Err(ApiError::EnrollmentCodeInvalid);
            }
            let id = new_id();
            let name = req
                .name
                .as_ref()
                .map(|n| n.trim().to_string())
                .unwrap_or_else(|| format!("Gateway {}", &id[..8]));
            sqlx::query(
                "INSERT INTO gateways (id, merchant_id, venue_id, name, status, public_key, \
                 enrolled_at, mqtt_password_hash, agent_version, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, 'enrolled', $5, $6, $7, $8, $6, $6)",
            )
            .bind(id.clone())
            .bind(merchant_id.clone())
            .bind(venue_id.clone())
            .bind(name)
            .bind(public_key.clone())
            .bind(now)
            .bind(mqtt_password_hash(&password))
            .bind(req.agent_version.clone())
            .execute(&mut *tx)
            .await?;
            id
        }
    };
    sqlx::query("UPDATE enrollment_codes SET used_by_gateway = $1 WHERE id = $2")
        .bind(gateway_id.clone())
        .bind(code_id)
        .execute(&mut *tx)
        .await?;
    let locks = locks_of(&mut tx, &gateway_id).await?;
    let config_version: i64 =
        sqlx::query_scalar("SELECT config_version FROM gateways WHERE id = $1")
            .bind(gateway_id.clone())
            .fetch_one(&mut *tx)
            .await?;
    record_change(
        &mut tx,
        &merchant_id,
        "gateway",
        &gateway_id,
        &json!({ "gateway_id": gateway_id, "status": "enrolled", "online": false, "enrolled_at": now }),
    )
    .await?;
    tx.commit().await?;
    if let Ok(u) = Uuid::parse_str(&gateway_id) {
        state.ingest.forget(u);
        // The broker caches logins for a few seconds: a re-enrolled board's old password
        // must stop working now, not when the cache expires.
        state.broker.auth.forget(u);
    }
    tracing::info!(gateway = %gateway_id, merchant = %merchant_id, "gateway enrolled");
    let cfg = &state.config.gateway;
    Ok((
        StatusCode::CREATED,
        Json(EnrollResponse {
            mqtt: MqttCredentials {
                url: cfg.mqtt_url.clone(),
                username: format!("gw:{gateway_id}"),
                password,
            },
            gateway_id,
            merchant_id,
            venue_id,
            trusted_keys,
            sync_url: state.config.server.public_base_url.clone(),
            locks,
            config: GatewayConfig {
                version: config_version,
                heartbeat_interval_s: cfg.heartbeat_interval_s,
                token_skew_s: cfg.token_skew_s,
            },
        }),
    ))
}
