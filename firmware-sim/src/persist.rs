//! The state file: what a real controller keeps in flash (settings, address, counters,
//! firmware slots and the transfer in progress), so a simulator killed with `kill -9`
//! comes back where a controller would after a power cut.
//!
//! The JSON state file is replaced atomically (temp file, fsync, rename, fsync of the
//! directory). The image bytes received so far live in one side file per lock, written at
//! their offset and fsynced before the state file that counts them; on load the side file
//! is cut to the length the state file records, so the two can never disagree.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use dmr_protocol::registers::{Baud, FwErrorCode, FwState, FwVersion, Settings, Slot};
use serde::{Deserialize, Serialize};

use crate::device::{Effect, Lock};

/// Format version of the state file.
const STATE_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct StateFile {
    pub version: u32,
    pub locks: Vec<PersistedLock>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct PersistedLock {
    pub serial: String,
    pub addr: u8,
    pub baud_code: u16,
    /// UNLOCK_PULSE_MS, AUTO_RELOCK_S, UNIT_ADDRESS, BAUD_CODE.
    pub settings: [u16; 4],
    pub unlock_count: u32,
    pub actuations: u64,
    pub tamper_latched: bool,
    pub forced_open_latched: bool,
    pub slots: [Option<String>; 2],
    pub active_slot: u16,
    pub confirmed: bool,
    pub fw_state: u16,
    pub fw_error: u16,
    pub fw_received: u32,
    pub fw_total_size_reg: u32,
    pub fw_begin_total: u32,
    pub last_chunk: Option<(u32, u32)>,
}

/// Errors reading or writing the state.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is not valid: {source}")]
    Format {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("state file {path} has format version {found}, this simulator reads {STATE_VERSION}")]
    Version { path: PathBuf, found: u32 },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> PersistError + 'a {
    move |source| PersistError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

impl PersistedLock {
    pub fn from_lock(l: &Lock) -> Self {
        let fw = &l.fw;
        PersistedLock {
            serial: l.serial.clone(),
            addr: l.addr,
            baud_code: l.baud.code(),
            settings: l.settings.to_regs(),
            unlock_count: l.unlock_count,
            actuations: l.actuations,
            tamper_latched: l.tamper_latched,
            forced_open_latched: l.forced_open_latched,
            slots: fw.slots.map(|s| s.map(|v| v.to_string())),
            active_slot: fw.active.to_reg(),
            confirmed: fw.confirmed,
            fw_state: fw.state.to_reg(),
            fw_error: fw.error.to_reg(),
            fw_received: fw.image.len() as u32,
            fw_total_size_reg: fw.total_size_reg,
            fw_begin_total: fw.begin_total,
            last_chunk: fw.last_chunk,
        }
    }

    /// Applies the persisted fields to a fresh lock, then powers it up.
    pub fn restore(&self, l: &mut Lock, image: Vec<u8>) {
        l.addr = self.addr;
        l.baud = Baud::from_code(self.baud_code).unwrap_or(l.baud);
        if let Ok(s) = Settings::from_regs(&self.settings) {
            l.settings = s;
        }
        l.unlock_count = self.unlock_count;
        l.actuations = self.actuations;
        l.tamper_latched = self.tamper_latched;
        l.forced_open_latched = self.forced_open_latched;
        let fw = &mut l.fw;
        fw.slots = self
            .slots
            .clone()
            .map(|s| s.and_then(|v| v.parse::<FwVersion>().ok()));
        fw.active = Slot::from_reg(self.active_slot).unwrap_or(Slot::A);
        fw.confirmed = self.confirmed;
        fw.state = FwState::from_reg(self.fw_state).unwrap_or(FwState::Idle);
        fw.error = FwErrorCode::from_reg(self.fw_error);
        fw.total_size_reg = self.fw_total_size_reg;
        fw.begin_total = self.fw_begin_total;
        let mut image = image;
        let intact = image.len() >= self.fw_received as usize;
        image.truncate(self.fw_received as usize);
        fw.last_chunk = if intact { self.last_chunk } else { None };
        l.restore_firmware_image(image);
        l.fw.power_up();
    }
}

/// Where the state of one bus lives.
#[derive(Clone, Debug)]
pub(crate) struct Store {
    pub path: PathBuf,
}

impl Store {
    /// The side file holding `serial`'s image in progress.
    pub fn image_path(&self, serial: &str) -> PathBuf {
        let safe: String = serial
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let mut name = self.path.as_os_str().to_os_string();
        name.push(format!(".{safe}.img"));
        PathBuf::from(name)
    }

    /// Reads the state file; `None` if there is none yet.
    pub fn load(&self) -> Result<Option<StateFile>, PersistError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("read", &self.path)(e)),
        };
        let state: StateFile =
            serde_json::from_str(&text).map_err(|source| PersistError::Format {
                path: self.path.clone(),
                source,
            })?;
        if state.version != STATE_VERSION {
            return Err(PersistError::Version {
                path: self.path.clone(),
                found: state.version,
            });
        }
        Ok(Some(state))
    }

    /// The image bytes saved for `serial` (empty if none).
    pub fn load_image(&self, serial: &str) -> Result<Vec<u8>, PersistError> {
        let p = self.image_path(serial);
        match fs::read(&p) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io("read", &p)(e)),
        }
    }

    /// Applies image effects, durably, in order.
    pub fn apply(&self, effects: &[Effect]) -> Result<(), PersistError> {
        for e in effects {
            match e {
                Effect::ResetImage { serial } => {
                    let p = self.image_path(serial);
                    let f = File::create(&p).map_err(io("create", &p))?;
                    f.sync_all().map_err(io("fsync", &p))?;
                }
                Effect::WriteImage {
                    serial,
                    offset,
                    data,
                } => {
                    let p = self.image_path(serial);
                    let f = OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(&p)
                        .map_err(io("open", &p))?;
                    f.write_all_at(data, u64::from(*offset))
                        .map_err(io("write", &p))?;
                    f.set_len(u64::from(*offset) + data.len() as u64)
                        .map_err(io("truncate", &p))?;
                    f.sync_all().map_err(io("fsync", &p))?;
                }
            }
        }
        Ok(())
    }

    /// Replaces the state file atomically.
    pub fn save(&self, json: &str) -> Result<(), PersistError> {
        let mut tmp = self.path.as_os_str().to_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        {
            let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
            f.write_all(json.as_bytes()).map_err(io("write", &tmp))?;
            f.sync_all().map_err(io("fsync", &tmp))?;
        }
        fs::rename(&tmp, &self.path).map_err(io("rename into", &self.path))?;
        // The rename is durable only once the directory entry is.
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(d) = File::open(dir)
        {
            d.sync_all().map_err(io("fsync directory of", &self.path))?;
        }
        Ok(())
    }
}

/// The JSON a bus saves.
pub(crate) fn snapshot_json(locks: &[Lock]) -> String {
    let state = StateFile {
        version: STATE_VERSION,
        locks: locks.iter().map(PersistedLock::from_lock).collect(),
    };
    // Serialising plain structs of numbers and strings cannot fail.
    serde_json::to_string_pretty(&state).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn image_side_file_and_state_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store {
            path: dir.path().join("state.json"),
        };
        assert!(store.load().unwrap().is_none());
        let serial = "A/B 1".to_string();
        store
            .apply(&[
                Effect::ResetImage {
                    serial: serial.clone(),
                },
                Effect::WriteImage {
                    serial: serial.clone(),
                    offset: 0,
                    data: vec![1, 2, 3],
                },
                Effect::WriteImage {
                    serial: serial.clone(),
                    offset: 3,
                    data: vec![4],
                },
                // An idempotent repeat of the last chunk leaves the file as it was.
                Effect::WriteImage {
                    serial: serial.clone(),
                    offset: 3,
                    data: vec![4],
                },
            ])
            .unwrap();
        assert_eq!(store.load_image(&serial).unwrap(), vec![1, 2, 3, 4]);
        assert!(store.image_path(&serial).ends_with("state.json.A_B_1.img"));

        let mut l = Lock::new(3, serial.clone(), Baud::B9600, FwVersion::default());
        l.unlock_count = 42;
        l.fw.state = FwState::Receiving;
        l.fw.image = vec![1, 2, 3, 4];
        l.fw.last_chunk = Some((3, 1));
        store
            .save(&snapshot_json(std::slice::from_ref(&l)))
            .unwrap();
        let loaded = store.load().unwrap().unwrap();
        let mut fresh = Lock::new(3, serial.clone(), Baud::B9600, FwVersion::default());
        // A side file shorter than the state says loses the repeat information.
        loaded.locks[0].restore(&mut fresh, vec![1, 2, 3, 4, 5]);
        assert_eq!(fresh.unlock_count, 42);
        assert_eq!(fresh.fw.image, vec![1, 2, 3, 4]);
        assert_eq!(fresh.fw.last_chunk, Some((3, 1)));
        assert_eq!(fresh.fw.state, FwState::Receiving);
    }
}
