//! Test helpers: independent peers (pymodbus, mbpoll), a small RTU master over the pty
//! built on `dmr-protocol`'s codec, a plain HTTP client for the control API, the binary as
//! a child process, and waiting for conditions with deadlines.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::os::fd::AsFd as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use dmr_protocol::modbus::{Request, Response, rtu};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::termios::{FlushArg, SetArg, cfmakeraw, tcflush, tcgetattr, tcsetattr};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

pub const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/modbus_peer.py");
pub const MBPOLL: &str = "/usr/bin/mbpoll";

/// The vendor firmware key of the protocol test vectors (key id 1).
pub fn vendor_key() -> ed25519_dalek::SigningKey {
    let seed: [u8; 32] = core::array::from_fn(|i| 0x41 + i as u8);
    ed25519_dalek::SigningKey::from_bytes(&seed)
}

pub fn image(version: &str, payload_len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..payload_len).map(|i| (i * 7 + 3) as u8).collect();
    dmr_protocol::firmware::build(1, version.parse().unwrap(), &payload, 1, &vendor_key()).unwrap()
}

/// Polls `cond` every 20 ms until it holds or `within` passes.
pub async fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------- pymodbus ----------

pub fn python() -> PathBuf {
    let p = std::env::var_os("DMR_PYMODBUS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/main/target/pyvenv/bin/python"));
    assert!(
        p.exists(),
        "pymodbus peer missing: no Python at {} (set DMR_PYMODBUS_PYTHON to a venv with \
         `pip install 'pymodbus[serial]==3.16.1'`)",
        p.display()
    );
    p
}

/// Runs the pymodbus peer and returns the JSON it printed last.
pub async fn peer(args: &[&str]) -> serde_json::Value {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(python())
            .arg(PEER)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("pymodbus peer did not finish within 60 s")
    .expect("cannot run the pymodbus peer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pymodbus peer failed ({}) for {args:?}:\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("peer printed no JSON ({e}): {stdout}\nstderr: {stderr}"))
}

// ---------- mbpoll ----------

pub struct Mbpoll {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Mbpoll {
    /// The `[n]: value` lines mbpoll prints for a read.
    pub fn values(&self) -> Vec<i64> {
        self.stdout
            .lines()
            .filter_map(|l| {
                let l = l.trim();
                l.starts_with('[')
                    .then(|| l.split(':').nth(1))
                    .flatten()
                    .and_then(|v| v.trim().parse().ok())
            })
            .collect()
    }
}

/// Runs mbpoll once in RTU mode at 9600 8N1 against `tty` (0-based references, one poll).
/// For a write, the value is the last element of `args` (mbpoll wants it after the device).
pub async fn mbpoll(tty: &Path, unit: u8, args: &[&str]) -> Mbpoll {
    let (args, values): (&[&str], &[&str]) = match args.iter().position(|a| *a == "=") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[]),
    };
    assert!(
        Path::new(MBPOLL).exists(),
        "mbpoll peer missing: {MBPOLL} not found (apt-get install mbpoll)"
    );
    let unit = unit.to_string();
    let mut cmd = Command::new(MBPOLL);
    cmd.args([
        "-m", "rtu", "-a", &unit, "-b", "9600", "-d", "8", "-P", "none", "-s", "1",
    ])
    .args(["-o", "1", "-1", "-0"])
    .args(args)
    .arg(tty)
    .args(values);
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.kill_on_drop(true).output())
        .await
        .expect("mbpoll did not finish within 20 s")
        .expect("cannot run mbpoll");
    Mbpoll {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// ---------- our codec over the pty ----------

/// What came back for a request.
#[derive(Debug, PartialEq)]
pub enum Answer {
    Reply { unit: u8, response: Response },
    BadCrc,
    Timeout,
}

/// A minimal blocking RTU master over a tty, built on `dmr_protocol::modbus`.
pub struct RtuMaster {
    port: File,
}

impl RtuMaster {
    /// Opens `path` raw at 9600 baud.
    pub fn open(path: &Path) -> Self {
        Self::open_at(path, nix::sys::termios::BaudRate::B9600)
    }

    pub fn open_at(path: &Path, baud: nix::sys::termios::BaudRate) -> Self {
        let port = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NOCTTY.bits() | nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let mut t = tcgetattr(&port).unwrap();
        cfmakeraw(&mut t);
        nix::sys::termios::cfsetspeed(&mut t, baud).unwrap();
        tcsetattr(&port, SetArg::TCSANOW, &t).unwrap();
        RtuMaster { port }
    }

    pub fn request(&mut self, unit: u8, req: &Request, timeout: Duration) -> Answer {
        // Like a careful bus master: forget late replies to earlier requests.
        let _ = tcflush(self.port.as_fd(), FlushArg::TCIFLUSH);
        self.port
            .write_all(&rtu::encode(unit, &req.encode_pdu()))
            .unwrap();
        self.read_reply(req, timeout)
    }

    /// Sends raw bytes (bad frames) and waits for any reply.
    pub fn raw(&mut self, bytes: &[u8], req: &Request, timeout: Duration) -> Answer {
        let _ = tcflush(self.port.as_fd(), FlushArg::TCIFLUSH);
        self.port.write_all(bytes).unwrap();
        self.read_reply(req, timeout)
    }

    fn read_reply(&mut self, req: &Request, timeout: Duration) -> Answer {
        let deadline = Instant::now() + timeout;
        let mut buf = Vec::new();
        loop {
            if let Ok(Some(n)) = rtu::response_len(&buf)
                && buf.len() >= n
            {
                return match rtu::decode(&buf[..n]) {
                    Ok((unit, pdu)) => Answer::Reply {
                        unit,
                        response: Response::decode_pdu(pdu, req).unwrap(),
                    },
                    Err(_) => Answer::BadCrc,
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Answer::Timeout;
            }
            let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.port.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(ms)).unwrap_or(0) == 0 {
                continue;
            }
            let mut tmp = [0u8; 256];
            match self.port.read(&mut tmp) {
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("read the tty: {e}"),
            }
        }
    }

    /// A request that must be answered normally.
    pub fn ok(&mut self, unit: u8, req: Request) -> Response {
        match self.request(unit, &req, Duration::from_secs(2)) {
            Answer::Reply { response, .. } => response,
            other => panic!("no reply to {req:?} from unit {unit}: {other:?}"),
        }
    }

    pub fn read_input(&mut self, unit: u8, addr: u16, count: u16) -> Vec<u16> {
        match self.ok(unit, Request::ReadInputRegisters { addr, count }) {
            Response::Registers(r) => r,
            other => panic!("read input {addr:#x}: {other:?}"),
        }
    }

    pub fn write_regs(&mut self, unit: u8, addr: u16, values: Vec<u16>) -> Response {
        self.ok(unit, Request::WriteMultipleRegisters { addr, values })
    }
}

// ---------- control HTTP API ----------

/// One HTTP/1.1 request with `Connection: close`; returns the status and the JSON body
/// (`Null` when empty).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let payload = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let json = if payload.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(payload).unwrap_or_else(|e| panic!("bad JSON ({e}): {payload}"))
    };
    (status, json)
}

// ---------- the binary ----------

pub const BIN: &str = env!("CARGO_BIN_EXE_dmr-lock-sim");

/// `dmr-lock-sim` as a child process, with what it printed before READY.
pub struct SimProcess {
    pub child: Child,
    pub pty: Option<PathBuf>,
    pub tcp: Option<SocketAddr>,
    pub control: Option<SocketAddr>,
}

impl SimProcess {
    pub async fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn dmr-lock-sim");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let (mut pty, mut tcp, mut control) = (None, None, None);
        let read = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                match line.split_once(' ') {
                    Some(("PTY", p)) => pty = Some(PathBuf::from(p)),
                    Some(("TCP", a)) => tcp = Some(a.parse().unwrap()),
                    Some(("CONTROL", u)) => {
                        control = Some(u.trim_start_matches("http://").parse().unwrap())
                    }
                    _ if line == "READY" => return true,
                    _ => {}
                }
            }
            false
        };
        let ready = tokio::time::timeout(Duration::from_secs(15), read)
            .await
            .expect("dmr-lock-sim printed no READY within 15 s");
        assert!(ready, "dmr-lock-sim closed stdout before READY");
        SimProcess {
            child,
            pty,
            tcp,
            control,
        }
    }
}
