//! The lock controller's Modbus register map (PROTOCOL.md §4) as named addresses and typed
//! decoders and encoders, so that no other crate writes a raw register number or bit.
//!
//! The map is organised in blocks; a read or write must lie entirely inside one block, and
//! anything else is Modbus exception 02 (illegal data address). [`Table::block_of`]
//! answers that for the simulator and the driver alike.

use std::fmt;

/// Unit ids a lock may use.
pub const UNIT_ADDRESSES: std::ops::RangeInclusive<u8> = 1..=247;
/// The address a controller leaves the factory with.
pub const FACTORY_ADDRESS: u8 = 1;
/// `DEVICE_TYPE` of a lock controller: "LK".
pub const DEVICE_TYPE_LOCK: u16 = 0x4C4B;
/// Hardware type of a lock controller in firmware images.
pub const HARDWARE_LOCK: u8 = 1;

/// Coils (FC 01 read, FC 05 write).
pub mod coil {
    /// Write ON: release the latch for `UNLOCK_PULSE_MS`, then relock. Reads ON while released.
    pub const UNLOCK: u16 = 0x0000;
    /// Write ON: clear latched alarms (tamper, forced open).
    pub const ALARM_ACK: u16 = 0x0001;
    /// Write ON: reboot; the controller is silent for up to 2 s.
    pub const REBOOT: u16 = 0x0002;
    /// Number of coils.
    pub const COUNT: u16 = 3;
}

/// Discrete inputs (FC 02).
pub mod discrete {
    pub const DOOR_CLOSED: u16 = 0x0000;
    pub const LATCH_LOCKED: u16 = 0x0001;
    pub const TAMPER: u16 = 0x0002;
    /// Jammed latch or motor fault.
    pub const FAULT: u16 = 0x0003;
    /// Door opened while the latch was locked; latched until ALARM_ACK.
    pub const FORCED_OPEN: u16 = 0x0004;
    /// Number of discrete inputs.
    pub const COUNT: u16 = 5;
}

/// Input registers (FC 04).
pub mod input {
    pub const DEVICE_TYPE: u16 = 0x0000;
    /// major << 8 | minor
    pub const FW_VERSION: u16 = 0x0001;
    pub const FW_PATCH: u16 = 0x0002;
    /// u32 over two registers.
    pub const UNLOCK_COUNT: u16 = 0x0003;
    pub const SUPPLY_MV: u16 = 0x0005;
    pub const LAST_ERROR: u16 = 0x0006;
    /// 16 ASCII bytes over eight registers, NUL padded.
    pub const SERIAL_NUMBER: u16 = 0x0008;
    /// Registers in the identity block 0x0000..=0x000F (0x0007 is reserved and reads 0).
    pub const IDENTITY_COUNT: u16 = 0x10;
    pub const FW_STATE: u16 = 0x0020;
    /// u32 over two registers.
    pub const FW_RECEIVED: u16 = 0x0021;
    pub const FW_ERROR: u16 = 0x0023;
    pub const ACTIVE_SLOT: u16 = 0x0024;
    /// Registers in the firmware block 0x0020..=0x0024.
    pub const FW_COUNT: u16 = 5;
}

/// Holding registers (FC 03 read, FC 06 / FC 16 write).
pub mod holding {
    pub const UNLOCK_PULSE_MS: u16 = 0x0000;
    pub const AUTO_RELOCK_S: u16 = 0x0001;
    pub const UNIT_ADDRESS: u16 = 0x0002;
    pub const BAUD_CODE: u16 = 0x0003;
    /// Registers in the settings block 0x0000..=0x0003.
    pub const SETTINGS_COUNT: u16 = 4;
    pub const FW_CTRL: u16 = 0x0100;
    /// u32 over two registers, written before BEGIN.
    pub const FW_TOTAL_SIZE: u16 = 0x0101;
    /// u32 over two registers.
    pub const FW_CHUNK_OFFSET: u16 = 0x0110;
    pub const FW_CHUNK_LEN: u16 = 0x0112;
    pub const FW_CHUNK_DATA: u16 = 0x0113;
    /// Data registers in a chunk: 200 bytes.
    pub const FW_CHUNK_DATA_REGS: u16 = 100;
    /// Largest chunk in bytes.
    pub const FW_CHUNK_MAX: usize = 200;
    /// Last data register, 0x0176.
    pub const FW_CHUNK_DATA_END: u16 = FW_CHUNK_DATA + FW_CHUNK_DATA_REGS - 1;
}

/// The four Modbus tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Table {
    Coils,
    DiscreteInputs,
    InputRegisters,
    HoldingRegisters,
}

/// A contiguous block of addresses in one table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub start: u16,
    pub count: u16,
}

impl Table {
    /// The blocks of this table.
    pub fn blocks(self) -> &'static [Block] {
        const COILS: [Block; 1] = [Block {
            start: 0,
            count: coil::COUNT,
        }];
        const DISCRETE: [Block; 1] = [Block {
            start: 0,
            count: discrete::COUNT,
        }];
        const INPUT: [Block; 2] = [
            Block {
                start: 0,
                count: input::IDENTITY_COUNT,
            },
            Block {
                start: input::FW_STATE,
                count: input::FW_COUNT,
            },
        ];
        const HOLDING: [Block; 3] = [
            Block {
                start: 0,
                count: holding::SETTINGS_COUNT,
            },
            Block {
                start: holding::FW_CTRL,
                count: 3,
            },
            Block {
                start: holding::FW_CHUNK_OFFSET,
                count: holding::FW_CHUNK_DATA_END - holding::FW_CHUNK_OFFSET + 1,
            },
        ];
        match self {
            Table::Coils => &COILS,
            Table::DiscreteInputs => &DISCRETE,
            Table::InputRegisters => &INPUT,
            Table::HoldingRegisters => &HOLDING,
        }
    }

    /// The block that wholly contains `start..start+count`, if any. `None` means Modbus
    /// exception 02.
    pub fn block_of(self, start: u16, count: u16) -> Option<Block> {
        let end = u32::from(start) + u32::from(count);
        self.blocks().iter().copied().find(|b| {
            count > 0 && start >= b.start && end <= u32::from(b.start) + u32::from(b.count)
        })
    }
}

/// Splits a u32 into two registers, high word first.
pub fn u32_to_regs(v: u32) -> [u16; 2] {
    [(v >> 16) as u16, v as u16]
}

/// Joins two registers, high word first.
pub fn regs_to_u32(hi: u16, lo: u16) -> u32 {
    (u32::from(hi) << 16) | u32::from(lo)
}

/// A decoding error: what was expected and what was found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("{what}: expected {expected} values, found {found}")]
    Count {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("{what}: value {found} is out of range ({range})")]
    Range {
        what: &'static str,
        found: u32,
        range: &'static str,
    },
    #[error("DEVICE_TYPE is 0x{found:04X}, not a lock controller (0x{DEVICE_TYPE_LOCK:04X})")]
    DeviceType { found: u16 },
}

fn need(what: &'static str, found: usize, expected: usize) -> Result<(), RegisterError> {
    if found < expected {
        return Err(RegisterError::Count {
            what,
            expected,
            found,
        });
    }
    Ok(())
}

/// A firmware version, `major.minor.patch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct FwVersion {
    pub major: u8,
    pub minor: u8,
    pub patch: u16,
}

impl FwVersion {
    /// From `FW_VERSION` and `FW_PATCH`.
    pub fn from_regs(major_minor: u16, patch: u16) -> Self {
        FwVersion {
            major: (major_minor >> 8) as u8,
            minor: major_minor as u8,
            patch,
        }
    }

    /// To `FW_VERSION` and `FW_PATCH`.
    pub fn to_regs(self) -> [u16; 2] {
        [
            (u16::from(self.major) << 8) | u16::from(self.minor),
            self.patch,
        ]
    }
}

impl fmt::Display for FwVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl std::str::FromStr for FwVersion {
    type Err = RegisterError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || RegisterError::Range {
            what: "firmware version",
            found: 0,
            range: "major.minor.patch with major, minor 0..=255 and patch 0..=65535",
        };
        let mut it = s.trim().split('.');
        let (Some(a), Some(b), Some(c), None) = (it.next(), it.next(), it.next(), it.next()) else {
            return Err(bad());
        };
        Ok(FwVersion {
            major: a.parse().map_err(|_| bad())?,
            minor: b.parse().map_err(|_| bad())?,
            patch: c.parse().map_err(|_| bad())?,
        })
    }
}

/// `LAST_ERROR`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LastError {
    None,
    Jam,
    Motor,
    LowVoltage,
    /// A value the contract does not define (newer firmware).
    Other(u16),
}

impl LastError {
    pub fn from_reg(v: u16) -> Self {
        match v {
            0 => LastError::None,
            1 => LastError::Jam,
            2 => LastError::Motor,
            3 => LastError::LowVoltage,
            n => LastError::Other(n),
        }
    }

    pub fn to_reg(self) -> u16 {
        match self {
            LastError::None => 0,
            LastError::Jam => 1,
            LastError::Motor => 2,
            LastError::LowVoltage => 3,
            LastError::Other(n) => n,
        }
    }
}

impl fmt::Display for LastError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LastError::None => f.write_str("none"),
            LastError::Jam => f.write_str("latch jammed"),
            LastError::Motor => f.write_str("motor fault"),
            LastError::LowVoltage => f.write_str("supply voltage low"),
            LastError::Other(n) => write!(f, "unknown error {n}"),
        }
    }
}

/// The discrete inputs, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct LockInputs {
    pub door_closed: bool,
    pub latch_locked: bool,
    pub tamper: bool,
    pub fault: bool,
    pub forced_open: bool,
}

impl LockInputs {
    /// From a read of discrete inputs 0..5.
    pub fn from_bits(bits: &[bool]) -> Result<Self, RegisterError> {
        need("discrete inputs", bits.len(), usize::from(discrete::COUNT))?;
        Ok(LockInputs {
            door_closed: bits[0],
            latch_locked: bits[1],
            tamper: bits[2],
            fault: bits[3],
            forced_open: bits[4],
        })
    }

    /// To discrete inputs 0..5.
    pub fn to_bits(self) -> [bool; 5] {
        [
            self.door_closed,
            self.latch_locked,
            self.tamper,
            self.fault,
            self.forced_open,
        ]
    }
}

/// The identity block (input registers 0x0000..=0x000F), decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub fw_version: FwVersion,
    pub unlock_count: u32,
    pub supply_mv: u16,
    pub last_error: LastError,
    pub serial: String,
}

impl Identity {
    /// Decodes the 16 identity registers; refuses a device that is not a lock controller.
    pub fn from_regs(regs: &[u16]) -> Result<Self, RegisterError> {
        need(
            "identity registers",
            regs.len(),
            usize::from(input::IDENTITY_COUNT),
        )?;
        if regs[0] != DEVICE_TYPE_LOCK {
            return Err(RegisterError::DeviceType { found: regs[0] });
        }
        Ok(Identity {
            fw_version: FwVersion::from_regs(regs[1], regs[2]),
            unlock_count: regs_to_u32(regs[3], regs[4]),
            supply_mv: regs[5],
            last_error: LastError::from_reg(regs[6]),
            serial: decode_ascii(&regs[8..16]),
        })
    }

    /// Encodes the 16 identity registers.
    pub fn to_regs(&self) -> [u16; 16] {
        let mut r = [0u16; 16];
        r[0] = DEVICE_TYPE_LOCK;
        r[1..3].copy_from_slice(&self.fw_version.to_regs());
        r[3..5].copy_from_slice(&u32_to_regs(self.unlock_count));
        r[5] = self.supply_mv;
        r[6] = self.last_error.to_reg();
        r[8..16].copy_from_slice(&encode_ascii::<8>(&self.serial));
        r
    }
}

/// Decodes NUL-padded ASCII, two bytes a register, high byte first. Non-printable bytes
/// become `?` so a garbled serial number is visible rather than silently trimmed.
pub fn decode_ascii(regs: &[u16]) -> String {
    regs.iter()
        .flat_map(|r| r.to_be_bytes())
        .take_while(|&b| b != 0)
        .map(|b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect()
}

/// Encodes ASCII into `N` registers, NUL padded and truncated to `2 * N` bytes.
pub fn encode_ascii<const N: usize>(s: &str) -> [u16; N] {
    let mut bytes = vec![0u8; N * 2];
    for (dst, src) in bytes.iter_mut().zip(s.bytes()) {
        *dst = src;
    }
    let mut out = [0u16; N];
    for (i, r) in out.iter_mut().enumerate() {
        *r = u16::from_be_bytes([bytes[2 * i], bytes[2 * i + 1]]);
    }
    out
}

/// `FW_STATE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FwState {
    Idle,
    Receiving,
    Verifying,
    Verified,
    Failed,
    RunningUnconfirmed,
}

impl FwState {
    pub fn from_reg(v: u16) -> Result<Self, RegisterError> {
        Ok(match v {
            0 => FwState::Idle,
            1 => FwState::Receiving,
            2 => FwState::Verifying,
            3 => FwState::Verified,
            4 => FwState::Failed,
            5 => FwState::RunningUnconfirmed,
            n => {
                return Err(RegisterError::Range {
                    what: "FW_STATE",
                    found: u32::from(n),
                    range: "0..=5",
                });
            }
        })
    }

    pub fn to_reg(self) -> u16 {
        match self {
            FwState::Idle => 0,
            FwState::Receiving => 1,
            FwState::Verifying => 2,
            FwState::Verified => 3,
            FwState::Failed => 4,
            FwState::RunningUnconfirmed => 5,
        }
    }
}

impl fmt::Display for FwState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FwState::Idle => "idle",
            FwState::Receiving => "receiving",
            FwState::Verifying => "verifying",
            FwState::Verified => "verified",
            FwState::Failed => "failed",
            FwState::RunningUnconfirmed => "running unconfirmed",
        })
    }
}

/// `FW_ERROR`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FwErrorCode {
    None,
    BadMagic,
    WrongHardware,
    BadLength,
    BadHash,
    BadSignature,
    OutOfOrderChunk,
    Other(u16),
}

impl FwErrorCode {
    pub fn from_reg(v: u16) -> Self {
        match v {
            0 => FwErrorCode::None,
            1 => FwErrorCode::BadMagic,
            2 => FwErrorCode::WrongHardware,
            3 => FwErrorCode::BadLength,
            4 => FwErrorCode::BadHash,
            5 => FwErrorCode::BadSignature,
            6 => FwErrorCode::OutOfOrderChunk,
            n => FwErrorCode::Other(n),
        }
    }

    pub fn to_reg(self) -> u16 {
        match self {
            FwErrorCode::None => 0,
            FwErrorCode::BadMagic => 1,
            FwErrorCode::WrongHardware => 2,
            FwErrorCode::BadLength => 3,
            FwErrorCode::BadHash => 4,
            FwErrorCode::BadSignature => 5,
            FwErrorCode::OutOfOrderChunk => 6,
            FwErrorCode::Other(n) => n,
        }
    }
}

impl fmt::Display for FwErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FwErrorCode::None => f.write_str("no error"),
            FwErrorCode::BadMagic => f.write_str("not a firmware image (bad magic or format)"),
            FwErrorCode::WrongHardware => f.write_str("image is for other hardware"),
            FwErrorCode::BadLength => f.write_str("image length does not match its header"),
            FwErrorCode::BadHash => {
                f.write_str("payload hash mismatch (corrupted transfer or image)")
            }
            FwErrorCode::BadSignature => {
                f.write_str("signature not valid for any vendor key in the controller")
            }
            FwErrorCode::OutOfOrderChunk => f.write_str("chunk did not start at FW_RECEIVED"),
            FwErrorCode::Other(n) => write!(f, "unknown firmware error {n}"),
        }
    }
}

/// `ACTIVE_SLOT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn from_reg(v: u16) -> Result<Self, RegisterError> {
        match v {
            0 => Ok(Slot::A),
            1 => Ok(Slot::B),
            n => Err(RegisterError::Range {
                what: "ACTIVE_SLOT",
                found: u32::from(n),
                range: "0 (A) or 1 (B)",
            }),
        }
    }

    pub fn to_reg(self) -> u16 {
        match self {
            Slot::A => 0,
            Slot::B => 1,
        }
    }

    /// The slot that is not this one.
    pub fn other(self) -> Self {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::A => "A",
            Slot::B => "B",
        })
    }
}

/// The firmware block (input registers 0x0020..=0x0024), decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FwStatus {
    pub state: FwState,
    pub received: u32,
    pub error: FwErrorCode,
    pub active_slot: Slot,
}

impl FwStatus {
    pub fn from_regs(regs: &[u16]) -> Result<Self, RegisterError> {
        need(
            "firmware status registers",
            regs.len(),
            usize::from(input::FW_COUNT),
        )?;
        Ok(FwStatus {
            state: FwState::from_reg(regs[0])?,
            received: regs_to_u32(regs[1], regs[2]),
            error: FwErrorCode::from_reg(regs[3]),
            active_slot: Slot::from_reg(regs[4])?,
        })
    }

    pub fn to_regs(self) -> [u16; 5] {
        let [hi, lo] = u32_to_regs(self.received);
        [
            self.state.to_reg(),
            hi,
            lo,
            self.error.to_reg(),
            self.active_slot.to_reg(),
        ]
    }
}

/// `FW_CTRL` commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FwCtrl {
    Begin,
    Verify,
    Activate,
    Abort,
    Confirm,
}

impl FwCtrl {
    pub fn from_reg(v: u16) -> Option<Self> {
        Some(match v {
            1 => FwCtrl::Begin,
            2 => FwCtrl::Verify,
            3 => FwCtrl::Activate,
            4 => FwCtrl::Abort,
            5 => FwCtrl::Confirm,
            _ => return None,
        })
    }

    pub fn to_reg(self) -> u16 {
        match self {
            FwCtrl::Begin => 1,
            FwCtrl::Verify => 2,
            FwCtrl::Activate => 3,
            FwCtrl::Abort => 4,
            FwCtrl::Confirm => 5,
        }
    }
}

/// `BAUD_CODE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Baud {
    B9600,
    B19200,
    B38400,
    B57600,
    B115200,
}

impl Baud {
    pub const ALL: [Baud; 5] = [
        Baud::B9600,
        Baud::B19200,
        Baud::B38400,
        Baud::B57600,
        Baud::B115200,
    ];

    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }

    pub fn code(self) -> u16 {
        match self {
            Baud::B9600 => 0,
            Baud::B19200 => 1,
            Baud::B38400 => 2,
            Baud::B57600 => 3,
            Baud::B115200 => 4,
        }
    }

    pub fn bits_per_second(self) -> u32 {
        match self {
            Baud::B9600 => 9600,
            Baud::B19200 => 19200,
            Baud::B38400 => 38400,
            Baud::B57600 => 57600,
            Baud::B115200 => 115200,
        }
    }

    pub fn from_bits_per_second(bps: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.bits_per_second() == bps)
    }
}

/// The settings block (holding registers 0x0000..=0x0003), decoded and range checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub unlock_pulse_ms: u16,
    pub auto_relock_s: u16,
    pub unit_address: u8,
    pub baud: Baud,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            unlock_pulse_ms: 3000,
            auto_relock_s: 0,
            unit_address: FACTORY_ADDRESS,
            baud: Baud::B9600,
        }
    }
}

impl Settings {
    pub fn from_regs(regs: &[u16]) -> Result<Self, RegisterError> {
        need(
            "settings registers",
            regs.len(),
            usize::from(holding::SETTINGS_COUNT),
        )?;
        for (i, &v) in regs[..4].iter().enumerate() {
            // `i` is below 4, so the cast is exact.
            check_setting(i as u16, v)?;
        }
        Ok(Settings {
            unlock_pulse_ms: regs[0],
            auto_relock_s: regs[1],
            unit_address: regs[2] as u8,
            baud: Baud::from_code(regs[3]).unwrap_or(Baud::B9600),
        })
    }

    pub fn to_regs(self) -> [u16; 4] {
        [
            self.unlock_pulse_ms,
            self.auto_relock_s,
            u16::from(self.unit_address),
            self.baud.code(),
        ]
    }
}

/// Range check for a write to a settings register; an error is Modbus exception 03.
pub fn check_setting(addr: u16, value: u16) -> Result<(), RegisterError> {
    let (what, ok, range) = match addr {
        holding::UNLOCK_PULSE_MS => (
            "UNLOCK_PULSE_MS",
            (100..=10000).contains(&value),
            "100..=10000",
        ),
        holding::AUTO_RELOCK_S => ("AUTO_RELOCK_S", value <= 3600, "0..=3600"),
        holding::UNIT_ADDRESS => ("UNIT_ADDRESS", (1..=247).contains(&value), "1..=247"),
        holding::BAUD_CODE => ("BAUD_CODE", value <= 4, "0..=4"),
        _ => return Ok(()),
    };
    if ok {
        Ok(())
    } else {
        Err(RegisterError::Range {
            what,
            found: u32::from(value),
            range,
        })
    }
}

/// Errors packing or unpacking a firmware chunk.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk length must be 1..=200 bytes, found {found}")]
    Length { found: usize },
    #[error("chunk write has {found} registers, its length needs {expected}")]
    Registers { expected: usize, found: usize },
}

/// The registers of one chunk write, starting at `FW_CHUNK_OFFSET`: offset (2), length (1)
/// and the data, two bytes a register, high byte first (an odd last byte is padded with 0).
/// Written with one FC 16 request at [`holding::FW_CHUNK_OFFSET`].
pub fn pack_chunk(offset: u32, data: &[u8]) -> Result<Vec<u16>, ChunkError> {
    if data.is_empty() || data.len() > holding::FW_CHUNK_MAX {
        return Err(ChunkError::Length { found: data.len() });
    }
    let mut regs = Vec::with_capacity(3 + data.len().div_ceil(2));
    regs.extend_from_slice(&u32_to_regs(offset));
    // At most 200, checked above.
    regs.push(data.len() as u16);
    regs.extend(
        data.chunks(2)
            .map(|p| u16::from_be_bytes([p[0], p.get(1).copied().unwrap_or(0)])),
    );
    Ok(regs)
}

/// The inverse of [`pack_chunk`]: `regs` start at `FW_CHUNK_OFFSET`.
pub fn unpack_chunk(regs: &[u16]) -> Result<(u32, Vec<u8>), ChunkError> {
    if regs.len() < 4 {
        return Err(ChunkError::Registers {
            expected: 4,
            found: regs.len(),
        });
    }
    let offset = regs_to_u32(regs[0], regs[1]);
    let len = usize::from(regs[2]);
    if len == 0 || len > holding::FW_CHUNK_MAX {
        return Err(ChunkError::Length { found: len });
    }
    let expected = 3 + len.div_ceil(2);
    if regs.len() < expected {
        return Err(ChunkError::Registers {
            expected,
            found: regs.len(),
        });
    }
    let mut data: Vec<u8> = regs[3..expected]
        .iter()
        .flat_map(|r| r.to_be_bytes())
        .collect();
    data.truncate(len);
    Ok((offset, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_bound_reads() {
        assert!(Table::InputRegisters.block_of(0, 16).is_some());
        assert!(Table::InputRegisters.block_of(0, 17).is_none());
        assert!(Table::InputRegisters.block_of(0x20, 5).is_some());
        assert!(Table::InputRegisters.block_of(0x24, 2).is_none());
        assert!(Table::HoldingRegisters.block_of(0x110, 103).is_some());
        assert!(Table::HoldingRegisters.block_of(0x110, 104).is_none());
        assert!(Table::HoldingRegisters.block_of(0x100, 3).is_some());
        assert!(Table::Coils.block_of(0, 0).is_none());
        assert!(Table::Coils.block_of(2, 1).is_some());
        assert!(Table::Coils.block_of(3, 1).is_none());
        assert!(Table::DiscreteInputs.block_of(0xFFFF, 2).is_none());
    }

    #[test]
    fn identity_round_trip() {
        let id = Identity {
            fw_version: FwVersion {
                major: 1,
                minor: 2,
                patch: 300,
            },
            unlock_count: 70_000,
            supply_mv: 12_100,
            last_error: LastError::Jam,
            serial: "DMR-LK-000123".into(),
        };
        let regs = id.to_regs();
        assert_eq!(regs[0], 0x4C4B);
        assert_eq!(Identity::from_regs(&regs).unwrap(), id);
        let mut not_lock = regs;
        not_lock[0] = 1;
        assert_eq!(
            Identity::from_regs(&not_lock),
            Err(RegisterError::DeviceType { found: 1 })
        );
        assert!(matches!(
            Identity::from_regs(&regs[..3]),
            Err(RegisterError::Count { .. })
        ));
    }

    #[test]
    fn chunk_packing() {
        let data: Vec<u8> = (0..=200u16).map(|i| i as u8).take(199).collect();
        let regs = pack_chunk(0x0001_0002, &data).unwrap();
        assert_eq!(regs.len(), 3 + 100);
        assert_eq!(&regs[..3], &[1, 2, 199]);
        assert_eq!(regs[3], 0x0001);
        assert_eq!(*regs.last().unwrap(), 0xC600);
        assert_eq!(unpack_chunk(&regs).unwrap(), (0x0001_0002, data));
        assert_eq!(pack_chunk(0, &[]), Err(ChunkError::Length { found: 0 }));
        assert_eq!(
            pack_chunk(0, &[0; 201]),
            Err(ChunkError::Length { found: 201 })
        );
        assert!(matches!(
            unpack_chunk(&[0, 0, 10, 1]),
            Err(ChunkError::Registers { expected: 8, .. })
        ));
    }

    #[test]
    fn settings_ranges() {
        assert!(check_setting(holding::UNLOCK_PULSE_MS, 99).is_err());
        assert!(check_setting(holding::UNLOCK_PULSE_MS, 100).is_ok());
        assert!(check_setting(holding::AUTO_RELOCK_S, 3601).is_err());
        assert!(check_setting(holding::UNIT_ADDRESS, 0).is_err());
        assert!(check_setting(holding::UNIT_ADDRESS, 248).is_err());
        assert!(check_setting(holding::BAUD_CODE, 5).is_err());
        let s = Settings::default();
        assert_eq!(Settings::from_regs(&s.to_regs()).unwrap(), s);
        assert_eq!(Baud::from_code(4), Some(Baud::B115200));
        assert_eq!("1.3.0".parse::<FwVersion>().unwrap().to_string(), "1.3.0");
        assert!("1.3".parse::<FwVersion>().is_err());
    }

    #[test]
    fn fw_status_round_trip() {
        let s = FwStatus {
            state: FwState::RunningUnconfirmed,
            received: 123_456,
            error: FwErrorCode::BadHash,
            active_slot: Slot::B,
        };
        assert_eq!(FwStatus::from_regs(&s.to_regs()).unwrap(), s);
        assert!(FwStatus::from_regs(&[9, 0, 0, 0, 0]).is_err());
        assert_eq!(decode_ascii(&encode_ascii::<8>("SN\u{1}X")), "SN?X");
    }
}
