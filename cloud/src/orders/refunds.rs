//! Refunds: created in the same transaction as whatever caused them (a merchant's request,
//! an unlock that failed, a payment that came too late), sent by the refund job, final when
//! the provider says so.
//!
//! A refund's `out_refund_no` is fixed when the row is created and sent on every retry, so
//! the provider refunds at most once however often we ask. Automatic refunds after a failed
//! unlock wait `refund_grace_ms` in `pending` before they are sent: a late unlock event
//! (an offline gateway draining its outbox) can still cancel them. Once sent (`processing`)
//! a refund cannot be called back; a late proof of opening then flags the order for review.

use serde::Serialize;
use sqlx::AnyConnection;

use super::{Actor, Also, OrderRow, Status, money, transition};
use crate::AppState;
use crate::db::{new_id, now_ms};
use crate::error::ApiError;
use crate::payments::notify::{PAYMENT_COLUMNS, PaymentRow};
use crate::payments::{ProviderError, RefundRequest, RefundState};

/// Refunds are refused this long after the payment (WeChat Pay's own limit is one year).
pub const MAX_REFUND_AGE_MS: i64 = 365 * 24 * 3_600_000;
/// Sends before a refund is given up and alerted.
pub const MAX_ATTEMPTS: i64 = 10;

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct RefundRow {
    pub id: String,
    pub order_id: String,
    pub payment_id: String,
    pub merchant_id: String,
    pub provider: String,
    pub out_refund_no: String,
    pub amount_fen: i64,
    pub reason: String,
    pub actor: String,
    pub status: String,
    pub send_after: i64,
    pub attempts: i64,
    pub provider_refund_id: Option<String>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub sent_at: Option<i64>,
    pub completed_at: Option<i64>,
}

pub const REFUND_COLUMNS: &str = "id, order_id, payment_id, merchant_id, provider, out_refund_no, \
    amount_fen, reason, actor, status, send_after, attempts, provider_refund_id, last_error, \
    created_at, sent_at, completed_at";

pub async fn by_out_refund_no(
    conn: &mut AnyConnection,
    no: &str,
) -> Result<Option<RefundRow>, ApiError> {
    let sql = format!("SELECT {REFUND_COLUMNS} FROM refunds WHERE out_refund_no = $1");
    Ok(sqlx::query_as::<_, RefundRow>(sqlx::AssertSqlSafe(sql))
        .bind(no.to_string())
        .fetch_optional(&mut *conn)
        .await?)
}

/// What of an order's paid money is still refundable: paid minus every refund that is
/// not cancelled or failed.
pub async fn refundable(conn: &mut AnyConnection, order_id: &str) -> Result<i64, ApiError> {
    let paid: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(amount_fen), 0) AS BIGINT) FROM payments WHERE order_id = $1 AND status = 'succeeded'",
    )
    .bind(order_id.to_string())
    .fetch_one(&mut *conn)
    .await?;
    let refunded: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(amount_fen), 0) AS BIGINT) FROM refunds WHERE order_id = $1 \
         AND status IN ('pending', 'processing', 'succeeded')",
    )
    .bind(order_id.to_string())
    .fetch_one(&mut *conn)
    .await?;
    Ok(paid - refunded)
}

/// Creates a refund of `amount_fen` of payment `p` (inside the caller's transaction), to be
/// sent no earlier than `now + delay_ms`. A refund of everything that is left moves the
/// order to `refunding` when its state allows.
// One argument per fact of the refund row.
#[allow(clippy::too_many_arguments)]
pub async fn create(
    conn: &mut AnyConnection,
    order: &OrderRow,
    p: &PaymentRow,
    amount_fen: i64,
    reason: &str,
    actor: &Actor,
    now: i64,
    delay_ms: i64,
) -> Result<RefundRow, ApiError> {
    if amount_fen <= 0 {
        return Err(ApiError::validation("amount_fen", "must be at least 1 fen"));
    }
    let left = refundable(conn, &order.id).await?;
    if amount_fen > left {
        return Err(ApiError::validation(
            "amount_fen",
            format!("exceeds what is left to refund ({left} fen)"),
        ));
    }
    if let Some(paid_at) = p.paid_at
        && now - paid_at > MAX_REFUND_AGE_MS
    {
        return Err(ApiError::validation(
            "order",
            "paid more than 365 days ago; refunds are no longer possible",
        ));
    }
    let id = new_id();
    let row = RefundRow {
        id: id.clone(),
        order_id: order.id.clone(),
        payment_id: p.id.clone(),
        merchant_id: order.merchant_id.clone(),
        provider: p.provider.clone(),
        out_refund_no: format!("R{}", id.replace('-', "")),
        amount_fen,
        reason: reason.to_string(),
        actor: actor.label(),
        status: "pending".into(),
        send_after: now + delay_ms,
        attempts: 0,
        provider_refund_id: None,
        last_error: None,
        created_at: now,
        sent_at: None,
        completed_at: None,
    };
    sqlx::query(
        "INSERT INTO refunds (id, order_id, payment_id, merchant_id, provider, out_refund_no, amount_fen, \
         reason, actor, status, send_after, attempts, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10, 0, $11, $11)",
    )
    .bind(row.id.clone())
    .bind(row.order_id.clone())
    .bind(row.payment_id.clone())
    .bind(row.merchant_id.clone())
    .bind(row.provider.clone())
    .bind(row.out_refund_no.clone())
    .bind(amount_fen)
    .bind(row.reason.clone())
    .bind(row.actor.clone())
    .bind(row.send_after)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    // A delayed (automatic) refund may still be cancelled, so the order only moves to
    // `refunding` when it is actually sent (see `send_due`).
    if amount_fen == left && delay_ms == 0 {
        let from = order.status();
        if from.can_go_to(Status::Refunding) {
            transition(
                conn,
                &order.id,
                from,
                Status::Refunding,
                actor,
                reason,
                now,
                Also::default(),
            )
            .await?;
        }
    }
    Ok(row)
}

/// The provider refunded: book it (once) and finish the order if nothing is left.
pub async fn apply_success(
    conn: &mut AnyConnection,
    r: &RefundRow,
    provider_refund_id: &str,
    now: i64,
) -> Result<bool, ApiError> {
    let won = sqlx::query(
        "UPDATE refunds SET status = 'succeeded', provider_refund_id = $1, completed_at = $2, \
         updated_at = $2 WHERE id = $3 AND status IN ('pending', 'processing', 'failed')",
    )
    .bind(provider_refund_id.to_string())
    .bind(now)
    .bind(r.id.clone())
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if !won {
        return Ok(false);
    }
    let roll_up = money::book_deferred(
        conn,
        &r.merchant_id,
        Some(&r.order_id),
        money::Kind::Refund,
        -r.amount_fen,
        &r.id,
        now,
    )
    .await?;
    sqlx::query(
        "UPDATE orders SET refunded_fen = refunded_fen + $1, updated_at = $2 WHERE id = $3",
    )
    .bind(r.amount_fen)
    .bind(now)
    .bind(r.order_id.clone())
    .execute(&mut *conn)
    .await?;
    if let Some(order) = super::load(conn, &r.order_id).await?
        && order.status() == Status::Refunding
        && order.refunded_fen >= order.amount_fen
    {
        transition(
            conn,
            &order.id,
            Status::Refunding,
            Status::Refunded,
            &Actor::Provider(r.provider.clone()),
            "refund completed",
            now,
            Also::default(),
        )
        .await?;
    }
    // Last, as for payments: the order's row before the merchant's contended day row, in
    // every transaction, so two of them never wait on each other in opposite order.
    if let Some(r) = roll_up {
        r.apply(conn).await?;
    }
    Ok(true)
}

/// The provider gave up on a refund: alert a person (money is owed to the payer).
pub async fn apply_failure(
    conn: &mut AnyConnection,
    r: &RefundRow,
    why: &str,
    now: i64,
) -> Result<(), ApiError> {
    let n = sqlx::query(
        "UPDATE refunds SET status = 'failed', last_error = $1, updated_at = $2 \
         WHERE id = $3 AND status IN ('pending', 'processing')",
    )
    .bind(why.to_string())
    .bind(now)
    .bind(r.id.clone())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if n == 1 {
        super::alert(
            conn,
            Some(&r.merchant_id),
            Some(&r.order_id),
            "refund_failed",
            &format!("refund {} failed: {why}", r.out_refund_no),
        )
        .await?;
    }
    Ok(())
}

/// Cancels the order's refunds that were not sent yet; returns how many.
pub async fn cancel_unsent(
    conn: &mut AnyConnection,
    order_id: &str,
    now: i64,
) -> Result<u64, ApiError> {
    Ok(sqlx::query(
        "UPDATE refunds SET status = 'cancelled', updated_at = $1 WHERE order_id = $2 AND status = 'pending'",
    )
    .bind(now)
    .bind(order_id.to_string())
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// Sends every due refund (pending past its grace, or processing and due for a retry).
/// Each is claimed with a conditional update first, so two instances never send one twice
/// at the same moment — and if they did, the same `out_refund_no` makes it harmless.
pub async fn send_due(state: &AppState, now: i64, limit: i64) -> Result<usize, ApiError> {
    let sql = format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE status IN ('pending', 'processing') \
         AND send_after <= $1 ORDER BY send_after LIMIT $2"
    );
    let due = sqlx::query_as::<_, RefundRow>(sqlx::AssertSqlSafe(sql))
        .bind(now)
        .bind(limit)
        .fetch_all(&state.db.pool)
        .await?;
    let mut sent = 0;
    for r in due {
        // Claim: push send_after out (the retry time if this attempt dies with us).
        let backoff = 5_000 * (1 << r.attempts.clamp(0, 8));
        let claimed = sqlx::query(
            "UPDATE refunds SET status = 'processing', attempts = attempts + 1, sent_at = $1, \
             send_after = $2, updated_at = $1 WHERE id = $3 AND status = $4 AND attempts = $5",
        )
        .bind(now)
        .bind(now + backoff)
        .bind(r.id.clone())
        .bind(r.status.clone())
        .bind(r.attempts)
        .execute(&state.db.pool)
        .await?
        .rows_affected()
            == 1;
        if !claimed {
            continue;
        }
        if r.status == "pending" {
            mark_refunding(state, &r.order_id, now).await?;
        }
        let Some(provider) = state.orders.providers.get(&r.provider) else {
            continue;
        };
        let sql = format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1");
        let p = sqlx::query_as::<_, PaymentRow>(sqlx::AssertSqlSafe(sql))
            .bind(r.payment_id.clone())
            .fetch_one(&state.db.pool)
            .await?;
        let req = RefundRequest {
            out_refund_no: r.out_refund_no.clone(),
            out_trade_no: p.out_trade_no.clone(),
            transaction_id: p.provider_txn_id.clone(),
            refund_fen: r.amount_fen,
            total_fen: p.amount_fen,
            reason: r.reason.clone(),
        };
        // A refund the provider accepted as processing is asked about, not re-requested
        // (re-requesting with the same out_refund_no would be harmless, just noisier).
        let result = if r.status == "processing" && r.provider_refund_id.is_some() {
            match provider.query_refund(&r.out_refund_no).await {
                Err(ProviderError::NotFound) => provider.refund(&req).await,
                other => other,
            }
        } else {
            provider.refund(&req).await
        };
        let mut conn = state.db.pool.acquire().await?;
        match result {
            Ok(RefundState::Succeeded { refund_id }) => {
                let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
                apply_success(&mut tx, &r, &refund_id, now).await?;
                tx.commit().await?;
            }
            Ok(RefundState::Processing { refund_id }) => {
                sqlx::query("UPDATE refunds SET provider_refund_id = $1 WHERE id = $2")
                    .bind(refund_id)
                    .bind(r.id.clone())
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(RefundState::Failed { reason }) => {
                apply_failure(&mut conn, &r, &reason, now_ms()).await?;
            }
            Err(ProviderError::Refused(why)) => {
                apply_failure(&mut conn, &r, &why, now_ms()).await?;
            }
            Err(e) => {
                let msg = e.to_string();
                sqlx::query("UPDATE refunds SET last_error = $1 WHERE id = $2")
                    .bind(msg.clone())
                    .bind(r.id.clone())
                    .execute(&mut *conn)
                    .await?;
                if r.attempts + 1 >= MAX_ATTEMPTS {
                    apply_failure(&mut conn, &r, &format!("gave up: {msg}"), now_ms()).await?;
                }
            }
        }
        sent += 1;
    }
    Ok(sent)
}

/// When a refund goes out and nothing of the order is left unrefunded, the order is
/// `refunding` (if its state allows; an expired order simply stays expired).
async fn mark_refunding(state: &AppState, order_id: &str, now: i64) -> Result<(), ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
    money::write_lock(&mut tx).await?;
    let mut won = false;
    if let Some(order) = super::load(&mut tx, order_id).await?
        && order.status().can_go_to(Status::Refunding)
        && refundable(&mut tx, order_id).await? == 0
    {
        won = transition(
            &mut tx,
            order_id,
            order.status(),
            Status::Refunding,
            &Actor::System,
            "refund sent",
            now,
            Also::default(),
        )
        .await?;
    }
    tx.commit().await?;
    if won {
        super::push_revocations(state, order_id);
    }
    Ok(())
}
