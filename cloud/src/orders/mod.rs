//! Orders: the one record that links a payment, the unlock it buys and the door it opens.
//!
//! An order is a state machine: `created` → `paid` → `unlocking` → `unlocked` →
//! `completed` (the door opened and closed again), with the side exits `expired` (unpaid
//! past its deadline), `unlock_failed`, `refunding` → `refunded` and `cancelled`. Every
//! change goes through [`transition`]: a conditional `UPDATE .. WHERE id = $1 AND status =
//! $2` plus a row in `order_transitions`, in the caller's transaction, so two workers (or
//! two cloud instances) racing on one order can never both win; the loser sees zero rows.
//!
//! Money never comes from the client: the amount is the lock's price plan, snapshotted
//! into the order. One active order per lock is a unique index over `active_lock_id`,
//! which is the lock id while the order occupies the lock and NULL afterwards.
//!
//! The pieces: [`dispatch`] signs the unlock token and hands `cmd unlock` to the gateway
//! link (behind [`dispatch::UnlockDispatcher`]); [`events`] takes the gateway's unlock and
//! door events and command acks; [`refunds`] creates and sends refunds; [`money`] is the
//! ledger, the daily settlement and reconciliation; [`jobs`] runs expiry, unlock timeouts,
//! refunds, the payment reconciler and settlement under a database lease; [`public`] and
//! [`handlers`] are the phone and console endpoints.

pub mod dispatch;
pub mod events;
pub mod handlers;
pub mod jobs;
pub mod money;
pub mod public;
pub mod refunds;
pub mod wechat_oauth;

use std::sync::{Arc, RwLock};

use serde::Serialize;
use sqlx::AnyConnection;

use crate::db::{new_id, now_ms};
use crate::error::ApiError;
use crate::payments::Providers;

pub use events::{
    AppliedEvent, on_command_result, on_gateway_event, on_gateway_events, on_unlock_command_result,
};

/// Where an order is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Created,
    Paid,
    Unlocking,
    Unlocked,
    Completed,
    Expired,
    UnlockFailed,
    Refunding,
    Refunded,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 10] = [
        Status::Created,
        Status::Paid,
        Status::Unlocking,
        Status::Unlocked,
        Status::Completed,
        Status::Expired,
        Status::UnlockFailed,
        Status::Refunding,
        Status::Refunded,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Paid => "paid",
            Status::Unlocking => "unlocking",
            Status::Unlocked => "unlocked",
            Status::Completed => "completed",
            Status::Expired => "expired",
            Status::UnlockFailed => "unlock_failed",
            Status::Refunding => "refunding",
            Status::Refunded => "refunded",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Whether the order still occupies its lock.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Status::Created | Status::Paid | Status::Unlocking | Status::Unlocked
        )
    }

    /// No transition leaves these.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::Expired | Status::Refunded | Status::Cancelled
        )
    }

    /// The edges of the state machine. `completed` may still be refunded by a merchant,
    /// and an `unlock_failed` order may turn out opened after all (a late unlock event).
    pub fn can_go_to(self, to: Status) -> bool {
        use Status::*;
        matches!(
            (self, to),
            (Created, Paid | Expired | Cancelled)
                | (Paid, Unlocking | UnlockFailed | Refunding)
                | (Unlocking, Unlocked | UnlockFailed | Refunding)
                | (Unlocked, Completed | Refunding)
                | (UnlockFailed, Unlocked | Refunding)
                | (Completed, Refunding)
                | (Refunding, Refunded)
        )
    }

    /// The timestamp column entering this status sets, if any.
    fn stamp_column(self) -> Option<&'static str> {
        match self {
            Status::Paid => Some("paid_at"),
            Status::Unlocking => Some("unlocking_at"),
            Status::Unlocked => Some("unlocked_at"),
            Status::Completed => Some("completed_at"),
            Status::Expired | Status::Refunded | Status::Cancelled => Some("ended_at"),
            _ => None,
        }
    }
}

/// Who made a transition, as recorded in `order_transitions.actor`.
#[derive(Clone, Debug)]
pub enum Actor {
    User(String),
    System,
    Provider(String),
    Gateway(String),
    Payer,
}

impl Actor {
    pub fn label(&self) -> String {
        match self {
            Actor::User(id) => format!("user:{id}"),
            Actor::System => "system".into(),
            Actor::Provider(p) => format!("provider:{p}"),
            Actor::Gateway(g) => format!("gateway:{g}"),
            Actor::Payer => "payer".into(),
        }
    }
}

/// An `orders` row.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct OrderRow {
    pub id: String,
    pub merchant_id: String,
    pub venue_id: String,
    pub lock_id: String,
    pub gateway_id: String,
    pub plan_id: String,
    pub plan_name: String,
    pub duration_minutes: i64,
    pub amount_fen: i64,
    pub refunded_fen: i64,
    pub status: String,
    pub provider: String,
    pub pay_deadline_at: i64,
    pub unlock_deadline_at: Option<i64>,
    pub token_id: Option<String>,
    pub token_not_after: Option<i64>,
    pub unlock_command_id: Option<String>,
    pub door_opened_at: Option<i64>,
    pub review_reason: Option<String>,
    pub created_at: i64,
    pub paid_at: Option<i64>,
    pub unlocking_at: Option<i64>,
    pub unlocked_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub updated_at: i64,
}

pub const ORDER_COLUMNS: &str = "id, merchant_id, venue_id, lock_id, gateway_id, plan_id, plan_name, \
    duration_minutes, amount_fen, refunded_fen, status, provider, pay_deadline_at, \
    unlock_deadline_at, token_id, token_not_after, unlock_command_id, door_opened_at, \
    review_reason, created_at, paid_at, unlocking_at, unlocked_at, completed_at, ended_at, updated_at";

impl OrderRow {
    pub fn status(&self) -> Status {
        Status::parse(&self.status).unwrap_or(Status::Cancelled)
    }

    /// Until when the paid time runs: from the unlock, or from payment while unlocking.
    pub fn ends_at(&self) -> Option<i64> {
        self.unlocked_at
            .or(self.paid_at)
            .map(|t| t.saturating_add(self.duration_minutes.saturating_mul(60_000)))
    }
}

/// Reads one order on a connection (inside a transaction or not).
pub async fn load(conn: &mut AnyConnection, id: &str) -> Result<Option<OrderRow>, ApiError> {
    let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1");
    Ok(sqlx::query_as::<_, OrderRow>(sqlx::AssertSqlSafe(sql))
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?)
}

/// Extra columns a transition sets along with the status.
#[derive(Debug, Default)]
pub struct Also {
    pub text: Vec<(&'static str, Option<String>)>,
    pub int: Vec<(&'static str, Option<i64>)>,
}

impl Also {
    /// Appends `, col = value` (or `= NULL`) for every column to an `UPDATE .. SET`. The
    /// column names are compile-time constants of this crate, never input.
    fn push_sets(self, q: &mut crate::http::list::Sql) {
        for (col, v) in self.text {
            match v {
                Some(v) => q.push(&format!(", {col} = ")).bind_text(v),
                None => q.push(&format!(", {col} = NULL")),
            };
        }
        for (col, v) in self.int {
            match v {
                Some(v) => q.push(&format!(", {col} = ")).bind_int(v),
                None => q.push(&format!(", {col} = NULL")),
            };
        }
    }
}

/// Moves `order_id` from `from` to `to` if (and only if) it is still in `from`, and
/// records the transition. Returns whether this caller won. Must run inside the caller's
/// transaction so the status and its history commit together.
// One argument per column of the transition row; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub async fn transition(
    conn: &mut AnyConnection,
    order_id: &str,
    from: Status,
    to: Status,
    actor: &Actor,
    reason: &str,
    now: i64,
    also: Also,
) -> Result<bool, ApiError> {
    if !from.can_go_to(to) {
        return Err(ApiError::internal(anyhow::anyhow!(
            "illegal order transition {} -> {}",
            from.as_str(),
            to.as_str()
        )));
    }
    let mut q = crate::http::list::Sql::new("UPDATE orders SET status = ");
    q.bind_text(to.as_str())
        .push(", updated_at = ")
        .bind_int(now);
    if let Some(col) = to.stamp_column() {
        q.push(&format!(", {col} = ")).bind_int(now);
    }
    if !to.is_active() {
        q.push(", active_lock_id = NULL");
    }
    also.push_sets(&mut q);
    q.push(" WHERE id = ")
        .bind_text(order_id)
        .push(" AND status = ")
        .bind_text(from.as_str());
    let won = q.query().execute(&mut *conn).await?.rows_affected() == 1;
    if won {
        record_transition(conn, order_id, Some(from), to, actor, reason, now).await?;
        if to == Status::Refunding {
            revoke_order_token(conn, order_id).await?;
        }
    }
    Ok(won)
}

/// `created` → `paid` → `unlocking` at once, for a payment notification that brings the
/// signed token with it: one conditional `UPDATE .. WHERE id = $1 AND status = 'created'`
/// sets both stamps and `also`, and both transitions are recorded (one two-row insert, each
/// with its own actor and reason, in order). Returns whether this caller won; a loser
/// changed nothing. Must run inside the caller's transaction.
pub async fn pay_and_start_unlock(
    conn: &mut AnyConnection,
    order_id: &str,
    paid: (&Actor, &str),
    unlocking: (&Actor, &str),
    now: i64,
    also: Also,
) -> Result<bool, ApiError> {
    let mut q = crate::http::list::Sql::new("UPDATE orders SET status = ");
    q.bind_text(Status::Unlocking.as_str())
        .push(", updated_at = ")
        .bind_int(now)
        .push(", paid_at = ")
        .bind_int(now)
        .push(", unlocking_at = ")
        .bind_int(now);
    also.push_sets(&mut q);
    q.push(" WHERE id = ")
        .bind_text(order_id)
        .push(" AND status = ")
        .bind_text(Status::Created.as_str());
    let won = q.query().execute(&mut *conn).await?.rows_affected() == 1;
    if won {
        for to in [Status::Paid, Status::Unlocking] {
            if let Some(i) = Status::ALL.iter().position(|s| *s == to) {
                TRANSITIONS[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        // Ids are v7 and taken in this order, so the two rows list created→paid first
        // even though they share the millisecond.
        let (first, second) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        sqlx::query(
            "INSERT INTO order_transitions (id, order_id, from_status, to_status, actor, reason, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7), ($8, $2, $4, $9, $10, $11, $7)",
        )
        .bind(first.to_string())
        .bind(order_id.to_string())
        .bind(Status::Created.as_str())
        .bind(Status::Paid.as_str())
        .bind(paid.0.label())
        .bind(paid.1.to_string())
        .bind(now)
        .bind(second.to_string())
        .bind(Status::Unlocking.as_str())
        .bind(unlocking.0.label())
        .bind(unlocking.1.to_string())
        .execute(&mut *conn)
        .await?;
    }
    Ok(won)
}

/// A fully refunded order's unlock token must not open the door any more (the person may
/// still hold it as an offline QR code). Its id goes on the gateway's revocation list in the
/// same transaction as the `refunding` transition; the gateway receives the list with its
/// next sync, and sooner through [`push_revocations`] once the transaction has committed.
async fn revoke_order_token(conn: &mut AnyConnection, order_id: &str) -> Result<(), ApiError> {
    let row: Option<(String, Option<String>, Option<i64>)> =
        sqlx::query_as("SELECT gateway_id, token_id, token_not_after FROM orders WHERE id = $1")
            .bind(order_id.to_string())
            .fetch_optional(&mut *conn)
            .await?;
    if let Some((gateway_id, Some(token_id), not_after_ms)) = row {
        // Revocations are kept until the token would have expired anyway (Unix seconds).
        let not_after_s = not_after_ms.map_or(i64::MAX / 1000, |ms| ms / 1000);
        crate::link::sync::revoke_token(conn, &gateway_id, &token_id, not_after_s).await?;
    }
    Ok(())
}

/// After a commit that may have revoked `order_id`'s token: sends the gateway its whole
/// revocation list as a cloud-signed `tokens.revoke` command, so a connected gateway refuses
/// the token at once instead of at its next sync. Best effort and in the background (a
/// refund never waits for the gateway): an unreachable gateway gets the same list from
/// sync, which stays the guarantee. Sends nothing if the token is not on the list.
pub fn push_revocations(state: &crate::AppState, order_id: &str) {
    let state = state.clone();
    let order_id = order_id.to_string();
    tokio::spawn(async move {
        if let Err(e) = try_push_revocations(&state, &order_id).await {
            tracing::info!(order_id, error = %e, "pushing the revocation list failed; the gateway gets it with its next sync");
        }
    });
}

async fn try_push_revocations(state: &crate::AppState, order_id: &str) -> Result<(), ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    let row: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT gateway_id, token_id FROM orders WHERE id = $1")
            .bind(order_id.to_string())
            .fetch_optional(&mut *conn)
            .await?;
    let Some((gateway_id, Some(token_id))) = row else {
        return Ok(());
    };
    let Some((version, ids)) =
        crate::link::sync::revocation_list(&mut conn, &gateway_id, -1, now_ms()).await?
    else {
        return Ok(());
    };
    drop(conn);
    if !ids.contains(&token_id) {
        return Ok(());
    }
    let token_ids = ids
        .iter()
        .filter_map(|t| uuid::Uuid::try_parse(t).ok())
        .collect();
    let gw = uuid::Uuid::try_parse(&gateway_id).map_err(ApiError::internal)?;
    state
        .commands
        .send(
            gw,
            dmr_protocol::message::Command::TokensRevoke {
                token_ids,
                version: u64::try_from(version).unwrap_or(0),
            },
            REVOKE_PUSH_TTL,
        )
        .await?;
    Ok(())
}

/// How long a pushed revocation list stays valid for the gateway; after that, sync.
const REVOKE_PUSH_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// Order transitions this process has recorded, by target status, for
/// `dmr_order_transitions_total{to}` (the unlock-failure and refund-rate alerts). A counter
/// per process, as Prometheus expects: the alert rules sum over instances. A transition
/// whose transaction later rolls back is still counted; that over-count is rare (the
/// transaction failing after a won conditional update) and only errs towards alerting.
static TRANSITIONS: [std::sync::atomic::AtomicU64; Status::ALL.len()] =
    [const { std::sync::atomic::AtomicU64::new(0) }; Status::ALL.len()];

/// Renders the transition counters in the Prometheus text format.
pub fn render_metrics(out: &mut String) {
    use std::fmt::Write as _;
    out.push_str(
        "# HELP dmr_order_transitions_total Order state transitions recorded, by new status.\n",
    );
    out.push_str("# TYPE dmr_order_transitions_total counter\n");
    for (status, n) in Status::ALL.iter().zip(TRANSITIONS.iter()) {
        let _ = writeln!(
            out,
            "dmr_order_transitions_total{{to=\"{}\"}} {}",
            status.as_str(),
            n.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
}

pub(crate) async fn record_transition(
    conn: &mut AnyConnection,
    order_id: &str,
    from: Option<Status>,
    to: Status,
    actor: &Actor,
    reason: &str,
    now: i64,
) -> Result<(), ApiError> {
    if let Some(i) = Status::ALL.iter().position(|s| *s == to) {
        TRANSITIONS[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    sqlx::query(
        "INSERT INTO order_transitions (id, order_id, from_status, to_status, actor, reason, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    // Time-ordered (v7, monotonic within the process) so that transitions recorded in
    // the same millisecond still list in the order they happened (`ORDER BY at, id`).
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(order_id.to_string())
    .bind(from.map(|f| f.as_str().to_string()))
    .bind(to.as_str().to_string())
    .bind(actor.label())
    .bind(reason.to_string())
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records something a person should look at.
pub async fn alert(
    conn: &mut AnyConnection,
    merchant_id: Option<&str>,
    order_id: Option<&str>,
    kind: &str,
    detail: &str,
) -> Result<(), ApiError> {
    tracing::warn!(kind, detail, order_id, "payment alert");
    sqlx::query(
        "INSERT INTO payment_alerts (id, merchant_id, order_id, kind, detail, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(new_id())
    .bind(merchant_id.map(String::from))
    .bind(order_id.map(String::from))
    .bind(kind.to_string())
    .bind(detail.to_string())
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Order timing, validated by `config`.
#[derive(Clone, Debug)]
pub struct OrdersConfig {
    /// How long a created order waits for payment.
    pub pay_timeout_ms: i64,
    /// How long `unlocking` waits for the ack or unlock event before failing over to refund.
    pub unlock_timeout_ms: i64,
    /// How long an automatic refund waits before it is sent, so that a late unlock event
    /// (an offline gateway draining its outbox) can still cancel it.
    pub refund_grace_ms: i64,
    /// How often the order jobs run.
    pub job_interval_ms: i64,
    /// Payment providers offered to payers.
    pub providers: Vec<String>,
}

impl Default for OrdersConfig {
    fn default() -> Self {
        OrdersConfig {
            pay_timeout_ms: 5 * 60_000,
            unlock_timeout_ms: 30_000,
            refund_grace_ms: 120_000,
            job_interval_ms: 1000,
            providers: vec!["sandbox".into()],
        }
    }
}

/// The orders service in `AppState`: the payment providers and the unlock dispatcher.
#[derive(Debug)]
pub struct Orders {
    pub config: OrdersConfig,
    pub providers: Providers,
    /// The sandbox provider itself (its payer page needs more than the trait).
    pub sandbox: Option<Arc<crate::payments::sandbox::Sandbox>>,
    dispatcher: RwLock<Arc<dyn dispatch::UnlockDispatcher>>,
    /// Key for deriving order access keys (HMAC), shared by every instance.
    access_secret: Vec<u8>,
    /// The platform-wide busiest locks and when they were ranked (see
    /// [`handlers::PLATFORM_BUSIEST_TTL`]).
    pub(crate) platform_busiest: std::sync::Mutex<Option<handlers::BusiestCache>>,
}

impl Orders {
    pub fn new(
        config: OrdersConfig,
        providers: Providers,
        sandbox: Option<Arc<crate::payments::sandbox::Sandbox>>,
        dispatcher: Arc<dyn dispatch::UnlockDispatcher>,
        access_secret: Vec<u8>,
    ) -> Orders {
        Orders {
            config,
            providers,
            sandbox,
            dispatcher: RwLock::new(dispatcher),
            access_secret,
            platform_busiest: std::sync::Mutex::new(None),
        }
    }

    pub fn dispatcher(&self) -> Arc<dyn dispatch::UnlockDispatcher> {
        match self.dispatcher.read() {
            Ok(d) => d.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the dispatcher (the link wires the real one; tests a recording one).
    pub fn set_dispatcher(&self, d: Arc<dyn dispatch::UnlockDispatcher>) {
        match self.dispatcher.write() {
            Ok(mut g) => *g = d,
            Err(poisoned) => *poisoned.into_inner() = d,
        }
    }

    /// The access key of an order: derived, so a double-tapped create can hand the same
    /// key out again without the server ever storing it. Only its hash is in the row.
    pub fn access_key(&self, order_id: &str) -> String {
        use base64::Engine as _;
        use hmac::Mac as _;
        let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.access_secret) {
            Ok(m) => m,
            Err(_) => return String::new(),
        };
        mac.update(b"dmr-order-access/1\0");
        mac.update(order_id.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }
}

/// SHA-256 of an access key, hex; what `orders.access_key_hash` stores.
pub fn hash_key(key: &str) -> String {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(key.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_machine_edges() {
        use Status::*;
        assert!(Created.can_go_to(Paid));
        assert!(!Created.can_go_to(Unlocked));
        assert!(!Paid.can_go_to(Created));
        assert!(UnlockFailed.can_go_to(Unlocked));
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
            if s.is_final() && s != Completed {
                for t in Status::ALL {
                    assert!(!s.can_go_to(t), "{s:?} is final");
                }
            }
        }
    }
}
