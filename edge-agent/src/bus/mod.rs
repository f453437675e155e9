//! The Modbus lock bus driver shared by `dmr-agent` and `dmr-tech`.
//!
//! One task owns each serial port (or Modbus TCP connection); everything else holds a cheap
//! [`BusHandle`] and sends it requests over bounded queues, one per [`Priority`] lane. The
//! owner always takes an unlock first, then state polls, then firmware transfer, one frame at
//! a time, and a lower lane's read retries let waiting unlocks go first, so a flash never
//! delays an unlock by more than the frame already on the wire (and that frame's timeout if
//! its lock is silent; probes of possibly absent locks use the shorter `probe_timeout`).
//!
//! - [`link`]: a single request/reply exchange on the wire (RTU silence, turnaround, reply
//!   cutting, CRC/unit checks; or MBAP over TCP).
//! - [`owner`]: the task: lanes, bounded read retries, per-lock health with backoff, the
//!   unlock procedure that never actuates twice, fault counters.
//! - this module: configuration, the handle and the typed operations callers use.
//!
//! A device's Modbus exception is a value ([`Response::Exception`] from
//! [`BusHandle::request`], [`BusError::Exception`] from the typed calls); an exchange that
//! got no usable reply is [`BusError::NoReply`]; the port itself failing is
//! [`BusError::Io`]. Every error names the lock address and what to check.

pub mod link;
mod owner;

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use dmr_protocol::modbus::{ExceptionCode, Request, Response};
use dmr_protocol::registers::{
    self, FwCtrl, FwStatus, Identity, LockInputs, RegisterError, Settings, coil, discrete, holding,
    input,
};
use tokio::sync::{mpsc, oneshot, watch};

pub use link::{ByteStream, Fault, Framing};

/// Serial parity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Parity {
    #[default]
    None,
    Even,
    Odd,
}

/// Serial stop bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StopBits {
    #[default]
    One,
    Two,
}

/// Where the bus is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Modbus RTU on a serial device (RS-485 adapter, or the simulator's pty).
    Serial {
        path: PathBuf,
        baud: u32,
        parity: Parity,
        stop_bits: StopBits,
    },
    /// Modbus TCP (the simulator, or an RTU-to-TCP converter), `host:port`.
    Tcp { addr: String },
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Serial { path, baud, .. } => write!(f, "{} at {baud} baud", path.display()),
            Transport::Tcp { addr } => write!(f, "tcp://{addr}"),
        }
    }
}

/// Driver configuration. Build with [`BusConfig::serial`] or [`BusConfig::tcp`] and adjust.
#[derive(Clone, Debug)]
pub struct BusConfig {
    pub transport: Transport,
    /// How long to wait for a reply once the request has left the wire.
    pub request_timeout: Duration,
    /// Reply timeout for probes ([`BusHandle::probe`]: scans, waiting out a reboot), capped
    /// at `request_timeout`. Shorter, because every probe of a silent lock holds the
    /// half-duplex bus, and an unlock queued behind it, for this long.
    pub probe_timeout: Duration,
    /// Extra pause before each request, on top of the RTU 3.5-character silence.
    pub turnaround_delay: Duration,
    /// Extra attempts for reads after a timeout or bus fault. Writes are never repeated
    /// blindly (an UNLOCK or REBOOT is an action); see [`BusHandle::unlock`].
    pub read_retries: u32,
    /// Depth of each priority lane. A caller that finds its lane full waits for room
    /// (backpressure); nothing is dropped.
    pub queue_depth: usize,
    /// Consecutive failed requests after which a lock is marked offline.
    pub offline_after: u32,
    /// First backoff after a lock goes offline; doubles per further failure.
    pub backoff_min: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// A gap this long inside a reply means the rest is not coming (truncated frame).
    /// USB RS-485 adapters deliver bytes in batches every few ms, so this is far above the
    /// 1.5-character gap of the standard.
    pub inter_char_timeout: Duration,
}

impl BusConfig {
    /// RTU on a serial device, 8N1.
    pub fn serial(path: impl Into<PathBuf>, baud: u32) -> Self {
        Self::with_transport(Transport::Serial {
            path: path.into(),
            baud,
            parity: Parity::None,
            stop_bits: StopBits::One,
        })
    }

    /// Modbus TCP to `host:port`.
    pub fn tcp(addr: impl Into<String>) -> Self {
        Self::with_transport(Transport::Tcp { addr: addr.into() })
    }

    fn with_transport(transport: Transport) -> Self {
        BusConfig {
            transport,
            request_timeout: Duration::from_millis(300),
            probe_timeout: Duration::from_millis(100),
            turnaround_delay: Duration::ZERO,
            read_retries: 2,
            queue_depth: 32,
            offline_after: 3,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            inter_char_timeout: Duration::from_millis(50),
        }
    }
}

/// Which lane a request waits in. Lower lanes are served only when higher ones are empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Unlocks and other actions a person is waiting for at the door.
    Unlock,
    /// State polls, identity, settings.
    Poll,
    /// Firmware transfer and other bulk work.
    Bulk,
}

/// Why a bus operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(
        "serial port {path} does not exist: check the adapter is plugged in and the path (ls /dev/serial/by-id/)"
    )]
    PortMissing { path: PathBuf },
    #[error(
        "serial port {path} is in use by another program (is dmr-agent running? stop it first)"
    )]
    PortBusy { path: PathBuf },
    #[error(
        "no permission to open serial port {path}: run as root or add the user to the dialout group"
    )]
    PortDenied { path: PathBuf },
    #[error("cannot open serial port {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot connect to Modbus TCP {addr}: {source} (check the address and that the converter or simulator is running)"
    )]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "lock {addr} did not answer ({attempts} attempt(s), last: {last}): check wiring, termination, baud rate and the lock's address"
    )]
    NoReply {
        addr: u8,
        attempts: u32,
        last: String,
    },
    #[error("lock {addr} is offline after {failures} failed requests; next try in {retry_in:?}")]
    Offline {
        addr: u8,
        failures: u32,
        retry_in: Duration,
    },
    #[error("lock {addr} refused the request (function 0x{function:02X}): exception {code}")]
    Exception {
        addr: u8,
        function: u8,
        code: ExceptionCode,
    },
    #[error("lock {addr} sent an unexpected reply: {detail}")]
    BadReply { addr: u8, detail: String },
    #[error("lock {addr}: {source}")]
    Register {
        addr: u8,
        #[source]
        source: RegisterError,
    },
    #[error(
        "lock {addr}: it is unknown whether the unlock happened: the write got no reply and reading UNLOCK_COUNT back failed too; do not retry blindly, read the lock's state first"
    )]
    UnlockUnknown { addr: u8 },
    #[error(
        "bus I/O failed: {source} (was the adapter unplugged? the driver reopens the port at the next request)"
    )]
    Io {
        #[source]
        source: io::Error,
    },
    #[error("invalid lock address {addr}: must be 1..=247")]
    BadAddress { addr: u8 },
    #[error("the bus driver has stopped")]
    Closed,
}

impl BusError {
    /// Whether the failure means the device (or the port) could not be reached at all, as
    /// opposed to a device that answered and said no.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            BusError::PortMissing { .. }
                | BusError::PortBusy { .. }
                | BusError::PortDenied { .. }
                | BusError::Open { .. }
                | BusError::Connect { .. }
                | BusError::NoReply { .. }
                | BusError::UnlockUnknown { .. }
                | BusError::Offline { .. }
                | BusError::Io { .. }
                | BusError::Closed
        )
    }
}

/// A lock's inputs and whether its latch is released right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LockState {
    pub inputs: LockInputs,
    /// The UNLOCK coil: the latch is held open for the pulse.
    pub unlocked: bool,
}

/// What an unlock did, learnt from the lock itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnlockOutcome {
    /// The latch was released: UNLOCK_COUNT moved and FAULT is clear. False with
    /// `state.inputs.fault` set means a jammed latch.
    pub actuated: bool,
    /// UNLOCK_COUNT before the write.
    pub count_before: u32,
    /// UNLOCK_COUNT after the write: read back, except when the write was acknowledged and
    /// the inputs show the latch released with FAULT clear, where it is `count_before + 1`
    /// by the controller's contract (saving an exchange while a person waits).
    pub unlock_count: u32,
    /// The write's own reply was lost and the outcome was learnt by reading back.
    pub reply_lost: bool,
    /// Inputs read after the write (`unlocked` here is `!latch_locked`).
    pub state: LockState,
}

/// Per-lock health as the driver sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LockHealth {
    pub online: bool,
    pub last_seen: Option<SystemTime>,
    pub consecutive_failures: u32,
}

/// Bus-wide counters since the driver started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BusCounters {
    pub requests: u64,
    pub replies: u64,
    pub exceptions: u64,
    pub timeouts: u64,
    pub crc_errors: u64,
    pub wrong_unit: u64,
    pub truncated: u64,
    pub garbled: u64,
    pub retries: u64,
    pub stale_bytes: u64,
    pub unlock_reply_lost: u64,
}

impl BusCounters {
    /// All bus faults together.
    pub fn faults(&self) -> u64 {
        self.crc_errors + self.wrong_unit + self.truncated + self.garbled
    }
}

/// State shared between the owner task and handles. The mutexes are std ones held only for
/// a copy in or out, never across an await.
#[derive(Debug, Default)]
struct Shared {
    health: Mutex<BTreeMap<u8, LockHealth>>,
    counters: Mutex<BusCounters>,
}

/// One queued operation and where its answer goes.
#[derive(Debug)]
enum Job {
    Request {
        addr: u8,
        req: Request,
        /// Send once, no retries, ignore backoff (scans and reboot probes).
        probe: bool,
        priority: Priority,
        reply: oneshot::Sender<Result<Response, BusError>>,
    },
    Unlock {
        addr: u8,
        reply: oneshot::Sender<Result<UnlockOutcome, BusError>>,
    },
}

/// A cheap handle to the bus owner task. The task ends when every handle is dropped or
/// [`BusHandle::close`] is called.
#[derive(Clone, Debug)]
pub struct BusHandle {
    unlock_tx: mpsc::Sender<Job>,
    poll_tx: mpsc::Sender<Job>,
    bulk_tx: mpsc::Sender<Job>,
    close_tx: Arc<watch::Sender<bool>>,
    shared: Arc<Shared>,
    done: watch::Receiver<bool>,
    transport: Arc<Transport>,
}

/// Opens the transport (off the async workers) and starts the owner task.
pub async fn spawn(cfg: BusConfig) -> Result<BusHandle, BusError> {
    let (stream, framing) = owner::open(&cfg.transport).await?;
    Ok(start(stream, framing, cfg, true))
}

/// Starts the owner task on an already open stream (tests use an in-memory pipe). The
/// stream is not reopened when it fails.
pub fn spawn_on(stream: Box<dyn ByteStream>, framing: Framing, cfg: BusConfig) -> BusHandle {
    start(stream, framing, cfg, false)
}

fn start(
    stream: Box<dyn ByteStream>,
    framing: Framing,
    cfg: BusConfig,
    reopenable: bool,
) -> BusHandle {
    let depth = cfg.queue_depth.max(1);
    let (unlock_tx, unlock_rx) = mpsc::channel(depth);
    let (poll_tx, poll_rx) = mpsc::channel(depth);
    let (bulk_tx, bulk_rx) = mpsc::channel(depth);
    let (close_tx, close_rx) = watch::channel(false);
    let (done_tx, done) = watch::channel(false);
    let shared = Arc::new(Shared::default());
    let transport = Arc::new(cfg.transport.clone());
    let owner = owner::Owner::new(
        stream,
        framing,
        cfg,
        Arc::clone(&shared),
        reopenable,
        unlock_rx,
    );
    tokio::spawn(async move {
        owner
            .run(owner::Lanes {
                poll: poll_rx,
                bulk: bulk_rx,
                close: close_rx,
            })
            .await;
        let _ = done_tx.send(true);
    });
    BusHandle {
        unlock_tx,
        poll_tx,
        bulk_tx,
        close_tx: Arc::new(close_tx),
        shared,
        done,
        transport,
    }
}

fn check_addr(addr: u8) -> Result<(), BusError> {
    if registers::UNIT_ADDRESSES.contains(&addr) {
        Ok(())
    } else {
        Err(BusError::BadAddress { addr })
    }
}

impl BusHandle {
    /// Where this bus is, for messages.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    fn lane(&self, priority: Priority) -> &mpsc::Sender<Job> {
        match priority {
            Priority::Unlock => &self.unlock_tx,
            Priority::Poll => &self.poll_tx,
            Priority::Bulk => &self.bulk_tx,
        }
    }

    async fn submit(
        &self,
        addr: u8,
        req: Request,
        priority: Priority,
        probe: bool,
    ) -> Result<Response, BusError> {
        check_addr(addr)?;
        let (reply, rx) = oneshot::channel();
        self.lane(priority)
            .send(Job::Request {
                addr,
                req,
                probe,
                priority,
                reply,
            })
            .await
            .map_err(|_| BusError::Closed)?;
        rx.await.map_err(|_| BusError::Closed)?
    }

    /// Sends any request. A Modbus exception comes back as `Ok(Response::Exception)`.
    /// Reads are retried on timeouts and bus faults; writes are sent once.
    pub async fn request(
        &self,
        addr: u8,
        req: Request,
        priority: Priority,
    ) -> Result<Response, BusError> {
        self.submit(addr, req, priority, false).await
    }

    /// One attempt, no retries, ignoring backoff: for scanning the bus and for waiting on
    /// a rebooting lock without marking it offline first.
    pub async fn probe(&self, addr: u8, req: Request) -> Result<Response, BusError> {
        self.submit(addr, req, Priority::Poll, true).await
    }

    async fn expect(
        &self,
        addr: u8,
        req: Request,
        priority: Priority,
    ) -> Result<Response, BusError> {
        match self.request(addr, req, priority).await? {
            Response::Exception { function, code } => Err(BusError::Exception {
                addr,
                function,
                code,
            }),
            other => Ok(other),
        }
    }

    async fn read_registers(
        &self,
        addr: u8,
        req: Request,
        priority: Priority,
    ) -> Result<Vec<u16>, BusError> {
        match self.expect(addr, req, priority).await? {
            Response::Registers(r) => Ok(r),
            other => Err(BusError::BadReply {
                addr,
                detail: format!("expected registers, got {other:?}"),
            }),
        }
    }

    async fn read_bits(
        &self,
        addr: u8,
        req: Request,
        priority: Priority,
    ) -> Result<Vec<bool>, BusError> {
        match self.expect(addr, req, priority).await? {
            Response::Bits(b) => Ok(b),
            other => Err(BusError::BadReply {
                addr,
                detail: format!("expected bits, got {other:?}"),
            }),
        }
    }

    /// Releases the latch once. Never actuates twice: a lost reply is resolved by reading
    /// UNLOCK_COUNT back, and the write is repeated only when the count proves it did not
    /// arrive. Dropping the returned future before the unlock reaches the bus cancels it;
    /// once it is on the wire it runs to the end.
    pub async fn unlock(&self, addr: u8) -> Result<UnlockOutcome, BusError> {
        check_addr(addr)?;
        let (reply, rx) = oneshot::channel();
        self.unlock_tx
            .send(Job::Unlock { addr, reply })
            .await
            .map_err(|_| BusError::Closed)?;
        rx.await.map_err(|_| BusError::Closed)?
    }

    /// Door, latch and alarm inputs only: one exchange, what the poller reads between full
    /// polls (the door is what must not be missed; identity changes slowly).
    pub async fn read_inputs(&self, addr: u8) -> Result<LockInputs, BusError> {
        let bits = self
            .read_bits(
                addr,
                Request::ReadDiscreteInputs {
                    addr: discrete::DOOR_CLOSED,
                    count: discrete::COUNT,
                },
                Priority::Poll,
            )
            .await?;
        LockInputs::from_bits(&bits).map_err(|source| BusError::Register { addr, source })
    }

    /// Door, latch and alarm inputs plus the UNLOCK coil.
    pub async fn read_state(&self, addr: u8) -> Result<LockState, BusError> {
        let inputs = self.read_inputs(addr).await?;
        let coils = self
            .read_bits(
                addr,
                Request::ReadCoils {
                    addr: coil::UNLOCK,
                    count: 1,
                },
                Priority::Poll,
            )
            .await?;
        Ok(LockState {
            inputs,
            unlocked: coils.first().copied().unwrap_or(false),
        })
    }

    /// Device type, firmware version, UNLOCK_COUNT, supply, last error, serial number.
    pub async fn identity(&self, addr: u8) -> Result<Identity, BusError> {
        let regs = self
            .read_registers(
                addr,
                Request::ReadInputRegisters {
                    addr: input::DEVICE_TYPE,
                    count: input::IDENTITY_COUNT,
                },
                Priority::Poll,
            )
            .await?;
        Identity::from_regs(&regs).map_err(|source| BusError::Register { addr, source })
    }

    /// Firmware transfer state, bytes received, error and active slot.
    pub async fn fw_status(&self, addr: u8) -> Result<FwStatus, BusError> {
        self.fw_status_at(addr, Priority::Poll).await
    }

    /// [`Self::fw_status`] on a chosen lane (a flasher polls on the bulk lane).
    pub async fn fw_status_at(&self, addr: u8, priority: Priority) -> Result<FwStatus, BusError> {
        let regs = self
            .read_registers(
                addr,
                Request::ReadInputRegisters {
                    addr: input::FW_STATE,
                    count: input::FW_COUNT,
                },
                priority,
            )
            .await?;
        FwStatus::from_regs(&regs).map_err(|source| BusError::Register { addr, source })
    }

    /// Pulse, auto-relock, unit address and baud (the last two take effect after REBOOT).
    pub async fn settings(&self, addr: u8) -> Result<Settings, BusError> {
        let regs = self
            .read_registers(
                addr,
                Request::ReadHoldingRegisters {
                    addr: holding::UNLOCK_PULSE_MS,
                    count: holding::SETTINGS_COUNT,
                },
                Priority::Poll,
            )
            .await?;
        Settings::from_regs(&regs).map_err(|source| BusError::Register { addr, source })
    }

    /// Writes one settings register (a `holding::` constant), range-checked first.
    pub async fn write_setting(&self, addr: u8, register: u16, value: u16) -> Result<(), BusError> {
        registers::check_setting(register, value)
            .map_err(|source| BusError::Register { addr, source })?;
        self.expect(
            addr,
            Request::WriteSingleRegister {
                addr: register,
                value,
            },
            Priority::Poll,
        )
        .await
        .map(|_| ())
    }

    /// Clears latched alarms (tamper, forced open).
    pub async fn alarm_ack(&self, addr: u8) -> Result<(), BusError> {
        self.expect(
            addr,
            Request::WriteSingleCoil {
                addr: coil::ALARM_ACK,
                value: true,
            },
            Priority::Poll,
        )
        .await
        .map(|_| ())
    }

    /// Asks the lock to reboot. Its reply may be lost as it goes down; callers wait for it
    /// to answer again (see [`Self::probe`]).
    pub async fn reboot(&self, addr: u8) -> Result<(), BusError> {
        self.expect(
            addr,
            Request::WriteSingleCoil {
                addr: coil::REBOOT,
                value: true,
            },
            Priority::Poll,
        )
        .await
        .map(|_| ())
    }

    /// Writes FW_CTRL (bulk lane). A BUSY exception while verifying comes back as
    /// [`BusError::Exception`].
    pub async fn fw_ctrl(&self, addr: u8, ctrl: FwCtrl) -> Result<(), BusError> {
        self.expect(
            addr,
            Request::WriteSingleRegister {
                addr: holding::FW_CTRL,
                value: ctrl.to_reg(),
            },
            Priority::Bulk,
        )
        .await
        .map(|_| ())
    }

    /// Health of one lock; a lock never spoken to is offline with no failures.
    pub fn health(&self, addr: u8) -> LockHealth {
        self.shared
            .health
            .lock()
            .map(|h| h.get(&addr).copied().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Health of every lock the driver has spoken to.
    pub fn health_all(&self) -> BTreeMap<u8, LockHealth> {
        self.shared
            .health
            .lock()
            .map(|h| h.clone())
            .unwrap_or_default()
    }

    /// Bus fault and traffic counters.
    pub fn counters(&self) -> BusCounters {
        self.shared.counters.lock().map(|c| *c).unwrap_or_default()
    }

    /// Stops the owner task after the operation in progress and waits for it to end.
    /// Queued requests fail with [`BusError::Closed`].
    pub async fn close(&self) {
        let _ = self.close_tx.send(true);
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }
}
