//! Cloud commands: verify, drop duplicates, apply, answer with a signed ack.
//!
//! A command is opened on the store thread ([`super::store::Store::open_command`]): signature
//! by a trusted cloud key, addressed to this gateway, not past `exp_ms` by trusted time, id
//! not seen before (QoS 1 redelivers). Its `ts` moves the trusted-time anchor. Then:
//! `unlock` goes through the one unlock path; `tokens.put`, `tokens.revoke` and `config.set`
//! change state idempotently (re-applying the same version changes nothing); `sync` asks the
//! link to republish the outbox now and the HTTP sync ([`super::sync`]) to pull now. The
//! HTTP sync applies what it pulls through the same [`put_tokens`], [`revoke`] and
//! [`config_set`] functions, so both ways in behave the same. Every opened
//! command is answered on the ack topic; the ack goes through the outbox like any event, so
//! it survives a broken link. An `unlock` takes two commits in all: the command id with the
//! token use ([`super::store::Store::open_command`]), then the outcome event with the ack
//! ([`super::unlock::Unlocker::finish`]). A message that does not verify gets no ack: its id cannot be
//! trusted, and answering forgeries would let a broker make us talk.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dmr_protocol::message::{Ack, Command, Message, Presenter, ResultCode};
use dmr_protocol::topic::TopicKind;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::store::{CommandError, Opened, Redeemed, Store, StoreError};
use super::unlock::Unlocker;

/// What the handler needs.
#[derive(Debug, Clone)]
pub struct CommandDeps {
    pub store: Store,
    pub unlocker: Unlocker,
    pub kick: Arc<Notify>,
    pub heartbeat: watch::Sender<Duration>,
    /// Wakes the HTTP sync for an immediate pull.
    pub sync_now: Arc<Notify>,
}

/// Handles commands until the channel closes or `shutdown`.
pub async fn run(
    deps: CommandDeps,
    mut rx: mpsc::Receiver<String>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let payload = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            p = rx.recv() => match p {
                Some(p) => p,
                // No link (none configured, or it stopped): nothing more will arrive.
                None => {
                    shutdown.cancelled().await;
                    return Ok(());
                }
            },
        };
        handle(&deps, payload).await;
    }
}

/// Handles one command payload (a compact JWS). Returns the ack result, if one was sent.
pub async fn handle(deps: &CommandDeps, payload: String) -> Option<ResultCode> {
    let started = Instant::now();
    // An unlock is decided in this same commit (see Store::open_command).
    let (env, redeemed) = match deps.store.open_command(payload).await {
        Ok(Some(Opened { env, redeemed })) => (env, redeemed),
        Ok(None) => {
            tracing::debug!("duplicate command dropped");
            return None;
        }
        Err(CommandError::Store(e)) if matches!(e, StoreError::Stopped) => {
            tracing::error!(error = %e, "store stopped");
            return None;
        }
        Err(e) => {
            tracing::warn!(error = %e, "command refused");
            return None;
        }
    };
    let Message::Cmd(cmd) = &env.message else {
        return None;
    };
    let op = cmd.op();
    let result = match cmd.clone() {
        Command::Unlock { .. } => {
            let redeemed = redeemed.unwrap_or_else(|| Redeemed::StorageFailed {
                reason: "unlock command opened without a decision".into(),
            });
            // The outcome event and the ack are written in one commit.
            let (reply, acked) = deps
                .unlocker
                .finish(redeemed, Presenter::Cloud, started, Some((env.id, started)))
                .await;
            if acked {
                deps.kick.notify_one();
            }
            tracing::info!(op, cmd = %env.id, result = reply.result.as_str(), "command applied");
            return Some(reply.result);
        }
        Command::TokensPut { tokens } => put_tokens(deps, tokens).await,
        Command::TokensRevoke { token_ids, version } => revoke(deps, token_ids, version).await,
        Command::ConfigSet(cs) => config_set(deps, cs).await,
        Command::Sync {} => {
            deps.kick.notify_one();
            deps.sync_now.notify_one();
            ResultCode::Ok
        }
    };
    let ack = Ack {
        cmd: env.id,
        result,
        latency_ms: started.elapsed().as_millis() as u64,
    };
    match deps
        .store
        .append_all(vec![(TopicKind::Ack, None, Message::Ack(ack))])
        .await
    {
        Ok(_) => deps.kick.notify_one(),
        Err(e) => tracing::error!(error = %e, op, "cannot queue the ack"),
    }
    tracing::info!(op, cmd = %env.id, result = result.as_str(), "command applied");
    Some(result)
}

/// Caches pushed tokens (`tokens.put`, or the `tokens.put` list of a sync pull).
pub async fn put_tokens(deps: &CommandDeps, tokens: Vec<String>) -> ResultCode {
    match deps.store.call(move |db| db.put_tokens(&tokens)).await {
        Ok(Ok((stored, bad))) => {
            if bad > 0 {
                tracing::warn!(
                    stored,
                    bad,
                    "tokens.put carried entries that are not tokens"
                );
            }
            if stored == 0 && bad > 0 {
                ResultCode::BadCommand
            } else {
                ResultCode::Ok
            }
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot cache tokens");
            ResultCode::StorageError
        }
        Err(_) => ResultCode::StorageError,
    }
}

/// Applies a versioned revocation list (older than the one held: `stale`, no change).
pub async fn revoke(deps: &CommandDeps, token_ids: Vec<uuid::Uuid>, version: u64) -> ResultCode {
    match deps
        .store
        .call(move |db| db.revoke(&token_ids, version))
        .await
    {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot store revocations");
            ResultCode::StorageError
        }
        Err(_) => ResultCode::StorageError,
    }
}

/// Applies versioned runtime settings and retimes the heartbeat if it changed.
pub async fn config_set(deps: &CommandDeps, cs: dmr_protocol::message::ConfigSet) -> ResultCode {
    match deps.store.call(move |db| db.config_set(&cs)).await {
        Ok(Ok(applied)) => {
            if let Some(h) = applied.config.and_then(|c| c.heartbeat_interval_s) {
                let _ = deps
                    .heartbeat
                    .send(Duration::from_secs(u64::from(h.max(1))));
            }
            applied.result
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot store settings");
            ResultCode::StorageError
        }
        Err(_) => ResultCode::StorageError,
    }
}
