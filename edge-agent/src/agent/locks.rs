//! The daemon's view of the lock bus: a small port trait, so the unlock path, the store and
//! the outbox do not depend on how frames reach a controller.
//!
//! [`LockPort`] is implemented for the Modbus bus driver (`crate::bus`) where the daemon
//! runs for real; tests can implement it over the lock simulator. One port serves one
//! RS-485 bus; locks on it are told apart by their unit address. Futures are boxed so the
//! daemon can hold `Arc<dyn LockPort>` per bus without generics leaking everywhere.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use dmr_protocol::registers::{LastError, LockInputs};

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What driving the latch achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActuationOutcome {
    /// The controller confirmed the latch released.
    Ok,
    /// No answer (timeout, CRC errors, port gone): the latch may not have moved.
    Unreachable(String),
    /// The controller answered but refused or reported a fault (exception, jam, no read-back).
    Fault(String),
}

/// Why a poll failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    #[error("lock at address {addr} did not answer: {reason}")]
    Unreachable { addr: u8, reason: String },
    #[error("lock at address {addr} answered with an error: {reason}")]
    Device { addr: u8, reason: String },
}

/// One poll of a lock's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockSnapshot {
    pub inputs: LockInputs,
    /// The UNLOCK coil reads ON while the latch is released.
    pub unlocked: bool,
    /// Running firmware `major.minor.patch`, when known.
    pub fw: Option<String>,
    pub supply_mv: Option<u16>,
    pub last_error: Option<LastError>,
}

/// One bus of locks.
pub trait LockPort: Send + Sync + 'static {
    /// Releases the latch of the lock at `addr` and confirms it by read-back.
    fn unlock(&self, addr: u8) -> BoxFuture<'_, ActuationOutcome>;
    /// Reads the lock's inputs and coil.
    fn poll(&self, addr: u8) -> BoxFuture<'_, Result<LockSnapshot, LockError>>;
    /// Reads only the door, latch and alarm inputs. The poller uses it between full polls:
    /// on a real bus it is one exchange instead of three, so a round over many locks comes
    /// back to each door three times as often. Ports without a cheaper read do a full poll.
    fn poll_inputs(&self, addr: u8) -> BoxFuture<'_, Result<LockInputs, LockError>> {
        Box::pin(async move { self.poll(addr).await.map(|s| s.inputs) })
    }
}

/// A bus that is configured but whose driver could not be started (for example the serial
/// device is missing): every unlock is `lock_unreachable` and every poll fails, so the
/// health signals show the truth instead of the daemon refusing to start.
#[derive(Debug, Clone)]
pub struct DeadBus {
    pub reason: String,
}

impl LockPort for DeadBus {
    fn unlock(&self, _addr: u8) -> BoxFuture<'_, ActuationOutcome> {
        let r = self.reason.clone();
        Box::pin(async move { ActuationOutcome::Unreachable(r) })
    }

    fn poll(&self, addr: u8) -> BoxFuture<'_, Result<LockSnapshot, LockError>> {
        let reason = self.reason.clone();
        Box::pin(async move { Err(LockError::Unreachable { addr, reason }) })
    }
}

/// The ports of all configured buses, indexed like `AgentConfig::buses`.
pub type Ports = Arc<Vec<Arc<dyn LockPort>>>;

fn bus_lock_error(addr: u8, e: crate::bus::BusError) -> LockError {
    if e.is_unreachable() {
        LockError::Unreachable {
            addr,
            reason: e.to_string(),
        }
    } else {
        LockError::Device {
            addr,
            reason: e.to_string(),
        }
    }
}

/// The Modbus bus driver as a lock port.
impl LockPort for crate::bus::BusHandle {
    fn unlock(&self, addr: u8) -> BoxFuture<'_, ActuationOutcome> {
        Box::pin(async move {
            match crate::bus::BusHandle::unlock(self, addr).await {
                Ok(o) if o.actuated => ActuationOutcome::Ok,
                Ok(o) => ActuationOutcome::Fault(if o.state.inputs.fault {
                    "latch jammed (FAULT set after UNLOCK)".to_string()
                } else {
                    "latch did not release (UNLOCK_COUNT unchanged)".to_string()
                }),
                // Not knowing whether it moved is reported as unreachable: the use is
                // already recorded, so nobody retries blindly.
                Err(e @ crate::bus::BusError::UnlockUnknown { .. }) => {
                    ActuationOutcome::Unreachable(e.to_string())
                }
                Err(e) if e.is_unreachable() => ActuationOutcome::Unreachable(e.to_string()),
                Err(e) => ActuationOutcome::Fault(e.to_string()),
            }
        })
    }

    fn poll_inputs(&self, addr: u8) -> BoxFuture<'_, Result<LockInputs, LockError>> {
        Box::pin(async move {
            self.read_inputs(addr)
                .await
                .map_err(|e| bus_lock_error(addr, e))
        })
    }

    fn poll(&self, addr: u8) -> BoxFuture<'_, Result<LockSnapshot, LockError>> {
        Box::pin(async move {
            let map = |e: crate::bus::BusError| bus_lock_error(addr, e);
            let state = self.read_state(addr).await.map_err(map)?;
            let id = self.identity(addr).await.map_err(map)?;
            Ok(LockSnapshot {
                inputs: state.inputs,
                unlocked: state.unlocked,
                fw: Some(id.fw_version.to_string()),
                supply_mv: Some(id.supply_mv),
                last_error: Some(id.last_error),
            })
        })
    }
}

/// A bus whose driver is swapped in once it can be opened: until then it behaves like
/// [`DeadBus`]. Lets the agent start (and serve the other buses) when an RS-485 adapter
/// enumerates late or is replugged, instead of needing a restart.
pub struct SwitchPort {
    // Held only to clone the Arc, never across an await.
    inner: std::sync::RwLock<Arc<dyn LockPort>>,
}

impl std::fmt::Debug for SwitchPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwitchPort").finish_non_exhaustive()
    }
}

impl SwitchPort {
    /// Starts with `initial` (typically a [`DeadBus`]).
    pub fn new(initial: Arc<dyn LockPort>) -> Self {
        SwitchPort {
            inner: std::sync::RwLock::new(initial),
        }
    }

    /// Replaces the port in use.
    pub fn set(&self, port: Arc<dyn LockPort>) {
        if let Ok(mut g) = self.inner.write() {
            *g = port;
        }
    }

    fn current(&self) -> Option<Arc<dyn LockPort>> {
        self.inner.read().ok().map(|g| g.clone())
    }
}

impl LockPort for SwitchPort {
    fn unlock(&self, addr: u8) -> BoxFuture<'_, ActuationOutcome> {
        let port = self.current();
        Box::pin(async move {
            match port {
                Some(p) => p.unlock(addr).await,
                None => ActuationOutcome::Unreachable("bus port poisoned".into()),
            }
        })
    }

    fn poll(&self, addr: u8) -> BoxFuture<'_, Result<LockSnapshot, LockError>> {
        let port = self.current();
        Box::pin(async move {
            match port {
                Some(p) => p.poll(addr).await,
                None => Err(LockError::Unreachable {
                    addr,
                    reason: "bus port poisoned".into(),
                }),
            }
        })
    }
    fn poll_inputs(&self, addr: u8) -> BoxFuture<'_, Result<LockInputs, LockError>> {
        let port = self.current();
        Box::pin(async move {
            match port {
                Some(p) => p.poll_inputs(addr).await,
                None => Err(LockError::Unreachable {
                    addr,
                    reason: "bus port poisoned".into(),
                }),
            }
        })
    }
}
