//! Health signals, each derived from what the agent observed, never set by hand:
//!
//! - cloud link: up from the broker's CONNACK until the event loop reports an error;
//! - bus link, per lock: up while polls are answered, down after `offline_after` failures
//!   in a row (the same rule that raises `lock_offline`);
//! - lock state, per lock: from the last answered poll (door, latch, alarms).
//!
//! Plus counters for unlock results and latency, the poll-round time of every bus (how long
//! the poller takes to come back to a lock, which bounds how short a door cycle it can see),
//! and the set of locks whose door the poller watches closely because one was just
//! unlocked. [`Health::status`] makes the snapshot that
//! `/status`, `dmr-agent status`, heartbeats and `/metrics` show. The mutexes here are held
//! only to copy a few fields in or out, never across an await.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dmr_protocol::message::{LockStatus, ResultCode};
use serde::Serialize;
use uuid::Uuid;

use super::locks::LockSnapshot;
use super::store::OutboxStats;

#[derive(Debug, Default)]
struct Cloud {
    up: bool,
    connects: u64,
    last_error: Option<String>,
}

/// The HTTP sync's record (see [`super::sync`]).
#[derive(Debug, Default, Clone)]
struct SyncHealth {
    last_ok_ms: Option<u64>,
    failures: u64,
    last_error: Option<String>,
    drained: u64,
    dead_lettered: u64,
}

#[derive(Debug, Clone)]
struct LockHealth {
    bus: usize,
    addr: u8,
    failures: u32,
    polled: bool,
    online: bool,
    last_error: Option<String>,
    snapshot: Option<LockSnapshot>,
}

/// Poll rounds of one bus.
#[derive(Debug, Default, Clone, Copy)]
struct Rounds {
    count: u64,
    last_us: u64,
    max_us: u64,
    sum_us: u64,
}

/// A lock whose door the poller watches between rounds (see [`Health::watch_door`]).
#[derive(Debug, Clone, Copy)]
struct Watched {
    since: Instant,
    until: Instant,
    seen_open: bool,
}

#[derive(Debug, Default)]
struct Counters {
    unlocks: BTreeMap<&'static str, u64>,
    latency_us_sum: u64,
    latency_count: u64,
}

/// Shared health state.
#[derive(Debug)]
pub struct Health {
    gateway_id: Uuid,
    started: Instant,
    offline_after: u32,
    cloud: Mutex<Cloud>,
    locks: Mutex<BTreeMap<Uuid, LockHealth>>,
    counters: Mutex<Counters>,
    sync: Mutex<SyncHealth>,
    rounds: Mutex<BTreeMap<usize, Rounds>>,
    watched: Mutex<HashMap<Uuid, Watched>>,
    /// Bumped by every new watch, so a poller waiting for its next round (up to a whole
    /// `poll_interval`) starts looking at the door at once instead of at that round.
    watch_added: tokio::sync::watch::Sender<u64>,
}

/// The poll rounds of one bus in the status snapshot.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PollRoundReport {
    pub bus: usize,
    /// Rounds completed since start.
    pub rounds: u64,
    /// The last round, start of its first poll to the end of its last, in ms.
    pub last_ms: f64,
    /// The longest round since start, in ms.
    pub max_ms: f64,
    /// Mean round since start, in ms.
    pub mean_ms: f64,
}

/// One lock in the status snapshot.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LockReport {
    pub lock_id: Uuid,
    pub bus: usize,
    pub addr: u8,
    /// "up", "down", or "unknown" before the first poll.
    pub bus_link: &'static str,
    /// "ok", "unknown", or the active alarms joined by commas.
    pub lock_state: String,
    pub door_closed: Option<bool>,
    pub locked: Option<bool>,
    pub fw: Option<String>,
    pub last_error: Option<String>,
}

/// The whole snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub gateway_id: Uuid,
    pub uptime_s: u64,
    /// "up" or "down".
    pub cloud_link: &'static str,
    pub cloud_connects: u64,
    pub cloud_last_error: Option<String>,
    pub outbox_pending: u64,
    pub outbox_oldest_age_s: Option<u64>,
    /// Events the cloud rejected, kept in the dead-letter table.
    pub outbox_dead_letters: u64,
    /// Last successful HTTP sync pull (trusted Unix ms).
    pub sync_last_ok_ms: Option<u64>,
    /// Failed HTTP sync calls (pull or drain) since start.
    pub sync_failures: u64,
    pub sync_last_error: Option<String>,
    /// Events delivered over HTTP (applied or duplicate) since start.
    pub sync_events_drained: u64,
    pub locks: Vec<LockReport>,
    pub unlocks: BTreeMap<String, u64>,
    /// Per bus: how long one poll round over its locks takes.
    pub poll_rounds: Vec<PollRoundReport>,
    /// Locks whose door is being watched after an unlock.
    pub doors_watched: u64,
}

/// A transition the monitor must turn into an alarm event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    WentOffline,
    CameOnline,
}

impl Health {
    /// Health for these locks (`(lock_id, bus, addr)`).
    pub fn new(gateway_id: Uuid, offline_after: u32, locks: &[(Uuid, usize, u8)]) -> Self {
        Health {
            gateway_id,
            started: Instant::now(),
            offline_after: offline_after.max(1),
            cloud: Mutex::new(Cloud::default()),
            locks: Mutex::new(
                locks
                    .iter()
                    .map(|(id, bus, addr)| {
                        (
                            *id,
                            LockHealth {
                                bus: *bus,
                                addr: *addr,
                                failures: 0,
                                polled: false,
                                online: true,
                                last_error: None,
                                snapshot: None,
                            },
                        )
                    })
                    .collect(),
            ),
            counters: Mutex::new(Counters::default()),
            sync: Mutex::new(SyncHealth::default()),
            rounds: Mutex::new(BTreeMap::new()),
            watched: Mutex::new(HashMap::new()),
            watch_added: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Changes whenever a door watch starts ([`Health::watch_door`]); pollers wait on it.
    pub fn watches_added(&self) -> tokio::sync::watch::Receiver<u64> {
        self.watch_added.subscribe()
    }

    /// Follows a new lock map (`(lock_id, bus, addr)`): locks no longer listed are dropped,
    /// new ones start unpolled, and a lock that kept its place keeps its record. One that
    /// moved to another bus or address starts over (what was observed was another unit).
    pub fn set_locks(&self, locks: &[(Uuid, usize, u8)]) {
        let Ok(mut map) = self.locks.lock() else {
            return;
        };
        let mut next = BTreeMap::new();
        for (id, bus, addr) in locks {
            let kept = map.remove(id).filter(|l| l.bus == *bus && l.addr == *addr);
            next.insert(
                *id,
                kept.unwrap_or(LockHealth {
                    bus: *bus,
                    addr: *addr,
                    failures: 0,
                    polled: false,
                    online: true,
                    last_error: None,
                    snapshot: None,
                }),
            );
        }
        *map = next;
    }

    /// Seconds since start.
    pub fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// The broker accepted our connection.
    pub fn cloud_connected(&self) {
        if let Ok(mut c) = self.cloud.lock() {
            c.up = true;
            c.connects += 1;
        }
    }

    /// The link failed or was torn down.
    pub fn cloud_lost(&self, why: &str) {
        if let Ok(mut c) = self.cloud.lock() {
            c.up = false;
            c.last_error = Some(why.chars().take(300).collect());
        }
    }

    /// A sync pull was verified and applied.
    pub fn sync_ok(&self, now_ms: u64) {
        if let Ok(mut s) = self.sync.lock() {
            s.last_ok_ms = Some(now_ms);
        }
    }

    /// A sync call failed (network, HTTP status, or a response that did not verify).
    pub fn sync_failed(&self, why: &str) {
        if let Ok(mut s) = self.sync.lock() {
            s.failures += 1;
            s.last_error = Some(why.chars().take(300).collect());
        }
    }

    /// Outbox rows the HTTP drain delivered and dead-lettered.
    pub fn sync_drained(&self, delivered: u64, dead: u64) {
        if let Ok(mut s) = self.sync.lock() {
            s.drained += delivered;
            s.dead_lettered += dead;
        }
    }

    /// Whether the cloud link is up.
    pub fn cloud_up(&self) -> bool {
        self.cloud.lock().map(|c| c.up).unwrap_or(false)
    }

    /// A poll answered; returns `CameOnline` if the lock had been declared offline.
    pub fn poll_ok(&self, lock_id: Uuid, snap: LockSnapshot) -> Option<Transition> {
        let mut locks = self.locks.lock().ok()?;
        let l = locks.get_mut(&lock_id)?;
        l.failures = 0;
        l.polled = true;
        l.last_error = None;
        l.snapshot = Some(snap);
        if !l.online {
            l.online = true;
            return Some(Transition::CameOnline);
        }
        None
    }

    /// A poll failed; returns `WentOffline` when this failure crosses the threshold.
    pub fn poll_failed(&self, lock_id: Uuid, why: &str) -> Option<Transition> {
        let mut locks = self.locks.lock().ok()?;
        let l = locks.get_mut(&lock_id)?;
        l.failures = l.failures.saturating_add(1);
        l.polled = true;
        l.last_error = Some(why.chars().take(300).collect());
        if l.online && l.failures >= self.offline_after {
            l.online = false;
            return Some(Transition::WentOffline);
        }
        None
    }

    /// Counts an unlock result and its latency.
    pub fn record_unlock(&self, result: ResultCode, latency_us: u64) {
        if let Ok(mut c) = self.counters.lock() {
            *c.unlocks.entry(result.as_str()).or_insert(0) += 1;
            c.latency_us_sum += latency_us;
            c.latency_count += 1;
        }
    }

    /// A poll round over bus `bus` took `took`.
    pub fn poll_round(&self, bus: usize, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        if let Ok(mut r) = self.rounds.lock() {
            let e = r.entry(bus).or_default();
            e.count += 1;
            e.last_us = us;
            e.max_us = e.max_us.max(us);
            e.sum_us = e.sum_us.saturating_add(us);
        }
    }

    /// The latch of `lock_id` was just released: a person will open the door soon and close
    /// it again. The poller of its bus then looks at that door every door-watch interval
    /// (woken at once if it was waiting for its next round) instead of once per round, until it saw the door open and close again or `for_at_most` ran
    /// out, so a door cycle shorter than a round over a busy bus is still seen.
    pub fn watch_door(&self, lock_id: Uuid, for_at_most: Duration) {
        if let Ok(mut w) = self.watched.lock() {
            w.insert(
                lock_id,
                Watched {
                    since: Instant::now(),
                    until: Instant::now() + for_at_most,
                    seen_open: false,
                },
            );
        }
        self.watch_added.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The locks whose doors are watched now, with when each watch began (expired ones are
    /// dropped). Filled into `out` (cleared first) so the poller reuses one buffer.
    pub fn watched_doors_into(&self, out: &mut Vec<(Uuid, Instant)>) {
        out.clear();
        let Ok(mut w) = self.watched.lock() else {
            return;
        };
        let now = Instant::now();
        w.retain(|_, v| v.until > now);
        out.extend(w.iter().map(|(id, v)| (*id, v.since)));
    }

    /// What a poll saw of a watched door: an open door is remembered, and a closed one after
    /// that ends the watch (the cycle is complete and its events recorded).
    pub fn door_seen(&self, lock_id: Uuid, door_closed: bool) {
        let Ok(mut w) = self.watched.lock() else {
            return;
        };
        let Some(v) = w.get_mut(&lock_id) else {
            return;
        };
        if !door_closed {
            v.seen_open = true;
        } else if v.seen_open {
            w.remove(&lock_id);
        }
    }

    /// Locks for a heartbeat.
    pub fn lock_statuses(&self) -> Vec<LockStatus> {
        let Ok(locks) = self.locks.lock() else {
            return Vec::new();
        };
        locks
            .iter()
            .map(|(id, l)| LockStatus {
                lock_id: *id,
                addr: l.addr,
                online: l.online && l.polled && l.failures == 0,
                door_closed: l.snapshot.as_ref().is_some_and(|s| s.inputs.door_closed),
                locked: l.snapshot.as_ref().is_some_and(|s| s.inputs.latch_locked),
                fw: l
                    .snapshot
                    .as_ref()
                    .and_then(|s| s.fw.clone())
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// The full snapshot, with the outbox figures supplied by the caller (from the store).
    pub fn status(&self, outbox: OutboxStats, now_ms: u64) -> StatusReport {
        let (up, connects, last_error) = self
            .cloud
            .lock()
            .map(|c| (c.up, c.connects, c.last_error.clone()))
            .unwrap_or((false, 0, None));
        let locks = self
            .locks
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(id, l)| {
                        let bus_link = if !l.polled {
                            "unknown"
                        } else if l.online && l.failures == 0 {
                            "up"
                        } else {
                            "down"
                        };
                        let lock_state = match &l.snapshot {
                            None => "unknown".to_string(),
                            Some(s) => {
                                let mut alarms = Vec::new();
                                if s.inputs.forced_open {
                                    alarms.push("forced_open");
                                }
                                if s.inputs.tamper {
                                    alarms.push("tamper");
                                }
                                if s.inputs.fault {
                                    alarms.push("jam");
                                }
                                if matches!(
                                    s.last_error,
                                    Some(dmr_protocol::registers::LastError::LowVoltage)
                                ) {
                                    alarms.push("low_voltage");
                                }
                                if alarms.is_empty() {
                                    "ok".to_string()
                                } else {
                                    alarms.join(",")
                                }
                            }
                        };
                        LockReport {
                            lock_id: *id,
                            bus: l.bus,
                            addr: l.addr,
                            bus_link,
                            lock_state,
                            door_closed: l.snapshot.as_ref().map(|s| s.inputs.door_closed),
                            locked: l.snapshot.as_ref().map(|s| s.inputs.latch_locked),
                            fw: l.snapshot.as_ref().and_then(|s| s.fw.clone()),
                            last_error: l.last_error.clone(),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let unlocks = self
            .counters
            .lock()
            .map(|c| {
                c.unlocks
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), *v))
                    .collect()
            })
            .unwrap_or_default();
        let sync = self.sync.lock().map(|s| s.clone()).unwrap_or_default();
        let ms = |us: u64| us as f64 / 1000.0;
        let poll_rounds = self
            .rounds
            .lock()
            .map(|r| {
                r.iter()
                    .map(|(bus, r)| PollRoundReport {
                        bus: *bus,
                        rounds: r.count,
                        last_ms: ms(r.last_us),
                        max_ms: ms(r.max_us),
                        mean_ms: r.sum_us.checked_div(r.count).map_or(0.0, ms),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let doors_watched = self.watched.lock().map(|w| w.len() as u64).unwrap_or(0);
        StatusReport {
            gateway_id: self.gateway_id,
            uptime_s: self.uptime_s(),
            cloud_link: if up { "up" } else { "down" },
            cloud_connects: connects,
            cloud_last_error: last_error,
            outbox_pending: outbox.pending,
            outbox_oldest_age_s: outbox.oldest_ms.map(|o| now_ms.saturating_sub(o) / 1000),
            outbox_dead_letters: outbox.dead_letters,
            sync_last_ok_ms: sync.last_ok_ms,
            sync_failures: sync.failures,
            sync_last_error: sync.last_error,
            sync_events_drained: sync.drained,
            locks,
            unlocks,
            poll_rounds,
            doors_watched,
        }
    }

    /// Prometheus text exposition of a snapshot.
    pub fn metrics(&self, s: &StatusReport) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP dmr_agent_cloud_link_up 1 when the MQTT link to the cloud is connected.\n# TYPE dmr_agent_cloud_link_up gauge\ndmr_agent_cloud_link_up {}",
            u8::from(s.cloud_link == "up")
        );
        let _ = writeln!(
            o,
            "# HELP dmr_agent_cloud_connects_total Successful MQTT connections since start.\n# TYPE dmr_agent_cloud_connects_total counter\ndmr_agent_cloud_connects_total {}",
            s.cloud_connects
        );
        let _ = writeln!(
            o,
            "# HELP dmr_agent_outbox_pending Events waiting in the outbox.\n# TYPE dmr_agent_outbox_pending gauge\ndmr_agent_outbox_pending {}",
            s.outbox_pending
        );
        let _ = writeln!(
            o,
            "# HELP dmr_agent_outbox_oldest_age_seconds Age of the oldest waiting event (0 when empty).\n# TYPE dmr_agent_outbox_oldest_age_seconds gauge\ndmr_agent_outbox_oldest_age_seconds {}",
            s.outbox_oldest_age_s.unwrap_or(0)
        );
        let _ = writeln!(
            o,
            "# HELP dmr_agent_outbox_dead_letters Events the cloud rejected, kept in the dead-letter table.\n# TYPE dmr_agent_outbox_dead_letters gauge\ndmr_agent_outbox_dead_letters {}",
            s.outbox_dead_letters
        );
        let _ = writeln!(
            o,
            "# HELP dmr_agent_sync_failures_total Failed HTTP sync calls since start.\n# TYPE dmr_agent_sync_failures_total counter\ndmr_agent_sync_failures_total {}",
            s.sync_failures
        );
        let _ = writeln!(
            o,
            "# HELP dmr_agent_sync_events_drained_total Events delivered over HTTP since start.\n# TYPE dmr_agent_sync_events_drained_total counter\ndmr_agent_sync_events_drained_total {}",
            s.sync_events_drained
        );
        let _ = writeln!(
            o,
            "# HELP dmr_agent_bus_link_up 1 while the lock answers polls.\n# TYPE dmr_agent_bus_link_up gauge"
        );
        for l in &s.locks {
            let _ = writeln!(
                o,
                "dmr_agent_bus_link_up{{lock_id=\"{}\",addr=\"{}\"}} {}",
                l.lock_id,
                l.addr,
                u8::from(l.bus_link == "up")
            );
        }
        let _ = writeln!(
            o,
            "# HELP dmr_agent_lock_ok 1 when the lock's last poll showed no alarm.\n# TYPE dmr_agent_lock_ok gauge"
        );
        for l in &s.locks {
            let _ = writeln!(
                o,
                "dmr_agent_lock_ok{{lock_id=\"{}\",addr=\"{}\"}} {}",
                l.lock_id,
                l.addr,
                u8::from(l.lock_state == "ok")
            );
        }
        let _ = writeln!(
            o,
            "# HELP dmr_agent_unlocks_total Presented tokens by final result.\n# TYPE dmr_agent_unlocks_total counter"
        );
        for (k, v) in &s.unlocks {
            let _ = writeln!(o, "dmr_agent_unlocks_total{{result=\"{k}\"}} {v}");
        }
        if let Ok(c) = self.counters.lock() {
            let _ = writeln!(
                o,
                "# HELP dmr_agent_unlock_latency_seconds Presented to answered.\n# TYPE dmr_agent_unlock_latency_seconds summary\ndmr_agent_unlock_latency_seconds_sum {}\ndmr_agent_unlock_latency_seconds_count {}",
                c.latency_us_sum as f64 / 1e6,
                c.latency_count
            );
        }
        // The last and the longest round per bus: two gauges of the same shape.
        let gauges = [
            ("last", "The last poll round over a bus's locks."),
            (
                "max",
                "The longest poll round over a bus's locks since start.",
            ),
        ];
        for (name, help) in gauges {
            let _ = writeln!(
                o,
                "# HELP dmr_agent_poll_round_{name}_seconds {help}\n# TYPE dmr_agent_poll_round_{name}_seconds gauge"
            );
            for r in &s.poll_rounds {
                let _ = writeln!(
                    o,
                    "dmr_agent_poll_round_{name}_seconds{{bus=\"{}\"}} {}",
                    r.bus,
                    if name == "max" { r.max_ms } else { r.last_ms } / 1000.0
                );
            }
        }
        if let Ok(rounds) = self.rounds.lock() {
            let _ = writeln!(
                o,
                "# HELP dmr_agent_poll_round_seconds Poll rounds over a bus's locks.\n# TYPE dmr_agent_poll_round_seconds summary"
            );
            for (bus, r) in rounds.iter() {
                let _ = writeln!(
                    o,
                    "dmr_agent_poll_round_seconds_sum{{bus=\"{bus}\"}} {}\ndmr_agent_poll_round_seconds_count{{bus=\"{bus}\"}} {}",
                    r.sum_us as f64 / 1e6,
                    r.count
                );
            }
        }
        let _ = writeln!(
            o,
            "# HELP dmr_agent_doors_watched Locks whose door is polled every interval after an unlock.\n# TYPE dmr_agent_doors_watched gauge\ndmr_agent_doors_watched {}",
            s.doors_watched
        );
        let _ = writeln!(
            o,
            "# HELP dmr_agent_uptime_seconds Seconds since start.\n# TYPE dmr_agent_uptime_seconds gauge\ndmr_agent_uptime_seconds {}",
            s.uptime_s
        );
        o
    }
}
