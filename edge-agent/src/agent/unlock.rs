//! The one unlock path every presenter uses (cloud command, local HTTP, QR scanner).
//!
//! [`Unlocker::present`] hands the input to the store thread, which resolves and verifies the
//! token and, if it passes, records the use together with the `accepted` event in one
//! durable transaction ([`super::store::Db::redeem`], group-committed with whatever else is
//! being written at that moment: [`Store::redeem`]). Only after the commit is the lock driven; its
//! outcome (`ok`, `lock_unreachable`, `lock_fault`) is a second event. A crash between the
//! two leaves a recorded use without an outcome: the token is spent and the lock may not
//! have opened, which is the safe side (the cloud sees `accepted` without an outcome and
//! can refund); the opposite order could open a lock twice on one use.
//!
//! A cloud `unlock` command takes the same path in two halves: the command is opened and the
//! token redeemed in one commit ([`Store::open_command`]), then [`Unlocker::finish`] drives
//! the lock and writes the outcome event together with the command's ack (one commit).

use std::sync::Arc;
use std::time::Instant;

use dmr_protocol::message::{Ack, Event, Message, Presenter, ResultCode, UnlockEvent};
use dmr_protocol::topic::TopicKind;
use uuid::Uuid;

use super::clock::TrustedClock;
use super::health::Health;
use super::locks::{ActuationOutcome, Ports};
use super::store::{Presented, Redeemed, Store};

/// The answer to a presentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnlockReply {
    /// The final result: `ok`, `lock_unreachable`, `lock_fault`, a reason code, or
    /// `storage_error`.
    pub result: ResultCode,
    pub token_id: Option<Uuid>,
    pub lock_id: Option<Uuid>,
    /// Human-readable detail for logs.
    pub detail: String,
}

/// Verifies, records and drives. Cheap to clone.
#[derive(Clone)]
pub struct Unlocker {
    store: Store,
    ports: Ports,
    clock: Arc<TrustedClock>,
    health: Arc<Health>,
    timeout: std::time::Duration,
}

impl std::fmt::Debug for Unlocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unlocker").finish_non_exhaustive()
    }
}

impl Unlocker {
    /// An unlocker over the store and the bus ports.
    pub fn new(
        store: Store,
        ports: Ports,
        clock: Arc<TrustedClock>,
        health: Arc<Health>,
        timeout: std::time::Duration,
    ) -> Self {
        Unlocker {
            store,
            ports,
            clock,
            health,
            timeout,
        }
    }

    /// Handles one presentation (token text or short code) from `via`.
    pub async fn present(&self, input: &str, via: Presenter) -> UnlockReply {
        let started = Instant::now();
        let presented = Presented::classify(input);
        // Group commit: the answer comes after the use is on disk, sharing the fsync with
        // whatever else arrived at the same moment.
        let redeemed = self.store.redeem(presented, via).await;
        self.finish(redeemed, via, started, None).await.0
    }

    /// The second half of a presentation whose decision is already committed: drives the
    /// lock if it was accepted and records the outcome event. With `ack_for` (a cloud
    /// command's id and when it arrived) the command's ack is written in the same commit as
    /// the outcome (for a refusal, alone). Returns the reply and whether the ack was queued.
    pub async fn finish(
        &self,
        redeemed: Redeemed,
        via: Presenter,
        started: Instant,
        ack_for: Option<(Uuid, Instant)>,
    ) -> (UnlockReply, bool) {
        let ack = |result: ResultCode| {
            ack_for.map(|(cmd, arrived)| {
                (
                    TopicKind::Ack,
                    None,
                    Message::Ack(Ack {
                        cmd,
                        result,
                        latency_ms: arrived.elapsed().as_millis() as u64,
                    }),
                )
            })
        };
        let mut acked = false;
        let reply = match redeemed {
            Redeemed::Refused {
                code,
                reason,
                token_id,
                lock_id,
            } => {
                tracing::info!(via = ?via, code = code.as_str(), token_id = ?token_id, %reason, "token refused");
                UnlockReply {
                    result: code,
                    token_id,
                    lock_id,
                    detail: reason,
                }
            }
            Redeemed::StorageFailed { reason } => UnlockReply {
                result: ResultCode::StorageError,
                token_id: None,
                lock_id: None,
                detail: reason,
            },
            Redeemed::Accepted {
                token_id,
                lock_id,
                order_id,
                place,
            } => {
                let outcome = match self.ports.get(place.bus) {
                    Some(port) => {
                        match tokio::time::timeout(self.timeout, port.unlock(place.addr)).await {
                            Ok(o) => o,
                            Err(_) => ActuationOutcome::Unreachable(format!(
                                "no confirmation within {} ms",
                                self.timeout.as_millis()
                            )),
                        }
                    }
                    None => ActuationOutcome::Unreachable("bus not configured".into()),
                };
                if outcome == ActuationOutcome::Ok {
                    // A person opens the door next: the poller looks at it every interval
                    // until the cycle is seen, not once per round over the whole bus.
                    self.health
                        .watch_door(lock_id, super::monitor::WATCH_DOOR_FOR);
                }
                let (result, detail) = match &outcome {
                    ActuationOutcome::Ok => (ResultCode::Ok, String::from("unlocked")),
                    ActuationOutcome::Unreachable(r) => (ResultCode::LockUnreachable, r.clone()),
                    ActuationOutcome::Fault(r) => (ResultCode::LockFault, r.clone()),
                };
                let event = Event::Unlock(UnlockEvent {
                    lock_id,
                    token_id: Some(token_id),
                    order_id,
                    result,
                    via: Some(via),
                    at: self.clock.now_ms(),
                });
                let mut out = vec![(TopicKind::Event, Some(lock_id), Message::Event(event))];
                out.extend(ack(result));
                match self.store.append_all(out).await {
                    Ok(_) => acked = ack_for.is_some(),
                    // The use and the accepted event are already durable; only the outcome
                    // report (and the ack) is missing.
                    Err(e) => {
                        tracing::error!(%token_id, %lock_id, error = %e, "cannot record the unlock outcome event")
                    }
                }
                tracing::info!(via = ?via, %token_id, %lock_id, result = result.as_str(), %detail, "token accepted and lock driven");
                UnlockReply {
                    result,
                    token_id: Some(token_id),
                    lock_id: Some(lock_id),
                    detail,
                }
            }
        };
        if !acked && let Some(a) = ack(reply.result) {
            match self.store.append_all(vec![a]).await {
                Ok(_) => acked = true,
                Err(e) => tracing::error!(error = %e, "cannot queue the ack"),
            }
        }
        self.health
            .record_unlock(reply.result, started.elapsed().as_micros() as u64);
        (reply, acked)
    }
}
