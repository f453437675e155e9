//! One request/reply exchange on the wire, for RTU over a serial line and for Modbus TCP.
//!
//! The link is written over any async byte stream so the unit tests can drive it through an
//! in-memory pipe, while production hands it a serial port or a TCP socket. On RTU the link
//! itself enforces the 3.5-character silence before every frame (controllers drop frames that
//! come too soon, and neither tokio-modbus nor pymodbus waits it), adds the configured
//! turnaround delay, throws away bytes that arrive between exchanges (a late reply to an
//! earlier, timed-out request must never be taken for the answer to the next one), and cuts
//! replies by their predicted length rather than by waiting for silence, so a good reply
//! costs no more than its bytes on the wire.

use std::io;
use std::time::Duration;

use dmr_protocol::modbus::{Request, Response, rtu, tcp};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::time::{Instant, sleep_until, timeout, timeout_at};

/// Anything the link can talk over.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}

/// How frames are put on the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Modbus RTU at this line speed (it sets the silence and the time frames take).
    Rtu { baud: u32 },
    /// Modbus TCP (MBAP header, transaction ids).
    Tcp,
}

/// What went wrong with one exchange. Faults are replies the driver could not use; they are
/// counted and discarded, and the request is retried where that is safe.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Nothing came back before the deadline.
    Timeout,
    /// Something came back but it is not a usable reply.
    Fault(Fault),
    /// The stream itself failed (device unplugged, connection closed).
    Io(io::Error),
}

/// Kinds of bus fault, counted separately so a technician can tell noise from wiring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The frame's CRC (RTU) did not match: line noise, termination, baud mismatch.
    Crc,
    /// A well-formed reply from a unit id other than the one asked (two locks on one address).
    WrongUnit,
    /// The reply stopped before its length said it would end.
    Truncated,
    /// Bytes that are not a reply to this request (unknown function, bad echo, stale id).
    Garbled,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fault::Crc => "CRC error",
            Fault::WrongUnit => "reply from the wrong unit id",
            Fault::Truncated => "truncated reply",
            Fault::Garbled => "garbled reply",
        })
    }
}

/// Sleeps until `deadline` with sub-millisecond precision. tokio's timer ticks in whole
/// milliseconds and rounds up, which on a 1.75 ms silence is up to 57% extra on every frame.
/// The last stretch is therefore waited on a [`PreciseTimer`] (a timerfd in the runtime's
/// reactor); where none can be had, on a blocking thread (`nanosleep`, ~0.1 ms precise, but
/// two thread hand-offs per frame, which on a gateway polling many locks was most of its
/// CPU).
async fn wait_until_precisely(timer: &mut Option<PreciseTimer>, deadline: Instant) {
    const COARSE: Duration = Duration::from_millis(2);
    let now = Instant::now();
    if deadline <= now {
        return;
    }
    if deadline - now > COARSE {
        sleep_until(deadline - COARSE).await;
    }
    let rest = deadline.saturating_duration_since(Instant::now());
    if rest.is_zero() {
        return;
    }
    if timer.is_none() {
        *timer = PreciseTimer::new()
            .inspect_err(|e| {
                tracing::debug!(error = %e, "no timerfd; precise waits use a blocking thread");
            })
            .ok();
    }
    if let Some(t) = timer.as_mut() {
        match t.sleep(rest).await {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(error = %e, "timerfd wait failed; using a blocking thread");
                *timer = None;
            }
        }
    }
    let rest = deadline.saturating_duration_since(Instant::now());
    if !rest.is_zero() {
        // If the blocking pool is gone (runtime shutting down) the wait is simply skipped.
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
    }
}

/// A one-shot high-resolution timer whose expiry wakes the task through the runtime's
/// reactor, like a socket becoming readable: arming it is one system call and the wake-up
/// is the worker's own `epoll_wait` returning. tokio offers no safe way to register an
/// arbitrary descriptor except its pipe type, which (unchecked) takes any non-blocking
/// descriptor that epoll accepts; a timerfd is one, and reads 8 bytes once expired.
#[cfg(target_os = "linux")]
pub(crate) struct PreciseTimer {
    timer: nix::sys::timerfd::TimerFd,
    /// A second descriptor of the same timer, owned by the reactor registration.
    ready: tokio::net::unix::pipe::Receiver,
}

#[cfg(target_os = "linux")]
impl PreciseTimer {
    fn new() -> io::Result<Self> {
        use nix::sys::timerfd::{ClockId, TimerFd, TimerFlags};
        use std::os::fd::AsFd as _;
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let fd = timer.as_fd().try_clone_to_owned()?;
        let ready = tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(fd)?;
        Ok(PreciseTimer { timer, ready })
    }

    /// Waits `d`. Arming resets any expiry left over from a cancelled wait.
    async fn sleep(&mut self, d: Duration) -> io::Result<()> {
        use nix::sys::time::TimeSpec;
        use nix::sys::timerfd::{Expiration, TimerSetTimeFlags};
        self.timer
            .set(
                Expiration::OneShot(TimeSpec::from_duration(d)),
                TimerSetTimeFlags::empty(),
            )
            .map_err(io::Error::from)?;
        let mut expirations = [0u8; 8];
        loop {
            self.ready.readable().await?;
            match self.ready.try_read(&mut expirations) {
                Ok(_) => return Ok(()),
                // Readiness left over from before the timer was re-armed.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Elsewhere there is no timerfd: the blocking-thread wait is used.
#[cfg(not(target_os = "linux"))]
pub(crate) struct PreciseTimer;

#[cfg(not(target_os = "linux"))]
impl PreciseTimer {
    fn new() -> io::Result<Self> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "no timerfd"))
    }

    async fn sleep(&mut self, _: Duration) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "no timerfd"))
    }
}

/// Timing knobs the link needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LinkTiming {
    /// How long to wait for the first byte of a reply after the request left the wire.
    pub reply_timeout: Duration,
    /// Extra pause before each request (slow RS-485 transceivers, RTU-to-TCP converters).
    pub turnaround: Duration,
    /// A gap this long in the middle of a reply means the rest is not coming.
    pub inter_char_timeout: Duration,
}

/// The wire side of the bus: owns the stream and the line's timing state.
pub(crate) struct Link {
    io: Box<dyn ByteStream>,
    framing: Framing,
    timing: LinkTiming,
    /// When the line last carried a byte (or will have finished sending one); the next
    /// request waits for the 3.5-character silence after this.
    line_busy_until: Instant,
    transaction: u16,
    /// Bytes thrown away because they arrived outside any exchange.
    pub stale_bytes: u64,
    /// For the inter-frame silence; made on first use (it needs the runtime).
    timer: Option<PreciseTimer>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("framing", &self.framing)
            .field("timing", &self.timing)
            .finish_non_exhaustive()
    }
}

impl Link {
    pub(crate) fn new(io: Box<dyn ByteStream>, framing: Framing, timing: LinkTiming) -> Self {
        Link {
            io,
            framing,
            timing,
            line_busy_until: Instant::now(),
            transaction: 0,
            stale_bytes: 0,
            timer: None,
        }
    }

    /// Replaces the stream (a TCP reconnect), keeping counters.
    pub(crate) fn replace_stream(&mut self, io: Box<dyn ByteStream>) {
        self.io = io;
    }

    pub(crate) fn framing(&self) -> Framing {
        self.framing
    }

    /// Sends `req` to `unit` and returns its reply, which may be an exception.
    /// `reply_timeout` overrides the configured one (probes of possibly absent locks wait
    /// less, so they hold the half-duplex bus for less).
    pub(crate) async fn exchange(
        &mut self,
        unit: u8,
        req: &Request,
        reply_timeout: Option<Duration>,
    ) -> Result<Response, Failure> {
        let wait = reply_timeout.unwrap_or(self.timing.reply_timeout);
        match self.framing {
            Framing::Rtu { baud } => self.exchange_rtu(unit, req, baud, wait).await,
            Framing::Tcp => self.exchange_tcp(unit, req, wait).await,
        }
    }

    /// Reads whatever is already waiting on the stream without blocking: each read is
    /// polled exactly once (no timer: a zero `timeout` around it cost a timer-wheel entry
    /// per exchange). A pending read leaves this task's waker with the stream, which the
    /// exchange's own read replaces right after.
    async fn drain_pending(&mut self) -> Result<usize, Failure> {
        let mut scratch = [0u8; 256];
        let mut total = 0;
        loop {
            let polled = std::future::poll_fn(|cx| {
                let mut buf = tokio::io::ReadBuf::new(&mut scratch);
                match std::pin::Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                    std::task::Poll::Ready(r) => {
                        std::task::Poll::Ready(Some(r.map(|()| buf.filled().len())))
                    }
                    std::task::Poll::Pending => std::task::Poll::Ready(None),
                }
            })
            .await;
            match polled {
                Some(Ok(0)) => {
                    return Err(Failure::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the bus stream closed",
                    )));
                }
                Some(Ok(n)) => total += n,
                Some(Err(e)) => return Err(Failure::Io(e)),
                None => return Ok(total),
            }
        }
    }

    async fn exchange_rtu(
        &mut self,
        unit: u8,
        req: &Request,
        baud: u32,
        reply_timeout: Duration,
    ) -> Result<Response, Failure> {
        let silence = rtu::inter_frame_silence(baud);
        // Wait for a quiet line: the silence after the last byte, plus the turnaround. Bytes
        // that show up meanwhile are stale (a late reply) and restart the wait.
        loop {
            wait_until_precisely(
                &mut self.timer,
                self.line_busy_until + silence + self.timing.turnaround,
            )
            .await;
            let stale = self.drain_pending().await?;
            if stale == 0 {
                break;
            }
            self.stale_bytes += stale as u64;
            self.line_busy_until = Instant::now();
        }

        let frame = rtu::encode(unit, &req.encode_pdu());
        self.io.write_all(&frame).await.map_err(Failure::Io)?;
        self.io.flush().await.map_err(Failure::Io)?;
        // write() returns once the kernel has the bytes; on a real UART they are still
        // leaving at line speed, so the reply cannot start before then.
        let sent = Instant::now() + rtu::char_time(frame.len(), baud);
        self.line_busy_until = sent;

        let deadline = sent + reply_timeout;
        let mut buf: Vec<u8> = Vec::with_capacity(64);
        let mut scratch = [0u8; 256];
        let len = loop {
            if buf.len() >= 2 {
                match rtu::response_len(&buf) {
                    Ok(Some(n)) if buf.len() >= n => break n,
                    Ok(_) => {}
                    Err(_) => {
                        self.skip_until_silence(silence).await?;
                        return Err(Failure::Fault(Fault::Garbled));
                    }
                }
            }
            let wait_until = if buf.is_empty() {
                deadline
            } else {
                Instant::now() + self.timing.inter_char_timeout
            };
            match timeout_at(wait_until, self.io.read(&mut scratch)).await {
                Err(_) => {
                    self.line_busy_until = Instant::now();
                    return Err(if buf.is_empty() {
                        Failure::Timeout
                    } else {
                        Failure::Fault(Fault::Truncated)
                    });
                }
                Ok(Ok(0)) => {
                    return Err(Failure::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the bus stream closed",
                    )));
                }
                Ok(Ok(n)) => buf.extend_from_slice(&scratch[..n]),
                Ok(Err(e)) => return Err(Failure::Io(e)),
            }
        };
        self.line_busy_until = Instant::now();
        if buf.len() > len {
            // Trailing bytes belong to no request; the next exchange's drain would find
            // them anyway, but counting them here keeps the tally honest.
            self.stale_bytes += (buf.len() - len) as u64;
        }
        let (from, pdu) = rtu::decode(&buf[..len]).map_err(|e| match e {
            dmr_protocol::modbus::FrameError::Crc { .. } => Failure::Fault(Fault::Crc),
            _ => Failure::Fault(Fault::Truncated),
        })?;
        if from != unit {
            return Err(Failure::Fault(Fault::WrongUnit));
        }
        Response::decode_pdu(pdu, req).map_err(|_| Failure::Fault(Fault::Garbled))
    }

    /// After garbage, reads until the line has been quiet for a frame gap so the next
    /// exchange starts on a frame boundary.
    async fn skip_until_silence(&mut self, silence: Duration) -> Result<(), Failure> {
        let gap = silence.max(self.timing.inter_char_timeout);
        let mut scratch = [0u8; 256];
        loop {
            match timeout(gap, self.io.read(&mut scratch)).await {
                Err(_) => {
                    self.line_busy_until = Instant::now();
                    return Ok(());
                }
                Ok(Ok(0)) => {
                    return Err(Failure::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the bus stream closed",
                    )));
                }
                Ok(Ok(n)) => self.stale_bytes += n as u64,
                Ok(Err(e)) => return Err(Failure::Io(e)),
            }
        }
    }

    async fn exchange_tcp(
        &mut self,
        unit: u8,
        req: &Request,
        reply_timeout: Duration,
    ) -> Result<Response, Failure> {
        if !self.timing.turnaround.is_zero() {
            sleep_until(self.line_busy_until + self.timing.turnaround).await;
        }
        // Replies to earlier, abandoned transactions are still in the socket; they carry
        // old transaction ids and are skipped below, but dropping what is already here
        // saves reading them under the deadline.
        let stale = self.drain_pending().await?;
        self.stale_bytes += stale as u64;

        self.transaction = self.transaction.wrapping_add(1);
        let tx = self.transaction;
        let adu = tcp::encode(tx, unit, &req.encode_pdu());
        self.io.write_all(&adu).await.map_err(Failure::Io)?;
        self.io.flush().await.map_err(Failure::Io)?;
        let deadline = Instant::now() + reply_timeout;
        loop {
            let mut head = [0u8; tcp::HEADER_LEN];
            match timeout_at(deadline, self.io.read_exact(&mut head)).await {
                Err(_) => return Err(Failure::Timeout),
                Ok(Err(e)) => return Err(Failure::Io(e)),
                Ok(Ok(_)) => {}
            }
            let header = tcp::decode_header(&head).map_err(|_| Failure::Fault(Fault::Garbled))?;
            let mut pdu = vec![0u8; header.pdu_len()];
            match timeout_at(deadline, self.io.read_exact(&mut pdu)).await {
                Err(_) => return Err(Failure::Fault(Fault::Truncated)),
                Ok(Err(e)) => return Err(Failure::Io(e)),
                Ok(Ok(_)) => {}
            }
            self.line_busy_until = Instant::now();
            if header.transaction != tx {
                self.stale_bytes += (tcp::HEADER_LEN + pdu.len()) as u64;
                continue;
            }
            if header.unit != unit {
                return Err(Failure::Fault(Fault::WrongUnit));
            }
            return Response::decode_pdu(&pdu, req).map_err(|_| Failure::Fault(Fault::Garbled));
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_precise_timer_never_ends_a_wait_early() {
        let mut t = PreciseTimer::new().unwrap();
        for us in [300u64, 1750, 3650] {
            let d = Duration::from_micros(us);
            let start = std::time::Instant::now();
            t.sleep(d).await.unwrap();
            assert!(
                start.elapsed() >= d,
                "{us} µs wait took {:?}",
                start.elapsed()
            );
        }
    }

    #[tokio::test]
    async fn an_expiry_left_by_a_cancelled_wait_does_not_end_the_next_one() {
        let mut t = PreciseTimer::new().unwrap();
        // Armed (polled once), then cancelled; it fires unread while nobody waits.
        let mut armed = false;
        tokio::select! {
            biased;
            _ = t.sleep(Duration::from_millis(1)) => {}
            () = std::future::ready(()) => armed = true,
        }
        assert!(armed);
        std::thread::sleep(Duration::from_millis(3));
        let d = Duration::from_millis(4);
        let start = std::time::Instant::now();
        t.sleep(d).await.unwrap();
        assert!(start.elapsed() >= d, "took {:?}", start.elapsed());
    }

    #[tokio::test]
    async fn a_precise_wait_ends_at_its_deadline_not_a_millisecond_tick_later() {
        // The point of the timer: tokio's own sleep would round 1.75 ms up to 2..3 ms.
        let mut timer = None;
        let mut late = Vec::new();
        for _ in 0..20 {
            let deadline = Instant::now() + Duration::from_micros(1750);
            wait_until_precisely(&mut timer, deadline).await;
            late.push(Instant::now() - deadline);
        }
        assert!(timer.is_some(), "the timerfd was not used");
        late.sort();
        // The median, so one preemption on a busy machine does not fail the test.
        assert!(late[10] < Duration::from_micros(500), "late by {late:?}");
    }
}
