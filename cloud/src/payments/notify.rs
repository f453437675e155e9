//! `POST /api/v1/payments/notify/{provider}`: provider notifications.
//!
//! Order of work, each step a reason to answer non-2xx with nothing changed: the provider
//! verifies the raw body and headers (signature, timestamp, decryption) before anything is
//! parsed; a verified notification whose amount, merchant id or app id differs from our
//! payment is refused (4xx) and alerted; otherwise its effect and a row keyed by the
//! provider's notification id commit in ONE transaction. Only after that commit is it
//! answered 2xx, so a crash before the answer makes the provider redeliver, and the
//! redelivery finds the notification row and changes nothing (but is answered 2xx).
//! A first payment for a waiting order carries the unlock in the same transaction (token
//! signed and command built before it, see `orders::dispatch::plan_unlock`): the order goes
//! `created` → `paid` → `unlocking` and the command row is written; the command is published
//! after the commit (a crash in between leaves it to the unlock timeout).
//! Failures are the usual API error body, except for `wechatpay`, which gets the body WeChat
//! Pay reads, `{"code":"FAIL","message":...}`, with the same status.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse as _, Response};

use super::{NotifyError, ProviderNotification};
use crate::AppState;
use crate::db::{new_id, now_ms};
use crate::error::ApiError;
use crate::orders::{self, Actor, Also, Status, money, refunds};

/// What a delivery did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// First delivery; the effect is committed.
    Applied,
    /// Seen before; nothing changed.
    Duplicate,
}

/// A payment row.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct PaymentRow {
    pub id: String,
    pub order_id: String,
    pub merchant_id: String,
    pub provider: String,
    pub out_trade_no: String,
    pub amount_fen: i64,
    pub status: String,
    pub provider_txn_id: Option<String>,
    pub created_at: i64,
    pub paid_at: Option<i64>,
}

pub const PAYMENT_COLUMNS: &str = "id, order_id, merchant_id, provider, out_trade_no, amount_fen, \
                                   status, provider_txn_id, created_at, paid_at";

pub async fn handler(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let wechat = matches!(&path, Ok(Path(p)) if p == "wechatpay");
    match receive(&state, path, &headers, body).await {
        // WeChat Pay v3 takes 200/204 without a body as success.
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) if wechat => wechat_failure(e),
        Err(e) => e.into_response(),
    }
}

/// WeChat Pay reads failures as `{"code":"FAIL","message":...}` with a 4xx/5xx status (and
/// redelivers on 5xx). Server-side trouble is not described to the caller.
fn wechat_failure(e: ApiError) -> Response {
    let message = e.to_string();
    let status = e.into_response().status();
    let message = if status.is_server_error() {
        "temporarily unable to process the notification; deliver it again".to_string()
    } else {
        message
    };
    (
        status,
        axum::Json(serde_json::json!({ "code": "FAIL", "message": message })),
    )
        .into_response()
}

async fn receive(
    state: &AppState,
    path: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(), ApiError> {
    let Path(provider) = path.map_err(|_| ApiError::NotFound)?;
    let body = body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest {
                code: "unreadable_body",
                message: "the request body could not be read".into(),
            }
        }
    })?;
    handle(state, &provider, headers, &body).await?;
    Ok(())
}

fn refused(message: impl Into<String>) -> ApiError {
    ApiError::BadRequest {
        code: "notification_refused",
        message: message.into(),
    }
}

/// Verifies and applies one delivery. `Ok` means it is durably applied (or was already).
pub async fn handle(
    state: &AppState,
    provider_name: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Applied, ApiError> {
    let provider = state
        .orders
        .providers
        .get(provider_name)
        .ok_or(ApiError::NotFound)?;
    let notification = match provider.parse_notification(headers, body, now_ms()) {
        Ok(n) => n,
        Err(NotifyError::Authentication(why)) => {
            state.metrics.count("payment_notifications_refused_total");
            tracing::warn!(provider = provider_name, why, "notification refused");
            return Err(ApiError::BadRequest {
                code: "notification_unauthenticated",
                message: format!("notification refused: {why}"),
            });
        }
        Err(NotifyError::SignatureProbe) => {
            return Err(refused("signature test probe"));
        }
        Err(NotifyError::Malformed(why)) => return Err(refused(why)),
    };
    apply(state, provider_name, &notification).await
}

/// A payment with what the notification needs of its order and gateway, read before the
/// transaction (one query): the identity checks use columns that never change, the status
/// columns are only a hint (every write below is conditional on the status it expects).
#[derive(Debug, sqlx::FromRow)]
struct PaymentTarget {
    #[sqlx(flatten)]
    payment: PaymentRow,
    order_status: String,
    lock_id: String,
    gateway_id: String,
    duration_minutes: i64,
    gateway_merchant_id: Option<String>,
    gateway_status: Option<String>,
}

/// Applies a verified notification (also used by the reconciler with a query result).
pub async fn apply(
    state: &AppState,
    provider_name: &str,
    n: &ProviderNotification,
) -> Result<Applied, ApiError> {
    let (mchid_ok, appid_ok) = match state.orders.providers.get(provider_name) {
        Some(p) => p.expected_ids(),
        None => return Err(ApiError::NotFound),
    };
    let mut unlock = None;
    let mut payment = None;
    if let ProviderNotification::Payment {
        out_trade_no,
        amount_fen,
        mchid,
        appid,
        ..
    } = n
    {
        let target = sqlx::query_as::<_, PaymentTarget>(
            "SELECT p.id, p.order_id, p.merchant_id, p.provider, p.out_trade_no, p.amount_fen, \
             p.status, p.provider_txn_id, p.created_at, p.paid_at, o.status AS order_status, \
             o.lock_id, o.gateway_id, o.duration_minutes, g.merchant_id AS gateway_merchant_id, \
             g.status AS gateway_status \
             FROM payments p JOIN orders o ON o.id = p.order_id \
             LEFT JOIN gateways g ON g.id = o.gateway_id AND g.deleted_at IS NULL \
             WHERE p.out_trade_no = $1",
        )
        .bind(out_trade_no.clone())
        // A read connection (on SQLite the one writer is the bottleneck): the payment row
        // committed with its order, and what is read here only decides what to prepare;
        // the transaction below re-decides with conditional writes (a twin that applied
        // meanwhile makes the dedupe insert or the payment update a no-op).
        .fetch_optional(&state.db.read)
        .await?;
        let problem = match &target {
            None => Some(format!("unknown out_trade_no {out_trade_no}")),
            Some(t) if t.payment.provider != provider_name => Some(format!(
                "payment belongs to provider {}",
                t.payment.provider
            )),
            Some(t) if t.payment.amount_fen != *amount_fen => Some(format!(
                "amount {amount_fen} fen differs from the order's {} fen",
                t.payment.amount_fen
            )),
            Some(_) if *mchid != mchid_ok => Some(format!("merchant id {mchid} is not ours")),
            Some(_) if *appid != appid_ok => Some(format!("app id {appid} is not ours")),
            Some(_) => None,
        };
        if let Some(problem) = problem {
            // Nothing was written: the notification is refused (and redelivered, if the
            // provider insists, to be refused again), and a person is told.
            let mut c = state.db.pool.acquire().await?;
            orders::alert(
                &mut c,
                target.as_ref().map(|t| t.payment.merchant_id.as_str()),
                target.as_ref().map(|t| t.payment.order_id.as_str()),
                "notification_mismatch",
                &problem,
            )
            .await?;
            state.metrics.count("payment_notifications_refused_total");
            return Err(refused(problem));
        }
        if let Some(t) = target {
            // A first notification for a waiting order: sign the token and the command now,
            // before the write transaction, so the order goes `created` → `unlocking` and the
            // command row is written in the notification's own transaction. A duplicate
            // (payment no longer pending) or an order that stopped waiting signs nothing.
            if t.order_status == Status::Created.as_str()
                && matches!(t.payment.status.as_str(), "pending" | "closed")
            {
                let gateway = t.gateway_merchant_id.clone().zip(t.gateway_status.clone());
                match orders::dispatch::plan_unlock(
                    state,
                    &t.payment.order_id,
                    &t.lock_id,
                    &t.gateway_id,
                    t.duration_minutes,
                    gateway,
                )
                .await
                {
                    Ok(plan) => unlock = Some(plan),
                    // Signing failed: the order stops at `paid` and is dispatched after the
                    // commit as before (or by the stuck-paid job).
                    Err(e) => {
                        tracing::warn!(order_id = t.payment.order_id, error = %e, "preparing the unlock failed")
                    }
                }
            }
            payment = Some(t.payment);
        }
    }
    let mut tx = state.db.pool.begin().await?;
    let now = now_ms();
    // The dedupe row goes first: it is a write, so on SQLite the transaction takes the
    // write lock at once (a concurrent twin waits instead of failing), and on PostgreSQL a
    // twin blocks on the unique key until we commit, then inserts nothing.
    let inserted = sqlx::query(
        "INSERT INTO payment_notifications (id, provider, notification_id, kind, outcome, received_at, payment_id) \
         VALUES ($1, $2, $3, $4, 'applied', $5, $6) ON CONFLICT (provider, notification_id) DO NOTHING",
    )
    .bind(new_id())
    .bind(provider_name.to_string())
    .bind(n.id().to_string())
    .bind(match n {
        ProviderNotification::Payment { .. } => "payment",
        ProviderNotification::Refund { .. } => "refund",
    })
    .bind(now)
    .bind(payment.as_ref().map(|p| p.id.clone()))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        tx.commit().await?;
        state.metrics.count("payment_notifications_duplicate_total");
        return Ok(Applied::Duplicate);
    }
    let mut outcome = PaymentOutcome::Nothing;
    match n {
        ProviderNotification::Payment {
            transaction_id,
            paid_at_ms,
            ..
        } => {
            if let Some(p) = &payment {
                // A query result (the reconciler) is not a notification: keep notified_at
                // empty so reconciliation can report the missing notification.
                let notified = !n.id().starts_with("query:");
                outcome = apply_payment_success_with(
                    &mut tx,
                    p,
                    transaction_id,
                    *paid_at_ms,
                    notified,
                    &Actor::Provider(provider_name.to_string()),
                    unlock.as_ref(),
                )
                .await?;
            }
        }
        ProviderNotification::Refund {
            out_refund_no,
            refund_id,
            succeeded,
            ..
        } => {
            let refund = refunds::by_out_refund_no(&mut tx, out_refund_no).await?;
            let Some(refund) = refund else {
                tx.rollback().await?;
                return Err(refused(format!("unknown out_refund_no {out_refund_no}")));
            };
            if *succeeded {
                refunds::apply_success(&mut tx, &refund, refund_id, now).await?;
            } else {
                refunds::apply_failure(&mut tx, &refund, "provider reported failure", now).await?;
            }
        }
    }
    tx.commit().await?;
    state.metrics.count("payment_notifications_applied_total");
    // Only now, with the order in `unlocking` and the command row durable, does the command
    // go out. A crash right here leaves a recorded, unsent command: the unlock timeout
    // fails the order over to a refund (the token is valid meanwhile as an offline code).
    match outcome {
        PaymentOutcome::Unlocking(order_id) => {
            if let Some(plan) = unlock {
                plan.send(state, &order_id).await;
            }
        }
        PaymentOutcome::Paid(order_id) => {
            orders::dispatch::dispatch_unlock(state, &order_id).await;
        }
        PaymentOutcome::Nothing => {}
    }
    Ok(Applied::Applied)
}

/// Where a payment success left its order.
#[derive(Debug, PartialEq, Eq)]
pub enum PaymentOutcome {
    /// Moved to `paid`: dispatch the unlock after the commit.
    Paid(String),
    /// Moved to `unlocking` with the prepared unlock: send it after the commit.
    Unlocking(String),
    /// A duplicate, or refunded because the order stopped waiting.
    Nothing,
}

/// Marks a payment succeeded (once), books it, and moves its order to `paid`. A payment
/// for an order that is no longer waiting (expired, cancelled, or paid another way) is
/// refunded in full. Returns the order to unlock, if any.
pub async fn apply_payment_success(
    conn: &mut sqlx::AnyConnection,
    p: &PaymentRow,
    transaction_id: &str,
    paid_at_ms: i64,
    notified: bool,
    actor: &Actor,
) -> Result<Option<String>, ApiError> {
    Ok(
        match apply_payment_success_with(conn, p, transaction_id, paid_at_ms, notified, actor, None)
            .await?
        {
            PaymentOutcome::Paid(id) | PaymentOutcome::Unlocking(id) => Some(id),
            PaymentOutcome::Nothing => None,
        },
    )
}

/// [`apply_payment_success`] with the unlock prepared before the transaction: the order then
/// goes `created` → `paid` → `unlocking` here and the command row is recorded with it.
pub async fn apply_payment_success_with(
    conn: &mut sqlx::AnyConnection,
    p: &PaymentRow,
    transaction_id: &str,
    paid_at_ms: i64,
    notified: bool,
    actor: &Actor,
    unlock: Option<&orders::dispatch::UnlockPlan>,
) -> Result<PaymentOutcome, ApiError> {
    let now = now_ms();
    let won = sqlx::query(
        "UPDATE payments SET status = 'succeeded', provider_txn_id = $1, paid_at = $2, \
         notified_at = $3, updated_at = $4 WHERE id = $5 AND status IN ('pending', 'closed')",
    )
    .bind(transaction_id.to_string())
    .bind(paid_at_ms)
    .bind(notified.then_some(now))
    .bind(now)
    .bind(p.id.clone())
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if !won {
        // Already applied; a late real notification still records that it came.
        if notified {
            sqlx::query(
                "UPDATE payments SET notified_at = $1 WHERE id = $2 AND notified_at IS NULL",
            )
            .bind(now)
            .bind(p.id.clone())
            .execute(&mut *conn)
            .await?;
        }
        return Ok(PaymentOutcome::Nothing);
    }
    let roll_up = money::book_deferred(
        conn,
        &p.merchant_id,
        Some(&p.order_id),
        money::Kind::Payment,
        p.amount_fen,
        &p.id,
        now,
    )
    .await?;
    let outcome = move_order_on(conn, p, transaction_id, actor, unlock, now).await?;
    // Last, so the merchant's contended day row is locked only for the commit.
    if let Some(r) = roll_up {
        r.apply(conn).await?;
    }
    Ok(outcome)
}

/// The order's side of a payment that just succeeded: `unlocking` with the prepared unlock,
/// else `paid`, else (the order stopped waiting) a full refund.
async fn move_order_on(
    conn: &mut sqlx::AnyConnection,
    p: &PaymentRow,
    transaction_id: &str,
    actor: &Actor,
    unlock: Option<&orders::dispatch::UnlockPlan>,
    now: i64,
) -> Result<PaymentOutcome, ApiError> {
    let reason = format!("payment {} succeeded", p.out_trade_no);
    if let Some(plan) = unlock
        && orders::pay_and_start_unlock(
            conn,
            &p.order_id,
            (actor, &reason),
            (&Actor::System, orders::dispatch::UNLOCKING_REASON),
            now,
            plan.also(),
        )
        .await?
    {
        plan.record(conn).await?;
        return Ok(PaymentOutcome::Unlocking(p.order_id.clone()));
    }
    // Only on the slow paths (no prepared unlock, or the order stopped waiting) is the
    // whole order row read.
    let order = orders::load(conn, &p.order_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if order.status() == Status::Created
        && orders::transition(
            conn,
            &order.id,
            Status::Created,
            Status::Paid,
            actor,
            &reason,
            now,
            Also::default(),
        )
        .await?
    {
        return Ok(PaymentOutcome::Paid(order.id));
    }
    // Paid, but the order stopped waiting: the money goes back.
    let mut paid = p.clone();
    paid.status = "succeeded".into();
    paid.provider_txn_id = Some(transaction_id.to_string());
    refunds::create(
        conn,
        &order,
        &paid,
        p.amount_fen,
        &format!("payment arrived while the order was {}", order.status),
        &Actor::System,
        now,
        0,
    )
    .await?;
    Ok(PaymentOutcome::Nothing)
}
