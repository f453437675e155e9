//! The order jobs, one round per interval under the `orders` database lease (so with several
//! instances each round runs on one of them; and since every step is a conditional update,
//! even two rounds at once would not double anything):
//! expire unpaid orders past their deadline (and close their payments), fail over
//! `unlocking` orders past the unlock timeout to `unlock_failed` with a refund, re-dispatch
//! orders stuck in `paid` (a crash between payment and dispatch), send due refunds, query
//! the provider about payments whose notification never came (the reconciler), issue the
//! daily settlements of finished Asia/Shanghai days, and reconcile yesterday three ways.

use std::time::Duration;

use sqlx::{Acquire as _, AnyPool};
use tokio::sync::watch;

use super::{Actor, Also, Status, dispatch, events, load, money, refunds, transition};
use crate::AppState;
use crate::db::{lease, now_ms};
use crate::error::ApiError;
use crate::payments::notify::{self, PAYMENT_COLUMNS, PaymentRow};
use crate::payments::{PaymentQuery, ProviderNotification};

/// Rows handled per step per round (the rest wait for the next round).
const BATCH: i64 = 500;
/// A `paid` order older than this was not dispatched by its notification (crash): redo it.
const STUCK_PAID_MS: i64 = 5_000;
/// Ask the provider about a payment with no notification after this long...
const QUERY_AFTER_MS: i64 = 30_000;
/// ...and again at most this often.
const QUERY_EVERY_MS: i64 = 60_000;

/// An `unlocked` order whose door cycle the gateway never saw is closed this long after its
/// plan's time ran out. The agent polls doors, so an open-and-close between two polls (a busy
/// bus, a quick customer) leaves no door events; without this the order would hold its lock
/// (one active order per lock) for good and the lock could never be sold again.
pub const DOOR_GRACE_MS: i64 = 5 * 60_000;

/// What one round did (for logs and tests).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub expired: usize,
    pub unlock_timeouts: usize,
    pub door_timeouts: usize,
    pub redispatched: usize,
    pub refunds_sent: usize,
    pub payments_found: usize,
    pub settlements: usize,
    pub reconciliations: usize,
}

/// One round at time `now` (tests pass a future `now` instead of sleeping).
pub async fn run_once(state: &AppState, now: i64) -> Result<Round, ApiError> {
    let mut round = Round::default();
    let pool = &state.db.pool;

    // Unpaid past the deadline.
    let ids = due(
        pool,
        "SELECT id FROM orders WHERE status = 'created' AND pay_deadline_at < $1 LIMIT $2",
        now,
    )
    .await?;
    for id in ids {
        let mut conn = pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let won = transition(
            &mut tx,
            &id,
            Status::Created,
            Status::Expired,
            &Actor::System,
            "not paid before the deadline",
            now,
            Also::default(),
        )
        .await?;
        let pending = sqlx::query_as::<_, (String, String)>(
            "SELECT provider, out_trade_no FROM payments WHERE order_id = $1 AND status = 'pending'",
        )
        .bind(id.clone())
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE payments SET status = 'closed', updated_at = $1 WHERE order_id = $2 AND status = 'pending'",
        )
        .bind(now)
        .bind(id.clone())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if won {
            round.expired += 1;
            // Best effort: a payment that still succeeds at the provider is refunded when
            // its notification (or the reconciler) brings it in.
            for (provider, no) in pending {
                if let Some(p) = state.orders.providers.get(&provider)
                    && let Err(e) = p.close_payment(&no).await
                {
                    tracing::info!(out_trade_no = no, error = %e, "closing an expired payment");
                }
            }
        }
    }

    // No unlock result in time.
    let ids = due(
        pool,
        "SELECT id FROM orders WHERE status = 'unlocking' AND unlock_deadline_at < $1 LIMIT $2",
        now,
    )
    .await?;
    for id in ids {
        let mut conn = pool.acquire().await?;
        let mut tx = conn.begin().await?;
        money::write_lock(&mut tx).await?;
        if let Some(order) = load(&mut tx, &id).await?
            && order.status() == Status::Unlocking
        {
            events::fail_and_refund(
                &mut tx,
                &order,
                &Actor::System,
                "no unlock result before the timeout",
                now,
            )
            .await?;
            round.unlock_timeouts += 1;
        }
        tx.commit().await?;
    }

    // Opened, but no door cycle seen by the end of the paid time (+ grace): complete it, saying
    // why in the transition, so the lock is free again. The customer had the door opened, so
    // this is not a refund case; the missing door events stay visible in the history.
    let ids = due(
        pool,
        "SELECT id FROM orders WHERE status = 'unlocked' \
         AND unlocked_at + duration_minutes * 60000 < $1 LIMIT $2",
        now - DOOR_GRACE_MS,
    )
    .await?;
    for id in ids {
        let mut conn = pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let won = transition(
            &mut tx,
            &id,
            Status::Unlocked,
            Status::Completed,
            &Actor::System,
            "the plan's time ran out and the gateway saw no door cycle",
            now,
            Also::default(),
        )
        .await?;
        tx.commit().await?;
        if won {
            round.door_timeouts += 1;
        }
    }

    // Paid but never dispatched.
    let ids = due(
        pool,
        "SELECT id FROM orders WHERE status = 'paid' AND paid_at < $1 LIMIT $2",
        now - STUCK_PAID_MS,
    )
    .await?;
    for id in ids {
        dispatch::dispatch_unlock(state, &id).await;
        round.redispatched += 1;
    }

    round.refunds_sent = refunds::send_due(state, now, BATCH).await?;
    round.payments_found = query_silent_payments(state, now).await?;

    // Settlements of finished days.
    let today = money::shanghai_day(now);
    let mut conn = pool.acquire().await?;
    let due = money::unsettled_days(&mut conn, &today).await?;
    for (merchant, day) in due {
        let mut tx = conn.begin().await?;
        if money::settle_day(&mut tx, &merchant, &day, now)
            .await?
            .is_some()
        {
            round.settlements += 1;
        }
        tx.commit().await?;
    }
    drop(conn);

    // Yesterday's reconciliation, once per provider.
    let yesterday = money::shanghai_day(now - 24 * 3_600_000);
    for provider in state.orders.providers.names() {
        let done: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM reconciliation_reports WHERE provider = $1 AND day = $2",
        )
        .bind(provider.clone())
        .bind(yesterday.clone())
        .fetch_one(pool)
        .await?;
        if done == 0 {
            money::reconcile(state, &provider, &yesterday, now).await?;
            round.reconciliations += 1;
        }
    }
    Ok(round)
}

/// Ids of the orders a step is due for: `sql` selects `id` with `$1` the cutoff time and `$2`
/// the batch size (the rest wait for the next round). Each step then moves each order in a
/// transaction of its own with a conditional update, so an order that moved on since it was
/// selected (a late notification, another instance) is left alone.
async fn due(pool: &AnyPool, sql: &'static str, cutoff: i64) -> Result<Vec<String>, ApiError> {
    Ok(sqlx::query_scalar(sql)
        .bind(cutoff)
        .bind(BATCH)
        .fetch_all(pool)
        .await?)
}

/// The reconciler: asks the provider about pending payments whose notification is late,
/// and applies what it learns exactly as a notification would be applied.
async fn query_silent_payments(state: &AppState, now: i64) -> Result<usize, ApiError> {
    let sql = format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE status IN ('pending', 'closed') \
         AND notified_at IS NULL AND created_at < $1 \
         AND (last_queried_at IS NULL OR last_queried_at < $2) ORDER BY created_at LIMIT $3"
    );
    let silent = sqlx::query_as::<_, PaymentRow>(sqlx::AssertSqlSafe(sql))
        .bind(now - QUERY_AFTER_MS)
        .bind(now - QUERY_EVERY_MS)
        .bind(BATCH)
        .fetch_all(&state.db.pool)
        .await?;
    let mut found = 0;
    for p in silent {
        sqlx::query("UPDATE payments SET last_queried_at = $1 WHERE id = $2")
            .bind(now)
            .bind(p.id.clone())
            .execute(&state.db.pool)
            .await?;
        let Some(provider) = state.orders.providers.get(&p.provider) else {
            continue;
        };
        match provider.query_payment(&p.out_trade_no).await {
            Ok(PaymentQuery::Paid {
                transaction_id,
                amount_fen,
                paid_at_ms,
            }) => {
                let (mchid, appid) = provider.expected_ids();
                let n = ProviderNotification::Payment {
                    notification_id: format!("query:{transaction_id}"),
                    out_trade_no: p.out_trade_no.clone(),
                    transaction_id,
                    amount_fen,
                    mchid,
                    appid,
                    paid_at_ms,
                };
                match notify::apply(state, &p.provider, &n).await {
                    Ok(_) => found += 1,
                    Err(e) => {
                        tracing::warn!(out_trade_no = p.out_trade_no, error = %e, "queried payment refused")
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::info!(out_trade_no = p.out_trade_no, error = %e, "payment query failed")
            }
        }
    }
    Ok(found)
}

/// Runs rounds every `every` while `stop` stays false, under the `orders` lease.
pub async fn run(
    state: AppState,
    holder: String,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let ttl = every.saturating_mul(5).max(Duration::from_secs(5));
    loop {
        match lease::try_acquire(&state.db, "orders", &holder, ttl).await {
            Ok(true) => match run_once(&state, now_ms()).await {
                Ok(r) if r != Round::default() => tracing::info!(?r, "order jobs round"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "order jobs round failed"),
            },
            Ok(false) => {}
            Err(e) => tracing::warn!(error = format!("{e:#}"), "cannot take the orders lease"),
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
