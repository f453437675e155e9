//! Refresh tokens and the login throttle. Each state change is one conditional statement,
//! so two instances (or two concurrent requests) cannot both use the same refresh token or
//! both miss a failure count.

use sha2::{Digest as _, Sha256};
use sqlx::Acquire as _;

use crate::db::{Db, new_id, now_ms};
use crate::error::ApiError;

/// SHA-256 hex of a token or code: what the database stores instead of the secret.
pub fn secret_hash(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh opaque refresh token (256 random bits, base64url).
pub fn new_refresh_secret() -> String {
    use rand_core::RngCore as _;
    let mut bytes = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut bytes);
    dmr_protocol::b64::encode(bytes)
}

#[derive(Debug, sqlx::FromRow)]
struct TokenRow {
    family_id: String,
    user_id: String,
    expires_at: i64,
    used_at: Option<i64>,
    revoked_at: Option<i64>,
}

/// Stores a new refresh token in `family` and returns its secret.
pub async fn insert_refresh(
    db: &Db,
    user_id: &str,
    family_id: &str,
    ttl_ms: i64,
) -> Result<String, ApiError> {
    let secret = new_refresh_secret();
    let now = now_ms();
    sqlx::query(
        "INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, expires_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(new_id())
    .bind(family_id.to_string())
    .bind(user_id.to_string())
    .bind(secret_hash(&secret))
    .bind(now.saturating_add(ttl_ms))
    .bind(now)
    .execute(&db.pool)
    .await?;
    Ok(secret)
}

/// What presenting a refresh token led to.
#[derive(Debug, PartialEq, Eq)]
pub enum Rotation {
    /// Valid and now spent: the new secret of the same family, for this user.
    Rotated { user_id: String, new_secret: String },
    /// Unknown, expired or revoked.
    Invalid,
    /// Already used: the family has just been revoked.
    Reused,
}

/// Spends a refresh token and issues its successor, or detects reuse.
pub async fn rotate(db: &Db, secret: &str, ttl_ms: i64) -> Result<Rotation, ApiError> {
    let hash = secret_hash(secret);
    let now = now_ms();
    // Claim first: only one caller can flip used_at from NULL, whoever else comes is reuse.
    let mut conn = db.pool.acquire().await?;
    let mut tx = conn.begin().await?;
    let claimed = sqlx::query(
        "UPDATE refresh_tokens SET used_at = $1 \
         WHERE token_hash = $2 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $1",
    )
    .bind(now)
    .bind(hash.clone())
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    let row: Option<TokenRow> = sqlx::query_as(
        "SELECT family_id, user_id, expires_at, used_at, revoked_at FROM refresh_tokens \
         WHERE token_hash = $1",
    )
    .bind(hash)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        tx.rollback().await?;
        return Ok(Rotation::Invalid);
    };
    if claimed {
        let new_secret = new_refresh_secret();
        sqlx::query(
            "INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(new_id())
        .bind(row.family_id.clone())
        .bind(row.user_id.clone())
        .bind(secret_hash(&new_secret))
        .bind(now.saturating_add(ttl_ms))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(Rotation::Rotated {
            user_id: row.user_id,
            new_secret,
        });
    }
    if row.revoked_at.is_some() || row.expires_at <= now {
        tx.rollback().await?;
        return Ok(Rotation::Invalid);
    }
    if row.used_at.is_some() {
        revoke_family_in(&mut tx, &row.family_id, now).await?;
        tx.commit().await?;
        tracing::warn!(family = %row.family_id, user = %row.user_id, "refresh token reuse; family revoked");
        return Ok(Rotation::Reused);
    }
    tx.rollback().await?;
    Ok(Rotation::Invalid)
}

async fn revoke_family_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    family_id: &str,
    now: i64,
) -> Result<(), ApiError> {
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(family_id.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Ends the login the token belongs to (logout). Unknown tokens are ignored.
pub async fn revoke_family_of(db: &Db, secret: &str) -> Result<(), ApiError> {
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = $1 WHERE revoked_at IS NULL AND family_id = \
         (SELECT family_id FROM refresh_tokens WHERE token_hash = $2)",
    )
    .bind(now_ms())
    .bind(secret_hash(secret))
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Milliseconds left on a lockout of `subject`, if locked.
pub async fn locked_for(db: &Db, subject: &str) -> Result<Option<i64>, ApiError> {
    let until: Option<i64> =
        sqlx::query_scalar("SELECT locked_until FROM login_throttle WHERE subject = $1")
            .bind(subject.to_string())
            .fetch_optional(&db.pool)
            .await?;
    let now = now_ms();
    Ok(until.filter(|u| *u > now).map(|u| u - now))
}

/// Counts a failed login; locks the subject once `max_failures` fall within the window.
/// Returns whether the subject is now locked.
pub async fn record_failure(
    db: &Db,
    subject: &str,
    max_failures: u32,
    window_ms: i64,
    lockout_ms: i64,
) -> Result<bool, ApiError> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO login_throttle (subject, failures, window_started_at, locked_until, updated_at) \
         VALUES ($1, 1, $2, 0, $2) \
         ON CONFLICT (subject) DO UPDATE SET \
           failures = CASE WHEN login_throttle.window_started_at <= $3 THEN 1 \
                           ELSE login_throttle.failures + 1 END, \
           window_started_at = CASE WHEN login_throttle.window_started_at <= $3 THEN $2 \
                                    ELSE login_throttle.window_started_at END, \
           updated_at = $2",
    )
    .bind(subject.to_string())
    .bind(now)
    .bind(now.saturating_sub(window_ms))
    .execute(&db.pool)
    .await?;
    let locked = sqlx::query(
        "UPDATE login_throttle SET locked_until = $1, failures = 0, window_started_at = $2 \
         WHERE subject = $3 AND failures >= $4",
    )
    .bind(now.saturating_add(lockout_ms))
    .bind(now)
    .bind(subject.to_string())
    .bind(i64::from(max_failures))
    .execute(&db.pool)
    .await?
    .rows_affected()
        == 1;
    Ok(locked)
}

/// Forgets failures after a successful login.
pub async fn clear_failures(db: &Db, subject: &str) -> Result<(), ApiError> {
    sqlx::query("DELETE FROM login_throttle WHERE subject = $1")
        .bind(subject.to_string())
        .execute(&db.pool)
        .await?;
    Ok(())
}
