//! The `dmr-lock-sim` command line: parse, validate into a [`SimConfig`], start, print
//! where it listens, and run until SIGTERM or SIGINT.
//!
//! Exit codes follow sysexits: 64 for a bad command line, 78 for a configuration that
//! parses but cannot work (a bad key, a duplicate address), 1 for a failure at run time.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};

use crate::config::{DoorBehaviour, LockSpec, SimConfig};
use dmr_protocol::registers::FwVersion;

const EX_USAGE: u8 = 64;
const EX_CONFIG: u8 = 78;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Door {
    /// A simulated person opens the door after an unlock and closes it again.
    Auto,
    /// Nobody comes; the door stays shut.
    Shut,
}

/// Simulated Dumeiren lock controllers on a Modbus RTU bus (pty) and/or Modbus TCP.
#[derive(Debug, Parser)]
#[command(name = "dmr-lock-sim", version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("DMR_BUILD_COMMIT"), ")"))]
struct Args {
    /// N locks at addresses 1..=N, serials SIM-0001...
    #[arg(long, conflicts_with = "lock")]
    locks: Option<u8>,
    /// One lock, ADDR or ADDR:SERIAL (repeatable).
    #[arg(long, value_name = "ADDR[:SERIAL]")]
    lock: Vec<String>,
    /// Create a pty and symlink its slave side here.
    #[arg(long, value_name = "PATH")]
    link: Option<PathBuf>,
    /// Modbus TCP listen address, e.g. 127.0.0.1:0.
    #[arg(long, value_name = "ADDR")]
    tcp: Option<SocketAddr>,
    /// Control HTTP API listen address, e.g. 127.0.0.1:0.
    #[arg(long, value_name = "ADDR")]
    control: Option<SocketAddr>,
    /// State file (slots, versions, transfer progress, counters, settings).
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// A vendor firmware key, ID:BASE64URL (repeatable).
    #[arg(long = "vendor-key", value_name = "ID:BASE64URL")]
    vendor_key: Vec<String>,
    /// Delay replies by their time on the wire at this baud (and start locks at it).
    #[arg(long, value_name = "BAUD")]
    line_baud: Option<u32>,
    /// What happens at the door after an unlock.
    #[arg(long, value_enum, default_value = "auto")]
    door: Door,
    /// With --door auto: ms from latch release until the person opens the door.
    #[arg(long, default_value_t = 500)]
    door_open_after_ms: u64,
    /// With --door auto: ms the door stays open.
    #[arg(long, default_value_t = 1500)]
    door_close_after_ms: u64,
    /// Firmware version of a fresh lock.
    #[arg(long, default_value = "1.0.0")]
    fw: String,
    /// How long a rebooting lock stays silent.
    #[arg(long, default_value_t = 1500)]
    reboot_silence_ms: u64,
}

fn parse_lock(text: &str) -> Result<LockSpec, String> {
    let (a, serial) = match text.split_once(':') {
        Some((a, s)) => (a, Some(s.to_string())),
        None => (text, None),
    };
    let addr: u8 = a
        .trim()
        .parse()
        .map_err(|_| format!("--lock {text:?}: address must be a number 1..=247"))?;
    Ok(LockSpec::new(
        addr,
        serial.unwrap_or_else(|| format!("SIM-{addr:04}")),
    ))
}

fn parse_key(text: &str) -> Result<(u32, ed25519_dalek::VerifyingKey), String> {
    let (id, key) = text
        .split_once(':')
        .ok_or_else(|| format!("--vendor-key {text:?}: expected ID:BASE64URL"))?;
    let id: u32 = id
        .parse()
        .map_err(|_| format!("--vendor-key {text:?}: key id must be a number"))?;
    let key = dmr_protocol::keys::parse_public_b64u(key)
        .map_err(|e| format!("--vendor-key {id}: {e}"))?;
    Ok((id, key))
}

impl Args {
    /// Builds the configuration, reporting every problem at once.
    fn config(&self) -> Result<SimConfig, Vec<String>> {
        let mut problems = Vec::new();
        let locks = if self.lock.is_empty() {
            LockSpec::numbered(self.locks.unwrap_or(1))
        } else {
            self.lock
                .iter()
                .filter_map(|l| parse_lock(l).map_err(|e| problems.push(e)).ok())
                .collect()
        };
        let vendor_keys = self
            .vendor_key
            .iter()
            .filter_map(|k| parse_key(k).map_err(|e| problems.push(e)).ok())
            .collect();
        let initial_fw = self.fw.parse::<FwVersion>().unwrap_or_else(|e| {
            problems.push(format!("--fw {:?}: {e}", self.fw));
            FwVersion::default()
        });
        let mut cfg = SimConfig::new(locks);
        cfg.state_file = self.state.clone();
        cfg.vendor_keys = vendor_keys;
        cfg.line_baud = self.line_baud;
        cfg.door = match self.door {
            Door::Auto => DoorBehaviour::PersonOpensAndCloses {
                open_after_ms: self.door_open_after_ms,
                close_after_ms: self.door_close_after_ms,
            },
            Door::Shut => DoorBehaviour::StaysShut,
        };
        cfg.pty_link = self.link.clone();
        cfg.tcp = self.tcp;
        cfg.control = self.control;
        cfg.initial_fw = initial_fw;
        cfg.reboot_silence_ms = self.reboot_silence_ms;
        if let Err(e) = cfg.validate() {
            problems.extend(e.problems);
        }
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(problems)
        }
    }
}

/// The whole program; `main` only returns this.
pub fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { EX_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let cfg = match args.config() {
        Ok(c) => c,
        Err(problems) => {
            for p in problems {
                eprintln!("dmr-lock-sim: {p}");
            }
            return ExitCode::from(EX_CONFIG);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dmr-lock-sim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dmr-lock-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: SimConfig) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Install the handlers before READY, so a SIGTERM right after it is never lost.
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let sim = crate::start(cfg).await?;
    {
        let mut out = std::io::stdout().lock();
        if let Some(p) = sim.pty_path() {
            writeln!(out, "PTY {}", p.display())?;
        }
        if let Some(a) = sim.tcp_addr() {
            writeln!(out, "TCP {a}")?;
        }
        if let Some(a) = sim.control_addr() {
            writeln!(out, "CONTROL http://{a}")?;
        }
        writeln!(out, "READY")?;
        out.flush()?;
    }
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    sim.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_and_key_flags() {
        assert_eq!(parse_lock("7"), Ok(LockSpec::new(7, "SIM-0007")));
        assert_eq!(parse_lock("3:ABC"), Ok(LockSpec::new(3, "ABC")));
        assert!(parse_lock("x:ABC").is_err());
        assert!(parse_key("1:not-a-key").is_err());
        assert!(parse_key("nokey").is_err());
        let k = ed25519_dalek::SigningKey::from_bytes(&[3; 32]).verifying_key();
        let text = format!("5:{}", dmr_protocol::keys::public_b64u(&k));
        assert_eq!(parse_key(&text), Ok((5, k)));
    }
}
