//! From `paid` to `unlocking`: sign the order's unlock token and hand `cmd unlock` to the
//! gateway link.
//!
//! The link itself (the cloud signing keys and the MQTT command channel) lives in
//! `crate::link`; this module only needs two things from it, put behind
//! [`UnlockDispatcher`] so the state machine is tested without a broker: sign token claims
//! with the active cloud key, and send `cmd unlock` to a gateway. [`LinkDispatcher`] is the
//! real one (the KeyRing and Commands of the link); [`UnlinkedDispatcher`] serves a
//! process without a link (signing with a local key, sending nothing): the order then
//! opens only through the offline token, or fails over to a refund on time.
//!
//! The token: kind `order`, the order's lock and id, valid from now for the plan's
//! duration, one use. The order moves to `unlocking` (with the token and the unlock
//! deadline) before the command is sent, so a crash in between is covered by the unlock
//! timeout, and a second dispatcher racing on the same order loses the transition and sends
//! nothing.
//!
//! Two callers: the payment notification (the usual path) plans the unlock with
//! [`plan_unlock`] before its transaction (signing is CPU: kept out of the write lock) and
//! then, in its own transaction, moves the order `created` → `paid` → `unlocking` and
//! records the `gateway_commands` row, publishing only after the commit. The stuck-`paid`
//! job ([`dispatch_unlock`]) does the same from `paid`, in a transaction of its own.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use dmr_protocol::token::{TokenClaims, TokenKind, UnlockToken};
use uuid::Uuid;

use super::{Actor, Also, OrderRow, Status, load, transition};
use crate::AppState;
use crate::db::now_ms;
use crate::error::ApiError;
pub use crate::link::commands::PreparedCommand;

/// A dispatcher call in flight.
pub type DispatchFut<'a, T> = Pin<Box<dyn Future<Output = Result<T, ApiError>> + Send + 'a>>;

/// What orders need from the gateway link.
pub trait UnlockDispatcher: Send + Sync + Debug {
    /// Signs `claims` with the active cloud key, setting `key_id` to that key's id.
    fn sign(&self, claims: TokenClaims) -> DispatchFut<'_, UnlockToken>;
    /// Sends `cmd unlock {token}` to the gateway as command `cmd_id` (chosen by the caller
    /// and already recorded on the order).
    fn send(
        &self,
        cmd_id: Uuid,
        gateway_id: Uuid,
        token_text: String,
        ttl: Duration,
    ) -> DispatchFut<'_, ()>;
    /// Builds and signs the command without recording or sending it, so the caller can
    /// record it in its own transaction and [`UnlockDispatcher::publish`] it after the
    /// commit. `gateway` is the gateway's merchant and status as the caller read them
    /// (`None`: no such gateway). `None` back means this dispatcher does not split sends:
    /// the caller uses [`UnlockDispatcher::send`] after its commit instead.
    fn prepare(
        &self,
        _cmd_id: Uuid,
        _gw: Uuid,
        _gateway: Option<(String, String)>,
        _token_text: String,
        _ttl: Duration,
    ) -> DispatchFut<'_, Option<PreparedCommand>> {
        Box::pin(async { Ok(None) })
    }
    /// Publishes what [`UnlockDispatcher::prepare`] built, once its row has committed.
    fn publish(&self, _prepared: PreparedCommand) -> DispatchFut<'_, ()> {
        Box::pin(async {
            Err(ApiError::internal(anyhow::anyhow!(
                "this dispatcher prepares no commands"
            )))
        })
    }
}

/// No gateway link in this process: tokens are signed with a key kept in the database
/// (`app_secrets`, so every instance agrees), nothing is sent.
#[derive(Debug)]
pub struct UnlinkedDispatcher {
    key: ed25519_dalek::SigningKey,
    key_id: u32,
}

impl UnlinkedDispatcher {
    pub fn new(seed: [u8; 32], key_id: u32) -> UnlinkedDispatcher {
        UnlinkedDispatcher {
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
            key_id,
        }
    }

    pub fn verifying_key(&self) -> ed25519_dalek::VerifyingKey {
        self.key.verifying_key()
    }
}

impl UnlockDispatcher for UnlinkedDispatcher {
    fn sign(&self, mut claims: TokenClaims) -> DispatchFut<'_, UnlockToken> {
        Box::pin(async move {
            claims.key_id = self.key_id;
            claims
                .sign(&self.key)
                .map_err(|e| ApiError::internal(anyhow::anyhow!("signing an unlock token: {e}")))
        })
    }

    fn send(&self, _id: Uuid, _gw: Uuid, _token: String, _ttl: Duration) -> DispatchFut<'_, ()> {
        Box::pin(async move {
            Err(ApiError::Conflict(
                "no gateway link in this process; the order can open with its offline token".into(),
            ))
        })
    }
}

/// The real link: the active cloud key from the KeyRing, `cmd unlock` through Commands
/// (signed, recorded in `gateway_commands`, published QoS 1).
#[derive(Debug)]
pub struct LinkDispatcher {
    keys: std::sync::Arc<crate::link::keys::KeyRing>,
    commands: std::sync::Arc<crate::link::commands::Commands>,
}

impl LinkDispatcher {
    pub fn new(
        keys: std::sync::Arc<crate::link::keys::KeyRing>,
        commands: std::sync::Arc<crate::link::commands::Commands>,
    ) -> LinkDispatcher {
        LinkDispatcher { keys, commands }
    }
}

impl UnlockDispatcher for LinkDispatcher {
    fn sign(&self, claims: TokenClaims) -> DispatchFut<'_, UnlockToken> {
        Box::pin(async move {
            let signer = self.keys.signer().await?;
            signer
                .sign_token(claims)
                .map_err(|e| ApiError::internal(anyhow::anyhow!("signing an unlock token: {e}")))
        })
    }

    fn send(&self, id: Uuid, gw: Uuid, token: String, ttl: Duration) -> DispatchFut<'_, ()> {
        Box::pin(async move {
            self.commands
                .send_as(
                    id,
                    gw,
                    dmr_protocol::message::Command::Unlock { token },
                    ttl,
                    crate::link::commands::CommandMeta::default(),
                )
                .await
        })
    }

    fn prepare(
        &self,
        id: Uuid,
        gw: Uuid,
        gateway: Option<(String, String)>,
        token: String,
        ttl: Duration,
    ) -> DispatchFut<'_, Option<PreparedCommand>> {
        Box::pin(async move {
            let Some((merchant_id, status)) = gateway else {
                return Err(ApiError::NotFound);
            };
            self.commands
                .prepare(
                    id,
                    gw,
                    merchant_id,
                    &status,
                    dmr_protocol::message::Command::Unlock { token },
                    ttl,
                    crate::link::commands::CommandMeta::default(),
                )
                .await
                .map(Some)
        })
    }

    fn publish(&self, prepared: PreparedCommand) -> DispatchFut<'_, ()> {
        Box::pin(async move { self.commands.publish(prepared).await })
    }
}

fn parse_uuid(s: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(s).map_err(|e| ApiError::internal(anyhow::anyhow!("stored id {s}: {e}")))
}

/// Moves a `paid` order to `unlocking` and sends the command. Never fails the caller:
/// problems are logged, and the order jobs (stuck `paid`, unlock timeout) take over.
pub async fn dispatch_unlock(state: &AppState, order_id: &str) {
    if let Err(e) = try_dispatch(state, order_id).await {
        tracing::warn!(order_id, error = %e, "unlock dispatch failed; the order jobs will follow up");
    }
}

/// Everything an unlock needs that is CPU or a read, done before any write lock: the
/// token signed, the order columns the move to `unlocking` sets, and the command (signed
/// envelope) if the dispatcher splits sends.
#[derive(Debug)]
pub struct UnlockPlan {
    pub cmd_id: Uuid,
    pub gateway: Uuid,
    pub token_text: String,
    token_id: Uuid,
    deadline: i64,
    token_not_after_ms: i64,
    /// `None`: send with [`UnlockDispatcher::send`] after the commit (unless unsendable).
    pub command: Option<PreparedCommand>,
    /// False when the command could not be prepared: nothing is sent after the commit.
    sendable: bool,
}

/// What a transition to `unlocking` is recorded as.
pub const UNLOCKING_REASON: &str = "unlock token signed; cmd unlock sent";

impl UnlockPlan {
    /// The columns the move to `unlocking` sets along with the status.
    pub fn also(&self) -> Also {
        Also {
            text: vec![
                ("token_id", Some(self.token_id.to_string())),
                ("token_text", Some(self.token_text.clone())),
                ("unlock_command_id", Some(self.cmd_id.to_string())),
            ],
            int: vec![
                ("unlock_deadline_at", Some(self.deadline)),
                ("token_not_after", Some(self.token_not_after_ms)),
            ],
        }
    }

    /// Records the command row (if prepared) on the caller's transaction.
    pub async fn record(&self, conn: &mut sqlx::AnyConnection) -> Result<(), ApiError> {
        if let Some(c) = &self.command {
            c.record(conn).await?;
        }
        Ok(())
    }

    /// After the commit: publishes the command. Never fails the caller: the unlock timeout
    /// covers an order whose command did not go out (as it covers a crash before this).
    pub async fn send(self, state: &AppState, order_id: &str) {
        if !self.sendable {
            return;
        }
        let dispatcher = state.orders.dispatcher();
        let r = match self.command {
            Some(c) => dispatcher.publish(c).await,
            None => {
                let ttl = Duration::from_millis(
                    u64::try_from(state.orders.config.unlock_timeout_ms).unwrap_or(30_000),
                );
                dispatcher
                    .send(self.cmd_id, self.gateway, self.token_text, ttl)
                    .await
            }
        };
        if let Err(e) = r {
            tracing::warn!(order_id, error = %e, "sending cmd unlock failed; the unlock timeout will follow up");
        }
    }
}

/// Signs the order's token and prepares its command. `gateway`: the gateway's merchant and
/// status as the caller read them. A command that cannot be prepared (gateway not enrolled,
/// gone) is logged and left out: the order still moves to `unlocking` with its token (the
/// offline QR code can open the door) and the unlock timeout follows up, as when a send fails.
// The order columns a plan needs, passed as they were read (no second load of the row).
pub async fn plan_unlock(
    state: &AppState,
    order_id: &str,
    lock_id: &str,
    gateway_id: &str,
    duration_minutes: i64,
    gateway: Option<(String, String)>,
) -> Result<UnlockPlan, ApiError> {
    let now = now_ms();
    let now_s = u64::try_from(now / 1000).unwrap_or(0);
    let duration_s = u64::try_from(duration_minutes.max(1))
        .unwrap_or(1)
        .saturating_mul(60);
    let claims = TokenClaims {
        kind: TokenKind::Order,
        key_id: 0,
        token_id: Uuid::new_v4(),
        lock_id: parse_uuid(lock_id)?,
        order_id: parse_uuid(order_id)?,
        not_before: now_s,
        not_after: now_s.saturating_add(duration_s),
        max_uses: 1,
    };
    let dispatcher = state.orders.dispatcher();
    let token = dispatcher.sign(claims).await?;
    let token_text = token.to_text();
    // The command's id is chosen here and recorded with the transition, and the command row
    // goes into the same transaction: an ack can never name an unknown command, and the
    // command is published only after both committed.
    let cmd_id = Uuid::now_v7();
    let gw = parse_uuid(gateway_id)?;
    let ttl = Duration::from_millis(
        u64::try_from(state.orders.config.unlock_timeout_ms).unwrap_or(30_000),
    );
    let command = match dispatcher
        .prepare(cmd_id, gw, gateway, token_text.clone(), ttl)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(order_id, error = %e, "cmd unlock cannot be sent; the unlock timeout will follow up");
            // Recorded on the order but never sent: nothing to publish after the commit.
            return Ok(UnlockPlan {
                cmd_id,
                gateway: gw,
                token_text,
                token_id: claims.token_id,
                deadline: now + state.orders.config.unlock_timeout_ms,
                token_not_after_ms: not_after_ms(&claims),
                command: None,
                sendable: false,
            });
        }
    };
    Ok(UnlockPlan {
        cmd_id,
        gateway: gw,
        token_text,
        token_id: claims.token_id,
        deadline: now + state.orders.config.unlock_timeout_ms,
        token_not_after_ms: not_after_ms(&claims),
        command,
        sendable: true,
    })
}

fn not_after_ms(claims: &TokenClaims) -> i64 {
    i64::try_from(claims.not_after)
        .unwrap_or(i64::MAX)
        .saturating_mul(1000)
}

async fn try_dispatch(state: &AppState, order_id: &str) -> Result<(), ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    let Some(order) = load(&mut conn, order_id).await? else {
        return Ok(());
    };
    if order.status() != Status::Paid {
        return Ok(());
    }
    let gateway: Option<(String, String)> = sqlx::query_as(
        "SELECT merchant_id, status FROM gateways WHERE id = $1 AND deleted_at IS NULL",
    )
    .bind(order.gateway_id.clone())
    .fetch_optional(&mut *conn)
    .await?;
    // Back to the pool before signing and the transaction (held idle meanwhile, it would
    // starve the pool under load).
    drop(conn);
    let plan = plan_for(state, &order, gateway).await?;
    let now = now_ms();
    let mut tx = state.db.pool.begin().await?;
    let won = transition(
        &mut tx,
        order_id,
        Status::Paid,
        Status::Unlocking,
        &Actor::System,
        UNLOCKING_REASON,
        now,
        plan.also(),
    )
    .await?;
    if won {
        plan.record(&mut tx).await?;
    }
    tx.commit().await?;
    if won {
        plan.send(state, order_id).await;
    }
    Ok(())
}

async fn plan_for(
    state: &AppState,
    order: &OrderRow,
    gateway: Option<(String, String)>,
) -> Result<UnlockPlan, ApiError> {
    plan_unlock(
        state,
        &order.id,
        &order.lock_id,
        &order.gateway_id,
        order.duration_minutes,
        gateway,
    )
    .await
}
