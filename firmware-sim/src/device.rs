//! One simulated lock controller: the register map of PROTOCOL.md §4 over a small physical
//! model (latch, door, alarms, supply) and the A/B firmware slots of §4–5.
//!
//! The model is synchronous and takes the time as an argument: every timer (unlock pulse,
//! the simulated person, verification, reboot silence) is a deadline that [`Lock::advance`]
//! fires in order. The transports call `advance` before each request and a ticker calls it
//! regularly, so what a client reads is exactly what the timers say at that instant, and
//! unit tests can drive time by hand.

use std::time::{Duration, Instant};

use dmr_protocol::firmware;
use dmr_protocol::modbus::{ExceptionCode, Request, Response};
use dmr_protocol::registers::{
    Baud, FwCtrl, FwErrorCode, FwState, FwStatus, FwVersion, Identity, LastError, LockInputs,
    Settings, Slot, Table, check_setting, coil, holding, u32_to_regs, unpack_chunk,
};
use ed25519_dalek::VerifyingKey;

use crate::config::DoorBehaviour;

/// How long VERIFY takes; long enough that a client can observe FW_STATE 2 and exception
/// 06 for writes during it.
pub const VERIFY_TIME: Duration = Duration::from_millis(200);
/// SUPPLY_MV of a healthy controller.
pub const SUPPLY_OK_MV: u16 = 12_000;
/// SUPPLY_MV while low voltage is injected (below the 10.5 V alarm threshold).
pub const SUPPLY_LOW_MV: u16 = 10_100;

/// Things shared by every lock on the bus.
#[derive(Clone, Debug)]
pub struct Env {
    pub door: DoorBehaviour,
    pub vendor_keys: Vec<(u32, VerifyingKey)>,
    pub reboot_silence: Duration,
}

/// Alarm inputs the control API can switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmInput {
    Tamper,
    /// Opens the door while the latch is locked (a forced entry).
    ForcedOpen,
    Jam,
    LowVoltage,
}

/// Durable side effects of a request that must reach the disk before the reply does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// The image being received into the inactive slot starts again from empty.
    ResetImage { serial: String },
    /// Bytes accepted at `offset` of the image.
    WriteImage {
        serial: String,
        offset: u32,
        data: Vec<u8>,
    },
}

/// The firmware side of a controller.
#[derive(Clone, Debug)]
pub struct Firmware {
    /// The version each slot holds (`None`: empty or being written).
    pub slots: [Option<FwVersion>; 2],
    pub active: Slot,
    /// False between ACTIVATE and CONFIRM: a reboot then returns to the other slot.
    pub confirmed: bool,
    pub state: FwState,
    pub error: FwErrorCode,
    /// FW_TOTAL_SIZE as last written.
    pub total_size_reg: u32,
    /// The total size latched by BEGIN.
    pub begin_total: u32,
    /// The image received so far into the inactive slot.
    pub image: Vec<u8>,
    /// Offset and length of the chunk accepted last, for the idempotent repeat.
    pub last_chunk: Option<(u32, u32)>,
    chunk_regs: Vec<u16>,
    verify_done_at: Option<Instant>,
}

fn slot_index(s: Slot) -> usize {
    match s {
        Slot::A => 0,
        Slot::B => 1,
    }
}

impl Firmware {
    pub fn new(initial: FwVersion) -> Self {
        Firmware {
            slots: [Some(initial), None],
            active: Slot::A,
            confirmed: true,
            state: FwState::Idle,
            error: FwErrorCode::None,
            total_size_reg: 0,
            begin_total: 0,
            image: Vec::new(),
            last_chunk: None,
            chunk_regs: vec![
                0;
                usize::from(holding::FW_CHUNK_DATA_END - holding::FW_CHUNK_OFFSET + 1)
            ],
            verify_done_at: None,
        }
    }

    /// The version of the running slot.
    pub fn running(&self) -> FwVersion {
        self.slots[slot_index(self.active)].unwrap_or_default()
    }

    fn inactive_mut(&mut self) -> &mut Option<FwVersion> {
        &mut self.slots[slot_index(self.active.other())]
    }

    /// What a power-up does: a verification in progress is lost, and an unconfirmed
    /// slot is abandoned for the one that ran before it (test-and-confirm).
    pub fn power_up(&mut self) {
        if self.state == FwState::Verifying {
            self.state = FwState::Receiving;
            self.verify_done_at = None;
        }
        if self.state == FwState::RunningUnconfirmed || !self.confirmed {
            self.active = self.active.other();
            self.confirmed = true;
            self.state = FwState::Idle;
            self.error = FwErrorCode::None;
        }
    }
}

/// One lock controller.
#[derive(Clone, Debug)]
pub struct Lock {
    pub serial: String,
    /// The address it answers to now.
    pub addr: u8,
    /// The baud it talks at now.
    pub baud: Baud,
    /// The settings registers; UNIT_ADDRESS and BAUD_CODE take effect at the next reboot.
    pub settings: Settings,
    pub door_closed: bool,
    pub latch_released: bool,
    released_at: Option<Instant>,
    relock_at: Option<Instant>,
    door_opened_during_release: bool,
    person_open_at: Option<Instant>,
    person_close_at: Option<Instant>,
    pub tamper_input: bool,
    pub tamper_latched: bool,
    pub forced_open_latched: bool,
    pub jam: bool,
    pub low_voltage: bool,
    pub last_error: LastError,
    pub unlock_count: u32,
    /// Times the latch physically moved from locked to released.
    pub actuations: u64,
    silent_until: Option<Instant>,
    pub fw: Firmware,
}

fn exception(req: &Request, code: ExceptionCode) -> Response {
    Response::Exception {
        function: req.function(),
        code,
    }
}

/// A refusal from a write handler.
type Refusal = ExceptionCode;

impl Lock {
    pub fn new(addr: u8, serial: String, baud: Baud, fw: FwVersion) -> Self {
        Lock {
            serial,
            addr,
            baud,
            settings: Settings {
                unit_address: addr,
                baud,
                ..Settings::default()
            },
            door_closed: true,
            latch_released: false,
            released_at: None,
            relock_at: None,
            door_opened_during_release: false,
            person_open_at: None,
            person_close_at: None,
            tamper_input: false,
            tamper_latched: false,
            forced_open_latched: false,
            jam: false,
            low_voltage: false,
            last_error: LastError::None,
            unlock_count: 0,
            actuations: 0,
            silent_until: None,
            fw: Firmware::new(fw),
        }
    }

    /// Whether the controller is running (not in its reboot silence) at `now`.
    pub fn hears(&self, now: Instant) -> bool {
        self.silent_until.is_none_or(|t| now >= t)
    }

    pub fn rebooting(&self, now: Instant) -> bool {
        !self.hears(now)
    }

    pub fn supply_mv(&self) -> u16 {
        if self.low_voltage {
            SUPPLY_LOW_MV
        } else {
            SUPPLY_OK_MV
        }
    }

    pub fn inputs(&self) -> LockInputs {
        LockInputs {
            door_closed: self.door_closed,
            latch_locked: !self.latch_released,
            tamper: self.tamper_latched || self.tamper_input,
            fault: self.jam,
            forced_open: self.forced_open_latched,
        }
    }

    pub fn fw_status(&self) -> FwStatus {
        FwStatus {
            state: self.fw.state,
            received: self.fw.image.len() as u32,
            error: self.fw.error,
            active_slot: self.fw.active,
        }
    }

    fn identity(&self) -> Identity {
        Identity {
            fw_version: self.fw.running(),
            unlock_count: self.unlock_count,
            supply_mv: self.supply_mv(),
            last_error: self.last_error,
            serial: self.serial.clone(),
        }
    }

    // ----- timers -----

    /// Fires every timer due at or before `now`, in time order.
    pub fn advance(&mut self, now: Instant, env: &Env) {
        loop {
            let timers = [
                self.relock_at,
                self.person_open_at,
                self.person_close_at,
                self.fw.verify_done_at,
            ];
            let Some((which, at)) = timers
                .iter()
                .enumerate()
                .filter_map(|(i, t)| t.map(|t| (i, t)))
                .min_by_key(|&(_, t)| t)
            else {
                break;
            };
            if at > now {
                break;
            }
            match which {
                0 => self.relock(),
                1 => {
                    self.person_open_at = None;
                    if self.latch_released
                        && self.door_closed
                        && let DoorBehaviour::PersonOpensAndCloses { close_after_ms, .. } = env.door
                    {
                        self.open_door(at);
                        self.person_close_at = Some(at + Duration::from_millis(close_after_ms));
                    }
                }
                2 => {
                    self.person_close_at = None;
                    self.close_door();
                }
                _ => self.finish_verify(env),
            }
        }
        if self.silent_until.is_some_and(|t| now >= t) {
            self.silent_until = None;
        }
    }

    fn relock(&mut self) {
        self.latch_released = false;
        self.released_at = None;
        self.relock_at = None;
        self.person_open_at = None;
        self.door_opened_during_release = false;
    }

    /// The door opens at `at`: a normal entry if the latch is released, a forced one if not.
    pub fn open_door(&mut self, at: Instant) {
        if !self.door_closed {
            return;
        }
        self.door_closed = false;
        if self.latch_released {
            self.door_opened_during_release = true;
            self.relock_at = match (self.settings.auto_relock_s, self.released_at) {
                (0, _) | (_, None) => None,
                (s, Some(r)) => Some((r + Duration::from_secs(u64::from(s))).max(at)),
            };
        } else {
            self.forced_open_latched = true;
        }
    }

    pub fn close_door(&mut self) {
        if self.door_closed {
            return;
        }
        self.door_closed = true;
        if self.latch_released
            && self.door_opened_during_release
            && self.settings.auto_relock_s == 0
        {
            self.relock();
        }
    }

    // ----- control inputs -----

    pub fn set_alarm(&mut self, kind: AlarmInput, on: bool, now: Instant) {
        match kind {
            AlarmInput::Tamper => {
                self.tamper_input = on;
                if on {
                    self.tamper_latched = true;
                }
            }
            AlarmInput::ForcedOpen => {
                if on {
                    if self.latch_released {
                        self.open_door(now);
                        self.forced_open_latched = true;
                    } else {
                        self.open_door(now);
                    }
                } else {
                    self.close_door();
                }
            }
            AlarmInput::Jam => self.jam = on,
            AlarmInput::LowVoltage => {
                self.low_voltage = on;
                if on {
                    self.last_error = LastError::LowVoltage;
                }
            }
        }
    }

    /// A reboot (coil REBOOT, ACTIVATE, or a power cycle). Its effects are immediate; the
    /// controller then stays silent for the reboot time.
    pub fn reboot(&mut self, now: Instant, env: &Env, activate: bool) {
        if activate {
            self.fw.active = self.fw.active.other();
            self.fw.confirmed = false;
            self.fw.state = FwState::RunningUnconfirmed;
            self.fw.error = FwErrorCode::None;
            self.fw.image.clear();
            self.fw.last_chunk = None;
        } else {
            self.fw.power_up();
        }
        self.fw.verify_done_at = None;
        self.addr = self.settings.unit_address;
        self.baud = self.settings.baud;
        // Fail secure: the latch is driven locked while the controller restarts.
        self.relock();
        self.silent_until = Some(now + env.reboot_silence);
    }

    // ----- Modbus -----

    /// Answers one request addressed to this lock. Durable effects go to `effects`.
    pub fn handle(
        &mut self,
        req: &Request,
        now: Instant,
        env: &Env,
        effects: &mut Vec<Effect>,
    ) -> Response {
        match req {
            Request::ReadCoils { addr, count } => {
                self.read_bits(req, Table::Coils, *addr, *count, |l| {
                    vec![l.latch_released, false, false]
                })
            }
            Request::ReadDiscreteInputs { addr, count } => {
                self.read_bits(req, Table::DiscreteInputs, *addr, *count, |l| {
                    l.inputs().to_bits().to_vec()
                })
            }
            Request::ReadInputRegisters { addr, count } => {
                match Table::InputRegisters.block_of(*addr, *count) {
                    None => exception(req, ExceptionCode::IllegalDataAddress),
                    Some(b) => {
                        let regs: Vec<u16> = if b.start == 0 {
                            self.identity().to_regs().to_vec()
                        } else {
                            self.fw_status().to_regs().to_vec()
                        };
                        slice(&regs, b.start, *addr, *count)
                    }
                }
            }
            Request::ReadHoldingRegisters { addr, count } => {
                match Table::HoldingRegisters.block_of(*addr, *count) {
                    None => exception(req, ExceptionCode::IllegalDataAddress),
                    Some(b) => {
                        let regs: Vec<u16> = match b.start {
                            holding::UNLOCK_PULSE_MS => self.settings.to_regs().to_vec(),
                            holding::FW_CTRL => {
                                let [hi, lo] = u32_to_regs(self.fw.total_size_reg);
                                // FW_CTRL is a command register; it reads 0.
                                vec![0, hi, lo]
                            }
                            _ => self.fw.chunk_regs.clone(),
                        };
                        slice(&regs, b.start, *addr, *count)
                    }
                }
            }
            Request::WriteSingleCoil { addr, value } => {
                if Table::Coils.block_of(*addr, 1).is_none() {
                    return exception(req, ExceptionCode::IllegalDataAddress);
                }
                self.write_coil(*addr, *value, now, env);
                Response::WriteSingleCoil {
                    addr: *addr,
                    value: *value,
                }
            }
            Request::WriteSingleRegister { addr, value } => {
                match self.write_regs(*addr, &[*value], now, env, effects) {
                    Ok(()) => Response::WriteSingleRegister {
                        addr: *addr,
                        value: *value,
                    },
                    Err(code) => exception(req, code),
                }
            }
            Request::WriteMultipleRegisters { addr, values } => {
                match self.write_regs(*addr, values, now, env, effects) {
                    Ok(()) => Response::WriteMultipleRegisters {
                        addr: *addr,
                        count: values.len() as u16,
                    },
                    Err(code) => exception(req, code),
                }
            }
        }
    }

    fn read_bits(
        &self,
        req: &Request,
        table: Table,
        addr: u16,
        count: u16,
        all: impl Fn(&Self) -> Vec<bool>,
    ) -> Response {
        match table.block_of(addr, count) {
            None => exception(req, ExceptionCode::IllegalDataAddress),
            Some(b) => {
                let bits = all(self);
                let from = usize::from(addr - b.start);
                Response::Bits(bits[from..from + usize::from(count)].to_vec())
            }
        }
    }

    fn write_coil(&mut self, addr: u16, on: bool, now: Instant, env: &Env) {
        match (addr, on) {
            (coil::UNLOCK, true) => self.unlock(now, env),
            // Writing OFF relocks at once: the way a client cancels an unlock.
            (coil::UNLOCK, false) if self.latch_released => self.relock(),
            (coil::ALARM_ACK, true) => {
                self.tamper_latched = self.tamper_input;
                self.forced_open_latched = false;
                self.last_error = if self.jam {
                    LastError::Jam
                } else if self.low_voltage {
                    LastError::LowVoltage
                } else {
                    LastError::None
                };
            }
            (coil::REBOOT, true) => self.reboot(now, env, false),
            _ => {}
        }
    }

    fn unlock(&mut self, now: Instant, env: &Env) {
        if self.jam {
            // The motor cannot move the latch; the write is still acknowledged, the
            // failure shows in FAULT and LAST_ERROR.
            self.last_error = LastError::Jam;
            return;
        }
        self.unlock_count = self.unlock_count.wrapping_add(1);
        let pulse = Duration::from_millis(u64::from(self.settings.unlock_pulse_ms));
        if self.latch_released {
            // Already open: a repeated command extends the pulse if the door is still shut.
            if !self.door_opened_during_release {
                self.relock_at = Some(now + pulse);
            }
            return;
        }
        self.latch_released = true;
        self.actuations += 1;
        self.released_at = Some(now);
        self.relock_at = Some(now + pulse);
        self.door_opened_during_release = false;
        if let DoorBehaviour::PersonOpensAndCloses { open_after_ms, .. } = env.door
            && self.door_closed
        {
            self.person_open_at = Some(now + Duration::from_millis(open_after_ms));
        }
    }

    fn write_regs(
        &mut self,
        addr: u16,
        values: &[u16],
        now: Instant,
        env: &Env,
        effects: &mut Vec<Effect>,
    ) -> Result<(), Refusal> {
        // At most 123 values (checked by the codec), so the cast is exact.
        let block = Table::HoldingRegisters
            .block_of(addr, values.len() as u16)
            .ok_or(ExceptionCode::IllegalDataAddress)?;
        match block.start {
            holding::UNLOCK_PULSE_MS => {
                for (i, &v) in values.iter().enumerate() {
                    check_setting(addr + i as u16, v)
                        .map_err(|_| ExceptionCode::IllegalDataValue)?;
                }
                for (i, &v) in values.iter().enumerate() {
                    match addr + i as u16 {
                        holding::UNLOCK_PULSE_MS => self.settings.unlock_pulse_ms = v,
                        holding::AUTO_RELOCK_S => self.settings.auto_relock_s = v,
                        // Both checked above: 1..=247 and 0..=4.
                        holding::UNIT_ADDRESS => self.settings.unit_address = v as u8,
                        _ => self.settings.baud = Baud::from_code(v).unwrap_or(self.settings.baud),
                    }
                }
                Ok(())
            }
            holding::FW_CTRL => {
                if self.fw.state == FwState::Verifying {
                    return Err(ExceptionCode::ServerDeviceBusy);
                }
                let mut ctrl = None;
                let mut size = u32_to_regs(self.fw.total_size_reg);
                for (i, &v) in values.iter().enumerate() {
                    match addr + i as u16 {
                        holding::FW_CTRL => {
                            ctrl = Some(FwCtrl::from_reg(v).ok_or(ExceptionCode::IllegalDataValue)?)
                        }
                        holding::FW_TOTAL_SIZE => size[0] = v,
                        _ => size[1] = v,
                    }
                }
                // The size is applied first so one write can carry both size and BEGIN.
                self.fw.total_size_reg = dmr_protocol::registers::regs_to_u32(size[0], size[1]);
                match ctrl {
                    Some(c) => self.fw_command(c, now, env, effects),
                    None => Ok(()),
                }
            }
            _ => {
                if self.fw.state == FwState::Verifying {
                    return Err(ExceptionCode::ServerDeviceBusy);
                }
                if addr != holding::FW_CHUNK_OFFSET {
                    return Err(ExceptionCode::IllegalDataValue);
                }
                self.chunk(values, effects)
            }
        }
    }

    fn chunk(&mut self, values: &[u16], effects: &mut Vec<Effect>) -> Result<(), Refusal> {
        let (offset, data) = unpack_chunk(values).map_err(|_| ExceptionCode::IllegalDataValue)?;
        if self.fw.state != FwState::Receiving {
            return Err(ExceptionCode::IllegalDataValue);
        }
        let received = self.fw.image.len() as u64;
        let len = data.len() as u64;
        if u64::from(offset) == received {
            if received + len > u64::from(self.fw.begin_total) {
                self.fw.error = FwErrorCode::BadLength;
                return Err(ExceptionCode::IllegalDataValue);
            }
            self.fw.image.extend_from_slice(&data);
            self.fw.last_chunk = Some((offset, data.len() as u32));
            self.fw.error = FwErrorCode::None;
            let mut regs = values.to_vec();
            regs.resize(self.fw.chunk_regs.len(), 0);
            self.fw.chunk_regs = regs;
            effects.push(Effect::WriteImage {
                serial: self.serial.clone(),
                offset,
                data,
            });
            return Ok(());
        }
        let start = offset as usize;
        let repeat = self.fw.last_chunk == Some((offset, data.len() as u32))
            && u64::from(offset) + len == received
            && self.fw.image.get(start..start + data.len()) == Some(&data[..]);
        if repeat {
            return Ok(());
        }
        self.fw.error = FwErrorCode::OutOfOrderChunk;
        Err(ExceptionCode::IllegalDataValue)
    }

    fn fw_command(
        &mut self,
        cmd: FwCtrl,
        now: Instant,
        env: &Env,
        effects: &mut Vec<Effect>,
    ) -> Result<(), Refusal> {
        let refuse = Err(ExceptionCode::IllegalDataValue);
        match cmd {
            FwCtrl::Begin => {
                if self.fw.state == FwState::RunningUnconfirmed {
                    // The other slot holds the only known-good image until CONFIRM.
                    return refuse;
                }
                let total = u64::from(self.fw.total_size_reg);
                let max = firmware::HEADER_LEN as u64 + u64::from(firmware::MAX_PAYLOAD);
                if total <= firmware::HEADER_LEN as u64 || total > max {
                    self.fw.error = FwErrorCode::BadLength;
                    return refuse;
                }
                self.fw.begin_total = self.fw.total_size_reg;
                self.reset_image(effects);
                self.fw.state = FwState::Receiving;
                Ok(())
            }
            FwCtrl::Verify => {
                if self.fw.state != FwState::Receiving {
                    return refuse;
                }
                self.fw.state = FwState::Verifying;
                self.fw.verify_done_at = Some(now + VERIFY_TIME);
                Ok(())
            }
            FwCtrl::Activate => {
                if self.fw.state != FwState::Verified {
                    return refuse;
                }
                effects.push(Effect::ResetImage {
                    serial: self.serial.clone(),
                });
                self.reboot(now, env, true);
                Ok(())
            }
            FwCtrl::Abort => match self.fw.state {
                FwState::RunningUnconfirmed => refuse,
                FwState::Idle => Ok(()),
                _ => {
                    self.reset_image(effects);
                    self.fw.state = FwState::Idle;
                    Ok(())
                }
            },
            FwCtrl::Confirm => match self.fw.state {
                FwState::RunningUnconfirmed => {
                    self.fw.confirmed = true;
                    self.fw.state = FwState::Idle;
                    Ok(())
                }
                // A confirm whose reply was lost is repeated harmlessly.
                FwState::Idle if self.fw.confirmed => Ok(()),
                _ => refuse,
            },
        }
    }

    fn reset_image(&mut self, effects: &mut Vec<Effect>) {
        *self.fw.inactive_mut() = None;
        self.fw.image.clear();
        self.fw.last_chunk = None;
        self.fw.error = FwErrorCode::None;
        effects.push(Effect::ResetImage {
            serial: self.serial.clone(),
        });
    }

    fn finish_verify(&mut self, env: &Env) {
        self.fw.verify_done_at = None;
        match firmware::verify(
            &self.fw.image,
            env.vendor_keys.as_slice(),
            dmr_protocol::registers::HARDWARE_LOCK,
        ) {
            Ok(h) => {
                *self.fw.inactive_mut() = Some(h.version);
                self.fw.state = FwState::Verified;
                self.fw.error = FwErrorCode::None;
            }
            Err(e) => {
                tracing::info!(serial = %self.serial, error = %e, "firmware verification failed");
                self.fw.state = FwState::Failed;
                self.fw.error = e.fw_error_code();
            }
        }
    }

    /// Restores durable fields after a restart of the simulator (a power-up).
    pub(crate) fn restore_firmware_image(&mut self, image: Vec<u8>) {
        self.fw.image = image;
    }
}

fn slice(regs: &[u16], block_start: u16, addr: u16, count: u16) -> Response {
    let from = usize::from(addr - block_start);
    Response::Registers(regs[from..from + usize::from(count)].to_vec())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use dmr_protocol::registers::{discrete, pack_chunk};

    fn env(door: DoorBehaviour) -> Env {
        Env {
            door,
            vendor_keys: vec![(7, key().verifying_key())],
            reboot_silence: Duration::from_millis(1500),
        }
    }

    fn key() -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[9; 32])
    }

    fn lock() -> Lock {
        Lock::new(1, "T-1".into(), Baud::B9600, FwVersion::default())
    }

    fn write_coil(l: &mut Lock, addr: u16, now: Instant, env: &Env) -> Response {
        l.handle(
            &Request::WriteSingleCoil { addr, value: true },
            now,
            env,
            &mut vec![],
        )
    }

    fn wreg(l: &mut Lock, addr: u16, values: Vec<u16>, now: Instant, env: &Env) -> Response {
        l.handle(
            &Request::WriteMultipleRegisters { addr, values },
            now,
            env,
            &mut vec![],
        )
    }

    fn is_exc(r: &Response, code: ExceptionCode) -> bool {
        matches!(r, Response::Exception { code: c, .. } if *c == code)
    }

    #[test]
    fn pulse_relocks_when_nobody_opens() {
        let e = env(DoorBehaviour::StaysShut);
        let mut l = lock();
        let t0 = Instant::now();
        write_coil(&mut l, coil::UNLOCK, t0, &e);
        assert!(l.latch_released);
        l.advance(t0 + Duration::from_millis(2999), &e);
        assert!(l.latch_released);
        l.advance(t0 + Duration::from_millis(3000), &e);
        assert!(!l.latch_released);
        assert_eq!((l.actuations, l.unlock_count), (1, 1));
    }

    #[test]
    fn person_opens_and_relock_waits_for_the_door() {
        let e = env(DoorBehaviour::PersonOpensAndCloses {
            open_after_ms: 500,
            close_after_ms: 4000,
        });
        let mut l = lock();
        let t0 = Instant::now();
        write_coil(&mut l, coil::UNLOCK, t0, &e);
        l.advance(t0 + Duration::from_millis(600), &e);
        assert!(!l.door_closed && l.latch_released);
        // Past the pulse, but the door is open and AUTO_RELOCK_S is 0.
        l.advance(t0 + Duration::from_millis(4000), &e);
        assert!(l.latch_released);
        l.advance(t0 + Duration::from_millis(4500), &e);
        assert!(l.door_closed && !l.latch_released);
        assert!(!l.forced_open_latched);
    }

    #[test]
    fn auto_relock_after_release() {
        let e = env(DoorBehaviour::PersonOpensAndCloses {
            open_after_ms: 100,
            close_after_ms: 10_000,
        });
        let mut l = lock();
        let t0 = Instant::now();
        wreg(&mut l, holding::AUTO_RELOCK_S, vec![2], t0, &e);
        write_coil(&mut l, coil::UNLOCK, t0, &e);
        l.advance(t0 + Duration::from_millis(1999), &e);
        assert!(l.latch_released && !l.door_closed);
        l.advance(t0 + Duration::from_millis(2000), &e);
        assert!(!l.latch_released && !l.door_closed);
    }

    #[test]
    fn jam_acknowledges_but_does_not_release() {
        let e = env(DoorBehaviour::StaysShut);
        let mut l = lock();
        let now = Instant::now();
        l.set_alarm(AlarmInput::Jam, true, now);
        let r = write_coil(&mut l, coil::UNLOCK, now, &e);
        assert!(matches!(r, Response::WriteSingleCoil { value: true, .. }));
        assert!(!l.latch_released && l.inputs().fault);
        assert_eq!((l.last_error, l.actuations), (LastError::Jam, 0));
    }

    #[test]
    fn forced_open_latches_until_ack() {
        let e = env(DoorBehaviour::StaysShut);
        let mut l = lock();
        let now = Instant::now();
        l.set_alarm(AlarmInput::ForcedOpen, true, now);
        assert!(l.inputs().forced_open && !l.door_closed);
        l.set_alarm(AlarmInput::ForcedOpen, false, now);
        assert!(l.inputs().forced_open && l.door_closed);
        write_coil(&mut l, coil::ALARM_ACK, now, &e);
        assert!(!l.inputs().forced_open);
        let bits = l.handle(
            &Request::ReadDiscreteInputs {
                addr: discrete::DOOR_CLOSED,
                count: 5,
            },
            now,
            &e,
            &mut vec![],
        );
        assert_eq!(bits, Response::Bits(vec![true, true, false, false, false]));
    }

    #[test]
    fn exceptions_where_the_spec_puts_them() {
        let e = env(DoorBehaviour::StaysShut);
        let mut l = lock();
        let now = Instant::now();
        let r = l.handle(
            &Request::ReadInputRegisters {
                addr: 0x0F,
                count: 2,
            },
            now,
            &e,
            &mut vec![],
        );
        assert!(is_exc(&r, ExceptionCode::IllegalDataAddress));
        let r = wreg(&mut l, holding::UNLOCK_PULSE_MS, vec![99], now, &e);
        assert!(is_exc(&r, ExceptionCode::IllegalDataValue));
        let r = wreg(&mut l, holding::FW_CTRL, vec![9], now, &e);
        assert!(is_exc(&r, ExceptionCode::IllegalDataValue));
        let r = l.handle(
            &Request::WriteSingleCoil {
                addr: 3,
                value: true,
            },
            now,
            &e,
            &mut vec![],
        );
        assert!(is_exc(&r, ExceptionCode::IllegalDataAddress));
    }

    #[test]
    fn firmware_transfer_verify_activate_confirm_and_rollback() {
        let e = env(DoorBehaviour::StaysShut);
        let mut l = lock();
        let mut now = Instant::now();
        let v2 = FwVersion {
            major: 2,
            minor: 1,
            patch: 3,
        };
        let image = firmware::build(1, v2, &[0x5A; 450], 7, &key()).unwrap();
        let [hi, lo] = u32_to_regs(image.len() as u32);
        assert!(!is_exc(
            &wreg(&mut l, holding::FW_TOTAL_SIZE, vec![hi, lo], now, &e),
            ExceptionCode::IllegalDataValue
        ));
        wreg(
            &mut l,
            holding::FW_CTRL,
            vec![FwCtrl::Begin.to_reg()],
            now,
            &e,
        );
        assert_eq!(l.fw.state, FwState::Receiving);
        let mut off = 0usize;
        for part in image.chunks(200) {
            let regs = pack_chunk(off as u32, part).unwrap();
            let r = wreg(&mut l, holding::FW_CHUNK_OFFSET, regs.clone(), now, &e);
            assert!(
                matches!(r, Response::WriteMultipleRegisters { .. }),
                "{r:?}"
            );
            // The same chunk again is accepted unchanged.
            let r = wreg(&mut l, holding::FW_CHUNK_OFFSET, regs, now, &e);
            assert!(
                matches!(r, Response::WriteMultipleRegisters { .. }),
                "{r:?}"
            );
            off += part.len();
        }
        assert_eq!(l.fw_status().received as usize, image.len());
        // Out of order: offset 0 again.
        let r = wreg(
            &mut l,
            holding::FW_CHUNK_OFFSET,
            pack_chunk(0, &image[..200]).unwrap(),
            now,
            &e,
        );
        assert!(is_exc(&r, ExceptionCode::IllegalDataValue));
        assert_eq!(l.fw.error, FwErrorCode::OutOfOrderChunk);

        wreg(
            &mut l,
            holding::FW_CTRL,
            vec![FwCtrl::Verify.to_reg()],
            now,
            &e,
        );
        assert_eq!(l.fw.state, FwState::Verifying);
        let r = wreg(
            &mut l,
            holding::FW_CTRL,
            vec![FwCtrl::Abort.to_reg()],
            now,
            &e,
        );
        assert!(is_exc(&r, ExceptionCode::ServerDeviceBusy));
        now += VERIFY_TIME;
        l.advance(now, &e);
        assert_eq!(l.fw.state, FwState::Verified);
        wreg(
            &mut l,
            holding::FW_CTRL,
            vec![FwCtrl::Activate.to_reg()],
            now,
            &e,
        );
        assert!(l.rebooting(now));
        assert_eq!(
            (l.fw.state, l.fw.active, l.fw.running()),
            (FwState::RunningUnconfirmed, Slot::B, v2)
        );
        // Reboot while unconfirmed: back to slot A and the old version.
        now += Duration::from_secs(2);
        l.advance(now, &e);
        write_coil(&mut l, coil::REBOOT, now, &e);
        assert_eq!(
            (l.fw.state, l.fw.active, l.fw.running()),
            (FwState::Idle, Slot::A, FwVersion::default())
        );
    }

    #[test]
    fn bad_signature_fails_verification() {
        let e = env(DoorBehaviour::StaysShut);
        let mut l = lock();
        let mut now = Instant::now();
        let other = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        let image = firmware::build(1, FwVersion::default(), &[1; 10], 7, &other).unwrap();
        let [hi, lo] = u32_to_regs(image.len() as u32);
        wreg(
            &mut l,
            holding::FW_CTRL,
            vec![FwCtrl::Begin.to_reg(), hi, lo],
            now,
            &e,
        );
        wreg(
            &mut l,
            holding::FW_CHUNK_OFFSET,
            pack_chunk(0, &image).unwrap(),
            now,
            &e,
        );
        wreg(
            &mut l,
            holding::FW_CTRL,
            vec![FwCtrl::Verify.to_reg()],
            now,
            &e,
        );
        now += VERIFY_TIME;
        l.advance(now, &e);
        assert_eq!(
            (l.fw.state, l.fw.error),
            (FwState::Failed, FwErrorCode::BadSignature)
        );
    }

    #[test]
    fn address_change_takes_effect_after_reboot() {
        let e = env(DoorBehaviour::StaysShut);
        let mut l = lock();
        let now = Instant::now();
        wreg(&mut l, holding::UNIT_ADDRESS, vec![9, 2], now, &e);
        assert_eq!((l.addr, l.baud), (1, Baud::B9600));
        write_coil(&mut l, coil::REBOOT, now, &e);
        assert_eq!((l.addr, l.baud), (9, Baud::B38400));
        assert!(!l.hears(now + Duration::from_millis(1499)));
        assert!(l.hears(now + Duration::from_millis(1500)));
    }
}
