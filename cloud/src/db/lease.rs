//! Database leases for periodic jobs: several `dmr-cloud` instances may share one database,
//! and a job such as order expiry or settlement must run on exactly one of them at a time.
//! Taking a lease is a single conditional upsert, so the database decides the winner: the
//! row is taken over only when it is free, expired, or already ours.

use std::time::Duration;

use anyhow::Context as _;

use super::{Db, now_ms};

/// Tries to take (or renew) the lease `name` for `holder` for `ttl`. Returns whether
/// `holder` now holds it.
pub async fn try_acquire(db: &Db, name: &str, holder: &str, ttl: Duration) -> anyhow::Result<bool> {
    let now = now_ms();
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
    let result = sqlx::query(
        "INSERT INTO leases (name, holder, expires_at, acquired_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
             expires_at = excluded.expires_at, acquired_at = excluded.acquired_at \
         WHERE leases.expires_at <= $4 OR leases.holder = $2",
    )
    .bind(name.to_string())
    .bind(holder.to_string())
    .bind(now.saturating_add(ttl_ms))
    .bind(now)
    .execute(&db.pool)
    .await
    .with_context(|| format!("taking lease {name}"))?;
    Ok(result.rows_affected() == 1)
}

/// Gives the lease up if `holder` still holds it.
pub async fn release(db: &Db, name: &str, holder: &str) -> anyhow::Result<bool> {
    let result = sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
        .bind(name.to_string())
        .bind(holder.to_string())
        .execute(&db.pool)
        .await
        .with_context(|| format!("releasing lease {name}"))?;
    Ok(result.rows_affected() == 1)
}

/// The current holder, if the lease is held and not expired.
pub async fn holder(db: &Db, name: &str) -> anyhow::Result<Option<String>> {
    let row: Option<String> =
        sqlx::query_scalar("SELECT holder FROM leases WHERE name = $1 AND expires_at > $2")
            .bind(name.to_string())
            .bind(now_ms())
            .fetch_optional(&db.pool)
            .await
            .with_context(|| format!("reading lease {name}"))?;
    Ok(row)
}
