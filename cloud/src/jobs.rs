//! Periodic housekeeping, run under a database lease so that with N instances sharing a
//! database each round runs on one of them only. Today that is purging spent refresh
//! tokens and stale login counters, forgetting WeChat sign-in states nobody came back with and
//! openid bindings past their lifetime, and refreshing SQLite's planner statistics. The order
//! jobs (expiry, unlock timeouts, settlement) live in `crate::orders::jobs`.

use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::db::{Db, lease, now_ms};

/// How long spent or expired refresh tokens are kept (for reuse detection) before purging.
const KEEP_SPENT_MS: i64 = 7 * 24 * 3600 * 1000;
/// Login counters untouched for this long are dropped (their windows ended long ago).
const KEEP_THROTTLE_MS: i64 = 24 * 3600 * 1000;

/// What one cleanup round removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cleaned {
    pub refresh_tokens: u64,
    pub throttle_rows: u64,
    pub oauth_states: u64,
    pub openid_bindings: u64,
}

/// One cleanup round, no lease (the caller holds it).
pub async fn cleanup_once(db: &Db, now: i64) -> anyhow::Result<Cleaned> {
    let cutoff = now.saturating_sub(KEEP_SPENT_MS);
    let refresh_tokens = sqlx::query("DELETE FROM refresh_tokens WHERE expires_at < $1")
        .bind(cutoff)
        .execute(&db.pool)
        .await
        .context("purging expired refresh tokens")?
        .rows_affected();
    let throttle_rows =
        sqlx::query("DELETE FROM login_throttle WHERE updated_at < $1 AND locked_until < $2")
            .bind(now.saturating_sub(KEEP_THROTTLE_MS))
            .bind(now)
            .execute(&db.pool)
            .await
            .context("purging stale login counters")?
            .rows_affected();
    // The sign-in page also drops expired states when it hands out a new one; a quiet
    // server still needs them gone.
    let oauth_states = sqlx::query("DELETE FROM wechat_oauth_states WHERE expires_at < $1")
        .bind(now)
        .execute(&db.pool)
        .await
        .context("purging expired WeChat sign-in states")?
        .rows_affected();
    let openid_bindings = sqlx::query("DELETE FROM wechat_openids WHERE bound_at < $1")
        .bind(now.saturating_sub(crate::orders::wechat_oauth::BINDING_TTL_MS))
        .execute(&db.pool)
        .await
        .context("purging expired WeChat openid bindings")?
        .rows_affected();
    if db.backend == crate::db::Backend::Sqlite {
        // SQLite has no autovacuum/autoanalyze; without fresh statistics its planner can
        // pick a table scan over a tenant index once tables grow.
        sqlx::query("PRAGMA optimize")
            .execute(&db.pool)
            .await
            .context("PRAGMA optimize")?;
    }
    Ok(Cleaned {
        refresh_tokens,
        throttle_rows,
        oauth_states,
        openid_bindings,
    })
}

/// Runs cleanup every `every` while `stop` stays false. Each round first takes the
/// `cleanup` lease for `holder`; a round another instance holds is skipped.
pub async fn run_cleanup(db: Db, holder: String, every: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        match lease::try_acquire(&db, "cleanup", &holder, every).await {
            Ok(true) => match cleanup_once(&db, now_ms()).await {
                Ok(c) => tracing::info!(?c, "cleanup round"),
                Err(e) => tracing::warn!(error = format!("{e:#}"), "cleanup round failed"),
            },
            Ok(false) => tracing::debug!("cleanup lease held elsewhere; skipping this round"),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "cannot take the cleanup lease"),
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
