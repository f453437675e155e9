//! The serial transport: a pseudo-terminal whose slave side is symlinked to a stable
//! path, so a client opens it exactly like `/dev/ttyUSB0`.
//!
//! The pty is put in raw mode without echo: with echo on, the line discipline would send
//! every reply straight back to us and mangle binary frames. The simulator keeps its own
//! handle on the slave open, so the master never reads EIO while no client is attached
//! and the termios settings survive clients coming and going.
//!
//! Frames are cut from the byte stream the way an RTU slave does: by the length the
//! function code implies, and by silence on the line. A frame with a bad CRC is
//! discarded silently, as real slaves do.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use dmr_protocol::modbus::{MAX_RTU_FRAME, rtu};
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
use tokio::io::AsyncReadExt as _;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::bus::Shared;

/// Silence that ends a frame whose length the function code does not tell (an unknown
/// function) or that never completes. Far above 3.5 characters at 9600 baud, because a
/// pty delivers a frame in one piece and a short gap only costs latency.
const FRAME_GAP: Duration = Duration::from_millis(20);

/// An open pty pair.
#[derive(Debug)]
pub(crate) struct Pty {
    master: File,
    /// Held open on purpose (see the module documentation); also where the speed a client
    /// set is read back.
    slave: File,
    pub link: PathBuf,
}

/// Creates the pty and the symlink. Blocking (file-system calls): run it off the async
/// workers.
pub(crate) fn open(link: &Path) -> anyhow::Result<Pty> {
    let pair = nix::pty::openpty(None, None).context("openpty")?;
    let mut t = tcgetattr(&pair.slave).context("tcgetattr on the pty slave")?;
    cfmakeraw(&mut t);
    tcsetattr(&pair.slave, SetArg::TCSANOW, &t).context("set the pty to raw mode")?;
    let name = nix::unistd::ttyname(&pair.slave).context("name of the pty slave")?;
    match std::fs::symlink_metadata(link) {
        Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(link)
            .with_context(|| format!("remove the old link {}", link.display()))?,
        Ok(_) => bail!(
            "{} exists and is not a symlink; refusing to replace it",
            link.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("inspect {}", link.display())),
    }
    std::os::unix::fs::symlink(&name, link)
        .with_context(|| format!("symlink {} -> {}", link.display(), name.display()))?;
    // Non-blocking: the runtime's reactor waits for requests, and a reply that does not
    // fit into the pty's buffer (nobody reads the other side) is lost like bits on an idle wire
    // instead of blocking the bus.
    fcntl(&pair.master, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).context("non-blocking master")?;
    info!(link = %link.display(), tty = %name.display(), "pty ready");
    Ok(Pty {
        master: File::from(pair.master),
        slave: File::from(pair.slave),
        link: link.to_path_buf(),
    })
}

impl Pty {
    /// The speed the client configured on its end, in bits per second (0: not a Modbus
    /// rate). A pty ignores it for transfer, but it says what the client would send at.
    /// The speed a client set on its side, if it is one of the bus speeds. A speed set the
    /// Linux way serialport uses (`BOTHER` with an arbitrary rate, readable only through the
    /// `termios2` ioctl) is reported as unknown, and an unknown speed is not simulated as a
    /// mismatch: better to answer than to punish a client for how it set a valid speed.
    fn line_speed(&self) -> Option<u32> {
        use nix::libc;
        let t = tcgetattr(&self.slave).ok()?;
        // Reading the raw CBAUD bits instead of `cfgetospeed`, which panics on BOTHER.
        let raw: libc::termios = t.into();
        match raw.c_cflag & libc::CBAUD {
            libc::B9600 => Some(9600),
            libc::B19200 => Some(19200),
            libc::B38400 => Some(38400),
            libc::B57600 => Some(57600),
            libc::B115200 => Some(115_200),
            libc::BOTHER => None,
            _ => Some(0),
        }
    }

    fn write_all(&self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            match (&self.master).write(bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    debug!(
                        lost = bytes.len(),
                        "pty buffer full; rest of the reply lost"
                    );
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Serves the bus on this pty until shutdown.
    pub async fn serve(
        self,
        shared: Arc<Shared>,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        // The master is read through the runtime's reactor (tokio's pipe type takes any
        // non-blocking descriptor that epoll accepts, a pty master included): a request
        // wakes this task directly, where a reader thread handing bytes over a channel
        // cost two more thread wake-ups per exchange, the largest part of the simulator's
        // CPU when an agent polls many locks.
        let master = self.master.try_clone().context("clone the pty master")?;
        let mut rx = tokio::net::unix::pipe::Receiver::from_file_unchecked(master)
            .context("register the pty master with the runtime")?;
        self.serve_frames(&shared, &mut shutdown, &mut rx).await
    }

    async fn serve_frames(
        &self,
        shared: &Shared,
        shutdown: &mut watch::Receiver<bool>,
        rx: &mut tokio::net::unix::pipe::Receiver,
    ) -> anyhow::Result<()> {
        let mut buf: Vec<u8> = Vec::with_capacity(MAX_RTU_FRAME);
        let mut tmp = [0u8; 512];
        loop {
            let read = async {
                if buf.is_empty() {
                    Some(rx.read(&mut tmp).await)
                } else {
                    tokio::time::timeout(FRAME_GAP, rx.read(&mut tmp))
                        .await
                        .ok()
                }
            };
            let got = tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                got = read => got,
            };
            match got {
                None => {
                    // Silence: whatever is buffered is one frame, or noise.
                    let frame = std::mem::take(&mut buf);
                    match rtu::decode(&frame) {
                        Ok((unit, pdu)) => self.answer(shared, unit, pdu).await?,
                        Err(e) => debug!(bytes = frame.len(), error = %e, "discarded noise"),
                    }
                }
                Some(Ok(0)) => anyhow::bail!("the pty master reported end of file"),
                Some(Ok(n)) => {
                    buf.extend_from_slice(&tmp[..n]);
                    self.drain_frames(shared, &mut buf).await?;
                    if buf.len() > MAX_RTU_FRAME {
                        debug!(bytes = buf.len(), "discarded an over-long frame");
                        buf.clear();
                    }
                }
                Some(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Some(Err(e)) => {
                    warn!(error = %e, "read from the pty failed; serial transport stops");
                    return Err(e).context("read from the pty");
                }
            }
        }
    }

    async fn drain_frames(&self, shared: &Shared, buf: &mut Vec<u8>) -> anyhow::Result<()> {
        while let Ok(Some(n)) = rtu::request_len(buf) {
            if buf.len() < n {
                break;
            }
            let frame: Vec<u8> = buf.drain(..n).collect();
            match rtu::decode(&frame) {
                Ok((unit, pdu)) => self.answer(shared, unit, pdu).await?,
                Err(e) => {
                    // Out of step with the stream: drop everything and resynchronise on
                    // the next silence, as a real slave does.
                    debug!(error = %e, "discarded a frame with a bad CRC");
                    buf.clear();
                }
            }
        }
        Ok(())
    }

    async fn answer(&self, shared: &Shared, unit: u8, pdu: &[u8]) -> anyhow::Result<()> {
        let Some(reply) = shared.exchange(unit, pdu, self.line_speed()).await else {
            return Ok(());
        };
        let mut frame = rtu::encode(reply.unit, &reply.pdu);
        if reply.corrupt_crc
            && let Some(last) = frame.last_mut()
        {
            *last ^= 0x5A;
        }
        self.write_all(&frame).context("write to the pty")
    }
}
