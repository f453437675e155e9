//! What a simulated bus is made of: its locks, transports, vendor keys and timing.
//! [`SimConfig::validate`] checks everything before a port or a pty is opened.

use std::net::SocketAddr;
use std::path::PathBuf;

use dmr_protocol::registers::{Baud, FwVersion, UNIT_ADDRESSES};
use ed25519_dalek::VerifyingKey;

/// One simulated lock controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockSpec {
    /// Its bus address (unit id) at first start. With a state file, the address the lock
    /// had when the state was saved wins (a controller keeps its address in flash).
    pub addr: u8,
    /// Its serial number, at most 16 ASCII bytes; also its identity in the state file.
    pub serial: String,
}

impl LockSpec {
    pub fn new(addr: u8, serial: impl Into<String>) -> Self {
        LockSpec {
            addr,
            serial: serial.into(),
        }
    }

    /// Locks at addresses `1..=n` with serials `SIM-0001`, `SIM-0002`, ...
    pub fn numbered(n: u8) -> Vec<LockSpec> {
        (1..=n)
            .map(|a| LockSpec::new(a, format!("SIM-{a:04}")))
            .collect()
    }
}

/// What the simulated person at the door does after an unlock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DoorBehaviour {
    /// `open_after_ms` after the latch is released the person opens the door (only if the
    /// latch is still released then), and closes it `close_after_ms` later.
    PersonOpensAndCloses {
        open_after_ms: u64,
        close_after_ms: u64,
    },
    /// Nobody comes; the door stays shut unless the control API opens it.
    StaysShut,
}

impl Default for DoorBehaviour {
    fn default() -> Self {
        DoorBehaviour::PersonOpensAndCloses {
            open_after_ms: 500,
            close_after_ms: 1500,
        }
    }
}

/// The whole simulator configuration. [`SimConfig::new`] gives sensible defaults with no
/// transport; set `pty_link`, `tcp` and `control` for the ones you need.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub locks: Vec<LockSpec>,
    /// Persisted slots, versions, FW_RECEIVED, counters and settings.
    pub state_file: Option<PathBuf>,
    /// The vendor keys "burnt into" every controller, by key id.
    pub vendor_keys: Vec<(u32, VerifyingKey)>,
    /// `Some(baud)`: delay each reply by the time the request and reply frames take on the
    /// wire at the answering lock's baud; fresh locks start at this baud.
    pub line_baud: Option<u32>,
    pub door: DoorBehaviour,
    /// Create a pty and symlink its slave side here.
    pub pty_link: Option<PathBuf>,
    /// Modbus TCP listen address (port 0 = a free port).
    pub tcp: Option<SocketAddr>,
    /// Control HTTP API listen address (port 0 = a free port).
    pub control: Option<SocketAddr>,
    /// Firmware version in slot A of a fresh lock.
    pub initial_fw: FwVersion,
    /// How long a rebooting controller stays silent.
    pub reboot_silence_ms: u64,
}

impl SimConfig {
    pub fn new(locks: Vec<LockSpec>) -> Self {
        SimConfig {
            locks,
            state_file: None,
            vendor_keys: Vec::new(),
            line_baud: None,
            door: DoorBehaviour::default(),
            pty_link: None,
            tcp: None,
            control: None,
            initial_fw: FwVersion {
                major: 1,
                minor: 0,
                patch: 0,
            },
            reboot_silence_ms: 1500,
        }
    }

    /// Every problem at once, so a bad command line is fixed in one go.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.locks.is_empty() {
            problems.push("no locks configured".to_string());
        }
        for (i, l) in self.locks.iter().enumerate() {
            if !UNIT_ADDRESSES.contains(&l.addr) {
                problems.push(format!("lock {}: address {} not in 1..=247", i + 1, l.addr));
            }
            if l.serial.is_empty() || l.serial.len() > 16 || !l.serial.is_ascii() {
                problems.push(format!(
                    "lock {}: serial {:?} must be 1..=16 ASCII characters",
                    i + 1,
                    l.serial
                ));
            }
            if self.locks[..i].iter().any(|o| o.addr == l.addr) {
                problems.push(format!("address {} used twice", l.addr));
            }
            if self.locks[..i].iter().any(|o| o.serial == l.serial) {
                problems.push(format!("serial {:?} used twice", l.serial));
            }
        }
        if let Some(b) = self.line_baud
            && Baud::from_bits_per_second(b).is_none()
        {
            problems.push(format!(
                "line baud {b} is not one of 9600, 19200, 38400, 57600, 115200"
            ));
        }
        let mut ids: Vec<u32> = self.vendor_keys.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            problems.push("a vendor key id is given twice".to_string());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// The baud fresh locks start at.
    pub(crate) fn initial_baud(&self) -> Baud {
        self.line_baud
            .and_then(Baud::from_bits_per_second)
            .unwrap_or(Baud::B9600)
    }
}

/// A configuration that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad simulator configuration: {}", problems.join("; "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}
