//! The shared bus: every lock, the faults in force, and the one path a request takes from
//! any transport (pty or TCP) to a lock and back: route by unit id, let the lock answer,
//! make its durable effects durable, then apply line timing and faults to the reply.
//!
//! [`Control`] is the in-process face of the same state, used by the HTTP API and by tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dmr_protocol::modbus::{Request, Response, rtu};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::device::{AlarmInput, Effect, Env, Lock};
use crate::faults::{Faults, chance};
use crate::persist::{Store, snapshot_json};

/// Everything a client of the control API can see about one lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockView {
    /// The address it answers to now.
    pub addr: u8,
    pub serial: String,
    pub door_closed: bool,
    pub latch_locked: bool,
    /// The UNLOCK coil: ON while the latch is released.
    pub unlocked: bool,
    pub tamper: bool,
    pub fault: bool,
    pub forced_open: bool,
    pub unlock_count: u32,
    pub supply_mv: u16,
    /// LAST_ERROR: 0 none, 1 jam, 2 motor, 3 low voltage.
    pub last_error: u16,
    /// The running firmware, "1.0.0".
    pub fw_version: String,
    /// "A" or "B".
    pub active_slot: String,
    /// idle, receiving, verifying, verified, failed, running_unconfirmed.
    pub fw_state: String,
    pub fw_received: u32,
    /// none, bad_magic, wrong_hardware, bad_length, bad_hash, bad_signature,
    /// out_of_order_chunk.
    pub fw_error: String,
    pub pulse_ms: u16,
    pub auto_relock_s: u16,
    /// The baud it talks at now.
    pub baud: u32,
    /// UNIT_ADDRESS if it differs from `addr` (takes effect at the next reboot).
    pub pending_address: Option<u8>,
    /// Times the latch physically moved from locked to released.
    pub actuations: u64,
    /// In its reboot silence.
    pub rebooting: bool,
}

fn fw_state_name(s: dmr_protocol::registers::FwState) -> &'static str {
    use dmr_protocol::registers::FwState::*;
    match s {
        Idle => "idle",
        Receiving => "receiving",
        Verifying => "verifying",
        Verified => "verified",
        Failed => "failed",
        RunningUnconfirmed => "running_unconfirmed",
    }
}

fn fw_error_name(e: dmr_protocol::registers::FwErrorCode) -> String {
    use dmr_protocol::registers::FwErrorCode::*;
    match e {
        None => "none".into(),
        BadMagic => "bad_magic".into(),
        WrongHardware => "wrong_hardware".into(),
        BadLength => "bad_length".into(),
        BadHash => "bad_hash".into(),
        BadSignature => "bad_signature".into(),
        OutOfOrderChunk => "out_of_order_chunk".into(),
        Other(n) => format!("other_{n}"),
    }
}

impl LockView {
    fn of(l: &Lock, now: Instant) -> Self {
        let inputs = l.inputs();
        LockView {
            addr: l.addr,
            serial: l.serial.clone(),
            door_closed: inputs.door_closed,
            latch_locked: inputs.latch_locked,
            unlocked: l.latch_released,
            tamper: inputs.tamper,
            fault: inputs.fault,
            forced_open: inputs.forced_open,
            unlock_count: l.unlock_count,
            supply_mv: l.supply_mv(),
            last_error: l.last_error.to_reg(),
            fw_version: l.fw.running().to_string(),
            active_slot: l.fw.active.to_string(),
            fw_state: fw_state_name(l.fw.state).into(),
            fw_received: l.fw_status().received,
            fw_error: fw_error_name(l.fw.error),
            pulse_ms: l.settings.unlock_pulse_ms,
            auto_relock_s: l.settings.auto_relock_s,
            baud: l.baud.bits_per_second(),
            pending_address: (l.settings.unit_address != l.addr).then_some(l.settings.unit_address),
            actuations: l.actuations,
            rebooting: l.rebooting(now),
        }
    }
}

/// The mutable bus, behind one std mutex that is never held across an await.
#[derive(Debug)]
pub(crate) struct BusState {
    pub locks: Vec<Lock>,
    pub faults: Faults,
    /// Per-lock faults, by serial (so they follow a lock that changes address).
    pub lock_faults: HashMap<String, Faults>,
    /// Durable effects not yet on disk, in the order they happened.
    pub pending: Vec<Effect>,
}

impl BusState {
    fn advance(&mut self, now: Instant, env: &Env) {
        for l in &mut self.locks {
            l.advance(now, env);
        }
    }

    fn index(&self, addr: u8) -> Option<usize> {
        self.locks.iter().position(|l| l.addr == addr)
    }

    fn faults_of(&self, l: &Lock) -> Faults {
        match self.lock_faults.get(&l.serial) {
            Some(f) => self.faults.combine(f),
            None => self.faults,
        }
    }
}

/// The reply a lock decided on, before faults and timing.
#[derive(Debug)]
struct Planned {
    unit: u8,
    pdu: Vec<u8>,
    faults: Faults,
    baud: u32,
}

/// A reply ready for the transport to frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    pub unit: u8,
    pub pdu: Vec<u8>,
    /// RTU only: send the frame with a broken CRC.
    pub corrupt_crc: bool,
}

/// State shared by every task of one simulator.
#[derive(Debug)]
pub(crate) struct Shared {
    pub env: Env,
    pub bus: Mutex<BusState>,
    pub store: Option<Store>,
    /// Serialises disk writes and remembers what was written last, so an unchanged state
    /// is not rewritten.
    persisted: tokio::sync::Mutex<Option<String>>,
    pub line_timing: bool,
}

impl Shared {
    pub fn new(env: Env, bus: BusState, store: Option<Store>, line_timing: bool) -> Self {
        Shared {
            env,
            bus: Mutex::new(bus),
            store,
            persisted: tokio::sync::Mutex::new(None),
            line_timing,
        }
    }

    pub fn lock_bus(&self) -> MutexGuard<'_, BusState> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.bus.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fires due timers on every lock.
    pub fn tick(&self) {
        let now = Instant::now();
        self.lock_bus().advance(now, &self.env);
    }

    /// Writes pending image effects and the state file if anything changed. Runs the disk
    /// work on the blocking pool; returns once it is durable.
    pub async fn persist(&self) -> anyhow::Result<()> {
        let Some(store) = self.store.clone() else {
            self.lock_bus().pending.clear();
            return Ok(());
        };
        let mut last = self.persisted.lock().await;
        let (effects, json) = {
            let mut bus = self.lock_bus();
            (std::mem::take(&mut bus.pending), snapshot_json(&bus.locks))
        };
        if effects.is_empty() && last.as_deref() == Some(json.as_str()) {
            return Ok(());
        }
        let to_write = json.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            store.apply(&effects)?;
            store.save(&to_write)?;
            Ok(())
        })
        .await??;
        *last = Some(json);
        Ok(())
    }

    /// One request from a transport. `None`: nothing goes back on the line.
    ///
    /// `line_speed` is the speed the client set on a serial line. With line timing on, a
    /// lock configured for another baud does not understand the frame and stays silent,
    /// as on a real RS-485 line; Modbus TCP passes `None`.
    pub async fn exchange(&self, unit: u8, pdu: &[u8], line_speed: Option<u32>) -> Option<Reply> {
        let planned = self.decide(unit, pdu, line_speed);
        if let Err(e) = self.persist().await {
            // The controller could not "write its flash": say so loudly, and do not
            // acknowledge a change that would be lost on a power cut.
            warn!(
                error = format!("{e:#}"),
                "cannot persist simulator state; reply withheld"
            );
            return None;
        }
        let p = planned?;
        let mut delay = Duration::from_millis(p.faults.extra_delay_ms);
        if self.line_timing {
            // What a master sees on a real line from the first request byte to the last
            // reply byte: the request, the 3.5-character silence that ends it, the reply.
            // The silence after the reply is the master's own to keep, not ours.
            delay += rtu::char_time(pdu.len() + 3 + p.pdu.len() + 3, p.baud)
                + rtu::inter_frame_silence(p.baud);
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if chance(p.faults.drop_reply_rate) {
            debug!(unit, "fault injection: reply dropped");
            return None;
        }
        let unit = if chance(p.faults.wrong_unit_rate) {
            debug!(unit, "fault injection: reply from the wrong unit id");
            (p.unit % 247) + 1
        } else {
            p.unit
        };
        Some(Reply {
            unit,
            pdu: p.pdu,
            corrupt_crc: chance(p.faults.corrupt_crc_rate),
        })
    }

    fn decide(&self, unit: u8, pdu: &[u8], line_speed: Option<u32>) -> Option<Planned> {
        let now = Instant::now();
        let env = &self.env;
        let garbled = |l: &Lock| {
            self.line_timing && line_speed.is_some_and(|s| s != l.baud.bits_per_second())
        };
        let mut guard = self.lock_bus();
        let bus = &mut *guard;
        bus.advance(now, env);
        if unit == 0 {
            // Broadcast: writes reach every running lock, nobody answers.
            if let Ok(req) = Request::decode_pdu(pdu)
                && !req.is_read()
            {
                let mut effects = Vec::new();
                for i in 0..bus.locks.len() {
                    let silent = bus.faults_of(&bus.locks[i]).silent;
                    let l = &mut bus.locks[i];
                    if !silent && l.hears(now) && !garbled(l) {
                        l.handle(&req, now, env, &mut effects);
                    }
                }
                bus.pending.extend(effects);
            }
            return None;
        }
        let i = bus.index(unit)?;
        let faults = bus.faults_of(&bus.locks[i]);
        let lock = &mut bus.locks[i];
        if faults.silent || !lock.hears(now) {
            return None;
        }
        if garbled(lock) {
            debug!(
                unit,
                lock_baud = lock.baud.bits_per_second(),
                ?line_speed,
                "frame sent at another baud; the lock hears only noise"
            );
            return None;
        }
        let (function, response) = match Request::decode_pdu(pdu) {
            Ok(req) => {
                let mut effects = Vec::new();
                let r = lock.handle(&req, now, env, &mut effects);
                bus.pending.extend(effects);
                (req.function(), r)
            }
            Err(e) => {
                let function = pdu.first().copied().unwrap_or(0) & 0x7F;
                (
                    function,
                    Response::Exception {
                        function,
                        code: e.exception(),
                    },
                )
            }
        };
        let lock = &bus.locks[i];
        Some(Planned {
            unit,
            pdu: response.encode_pdu(function),
            faults,
            baud: lock.baud.bits_per_second(),
        })
    }
}

/// Why a control operation was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("no lock answers to address {0}")]
    UnknownLock(u8),
    #[error("{0}")]
    Invalid(String),
}

/// The control interface, in-process: what the HTTP API exposes. Addresses are the
/// current bus addresses (a lock moves after a set-address and reboot).
#[derive(Clone, Debug)]
pub struct Control {
    pub(crate) shared: Arc<Shared>,
}

impl Control {
    fn with_lock<T>(
        &self,
        addr: u8,
        f: impl FnOnce(&mut Lock, Instant, &Env) -> T,
    ) -> Result<T, ControlError> {
        let now = Instant::now();
        let env = &self.shared.env;
        let mut bus = self.shared.lock_bus();
        bus.advance(now, env);
        let i = bus.index(addr).ok_or(ControlError::UnknownLock(addr))?;
        Ok(f(&mut bus.locks[i], now, env))
    }

    /// One lock's state, by current address.
    pub fn lock(&self, addr: u8) -> Option<LockView> {
        self.with_lock(addr, |l, now, _| LockView::of(l, now)).ok()
    }

    /// Every lock, in configuration order.
    pub fn locks(&self) -> Vec<LockView> {
        let now = Instant::now();
        let mut bus = self.shared.lock_bus();
        bus.advance(now, &self.shared.env);
        bus.locks.iter().map(|l| LockView::of(l, now)).collect()
    }

    /// Opens or closes the door by hand. Opening while the latch is locked is a forced
    /// entry (FORCED_OPEN latches until ALARM_ACK).
    pub fn set_door(&self, addr: u8, open: bool) -> Result<(), ControlError> {
        self.with_lock(addr, |l, now, _| {
            if open {
                l.open_door(now)
            } else {
                l.close_door()
            }
        })
    }

    /// Switches an alarm input on or off.
    pub fn set_alarm(&self, addr: u8, kind: AlarmInput, on: bool) -> Result<(), ControlError> {
        self.with_lock(addr, |l, now, _| l.set_alarm(kind, on, now))
    }

    /// Faults for the whole bus.
    pub fn set_faults(&self, faults: Faults) -> Result<(), ControlError> {
        faults.validate().map_err(ControlError::Invalid)?;
        self.shared.lock_bus().faults = faults;
        Ok(())
    }

    /// The bus-wide faults in force.
    pub fn faults(&self) -> Faults {
        self.shared.lock_bus().faults
    }

    /// Faults for one lock, on top of the bus-wide ones (the worse of each applies).
    pub fn set_lock_faults(&self, addr: u8, faults: Faults) -> Result<(), ControlError> {
        faults.validate().map_err(ControlError::Invalid)?;
        let mut bus = self.shared.lock_bus();
        let i = bus.index(addr).ok_or(ControlError::UnknownLock(addr))?;
        let serial = bus.locks[i].serial.clone();
        bus.lock_faults.insert(serial, faults);
        Ok(())
    }

    /// Cuts and restores the lock's power: same effects as a reboot (an unconfirmed
    /// firmware rolls back, a pending address or baud takes effect), then silence.
    pub fn power_cycle(&self, addr: u8) -> Result<(), ControlError> {
        self.with_lock(addr, |l, now, env| l.reboot(now, env, false))
    }
}
