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

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use dmr_protocol::token::{TokenClaims, TokenKind, UnlockToken};
use uuid::Uuid;

use super::{Actor, Also, Status, load, transition};
use crate::AppState;
use crate::db::now_ms;
use crate::error::ApiError;

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

async fn try_dispatch(state: &AppState, order_id: &str) -> Result<(), ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    let Some(order) = load(&mut conn, order_id).await? else {
        return Ok(());
    };
    if order.status() != Status::Paid {
        return Ok(());
    }
    let now = now_ms();
    let now_s = u64::try_from(now / 1000).unwrap_or(0);
    let duration_s = u64::try_from(order.duration_minutes.max(1))
        .unwrap_or(1)
        .saturating_mul(60);
    let claims = TokenClaims {
        kind: TokenKind::Order,
        key_id: 0,
        token_id: Uuid::new_v4(),
        lock_id: parse_uuid(&order.lock_id)?,
        order_id: parse_uuid(&order.id)?,
        not_before: now_s,
        not_after: now_s.saturating_add(duration_s),
        max_uses: 1,
    };
    let dispatcher = state.orders.dispatcher();
    let token = dispatcher.sign(claims).await?;
    let token_text = token.to_text();
    let deadline = now + state.orders.config.unlock_timeout_ms;
    // The command's id is chosen here and recorded with the transition: one write fewer per
    // order than recording it after the send. If the send then fails, the id names a command
    // that was never published (no row, or one marked `not_sent`); the unlock timeout covers
    // the order as before.
    let cmd_id = Uuid::now_v7();
    let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
    let won = transition(
        &mut tx,
        order_id,
        Status::Paid,
        Status::Unlocking,
        &Actor::System,
        "unlock token signed; cmd unlock sent",
        now,
        Also {
            text: vec![
                ("token_id", Some(claims.token_id.to_string())),
                ("token_text", Some(token_text.clone())),
                ("unlock_command_id", Some(cmd_id.to_string())),
            ],
            int: vec![
                ("unlock_deadline_at", Some(deadline)),
                (
                    "token_not_after",
                    Some(
                        i64::try_from(claims.not_after)
                            .unwrap_or(i64::MAX)
                            .saturating_mul(1000),
                    ),
                ),
            ],
        },
    )
    .await?;
    tx.commit().await?;
    // Sending takes pool connections of its own (the gateway lookup, the command row): hold
    // none meanwhile, or concurrent dispatches starve the pool waiting for each other.
    drop(conn);
    if !won {
        return Ok(());
    }
    let ttl = Duration::from_millis(
        u64::try_from(state.orders.config.unlock_timeout_ms).unwrap_or(30_000),
    );
    dispatcher
        .send(cmd_id, parse_uuid(&order.gateway_id)?, token_text, ttl)
        .await
}
