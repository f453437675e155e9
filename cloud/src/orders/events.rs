//! What the gateways tell orders: unlock events, door events and command acks.
//!
//! The link's ingest calls [`on_gateway_event`] for every applied event, and the command
//! ack hook calls [`on_command_result`], both inside the ingest transaction. Rules:
//! - `ok` (event or ack) proves the lock opened: `paid`/`unlocking` → `unlocked`. On an
//!   order that already failed over, a late `ok` cancels the refund if it was not sent yet
//!   (`unlock_failed` → `unlocked`); if the money already went back, the order is flagged
//!   for review and alerted.
//! - `accepted` means the gateway recorded the use and is driving the lock — not that it
//!   opened. It changes nothing; the outcome event or the timeout decides.
//! - A failed ack, or a `lock_unreachable`/`lock_fault`/`storage_error` event, fails the
//!   order over to `unlock_failed` with an automatic refund (sent after the grace period).
//! - Door `opened` then `closed` on an unlocked order completes it.
//!
//! Every piece of evidence is kept in `order_unlock_events` (keyed by the event id, so a
//! redelivered event changes nothing), which is what the order detail and the
//! reconciliation read.

use std::sync::atomic::{AtomicI64, Ordering};

use dmr_protocol::message::{DoorChange, Event, ResultCode, UnlockEvent};
use sqlx::AnyConnection;
use uuid::Uuid;

use super::{Actor, Also, OrderRow, Status, alert, load, refunds, transition};
use crate::db::now_ms;
use crate::error::ApiError;
use crate::payments::notify::{PAYMENT_COLUMNS, PaymentRow};

/// The refund grace period, set from the configuration when the app is built (the hooks
/// are called by the link with a connection only).
static REFUND_GRACE_MS: AtomicI64 = AtomicI64::new(120_000);

pub fn set_refund_grace_ms(ms: i64) {
    REFUND_GRACE_MS.store(ms, Ordering::Relaxed);
}

pub fn refund_grace_ms() -> i64 {
    REFUND_GRACE_MS.load(Ordering::Relaxed)
}

fn at_ms(at: u64, fallback: i64) -> i64 {
    i64::try_from(at)
        .ok()
        .filter(|v| *v > 0)
        .unwrap_or(fallback)
}

/// Records a piece of unlock evidence once; false if this id was seen before.
#[allow(clippy::too_many_arguments)]
async fn record(
    conn: &mut AnyConnection,
    id: &str,
    order_id: Option<&str>,
    lock_id: Uuid,
    gateway_id: Uuid,
    source: &str,
    result: &str,
    via: Option<&str>,
    token_id: Option<Uuid>,
    at: i64,
) -> Result<bool, ApiError> {
    let n = sqlx::query(
        "INSERT INTO order_unlock_events (id, order_id, lock_id, gateway_id, source, result, via, \
         token_id, at, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(id.to_string())
    .bind(order_id.map(String::from))
    .bind(lock_id.to_string())
    .bind(gateway_id.to_string())
    .bind(source.to_string())
    .bind(result.to_string())
    .bind(via.map(String::from))
    .bind(token_id.map(|t| t.to_string()))
    .bind(at)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// The hook the link's ingest calls for every applied gateway event.
pub async fn on_gateway_event(
    conn: &mut AnyConnection,
    gateway_id: Uuid,
    event_id: Uuid,
    event: &Event,
    ts_ms: i64,
) -> Result<(), ApiError> {
    match event {
        Event::Unlock(e) => on_unlock(conn, gateway_id, event_id, e, ts_ms).await,
        Event::Door(d) => {
            let at = at_ms(d.at, ts_ms);
            let door = match d.door {
                DoorChange::Opened => "opened",
                DoorChange::Closed => "closed",
            };
            let order: Option<String> = sqlx::query_scalar(
                "SELECT id FROM orders WHERE lock_id = $1 \
                 AND status IN ('unlocking', 'unlocked', 'unlock_failed') \
                 ORDER BY created_at DESC LIMIT 1",
            )
            .bind(d.lock_id.to_string())
            .fetch_optional(&mut *conn)
            .await?;
            if !record(
                conn,
                &event_id.to_string(),
                order.as_deref(),
                d.lock_id,
                gateway_id,
                "door",
                door,
                None,
                None,
                at,
            )
            .await?
            {
                return Ok(());
            }
            let Some(order) = order else { return Ok(()) };
            let Some(order) = load(conn, &order).await? else {
                return Ok(());
            };
            let actor = Actor::Gateway(gateway_id.to_string());
            if d.door == DoorChange::Opened {
                sqlx::query(
                    "UPDATE orders SET door_opened_at = $1 WHERE id = $2 AND door_opened_at IS NULL",
                )
                .bind(at)
                .bind(order.id.clone())
                .execute(&mut *conn)
                .await?;
                if order.status() != Status::Unlocked {
                    opened(conn, &order, &actor, "the door opened", at).await?;
                }
            }
            // Either event may be the one that completes the order: the ingest applies
            // batches on several workers at once, so a `closed` can be applied before the
            // `opened` that preceded it at the door. What counts is the recorded evidence
            // (a close at or after an open, by the gateway's clock), not arrival order.
            if door_cycled(conn, &order.id).await? {
                transition(
                    conn,
                    &order.id,
                    Status::Unlocked,
                    Status::Completed,
                    &actor,
                    "the door opened and closed again",
                    now_ms(),
                    Also::default(),
                )
                .await?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Whether the order's recorded door events show the door opened and then closed again.
/// A close at the same millisecond as an open counts (the agent reports the two edges at
/// least one poll apart, so a tie only comes from coarse clocks and is taken as a cycle).
async fn door_cycled(conn: &mut AnyConnection, order_id: &str) -> Result<bool, ApiError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM order_unlock_events c JOIN order_unlock_events o \
         ON o.order_id = c.order_id AND o.source = 'door' AND o.result = 'opened' \
         WHERE c.order_id = $1 AND c.source = 'door' AND c.result = 'closed' AND c.at >= o.at",
    )
    .bind(order_id.to_string())
    .fetch_one(&mut *conn)
    .await?;
    Ok(n > 0)
}

async fn on_unlock(
    conn: &mut AnyConnection,
    gateway_id: Uuid,
    event_id: Uuid,
    e: &UnlockEvent,
    ts_ms: i64,
) -> Result<(), ApiError> {
    let at = at_ms(e.at, ts_ms);
    let order_id = e.order_id.filter(|o| !o.is_nil()).map(|o| o.to_string());
    let via = e.via.map(|v| match v {
        dmr_protocol::message::Presenter::Cloud => "cloud",
        dmr_protocol::message::Presenter::Lan => "lan",
        dmr_protocol::message::Presenter::Scanner => "scanner",
    });
    if !record(
        conn,
        &event_id.to_string(),
        order_id.as_deref(),
        e.lock_id,
        gateway_id,
        "event",
        e.result.as_str(),
        via,
        e.token_id,
        at,
    )
    .await?
    {
        return Ok(());
    }
    let Some(order_id) = order_id else {
        return Ok(());
    };
    let Some(order) = load(conn, &order_id).await? else {
        if e.result == ResultCode::Ok {
            alert(
                conn,
                None,
                Some(&order_id),
                "opened_unknown_order",
                &format!(
                    "gateway {gateway_id} opened lock {} for an unknown order",
                    e.lock_id
                ),
            )
            .await?;
        }
        return Ok(());
    };
    if order.lock_id != e.lock_id.to_string() {
        alert(
            conn,
            Some(&order.merchant_id),
            Some(&order.id),
            "wrong_lock",
            &format!(
                "unlock event for lock {} names this order of another lock",
                e.lock_id
            ),
        )
        .await?;
        return Ok(());
    }
    let actor = Actor::Gateway(gateway_id.to_string());
    match e.result {
        ResultCode::Ok => {
            let how = via.unwrap_or("unknown");
            opened(
                conn,
                &order,
                &actor,
                &format!("unlock event ok (via {how})"),
                at,
            )
            .await
        }
        // Recorded and driving the lock: not proof of opening.
        ResultCode::Accepted => Ok(()),
        ResultCode::LockUnreachable | ResultCode::LockFault | ResultCode::StorageError => {
            fail_and_refund(
                conn,
                &order,
                &actor,
                &format!("unlock event: {}", e.result.as_str()),
                now_ms(),
            )
            .await
        }
        // A refused presentation (expired, used up, rate limited...) is the presenter's
        // problem; the order's own path (command or timeout) decides.
        _ => Ok(()),
    }
}

/// The order a `cmd unlock` was sent for, found through the token it carried: the stored
/// command names its token id (by primary key), and `orders.token_id` is indexed. Not
/// through `orders.unlock_command_id`, which has no index (every ack scanned the whole
/// orders table, a cost that grew with every order ever sold) and is written only after the
/// command is published, so a fast ack could arrive before it and find no order.
async fn order_of_command(
    conn: &mut AnyConnection,
    gateway_id: Uuid,
    cmd_id: Uuid,
) -> Result<Option<String>, ApiError> {
    let body: Option<String> = sqlx::query_scalar(
        "SELECT body FROM gateway_commands WHERE id = $1 AND gateway_id = $2 AND op = 'unlock'",
    )
    .bind(cmd_id.to_string())
    .bind(gateway_id.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    let token_id = body
        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| v["token_id"].as_str().map(String::from));
    let Some(token_id) = token_id else {
        return Ok(None);
    };
    Ok(
        sqlx::query_scalar("SELECT id FROM orders WHERE token_id = $1 AND gateway_id = $2")
            .bind(token_id)
            .bind(gateway_id.to_string())
            .fetch_optional(&mut *conn)
            .await?,
    )
}

/// The ack hook: the result of the `cmd unlock` an order sent.
pub async fn on_command_result(
    conn: &mut AnyConnection,
    gateway_id: Uuid,
    cmd_id: Uuid,
    result: ResultCode,
    ts_ms: i64,
) -> Result<(), ApiError> {
    let Some(order_id) = order_of_command(conn, gateway_id, cmd_id).await? else {
        return Ok(());
    };
    let Some(order) = load(conn, &order_id).await? else {
        return Ok(());
    };
    let lock = Uuid::try_parse(&order.lock_id).unwrap_or_default();
    let token = order
        .token_id
        .as_deref()
        .and_then(|t| Uuid::try_parse(t).ok());
    if !record(
        conn,
        &format!("ack:{cmd_id}:{}", result.as_str()),
        Some(&order.id),
        lock,
        gateway_id,
        "ack",
        result.as_str(),
        Some("cloud"),
        token,
        ts_ms,
    )
    .await?
    {
        return Ok(());
    }
    let actor = Actor::Gateway(gateway_id.to_string());
    match result {
        ResultCode::Ok => opened(conn, &order, &actor, "cmd unlock acked ok", ts_ms).await,
        ResultCode::Accepted => Ok(()),
        other => {
            fail_and_refund(
                conn,
                &order,
                &actor,
                &format!("cmd unlock answered {}", other.as_str()),
                now_ms(),
            )
            .await
        }
    }
}

/// Proof the lock opened for `order`.
async fn opened(
    conn: &mut AnyConnection,
    order: &OrderRow,
    actor: &Actor,
    reason: &str,
    at: i64,
) -> Result<(), ApiError> {
    let now = now_ms();
    match order.status() {
        from @ (Status::Paid | Status::Unlocking) => {
            transition(
                conn,
                &order.id,
                from,
                Status::Unlocked,
                actor,
                reason,
                now,
                Also::default(),
            )
            .await?;
        }
        Status::UnlockFailed => {
            let cancelled = refunds::cancel_unsent(conn, &order.id, now).await?;
            let sent: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM refunds WHERE order_id = $1 AND status IN ('processing', 'succeeded')",
            )
            .bind(order.id.clone())
            .fetch_one(&mut *conn)
            .await?;
            if sent == 0 {
                transition(
                    conn,
                    &order.id,
                    Status::UnlockFailed,
                    Status::Unlocked,
                    actor,
                    &format!(
                        "late proof of opening ({reason}); {cancelled} unsent refund(s) cancelled"
                    ),
                    now,
                    Also::default(),
                )
                .await?;
            } else {
                flag(conn, order, "opened after its refund was sent", at).await?;
            }
        }
        Status::Refunding | Status::Refunded => {
            refunds::cancel_unsent(conn, &order.id, now).await?;
            flag(conn, order, "opened after a refund was issued", at).await?;
        }
        Status::Created | Status::Expired | Status::Cancelled => {
            flag(conn, order, "opened without a payment", at).await?;
        }
        Status::Unlocked | Status::Completed => {}
    }
    Ok(())
}

async fn flag(
    conn: &mut AnyConnection,
    order: &OrderRow,
    why: &str,
    at: i64,
) -> Result<(), ApiError> {
    sqlx::query("UPDATE orders SET review_reason = $1, updated_at = $2 WHERE id = $3")
        .bind(why.to_string())
        .bind(now_ms())
        .bind(order.id.clone())
        .execute(&mut *conn)
        .await?;
    alert(
        conn,
        Some(&order.merchant_id),
        Some(&order.id),
        "review",
        &format!("{why} (at {at})"),
    )
    .await
}

/// `unlocking` (or `paid`) → `unlock_failed`, with an automatic full refund that waits the
/// grace period. Losing the transition (someone else moved the order) does nothing.
pub async fn fail_and_refund(
    conn: &mut AnyConnection,
    order: &OrderRow,
    actor: &Actor,
    reason: &str,
    now: i64,
) -> Result<(), ApiError> {
    let from = order.status();
    if !matches!(from, Status::Paid | Status::Unlocking) {
        return Ok(());
    }
    if !transition(
        conn,
        &order.id,
        from,
        Status::UnlockFailed,
        actor,
        reason,
        now,
        Also::default(),
    )
    .await?
    {
        return Ok(());
    }
    let sql = format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE order_id = $1 AND status = 'succeeded' \
         ORDER BY paid_at LIMIT 1"
    );
    let payment = sqlx::query_as::<_, PaymentRow>(sqlx::AssertSqlSafe(sql))
        .bind(order.id.clone())
        .fetch_optional(&mut *conn)
        .await?;
    let Some(payment) = payment else {
        return Ok(());
    };
    let left = refunds::refundable(conn, &order.id).await?;
    if left > 0 {
        let mut failed = order.clone();
        failed.status = Status::UnlockFailed.as_str().into();
        refunds::create(
            conn,
            &failed,
            &payment,
            left,
            &format!("automatic refund: {reason}"),
            &Actor::System,
            now,
            refund_grace_ms(),
        )
        .await?;
    }
    Ok(())
}
