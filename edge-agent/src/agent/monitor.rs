//! Lock state polling: turns what the bus reports into events and health.
//!
//! One task per bus polls its locks in turn every `poll_interval`. A round reads only each
//! lock's inputs (door, latch, alarms: one bus exchange), and every [`FULL_POLL_EVERY`]th
//! round (and a lock's first) is a full poll that also reads the identity block (firmware,
//! supply, last error), so a round over many locks is short and each door is looked at
//! often. A lock whose latch was just released ([`Health::watch_door`]) has its door
//! looked at every `door_watch_interval` (100 ms unless configured, never slower than a
//! round) between the round's polls and while the poller waits for the next round, until it
//! saw the door open and close again: an unlock must not wait for a whole round over a busy
//! bus to have its door cycle seen. That also lets the rounds themselves be slow (the
//! shipped 500 ms): what idle locks cost is one exchange per lock per round, and a round
//! is what a busy gateway spends most of its bus and CPU on. Each round's time is
//! reported ([`Health::poll_round`]). Edges become events in
//! the outbox: door opened/closed, and alarms as they appear (forced open, tamper, jam,
//! low voltage). `offline_after` failed polls in a row raise `lock_offline`; the first
//! answered poll after that raises `lock_online`. A lock that stops answering only slows
//! its own bus by its timeouts; unlocks of other locks do not wait for the poller (the bus
//! driver serializes frames on one port).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use dmr_protocol::message::{AlarmEvent, AlarmKind, DoorChange, DoorEvent, Event};
use dmr_protocol::registers::LastError;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::clock::TrustedClock;
use super::health::{Health, Transition};
use super::locks::{LockPort, LockSnapshot};
use super::store::{LockPlace, Store};

/// Every this many rounds a lock gets a full poll (identity block too); the rounds between
/// read its inputs only. Firmware, supply and last error change slowly; the door does not.
pub const FULL_POLL_EVERY: u64 = 10;

/// How long a door stays watched after an unlock at most (a door left open for longer is
/// seen by the ordinary rounds).
pub const WATCH_DOOR_FOR: Duration = Duration::from_secs(60);

/// What the poller needs for one bus.
#[derive(Clone)]
pub struct MonitorDeps {
    pub port: Arc<dyn LockPort>,
    /// Which bus this poller serves.
    pub bus: usize,
    /// The lock map of every bus; it changes when a sync pull applies the cloud's list.
    pub locks: watch::Receiver<Vec<(Uuid, LockPlace)>>,
    /// Between rounds.
    pub interval: Duration,
    /// Between looks at a watched (just-unlocked) door.
    pub watch_interval: Duration,
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
    // One poll's events in one unit, group-committed: an alarm that coincides with a burst
    // of unlocks shares their fsync.
    let rows = events
        .into_iter()
        .map(|ev| {
            (
                dmr_protocol::topic::TopicKind::Event,
                Some(ev.lock_id()),
                dmr_protocol::message::Message::Event(ev),
            )
        })
        .collect::<Vec<_>>();
    let n = rows.len();
    match deps.store.append_all(rows).await {
        Ok(_) => deps.kick.notify_one(),
        Err(e) => tracing::error!(error = %e, events = n, "cannot record lock events"),
    }
}

/// The poller of one bus: the last snapshot of every lock and when each was last polled.
struct Poller {
    deps: MonitorDeps,
    prev: HashMap<Uuid, LockSnapshot>,
    last_polled: HashMap<Uuid, Instant>,
    /// This bus's locks (id, address) as of the current round.
    addrs: HashMap<Uuid, u8>,
    /// Reused buffer for the watched doors.
    watched: Vec<(Uuid, std::time::Instant)>,
}

impl Poller {
    /// Polls one lock (full or inputs only), records its events and health.
    async fn poll_one(&mut self, lock_id: Uuid, addr: u8, full: bool) {
        let deps = &self.deps;
        let polled = match self.prev.get(&lock_id) {
            Some(prev) if !full => {
                deps.port
                    .poll_inputs(addr)
                    .await
                    .map(|inputs| LockSnapshot {
                        inputs,
                        // LATCH_LOCKED low is the released latch, the fact the UNLOCK coil
                        // reports; the rest changes slowly and is kept from the full poll.
                        unlocked: !inputs.latch_locked,
                        ..prev.clone()
                    })
            }
            _ => deps.port.poll(addr).await,
        };
        self.last_polled.insert(lock_id, Instant::now());
        let at = deps.clock.now_ms();
        match polled {
            Ok(snap) => {
                let mut events = edges(lock_id, self.prev.get(&lock_id), &snap, at);
                deps.health.door_seen(lock_id, snap.inputs.door_closed);
                if deps.health.poll_ok(lock_id, snap.clone()) == Some(Transition::CameOnline) {
                    tracing::info!(%lock_id, addr, "lock answers again");
                    events.insert(
                        0,
                        Event::Alarm(AlarmEvent {
                            lock_id,
                            alarm: AlarmKind::LockOnline,
                            detail: None,
                            at,
                        }),
                    );
                }
                self.prev.insert(lock_id, snap);
                record(deps, events).await;
            }
            Err(e) => {
                if deps.health.poll_failed(lock_id, &e.to_string()) == Some(Transition::WentOffline)
                {
                    tracing::warn!(%lock_id, addr, error = %e, "lock offline");
                    record(
                        deps,
                        vec![Event::Alarm(AlarmEvent {
                            lock_id,
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

    /// Polls the watched doors of this bus that were not looked at for an interval; returns
    /// when the next one falls due (None: no watched door here).
    async fn serve_watched(&mut self) -> Option<Instant> {
        let interval = self.deps.watch_interval;
        let mut next: Option<Instant> = None;
        let mut watched = std::mem::take(&mut self.watched);
        self.deps.health.watched_doors_into(&mut watched);
        for &(lock_id, since) in &watched {
            let Some(&addr) = self.addrs.get(&lock_id) else {
                continue;
            };
            // The first look comes one interval after the unlock, not at once: right after
            // the latch released nobody has opened the door yet, so that look would only
            // confirm what the last one saw (a door cycle shorter than an interval is missed
            // either way). One bus exchange fewer per unlock.
            let since = Instant::from_std(since);
            let due = self
                .last_polled
                .get(&lock_id)
                .map_or(since, |t| (*t).max(since))
                + interval;
            if due <= Instant::now() {
                self.poll_one(lock_id, addr, false).await;
                let again = Instant::now() + interval;
                next = Some(next.map_or(again, |n| n.min(again)));
            } else {
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        self.watched = watched;
        next
    }
}

/// Polls until `shutdown`.
pub async fn run(deps: MonitorDeps, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(deps.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut p = Poller {
        deps,
        prev: HashMap::new(),
        last_polled: HashMap::new(),
        addrs: HashMap::new(),
        watched: Vec::new(),
    };
    let mut round: u64 = 0;
    let mut watches = p.deps.health.watches_added();
    loop {
        // Wait for the next round, looking at watched doors meanwhile; a door watched from
        // now on is looked at right away, not after up to a whole round interval.
        loop {
            // Marked seen before looking, so a watch added while we look wakes the wait.
            watches.borrow_and_update();
            let next = p.serve_watched().await;
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => break,
                () = tokio::time::sleep_until(next.unwrap_or(far)) => {}
                Ok(()) = watches.changed() => {}
            }
        }
        // This round's locks of this bus (the map may change between rounds).
        let locks: Vec<(Uuid, u8)> = p
            .deps
            .locks
            .borrow()
            .iter()
            .filter(|(_, pl)| pl.bus == p.deps.bus)
            .map(|(id, pl)| (*id, pl.addr))
            .collect();
        p.prev.retain(|id, _| locks.iter().any(|(l, _)| l == id));
        p.last_polled
            .retain(|id, _| locks.iter().any(|(l, _)| l == id));
        p.addrs = locks.iter().copied().collect();
        let full = round.is_multiple_of(FULL_POLL_EVERY);
        round += 1;
        let started = Instant::now();
        for (lock_id, addr) in &locks {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = p.poll_one(*lock_id, *addr, full) => {}
            }
            // Watched doors between the round's polls, not only after the round.
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = p.serve_watched() => {}
            }
        }
        if !locks.is_empty() {
            p.deps.health.poll_round(p.deps.bus, started.elapsed());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use dmr_protocol::registers::LockInputs;

    use super::*;
    use crate::agent::clock::{SystemClock, TrustedClock};
    use crate::agent::locks::{ActuationOutcome, BoxFuture, LockError};
    use crate::agent::store::StoreConfig;

    /// A bus where every exchange takes `EXCHANGE` and a full poll is three exchanges. The
    /// door of `WATCHED` opens right after the first look at it once armed and closes again
    /// `DOOR_OPEN` later: shorter than a round over `LOCKS` locks.
    struct SlowBus {
        full: AtomicU64,
        inputs: AtomicU64,
        armed: AtomicBool,
        open_until: Mutex<Option<Instant>>,
    }

    const LOCKS: u8 = 100;
    const WATCHED: u8 = 50;
    const EXCHANGE: Duration = Duration::from_millis(2);
    const DOOR_OPEN: Duration = Duration::from_millis(60);

    impl SlowBus {
        fn inputs(&self, addr: u8) -> LockInputs {
            let mut door_closed = true;
            if addr == WATCHED {
                let mut until = self.open_until.lock().unwrap();
                if self.armed.swap(false, Ordering::SeqCst) {
                    // Seen closed now; opens just after this look.
                    *until = Some(Instant::now() + DOOR_OPEN);
                } else if let Some(t) = *until {
                    door_closed = Instant::now() >= t;
                }
            }
            LockInputs {
                door_closed,
                latch_locked: true,
                tamper: false,
                fault: false,
                forced_open: false,
            }
        }
    }

    impl LockPort for SlowBus {
        fn unlock(&self, _addr: u8) -> BoxFuture<'_, ActuationOutcome> {
            Box::pin(async { ActuationOutcome::Ok })
        }
        fn poll(&self, addr: u8) -> BoxFuture<'_, Result<LockSnapshot, LockError>> {
            Box::pin(async move {
                self.full.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(EXCHANGE * 3).await;
                Ok(LockSnapshot {
                    inputs: self.inputs(addr),
                    unlocked: false,
                    fw: Some("1.0.0".into()),
                    supply_mv: Some(12_000),
                    last_error: None,
                })
            })
        }
        fn poll_inputs(&self, addr: u8) -> BoxFuture<'_, Result<LockInputs, LockError>> {
            Box::pin(async move {
                self.inputs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(EXCHANGE).await;
                Ok(self.inputs(addr))
            })
        }
    }

    fn id(addr: u8) -> Uuid {
        Uuid::from_u128(0xD00_0000 + u128::from(addr))
    }

    struct Rig {
        bus: Arc<SlowBus>,
        health: Arc<Health>,
        store: Store,
        shutdown: CancellationToken,
        _dir: tempfile::TempDir,
    }

    async fn rig() -> Rig {
        rig_with(Duration::from_millis(20), Duration::from_millis(20)).await
    }

    async fn rig_with(interval: Duration, watch_interval: Duration) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let places: Vec<(Uuid, LockPlace)> = (1..=LOCKS)
            .map(|a| (id(a), LockPlace { bus: 0, addr: a }))
            .collect();
        let clock = Arc::new(TrustedClock::new(SystemClock, None));
        let (store, _thread) = Store::open(
            StoreConfig {
                path: dir.path().join("agent.db"),
                gateway_id: Uuid::from_u128(7),
                key: ed25519_dalek::SigningKey::from_bytes(&[3; 32]),
                skew_s: 120,
                locks: places.clone(),
                trusted_keys: Default::default(),
                enrolled_keys: Default::default(),
                max_db_pages: None,
                mmap_bytes: 0,
            },
            clock.clone(),
        )
        .unwrap();
        let health = Arc::new(Health::new(
            Uuid::from_u128(7),
            3,
            &places
                .iter()
                .map(|(i, p)| (*i, p.bus, p.addr))
                .collect::<Vec<_>>(),
        ));
        let bus = Arc::new(SlowBus {
            full: AtomicU64::new(0),
            inputs: AtomicU64::new(0),
            armed: AtomicBool::new(false),
            open_until: Mutex::new(None),
        });
        let (_tx, locks) = watch::channel(places);
        let deps = MonitorDeps {
            port: bus.clone(),
            bus: 0,
            locks,
            interval,
            watch_interval,
            store: store.clone(),
            health: health.clone(),
            clock,
            kick: Arc::new(Notify::new()),
        };
        let shutdown = CancellationToken::new();
        let sd = shutdown.clone();
        tokio::spawn(async move {
            let _keep = _tx;
            run(deps, sd).await
        });
        Rig {
            bus,
            health,
            store,
            shutdown,
            _dir: dir,
        }
    }

    async fn rounds(h: &Health) -> u64 {
        h.status(Default::default(), 0)
            .poll_rounds
            .first()
            .map_or(0, |r| r.rounds)
    }

    async fn wait_rounds(h: &Health, n: u64) {
        let t = Instant::now();
        while rounds(h).await < n {
            assert!(t.elapsed() < Duration::from_secs(20), "poller stalled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn outbox_rows(store: &Store) -> u64 {
        store
            .call(|db| db.outbox_stats())
            .await
            .unwrap()
            .unwrap()
            .pending
    }

    /// Arms the short door cycle, waits two more rounds, returns the events recorded.
    async fn door_cycle(r: &Rig, watch_first: bool) -> u64 {
        wait_rounds(&r.health, 2).await;
        let before = outbox_rows(&r.store).await;
        if watch_first {
            r.health.watch_door(id(WATCHED), WATCH_DOOR_FOR);
        }
        r.bus.armed.store(true, Ordering::SeqCst);
        let now = rounds(&r.health).await;
        wait_rounds(&r.health, now + 3).await;
        outbox_rows(&r.store).await - before
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_door_cycle_shorter_than_a_round_is_seen_when_watched_after_an_unlock() {
        let r = rig().await;
        let events = door_cycle(&r, true).await;
        // Opened and closed; the watch ended with the close.
        assert_eq!(events, 2, "door events recorded");
        assert_eq!(r.health.status(Default::default(), 0).doors_watched, 0);
        let rep = r.health.status(Default::default(), 0).poll_rounds;
        assert_eq!(rep.len(), 1);
        // One exchange per lock between full polls: a round of 100 locks at 2 ms each.
        assert!(rep[0].last_ms >= 200.0, "{rep:?}");
        r.shutdown.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_same_door_cycle_goes_unseen_by_rounds_alone() {
        // The control: proves the rig's door cycle really is shorter than a round.
        let r = rig().await;
        assert_eq!(door_cycle(&r, false).await, 0);
        r.shutdown.cancel();
    }

    /// Slow rounds (1 s apart), a door watched after an unlock: returns the door events seen
    /// within 600 ms of arming the short door cycle, and the rounds done meanwhile.
    async fn slow_rounds_door_cycle(watch_interval: Duration) -> (u64, u64) {
        let r = rig_with(Duration::from_secs(1), watch_interval).await;
        wait_rounds(&r.health, 1).await;
        let before = outbox_rows(&r.store).await;
        let rounds_before = rounds(&r.health).await;
        r.health.watch_door(id(WATCHED), WATCH_DOOR_FOR);
        r.bus.armed.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(600)).await;
        let seen = outbox_rows(&r.store).await - before;
        let rounds_done = rounds(&r.health).await - rounds_before;
        r.shutdown.cancel();
        (seen, rounds_done)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watched_door_is_looked_at_every_watch_interval_while_rounds_are_slow() {
        let (seen, rounds_done) = slow_rounds_door_cycle(Duration::from_millis(20)).await;
        assert_eq!(seen, 2, "door opened and closed, seen between slow rounds");
        assert!(rounds_done <= 1, "rounds stayed slow: {rounds_done}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_watch_wakes_a_poller_waiting_for_its_next_round() {
        // Rounds 3 s apart: after the first (full) round the poller waits ~2.4 s for the
        // next. The watched door's 60 ms cycle must be seen within 300 ms of the unlock.
        let r = rig_with(Duration::from_secs(3), Duration::from_millis(20)).await;
        wait_rounds(&r.health, 1).await;
        let before = outbox_rows(&r.store).await;
        r.bus.armed.store(true, Ordering::SeqCst);
        r.health.watch_door(id(WATCHED), WATCH_DOOR_FOR);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(rounds(&r.health).await, 1, "no new round meanwhile");
        assert_eq!(outbox_rows(&r.store).await - before, 2, "door cycle seen");
        r.shutdown.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_first_look_at_a_watched_door_comes_one_watch_interval_after_the_unlock() {
        // Rounds 3 s apart, watch every 150 ms: right after the unlock nobody has opened the
        // door, so no exchange is spent then; the first look comes an interval later.
        let r = rig_with(Duration::from_secs(3), Duration::from_millis(150)).await;
        wait_rounds(&r.health, 1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let before = r.bus.inputs.load(Ordering::SeqCst);
        r.health.watch_door(id(WATCHED), WATCH_DOOR_FOR);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(
            r.bus.inputs.load(Ordering::SeqCst),
            before,
            "no look right after the unlock"
        );
        let t = Instant::now();
        while r.bus.inputs.load(Ordering::SeqCst) == before {
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "the door was never looked at"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(rounds(&r.health).await, 1, "no new round meanwhile");
        r.shutdown.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watching_at_the_round_interval_misses_the_same_door_cycle() {
        // The control: with the watch as slow as the rounds the cycle goes unseen.
        let (seen, _) = slow_rounds_door_cycle(Duration::from_secs(1)).await;
        assert_eq!(seen, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rounds_between_full_polls_read_the_inputs_only() {
        let r = rig().await;
        wait_rounds(&r.health, FULL_POLL_EVERY + 1).await;
        r.shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let full = r.bus.full.load(Ordering::SeqCst);
        let inputs = r.bus.inputs.load(Ordering::SeqCst);
        let n = u64::from(LOCKS);
        // Rounds 0 and 10 are full (11 rounds done, maybe part of the 12th).
        assert!((2 * n..=3 * n).contains(&full), "full polls {full}");
        assert!(inputs >= 9 * n, "inputs-only polls {inputs}");
    }
}
