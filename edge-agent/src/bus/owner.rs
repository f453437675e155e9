//! The task that owns the port: it takes jobs from the priority lanes one at a time, runs
//! them on the [`Link`], retries reads, keeps per-lock health with backoff and the fault
//! counters, and carries out the unlock procedure.
//!
//! Backoff exists so that a dead lock cannot stall the bus: once a lock has failed
//! `offline_after` times in a row, poll and bulk requests to it fail at once with
//! [`BusError::Offline`] until its next probe time, and the probe gets a single attempt.
//! Unlocks are always attempted: a person is at the door.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dmr_protocol::modbus::{Request, Response};
use dmr_protocol::registers::{self, LockInputs, coil, discrete, input};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::link::{ByteStream, Failure, Fault, Framing, Link, LinkTiming};
use super::{
    BusConfig, BusCounters, BusError, Job, LockHealth, LockState, Priority, Shared, Transport,
    UnlockOutcome,
};

/// The receiving ends the owner selects over.
pub(super) struct Lanes {
    pub poll: mpsc::Receiver<Job>,
    pub bulk: mpsc::Receiver<Job>,
    pub close: watch::Receiver<bool>,
}

/// Opens the transport. Serial open does blocking ioctls, so it runs off the async workers.
pub(super) async fn open(
    transport: &Transport,
) -> Result<(Box<dyn ByteStream>, Framing), BusError> {
    match transport {
        Transport::Serial {
            path,
            baud,
            parity,
            stop_bits,
        } => {
            let builder = tokio_serial::new(path.to_string_lossy(), *baud)
                .data_bits(tokio_serial::DataBits::Eight)
                .parity(match parity {
                    super::Parity::None => tokio_serial::Parity::None,
                    super::Parity::Even => tokio_serial::Parity::Even,
                    super::Parity::Odd => tokio_serial::Parity::Odd,
                })
                .stop_bits(match stop_bits {
                    super::StopBits::One => tokio_serial::StopBits::One,
                    super::StopBits::Two => tokio_serial::StopBits::Two,
                })
                .flow_control(tokio_serial::FlowControl::None);
            let p = path.clone();
            // SerialStream registers with the reactor, so it must be created inside the
            // runtime; spawn_blocking threads carry the runtime handle.
            let fix_path = path.clone();
            let rate = *baud;
            let opened = tokio::task::spawn_blocking(move || {
                let mut stream = tokio_serial::SerialStream::open(&builder)?;
                standard_baud(&mut stream, &fix_path, rate);
                Ok::<_, tokio_serial::Error>(stream)
            })
            .await
            .map_err(|e| BusError::Open {
                path: p.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
            let stream = opened.map_err(|e| serial_error(&p, e))?;
            Ok((Box::new(stream), Framing::Rtu { baud: *baud }))
        }
        Transport::Tcp { addr } => {
            let stream = connect_tcp(addr).await?;
            Ok((Box::new(stream), Framing::Tcp))
        }
    }
}

/// serialport sets every rate on Linux as a custom speed (BOTHER with c_ospeed). Tools that
/// read the line's speed through the classic API (`stty`, the lock simulator's pty) then see
/// no rate at all, so a standard Modbus rate is written back as its classic constant, which
/// the UART driver treats identically. The port is briefly non-exclusive so a second,
/// short-lived descriptor can carry the change (termios belongs to the tty, not the fd).
/// Best effort: a failure leaves the (working) custom-speed setting in place.
#[cfg(target_os = "linux")]
fn standard_baud(stream: &mut tokio_serial::SerialStream, path: &std::path::Path, baud: u32) {
    use nix::sys::termios::{BaudRate, SetArg, cfsetspeed, tcgetattr, tcsetattr};
    use std::os::unix::fs::OpenOptionsExt as _;
    let rate = match baud {
        9600 => BaudRate::B9600,
        19200 => BaudRate::B19200,
        38400 => BaudRate::B38400,
        57600 => BaudRate::B57600,
        115_200 => BaudRate::B115200,
        _ => return,
    };
    if stream.set_exclusive(false).is_err() {
        return;
    }
    let result = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NOCTTY | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())
        .and_then(|f| {
            let mut t = tcgetattr(&f).map_err(|e| e.to_string())?;
            cfsetspeed(&mut t, rate).map_err(|e| e.to_string())?;
            tcsetattr(&f, SetArg::TCSANOW, &t).map_err(|e| e.to_string())
        });
    if let Err(e) = result {
        tracing::debug!(path = %path.display(), error = %e, "left the custom-speed termios in place");
    }
    let _ = stream.set_exclusive(true);
}

#[cfg(not(target_os = "linux"))]
fn standard_baud(_: &mut tokio_serial::SerialStream, _: &std::path::Path, _: u32) {}

async fn connect_tcp(addr: &str) -> Result<tokio::net::TcpStream, BusError> {
    let connect = tokio::net::TcpStream::connect(addr);
    let stream = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| BusError::Connect {
            addr: addr.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
        })?
        .map_err(|source| BusError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    // Modbus frames are tiny request/reply pairs; Nagle would hold each one back.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

fn serial_error(path: &std::path::Path, e: tokio_serial::Error) -> BusError {
    use std::io::ErrorKind as K;
    use tokio_serial::ErrorKind as S;
    let path = path.to_path_buf();
    match e.kind {
        // serialport reports EBUSY from TIOCEXCL (another owner) as NoDevice.
        S::NoDevice => BusError::PortBusy { path },
        S::Io(K::NotFound) => BusError::PortMissing { path },
        S::Io(K::PermissionDenied) => BusError::PortDenied { path },
        S::Io(kind) => BusError::Open {
            path,
            source: std::io::Error::new(kind, e.description),
        },
        _ => BusError::Open {
            path,
            source: std::io::Error::other(e.description),
        },
    }
}

/// Per-lock bookkeeping the handles do not see.
#[derive(Debug, Default, Clone, Copy)]
struct Backoff {
    next_try: Option<Instant>,
}

pub(super) struct Owner {
    link: Link,
    cfg: BusConfig,
    shared: Arc<Shared>,
    backoff: std::collections::HashMap<u8, Backoff>,
    /// Set after the stream failed (adapter unplugged, simulator restarted) or a TCP stream
    /// lost frame sync; the next exchange reopens the transport first.
    reconnect: bool,
    /// Whether the transport can be reopened from the configuration (false for a stream
    /// handed to [`super::spawn_on`]).
    reopenable: bool,
    /// The unlock lane lives here rather than in [`Lanes`] so a retry loop of a lower
    /// lane can serve waiting unlocks between its attempts.
    unlock_rx: mpsc::Receiver<Job>,
}

impl Owner {
    pub(super) fn new(
        stream: Box<dyn ByteStream>,
        framing: Framing,
        cfg: BusConfig,
        shared: Arc<Shared>,
        reopenable: bool,
        unlock_rx: mpsc::Receiver<Job>,
    ) -> Self {
        let timing = LinkTiming {
            reply_timeout: cfg.request_timeout,
            turnaround: cfg.turnaround_delay,
            inter_char_timeout: cfg.inter_char_timeout,
        };
        Owner {
            link: Link::new(stream, framing, timing),
            cfg,
            shared,
            backoff: Default::default(),
            reconnect: false,
            reopenable,
            unlock_rx,
        }
    }

    pub(super) async fn run(mut self, mut lanes: Lanes) {
        loop {
            // `biased`: lanes are checked in order every time, so an unlock waits at most
            // for the exchange already in progress.
            let job = tokio::select! {
                biased;
                _ = lanes.close.wait_for(|c| *c) => break,
                Some(job) = self.unlock_rx.recv() => job,
                Some(job) = lanes.poll.recv() => job,
                Some(job) = lanes.bulk.recv() => job,
                else => break,
            };
            self.execute(job).await;
        }
        tracing::debug!("bus owner task ends");
    }

    async fn execute(&mut self, job: Job) {
        match job {
            Job::Request {
                addr,
                req,
                probe,
                priority,
                reply,
            } => {
                if reply.is_closed() {
                    return; // the caller gave up; do not spend bus time on it
                }
                let result = self.request(addr, &req, probe, priority).await;
                let _ = reply.send(result);
            }
            Job::Unlock { addr, reply } => {
                if reply.is_closed() {
                    // The caller gave up (its own deadline passed) before the unlock reached
                    // the bus: nobody would learn the outcome, so the door must not open late.
                    tracing::warn!(addr, "unlock abandoned by its caller before it was sent");
                    return;
                }
                let result = self.unlock(addr).await;
                let _ = reply.send(result);
            }
        }
    }

    fn count(&self, f: impl FnOnce(&mut BusCounters)) {
        if let Ok(mut c) = self.shared.counters.lock() {
            f(&mut c);
        }
    }

    fn health(&self, addr: u8) -> LockHealth {
        self.shared
            .health
            .lock()
            .map(|h| h.get(&addr).copied().unwrap_or_default())
            .unwrap_or_default()
    }

    fn mark_ok(&mut self, addr: u8) {
        if let Ok(mut h) = self.shared.health.lock() {
            let e = h.entry(addr).or_default();
            if !e.online {
                tracing::info!(addr, "lock online");
            }
            *e = LockHealth {
                online: true,
                last_seen: Some(SystemTime::now()),
                consecutive_failures: 0,
            };
        }
        self.backoff.remove(&addr);
    }

    fn mark_failed(&mut self, addr: u8) {
        let failures = {
            let Ok(mut h) = self.shared.health.lock() else {
                return;
            };
            let e = h.entry(addr).or_default();
            e.consecutive_failures = e.consecutive_failures.saturating_add(1);
            if e.consecutive_failures >= self.cfg.offline_after && e.online {
                tracing::warn!(addr, failures = e.consecutive_failures, "lock offline");
                e.online = false;
            }
            e.consecutive_failures
        };
        if failures >= self.cfg.offline_after {
            let extra = failures - self.cfg.offline_after;
            let wait = self
                .cfg
                .backoff_min
                .saturating_mul(1u32 << extra.min(16))
                .min(self.cfg.backoff_max);
            self.backoff.insert(
                addr,
                Backoff {
                    next_try: Some(Instant::now() + wait),
                },
            );
        }
    }

    /// Whether `addr` is in backoff: `Some(remaining)` means skip it for now.
    fn in_backoff(&self, addr: u8) -> Option<Duration> {
        let next = self.backoff.get(&addr)?.next_try?;
        let now = Instant::now();
        (next > now).then(|| next - now)
    }

    async fn ensure_connected(&mut self) -> Result<(), BusError> {
        if !self.reconnect || !self.reopenable {
            return Ok(());
        }
        // Each request retries the open while the port is gone, so a replugged adapter or a
        // restarted converter is picked up without restarting the program.
        let (stream, _) = open(&self.cfg.transport).await?;
        self.link.replace_stream(stream);
        tracing::info!(transport = %self.cfg.transport, "bus reopened");
        self.reconnect = false;
        Ok(())
    }

    /// One exchange, with counters. The inner `Err` describes a lost or unusable reply; a
    /// failing port is the outer [`BusError::Io`].
    async fn attempt(
        &mut self,
        addr: u8,
        req: &Request,
        reply_timeout: Option<Duration>,
    ) -> Result<Result<Response, String>, BusError> {
        self.ensure_connected().await?;
        self.count(|c| c.requests += 1);
        let stale_before = self.link.stale_bytes;
        let result = self.link.exchange(addr, req, reply_timeout).await;
        let stale = self.link.stale_bytes - stale_before;
        if stale > 0 {
            self.count(|c| c.stale_bytes += stale);
        }
        match result {
            Ok(resp) => {
                let exc = matches!(resp, Response::Exception { .. });
                self.count(|c| {
                    c.replies += 1;
                    if exc {
                        c.exceptions += 1;
                    }
                });
                Ok(Ok(resp))
            }
            Err(Failure::Timeout) => {
                self.count(|c| c.timeouts += 1);
                Ok(Err("no reply before the timeout".to_owned()))
            }
            Err(Failure::Fault(fault)) => {
                tracing::debug!(addr, %fault, "bus fault");
                self.count(|c| match fault {
                    Fault::Crc => c.crc_errors += 1,
                    Fault::WrongUnit => c.wrong_unit += 1,
                    Fault::Truncated => c.truncated += 1,
                    Fault::Garbled => c.garbled += 1,
                });
                if self.link.framing() == Framing::Tcp
                    && matches!(fault, Fault::Truncated | Fault::Garbled)
                {
                    // The TCP byte stream is out of frame sync; only a new connection fixes it.
                    self.reconnect = true;
                }
                Ok(Err(fault.to_string()))
            }
            Err(Failure::Io(source)) => {
                // The old stream is dead either way: drop it now (a serial port stays
                // exclusively ours while open) and reopen at the next request.
                self.reconnect = true;
                self.link.replace_stream(Box::new(tokio::io::join(
                    tokio::io::empty(),
                    tokio::io::sink(),
                )));
                Err(BusError::Io { source })
            }
        }
    }

    async fn serve_waiting_unlocks(&mut self) {
        while let Ok(job) = self.unlock_rx.try_recv() {
            // Boxed: execute -> request -> here is a cycle the compiler cannot size.
            Box::pin(self.execute(job)).await;
        }
    }

    /// A request with retries (reads only), health and backoff.
    async fn request(
        &mut self,
        addr: u8,
        req: &Request,
        probe: bool,
        priority: Priority,
    ) -> Result<Response, BusError> {
        let offline = !probe && priority != Priority::Unlock && self.backoff.contains_key(&addr);
        if offline && let Some(retry_in) = self.in_backoff(addr) {
            return Err(BusError::Offline {
                addr,
                failures: self.health(addr).consecutive_failures,
                retry_in,
            });
        }
        // Probes, writes and locks already offline get one attempt: a write is an action,
        // and an offline lock must not hold the bus for a full retry cycle.
        let attempts = if req.is_read() && !probe && !offline {
            1 + self.cfg.read_retries
        } else {
            1
        };
        let mut last = String::new();
        for n in 0..attempts {
            if n > 0 {
                self.count(|c| c.retries += 1);
                if priority != Priority::Unlock {
                    // A retry is a new frame: unlocks that arrived meanwhile go first, so a
                    // poll or flash on a bad line delays them by one attempt, not a cycle.
                    self.serve_waiting_unlocks().await;
                }
            }
            let wait = probe.then(|| self.cfg.probe_timeout.min(self.cfg.request_timeout));
            match self.attempt(addr, req, wait).await? {
                Ok(resp) => {
                    self.mark_ok(addr);
                    return Ok(resp);
                }
                Err(why) => last = why,
            }
        }
        if !probe {
            self.mark_failed(addr);
        }
        Err(BusError::NoReply {
            addr,
            attempts,
            last,
        })
    }

    async fn read_unlock_count(&mut self, addr: u8) -> Result<u32, BusError> {
        let req = Request::ReadInputRegisters {
            addr: input::UNLOCK_COUNT,
            count: 2,
        };
        match self.request(addr, &req, false, Priority::Unlock).await? {
            Response::Registers(r) if r.len() == 2 => Ok(registers::regs_to_u32(r[0], r[1])),
            Response::Exception { function, code } => Err(BusError::Exception {
                addr,
                function,
                code,
            }),
            other => Err(BusError::BadReply {
                addr,
                detail: format!("UNLOCK_COUNT read returned {other:?}"),
            }),
        }
    }

    async fn read_bits(&mut self, addr: u8, req: Request) -> Result<Vec<bool>, BusError> {
        match self.request(addr, &req, false, Priority::Unlock).await? {
            Response::Bits(b) => Ok(b),
            Response::Exception { function, code } => Err(BusError::Exception {
                addr,
                function,
                code,
            }),
            other => Err(BusError::BadReply {
                addr,
                detail: format!("expected bits, got {other:?}"),
            }),
        }
    }

    /// The unlock procedure: learn UNLOCK_COUNT, write the coil once, and if its reply is
    /// lost read the count back to decide whether the write happened. The write is sent
    /// again only when the count proves the first one never arrived. Then the inputs are
    /// read to confirm the latch released (three exchanges when nothing is lost).
    async fn unlock(&mut self, addr: u8) -> Result<UnlockOutcome, BusError> {
        let before = self.read_unlock_count(addr).await?;
        let write = Request::WriteSingleCoil {
            addr: coil::UNLOCK,
            value: true,
        };
        let mut reply_lost = false;
        let mut after = None;
        for _ in 0..=self.cfg.read_retries {
            match self.attempt(addr, &write, None).await? {
                Ok(Response::Exception { function, code }) => {
                    self.mark_ok(addr);
                    return Err(BusError::Exception {
                        addr,
                        function,
                        code,
                    });
                }
                Ok(_) => {
                    self.mark_ok(addr);
                    break;
                }
                Err(why) => {
                    tracing::warn!(addr, %why, "UNLOCK reply lost; reading UNLOCK_COUNT back");
                    reply_lost = true;
                    self.count(|c| c.unlock_reply_lost += 1);
                    let now = match self.read_unlock_count(addr).await {
                        Ok(n) => n,
                        Err(_) => {
                            return Err(BusError::UnlockUnknown { addr });
                        }
                    };
                    if now != before {
                        after = Some(now);
                        break;
                    }
                    // The count did not move: the write never reached the lock (or the lock
                    // is jammed and counts nothing, which the read-back below reports), so
                    // sending it again cannot actuate twice.
                }
            }
        }
        let inputs_bits = self
            .read_bits(
                addr,
                Request::ReadDiscreteInputs {
                    addr: discrete::DOOR_CLOSED,
                    count: discrete::COUNT,
                },
            )
            .await?;
        let inputs = LockInputs::from_bits(&inputs_bits)
            .map_err(|source| BusError::Register { addr, source })?;
        // LATCH_LOCKED low is the released latch, the same fact the UNLOCK coil reports;
        // reading it from the inputs saves one exchange on the path a person waits on.
        let unlocked = !inputs.latch_locked;
        let count = match after {
            Some(n) => n,
            // Acknowledged and seen released with FAULT clear: the controller counts every
            // accepted UNLOCK, so the count is known without another exchange.
            None if !reply_lost && unlocked && !inputs.fault => before.wrapping_add(1),
            // Anything else (latch already back, jammed, or the write never confirmed):
            // ask the lock.
            None => self.read_unlock_count(addr).await?,
        };
        let actuated = count != before && !inputs.fault;
        if reply_lost && count == before {
            tracing::warn!(addr, "UNLOCK never reached the lock after every attempt");
        }
        Ok(UnlockOutcome {
            actuated,
            count_before: before,
            unlock_count: count,
            reply_lost,
            state: LockState { inputs, unlocked },
        })
    }
}
