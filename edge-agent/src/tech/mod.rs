//! `dmr-tech`, the technician CLI, as a library: the argument types, every subcommand and its
//! human or JSON output, so the binary is a thin `main` and tests can run it in-process.
//!
//! - this module: arguments, dispatch, exit codes.
//! - [`flash`]: the firmware update procedure (also usable by `dmr-agent`).
//! - [`fw`]: the vendor tools that work on files only (`fw inspect`, `fw sign`, `fw keygen`).
//! - [`output`]: people-readable and JSON rendering.
//!
//! Exit codes follow sysexits: 0 ok, 1 the operation failed, 64 usage error, 69 the port or
//! the device could not be reached.

pub mod flash;
pub mod fw;
pub mod output;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use dmr_protocol::modbus::{Request, Response};
use dmr_protocol::registers::{self, Baud, Identity, holding, input};

use crate::bus::{self, BusConfig, BusError, BusHandle, Parity};
use output::Out;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: the operation failed (the lock refused, the image was rejected, ...).
pub const EXIT_FAILED: u8 = 1;
/// Exit code: bad command line.
pub const EXIT_USAGE: u8 = 64;
/// Exit code: the port could not be opened or the lock did not answer.
pub const EXIT_UNREACHABLE: u8 = 69;

const EXIT_HELP: &str = "\
Exit status:
  0   success
  1   the operation failed (the lock refused, the image was rejected, ...)
  64  usage error (bad arguments)
  69  unreachable: the serial port could not be opened or the lock did not answer";

/// Technician tool for Dumeiren lock controllers on an RS-485 (Modbus RTU) or Modbus TCP bus.
#[derive(Debug, Parser)]
#[command(name = "dmr-tech", version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("DMR_BUILD_COMMIT"), ")"), after_help = EXIT_HELP)]
pub struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the bus is.
#[derive(Debug, Clone, Args)]
pub struct BusArgs {
    /// Serial device of the RS-485 adapter (or the simulator's pty).
    #[arg(
        long,
        value_name = "DEVICE",
        conflicts_with = "tcp",
        required_unless_present = "tcp"
    )]
    pub port: Option<PathBuf>,
    /// Line speed.
    #[arg(long, default_value_t = 9600)]
    pub baud: u32,
    /// Parity: none, even or odd.
    #[arg(long, default_value = "none", value_parser = parse_parity)]
    pub parity: Parity,
    /// Modbus TCP instead of a serial port (RTU-to-TCP converter or the simulator).
    #[arg(long, value_name = "HOST:PORT")]
    pub tcp: Option<String>,
    /// How long to wait for each reply, in milliseconds (a full scan waits this long for
    /// every empty address: 100 scans 1..=247 in about 25 s).
    #[arg(long, default_value_t = 300)]
    pub timeout_ms: u64,
}

fn parse_parity(s: &str) -> Result<Parity, String> {
    match s {
        "none" | "N" | "n" => Ok(Parity::None),
        "even" | "E" | "e" => Ok(Parity::Even),
        "odd" | "O" | "o" => Ok(Parity::Odd),
        _ => Err(format!("parity must be none, even or odd, not {s:?}")),
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Find every lock on the bus: address, serial, firmware, slot, state.
    #[command(after_help = EXIT_HELP)]
    Scan {
        #[command(flatten)]
        bus: BusArgs,
        #[command(flatten)]
        range: Range,
    },
    /// Show one lock in detail (or every lock found by a scan).
    #[command(after_help = EXIT_HELP)]
    Status {
        #[command(flatten)]
        bus: BusArgs,
        /// Lock address; without it, scan and show every lock.
        #[arg(long)]
        addr: Option<u8>,
        #[command(flatten)]
        range: Range,
    },
    /// Release a lock's latch once.
    #[command(after_help = EXIT_HELP)]
    Unlock {
        #[command(flatten)]
        bus: BusArgs,
        #[arg(long)]
        addr: u8,
    },
    /// Give a lock a new bus address (it reboots to take it).
    #[command(after_help = EXIT_HELP)]
    SetAddress {
        #[command(flatten)]
        bus: BusArgs,
        /// Current address.
        #[arg(long)]
        addr: u8,
        /// New address, 1..=247.
        #[arg(long)]
        new: u8,
    },
    /// Change a lock's settings.
    #[command(after_help = EXIT_HELP)]
    Set {
        #[command(flatten)]
        bus: BusArgs,
        #[arg(long)]
        addr: u8,
        /// How long the latch stays released, 100..=10000 ms.
        #[arg(long)]
        pulse_ms: Option<u16>,
        /// Relock after this many seconds, 0..=3600 (0: when the door closes).
        #[arg(long)]
        auto_relock_s: Option<u16>,
        /// The lock's line speed after its next reboot (9600, 19200, 38400, 57600, 115200).
        #[arg(long = "set-baud", value_name = "BAUD")]
        set_baud: Option<u32>,
        /// Reboot the lock afterwards so a baud change takes effect.
        #[arg(long)]
        reboot: bool,
    },
    /// Clear a lock's latched alarms (tamper, forced open).
    #[command(after_help = EXIT_HELP)]
    AlarmAck {
        #[command(flatten)]
        bus: BusArgs,
        #[arg(long)]
        addr: u8,
    },
    /// Write a signed firmware image into one lock or all of them.
    #[command(after_help = EXIT_HELP)]
    Flash {
        #[command(flatten)]
        bus: BusArgs,
        /// The image file (from `fw sign`).
        #[arg(long)]
        image: PathBuf,
        /// The lock to flash.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        addr: Option<u8>,
        /// Flash every lock a scan finds, one after another.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        range: Range,
        /// Leave the new image unconfirmed: the lock returns to the old one at its next
        /// reboot (for a trial run).
        #[arg(long)]
        no_confirm: bool,
    },
    /// Firmware image files (no bus needed).
    #[command(subcommand)]
    Fw(fw::FwCommand),
}

/// Addresses a scan covers.
#[derive(Debug, Clone, Copy, Args)]
pub struct Range {
    /// First address to scan.
    #[arg(long, default_value_t = 1)]
    pub from: u8,
    /// Last address to scan.
    #[arg(long, default_value_t = 247)]
    pub to: u8,
}

/// A usage problem found after parsing (exit 64).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Parses the command line and runs it; the returned code is the process exit status.
pub async fn main_with_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let json = cli.json;
    match run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = exit_code(&e);
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "error": format!("{e:#}"), "exit": code})
                );
            } else {
                eprintln!("dmr-tech: error: {e:#}");
            }
            ExitCode::from(code)
        }
    }
}

/// Maps an error to the exit status: usage 64, unreachable 69, anything else 1.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.downcast_ref::<UsageError>().is_some() {
            return EXIT_USAGE;
        }
        if let Some(b) = cause.downcast_ref::<BusError>() {
            return if b.is_unreachable() {
                EXIT_UNREACHABLE
            } else {
                EXIT_FAILED
            };
        }
        if let Some(flash::FlashError::Bus(b)) = cause.downcast_ref::<flash::FlashError>() {
            return if b.is_unreachable() {
                EXIT_UNREACHABLE
            } else {
                EXIT_FAILED
            };
        }
        if let Some(flash::FlashError::NoReboot { .. }) = cause.downcast_ref::<flash::FlashError>()
        {
            return EXIT_UNREACHABLE;
        }
    }
    EXIT_FAILED
}

fn bus_config(a: &BusArgs) -> BusConfig {
    let mut cfg = match (&a.tcp, &a.port) {
        (Some(addr), _) => BusConfig::tcp(addr.clone()),
        (None, Some(path)) => {
            let mut c = BusConfig::serial(path.clone(), a.baud);
            if let bus::Transport::Serial { parity, .. } = &mut c.transport {
                *parity = a.parity;
            }
            c
        }
        // clap requires one of the two.
        (None, None) => BusConfig::tcp(String::new()),
    };
    cfg.request_timeout = Duration::from_millis(a.timeout_ms.max(1));
    // A technician's scan must not miss a lock behind a slow converter: probes get the
    // same timeout the user chose (lower it to scan faster).
    cfg.probe_timeout = cfg.request_timeout;
    cfg
}

async fn open(a: &BusArgs) -> anyhow::Result<BusHandle> {
    let cfg = bus_config(a);
    let where_ = cfg.transport.to_string();
    bus::spawn(cfg)
        .await
        .with_context(|| format!("opening the bus {where_}"))
}

fn check_addr(addr: u8) -> anyhow::Result<()> {
    if registers::UNIT_ADDRESSES.contains(&addr) {
        Ok(())
    } else {
        Err(UsageError(format!("--addr {addr} is not a lock address (1..=247)")).into())
    }
}

/// Runs a parsed command. `Ok(code)` is the exit status for partial results (`flash --all`).
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    let out = Out { json: cli.json };
    match cli.command {
        Command::Fw(cmd) => fw::run(cmd, &out),
        Command::Scan { bus, range } => {
            let h = open(&bus).await?;
            let found = scan(&h, range).await?;
            out.scan(&found);
            Ok(EXIT_OK)
        }
        Command::Status { bus, addr, range } => {
            let h = open(&bus).await?;
            let addrs = match addr {
                Some(a) => {
                    check_addr(a)?;
                    vec![a]
                }
                None => scan(&h, range).await?.into_iter().map(|f| f.addr).collect(),
            };
            let mut all = Vec::new();
            for a in addrs {
                all.push(status(&h, a).await?);
            }
            out.status(&all, &h.counters());
            Ok(EXIT_OK)
        }
        Command::Unlock { bus, addr } => {
            check_addr(addr)?;
            let h = open(&bus).await?;
            let o = h
                .unlock(addr)
                .await
                .with_context(|| format!("unlocking lock {addr}"))?;
            out.unlock(addr, &o);
            Ok(if o.actuated { EXIT_OK } else { EXIT_FAILED })
        }
        Command::SetAddress { bus, addr, new } => {
            check_addr(addr)?;
            check_addr(new)?;
            let h = open(&bus).await?;
            set_address(&h, addr, new).await?;
            out.done(
                &format!("lock {addr} now answers at address {new}"),
                serde_json::json!({"addr": new, "old_addr": addr}),
            );
            Ok(EXIT_OK)
        }
        Command::Set {
            bus,
            addr,
            pulse_ms,
            auto_relock_s,
            set_baud,
            reboot,
        } => {
            check_addr(addr)?;
            let baud = match set_baud {
                Some(b) => Some(Baud::from_bits_per_second(b).ok_or_else(|| {
                    UsageError(format!(
                        "--set-baud {b} is not one of 9600, 19200, 38400, 57600, 115200"
                    ))
                })?),
                None => None,
            };
            if pulse_ms.is_none() && auto_relock_s.is_none() && baud.is_none() {
                return Err(UsageError(
                    "nothing to set: give --pulse-ms, --auto-relock-s or --set-baud".into(),
                )
                .into());
            }
            for (reg, v) in [
                (holding::UNLOCK_PULSE_MS, pulse_ms),
                (holding::AUTO_RELOCK_S, auto_relock_s),
            ] {
                if let Some(v) = v {
                    registers::check_setting(reg, v).map_err(|e| UsageError(e.to_string()))?;
                }
            }
            let h = open(&bus).await?;
            if let Some(v) = pulse_ms {
                h.write_setting(addr, holding::UNLOCK_PULSE_MS, v).await?;
            }
            if let Some(v) = auto_relock_s {
                h.write_setting(addr, holding::AUTO_RELOCK_S, v).await?;
            }
            if let Some(b) = baud {
                h.write_setting(addr, holding::BAUD_CODE, b.code()).await?;
            }
            if reboot && baud.is_some() {
                // After this reboot the lock speaks another baud rate: nothing to wait for
                // on this one. A lost reply to REBOOT is normal (it goes down at once).
                match h.reboot(addr).await {
                    Ok(()) | Err(BusError::NoReply { .. }) => {}
                    Err(e) => return Err(e).context(format!("rebooting lock {addr}")),
                }
            } else if reboot {
                reboot_lock(&h, addr).await?;
            }
            let s = if reboot && baud.is_some() {
                None // it now speaks another baud rate
            } else {
                Some(h.settings(addr).await?)
            };
            out.settings(addr, s.as_ref(), baud.is_some() && !reboot);
            Ok(EXIT_OK)
        }
        Command::AlarmAck { bus, addr } => {
            check_addr(addr)?;
            let h = open(&bus).await?;
            h.alarm_ack(addr).await?;
            let st = h.read_state(addr).await?;
            out.state_line(addr, &st);
            Ok(if st.inputs.tamper || st.inputs.forced_open {
                EXIT_FAILED
            } else {
                EXIT_OK
            })
        }
        Command::Flash {
            bus,
            image,
            addr,
            all,
            range,
            no_confirm,
        } => {
            let bytes = std::fs::read(&image)
                .with_context(|| format!("reading the image {}", image.display()))?;
            let header = flash::inspect(&image.display().to_string(), &bytes)?;
            let h = open(&bus).await?;
            let addrs = if all {
                let found = scan(&h, range).await?;
                if found.is_empty() {
                    bail!(BusError::NoReply {
                        addr: range.from,
                        attempts: 1,
                        last: format!("no lock answered in {}..={}", range.from, range.to),
                    });
                }
                found.into_iter().map(|f| f.addr).collect()
            } else {
                let a = addr.unwrap_or(0);
                check_addr(a)?;
                vec![a]
            };
            let opts = flash::FlashOptions {
                confirm: !no_confirm,
            };
            let mut results = Vec::new();
            let mut worst = EXIT_OK;
            for a in addrs {
                let bar = out.progress_bar(a, bytes.len() as u64);
                let r = flash::flash(&h, a, &bytes, opts, &|p| bar.update(p)).await;
                bar.finish();
                match r {
                    Ok(rep) => {
                        out.flash_ok(&rep);
                        results.push(Ok(rep));
                    }
                    Err(e) => {
                        let err = anyhow::Error::new(e);
                        let code = exit_code(&err);
                        worst = worst.max(code);
                        out.flash_err(a, &err);
                        results.push(Err((a, format!("{err:#}"))));
                    }
                }
            }
            out.flash_summary(&header, &results);
            Ok(worst)
        }
    }
}

/// One lock found by a scan.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Found {
    pub addr: u8,
    pub serial: String,
    pub fw: String,
    pub slot: String,
    pub fw_state: String,
    pub door_closed: Option<bool>,
    pub latch_locked: Option<bool>,
}

/// Probes every address in `range` once and describes the locks that answer.
pub async fn scan(h: &BusHandle, range: Range) -> anyhow::Result<Vec<Found>> {
    if range.from == 0 || range.to > 247 || range.from > range.to {
        return Err(UsageError(format!(
            "scan range {}..={} must lie within 1..=247",
            range.from, range.to
        ))
        .into());
    }
    let mut found = Vec::new();
    for addr in range.from..=range.to {
        let req = Request::ReadInputRegisters {
            addr: input::DEVICE_TYPE,
            count: input::IDENTITY_COUNT,
        };
        let id = match h.probe(addr, req).await {
            Ok(Response::Registers(r)) => match Identity::from_regs(&r) {
                Ok(id) => id,
                Err(e) => {
                    tracing::warn!(addr, error = %e, "a device answered but is not a lock");
                    continue;
                }
            },
            Ok(_) | Err(BusError::NoReply { .. }) => continue,
            Err(e) => return Err(e).context("scanning the bus"),
        };
        let fw = h.fw_status(addr).await.ok();
        let st = h.read_state(addr).await.ok();
        found.push(Found {
            addr,
            serial: id.serial,
            fw: id.fw_version.to_string(),
            slot: fw.map(|f| f.active_slot.to_string()).unwrap_or_default(),
            fw_state: fw.map(|f| f.state.to_string()).unwrap_or_default(),
            door_closed: st.map(|s| s.inputs.door_closed),
            latch_locked: st.map(|s| s.inputs.latch_locked),
        });
    }
    Ok(found)
}

/// Everything `status` shows about one lock.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Status {
    pub addr: u8,
    pub serial: String,
    pub fw: String,
    pub unlock_count: u32,
    pub supply_mv: u16,
    pub last_error: String,
    pub door_closed: bool,
    pub latch_locked: bool,
    pub unlocked: bool,
    pub tamper: bool,
    pub fault: bool,
    pub forced_open: bool,
    pub fw_state: String,
    pub fw_received: u32,
    pub fw_error: String,
    pub active_slot: String,
    pub unlock_pulse_ms: u16,
    pub auto_relock_s: u16,
    pub unit_address: u8,
    pub baud: u32,
}

async fn status(h: &BusHandle, addr: u8) -> anyhow::Result<Status> {
    let ctx = || format!("reading lock {addr}");
    let id = h.identity(addr).await.with_context(ctx)?;
    let st = h.read_state(addr).await.with_context(ctx)?;
    let fw = h.fw_status(addr).await.with_context(ctx)?;
    let s = h.settings(addr).await.with_context(ctx)?;
    Ok(Status {
        addr,
        serial: id.serial,
        fw: id.fw_version.to_string(),
        unlock_count: id.unlock_count,
        supply_mv: id.supply_mv,
        last_error: id.last_error.to_string(),
        door_closed: st.inputs.door_closed,
        latch_locked: st.inputs.latch_locked,
        unlocked: st.unlocked,
        tamper: st.inputs.tamper,
        fault: st.inputs.fault,
        forced_open: st.inputs.forced_open,
        fw_state: fw.state.to_string(),
        fw_received: fw.received,
        fw_error: fw.error.to_string(),
        active_slot: fw.active_slot.to_string(),
        unlock_pulse_ms: s.unlock_pulse_ms,
        auto_relock_s: s.auto_relock_s,
        unit_address: s.unit_address,
        baud: s.baud.bits_per_second(),
    })
}

/// Sends REBOOT and waits until the lock answers again.
async fn reboot_lock(h: &BusHandle, addr: u8) -> anyhow::Result<Identity> {
    match h.reboot(addr).await {
        Ok(()) | Err(BusError::NoReply { .. }) => {}
        Err(e) => return Err(e).context(format!("rebooting lock {addr}")),
    }
    flash::wait_for_lock(h, addr, Duration::from_secs(15))
        .await
        .with_context(|| format!("waiting for lock {addr} to come back after its reboot"))
}

async fn set_address(h: &BusHandle, addr: u8, new: u8) -> anyhow::Result<()> {
    if addr != new {
        let req = Request::ReadInputRegisters {
            addr: input::DEVICE_TYPE,
            count: 1,
        };
        if let Ok(Response::Registers(_)) = h.probe(new, req).await {
            bail!(UsageError(format!(
                "address {new} is already taken by another device on this bus"
            )));
        }
    }
    h.write_setting(addr, holding::UNIT_ADDRESS, u16::from(new))
        .await
        .with_context(|| format!("writing UNIT_ADDRESS of lock {addr}"))?;
    match h.reboot(addr).await {
        Ok(()) | Err(BusError::NoReply { .. }) => {}
        Err(e) => return Err(e).context(format!("rebooting lock {addr}")),
    }
    flash::wait_for_lock(h, new, Duration::from_secs(15))
        .await
        .with_context(|| {
            format!("lock did not answer at its new address {new} after the reboot")
        })?;
    Ok(())
}
