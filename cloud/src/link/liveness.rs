//! Liveness: a gateway's heartbeats say which of its locks are online, and silence says
//! they are not. A heartbeat that stops coming never produces a message, so something has
//! to notice the gap: this job, run under a database lease (one instance per round), marks
//! locks whose last heartbeat is older than three heartbeat intervals offline, and gateways
//! whose last state or heartbeat is that old offline (a gateway whose broker connection
//! dropped cleanly has its Last Will do it sooner, through ingest). Each change appends a
//! `live_changes` row so the console's stream shows it. The same round expires commands
//! that were never answered.

use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;
use tokio::sync::watch;

use crate::AppState;
use crate::db::{Db, lease, now_ms};
use crate::link::ingest::record_change;

/// Missed heartbeats after which a lock or gateway counts as offline.
pub const MISSED_HEARTBEATS: i64 = 3;

/// What one round changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub locks_offline: u64,
    pub gateways_offline: u64,
    pub commands_expired: u64,
}

/// One round with no lease (the caller holds it). `heartbeat_ms` is the gateways'
/// heartbeat interval.
pub async fn sweep_once(db: &Db, now: i64, heartbeat_ms: i64) -> anyhow::Result<Swept> {
    let cutoff = now.saturating_sub(heartbeat_ms.saturating_mul(MISSED_HEARTBEATS));
    let mut swept = Swept::default();

    let locks: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, merchant_id FROM locks WHERE status = 'online' AND deleted_at IS NULL \
         AND COALESCE(last_heartbeat_at, status_changed_at, updated_at) < $1",
    )
    .bind(cutoff)
    .fetch_all(&db.pool)
    .await
    .context("finding silent locks")?;
    for (id, merchant) in locks {
        let mut tx = db.pool.begin().await.context("begin")?;
        // Re-checked in the UPDATE: a heartbeat applied since the SELECT wins.
        let n = sqlx::query(
            "UPDATE locks SET status = 'offline', status_changed_at = $1, updated_at = $1 \
             WHERE id = $2 AND status = 'online' \
             AND COALESCE(last_heartbeat_at, status_changed_at, updated_at) < $3",
        )
        .bind(now)
        .bind(id.clone())
        .bind(cutoff)
        .execute(&mut *tx)
        .await
        .context("marking a lock offline")?
        .rows_affected();
        if n == 1 {
            let data = json!({ "lock_id": id, "status": "offline", "reason": "heartbeat_timeout" });
            record_change(&mut tx, &merchant, "lock", &id, &data).await?;
            swept.locks_offline += 1;
        }
        tx.commit().await.context("commit")?;
    }

    let gateways: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, merchant_id FROM gateways WHERE online = 1 AND deleted_at IS NULL \
         AND COALESCE(last_seen_at, 0) < $1",
    )
    .bind(cutoff)
    .fetch_all(&db.pool)
    .await
    .context("finding silent gateways")?;
    for (id, merchant) in gateways {
        let mut tx = db.pool.begin().await.context("begin")?;
        let n = sqlx::query(
            "UPDATE gateways SET online = 0, updated_at = $1 \
             WHERE id = $2 AND online = 1 AND COALESCE(last_seen_at, 0) < $3",
        )
        .bind(now)
        .bind(id.clone())
        .bind(cutoff)
        .execute(&mut *tx)
        .await
        .context("marking a gateway offline")?
        .rows_affected();
        if n == 1 {
            let data = json!({ "gateway_id": id, "online": false, "reason": "heartbeat_timeout" });
            record_change(&mut tx, &merchant, "gateway", &id, &data).await?;
            swept.gateways_offline += 1;
        }
        tx.commit().await.context("commit")?;
    }

    swept.commands_expired = crate::link::commands::expire_once(db, now).await?;
    Ok(swept)
}

/// Runs [`sweep_once`] every `every` under the `link_liveness` lease until `stop`.
pub async fn run(
    state: AppState,
    holder: String,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let heartbeat_ms = i64::from(state.config.gateway.heartbeat_interval_s) * 1000;
    loop {
        match lease::try_acquire(&state.db, "link_liveness", &holder, every).await {
            Ok(true) => match sweep_once(&state.db, now_ms(), heartbeat_ms).await {
                Ok(s) => {
                    crate::link::commands::count_expired(&state.commands, s.commands_expired);
                    if s != Swept::default() {
                        tracing::info!(?s, "liveness round");
                    }
                }
                Err(e) => tracing::warn!(error = format!("{e:#}"), "liveness round failed"),
            },
            Ok(false) => tracing::debug!("liveness lease held elsewhere; skipping this round"),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "cannot take the liveness lease"),
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
