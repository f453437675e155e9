//! Lock state polling: turns what the bus reports into events and health.
//!
//! One task per bus polls its locks in turn every `poll_interval`. Edges become events in
//! the outbox: door opened/closed, and alarms as they appear (forced open, tamper, jam,
//! low voltage). `offline_after` failed polls in a row raise `lock_offline`; the first
//! answered poll after that raises `lock_online`. A lock that stops answering only slows
//! its own bus by its timeouts; unlocks of other locks do not wait for the poller (the bus
//! driver serializes frames on one port).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dmr_protocol::message::{AlarmEvent, AlarmKind, DoorChange, DoorEvent, Event};
use dmr_protocol::registers::LastError;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::clock::TrustedClock;
use super::health::{Health, Transition};
use super::locks::{LockPort, LockSnapshot};
use super::store::{LockPlace, Store};

/// What the poller needs for one bus.
#[derive(Clone)]
pub struct MonitorDeps {
    pub port: Arc<dyn LockPort>,
    /// Which bus this poller serves.
    pub bus: usize,
    /// The lock map of every bus; it changes when a sync pull applies the cloud's list.
    pub locks: watch::Receiver<Vec<(Uuid, LockPlace)>>,
    pub interval: Duration,
    pub store: Store,
    pub health: Arc<Health>,
    pub clock: Arc<TrustedClock>,
    pub kick: Arc<Notify>,
}

impl std::fmt::Debug for MonitorDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorDeps")
            .field("bus", &self.bus)
            .field("locks", &*self.locks.borrow())
            .finish_non_exhaustive()
    }
}

/// Events implied by going from `prev` to `now` (no previous snapshot: only active alarms).
pub fn edges(
    lock_id: Uuid,
    prev: Option<&LockSnapshot>,
    now: &LockSnapshot,
    at: u64,
) -> Vec<Event> {
    let mut out = Vec::new();
    if let Some(p) = prev
        && p.inputs.door_closed != now.inputs.door_closed
    {
        out.push(Event::Door(DoorEvent {
            lock_id,
            door: if now.inputs.door_closed {
                DoorChange::Closed
            } else {
                DoorChange::Opened
            },
            at,
        }));
    }
    let low = |s: &LockSnapshot| matches!(s.last_error, Some(LastError::LowVoltage));
    let alarms = [
        (
            AlarmKind::ForcedOpen,
            now.inputs.forced_open,
            prev.map(|p| p.inputs.forced_open),
        ),
        (
            AlarmKind::Tamper,
            now.inputs.tamper,
            prev.map(|p| p.inputs.tamper),
        ),
        (
            AlarmKind::Jam,
            now.inputs.fault,
            prev.map(|p| p.inputs.fault),
        ),
        (AlarmKind::LowVoltage, low(now), prev.map(low)),
    ];
    for (kind, active, before) in alarms {
        if active && before != Some(true) {
            out.push(Event::Alarm(AlarmEvent {
                lock_id,
                alarm: kind,
                detail: now.last_error.map(|e| e.to_string()),
                at,
            }));
        }
    }
    out
}

async fn record(deps: &MonitorDeps, events: Vec<Event>) {
    if events.is_empty() {
        return;
    }
    for ev in events {
        let kind = format!("{ev:?}");
        // Group-committed: an alarm that coincides with a burst of unlocks shares their fsync.
        if let Err(e) = deps.store.append_event(ev).await {
            tracing::error!(error = %e, event = %kind, "cannot record lock event");
        }
    }
    deps.kick.notify_one();
}

/// Polls until `shutdown`.
pub async fn run(deps: MonitorDeps, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut prev: HashMap<Uuid, LockSnapshot> = HashMap::new();
    let mut tick = tokio::time::interval(deps.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        // This round's locks of this bus (the map may change between rounds).
        let locks: Vec<(Uuid, u8)> = deps
            .locks
            .borrow()
            .iter()
            .filter(|(_, p)| p.bus == deps.bus)
            .map(|(id, p)| (*id, p.addr))
            .collect();
        prev.retain(|id, _| locks.iter().any(|(l, _)| l == id));
        for (lock_id, addr) in &locks {
            let polled = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                r = deps.port.poll(*addr) => r,
            };
            let at = deps.clock.now_ms();
            match polled {
                Ok(snap) => {
                    let mut events = edges(*lock_id, prev.get(lock_id), &snap, at);
                    if deps.health.poll_ok(*lock_id, snap.clone()) == Some(Transition::CameOnline) {
                        tracing::info!(%lock_id, addr = *addr, "lock answers again");
                        events.insert(
                            0,
                            Event::Alarm(AlarmEvent {
                                lock_id: *lock_id,
                                alarm: AlarmKind::LockOnline,
                                detail: None,
                                at,
                            }),
                        );
                    }
                    prev.insert(*lock_id, snap);
                    record(&deps, events).await;
                }
                Err(e) => {
                    if deps.health.poll_failed(*lock_id, &e.to_string())
                        == Some(Transition::WentOffline)
                    {
                        tracing::warn!(%lock_id, addr = *addr, error = %e, "lock offline");
                        record(
                            &deps,
                            vec![Event::Alarm(AlarmEvent {
                                lock_id: *lock_id,
                                alarm: AlarmKind::LockOffline,
                                detail: Some(e.to_string()),
                                at,
                            })],
                        )
                        .await;
                    }
                }
            }
        }
    }
}
