//! `dmr-lock-sim`: a bus of simulated lock controllers, what tests and demos drive instead
//! of RS-485 hardware.
//!
//! Each simulated controller implements the whole register map and firmware update of
//! PROTOCOL.md §4–5 (through the codec and register map of `dmr-protocol`, never its own
//! numbers). The modules fit together like this:
//!
//! - [`config`]: [`SimConfig`] and its validation, done before anything is opened.
//! - [`device`]: one controller as a synchronous state machine with explicit time: latch,
//!   door, alarms, settings, A/B firmware slots. All behaviour lives here.
//! - `bus`: the locks behind one mutex, request routing by unit id, line timing, fault
//!   injection, and [`Control`], the in-process control interface.
//! - `persist`: the state file (atomic replace) and per-lock image side files, so a killed
//!   simulator resumes like a controller after a power cut.
//! - `pty`, `tcp`: the transports (a raw pty behind a stable symlink; Modbus TCP).
//! - `http`: the control HTTP API over [`Control`].
//! - [`cli`]: the `dmr-lock-sim` command line; `main` is a thin wrapper around it.
//!
//! [`start`] runs everything on the caller's tokio runtime and returns a [`SimHandle`];
//! other crates' tests use it in-process.

pub mod cli;
pub mod config;
pub mod device;
pub mod faults;

mod bus;
mod http;
mod persist;
mod pty;
mod tcp;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use bus::{Control, ControlError, LockView};
pub use config::{ConfigError, DoorBehaviour, LockSpec, SimConfig};
pub use device::AlarmInput;
pub use dmr_protocol::registers::FwVersion;
pub use faults::Faults;

use crate::bus::{BusState, Shared};
use crate::device::{Env, Lock};
use crate::persist::Store;

/// How often timers fire and the state file is refreshed when nothing talks to the bus.
const TICK: Duration = Duration::from_millis(20);
/// How long shutdown waits for each task.
const GRACE: Duration = Duration::from_secs(3);

type Task = (&'static str, JoinHandle<anyhow::Result<()>>);

/// A running simulator. Dropping it signals the tasks to stop; [`SimHandle::shutdown`]
/// also waits for them and flushes the state file.
#[derive(Debug)]
pub struct SimHandle {
    control: Control,
    pty_path: Option<PathBuf>,
    tcp_addr: Option<SocketAddr>,
    control_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<Task>,
}

impl SimHandle {
    /// The symlink to the pty slave.
    pub fn pty_path(&self) -> Option<&Path> {
        self.pty_path.as_deref()
    }

    /// The Modbus TCP address actually bound.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// The control HTTP API address actually bound.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control_addr
    }

    /// The in-process control interface.
    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Stops the listeners, waits for every task (bounded), flushes the state file and
    /// removes the pty symlink.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for (name, task) in std::mem::take(&mut self.tasks) {
            match tokio::time::timeout(GRACE, task).await {
                Ok(Ok(Ok(()))) => info!(task = name, "stopped"),
                Ok(Ok(Err(e))) => {
                    warn!(task = name, error = format!("{e:#}"), "ended with an error")
                }
                Ok(Err(e)) => warn!(task = name, error = %e, "panicked or was cancelled"),
                Err(_) => warn!(task = name, "did not stop within the grace time"),
            }
        }
        if let Err(e) = self.control.shared.persist().await {
            warn!(error = format!("{e:#}"), "final state flush failed");
        }
        if let Some(link) = &self.pty_path {
            let _ = std::fs::remove_file(link);
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Builds the locks, restoring them from the state file if there is one.
fn build_locks(cfg: &SimConfig, store: Option<&Store>) -> anyhow::Result<Vec<Lock>> {
    let mut locks: Vec<Lock> = cfg
        .locks
        .iter()
        .map(|s| Lock::new(s.addr, s.serial.clone(), cfg.initial_baud(), cfg.initial_fw))
        .collect();
    if let Some(store) = store
        && let Some(state) = store.load()?
    {
        for l in &mut locks {
            if let Some(p) = state.locks.iter().find(|p| p.serial == l.serial) {
                let image = store.load_image(&l.serial)?;
                p.restore(l, image);
                info!(serial = %l.serial, addr = l.addr, fw = %l.fw.running(),
                    received = l.fw.image.len(), "restored from the state file");
            }
        }
    }
    for (i, l) in locks.iter().enumerate() {
        if locks[..i].iter().any(|o| o.addr == l.addr) {
            warn!(addr = l.addr, serial = %l.serial,
                "two locks share an address; only the first one answers");
        }
    }
    Ok(locks)
}

/// Starts the simulator on the current tokio runtime.
pub async fn start(cfg: SimConfig) -> anyhow::Result<SimHandle> {
    cfg.validate()?;
    let store = cfg.state_file.clone().map(|path| Store { path });
    let locks = {
        let cfg = cfg.clone();
        let store = store.clone();
        tokio::task::spawn_blocking(move || build_locks(&cfg, store.as_ref()))
            .await
            .context("state loader")??
    };
    let env = Env {
        door: cfg.door,
        vendor_keys: cfg.vendor_keys.clone(),
        reboot_silence: Duration::from_millis(cfg.reboot_silence_ms),
    };
    let shared = Arc::new(Shared::new(
        env,
        BusState {
            locks,
            faults: Faults::default(),
            lock_faults: Default::default(),
            pending: Vec::new(),
        },
        store,
        cfg.line_baud.is_some(),
    ));
    // A fresh state file exists from the first moment, so a crash right after start
    // still resumes with these locks.
    shared
        .persist()
        .await
        .context("write the initial state file")?;

    let (stop, stop_rx) = watch::channel(false);
    let mut tasks: Vec<Task> = Vec::new();

    {
        let shared = shared.clone();
        let mut rx = stop_rx.clone();
        tasks.push((
            "ticker",
            tokio::spawn(async move {
                let mut every = tokio::time::interval(TICK);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = rx.changed() => return Ok(()),
                        _ = every.tick() => {
                            shared.tick();
                            if let Err(e) = shared.persist().await {
                                warn!(error = format!("{e:#}"), "cannot persist simulator state");
                            }
                        }
                    }
                }
            }),
        ));
    }

    let mut pty_path = None;
    if let Some(link) = cfg.pty_link.clone() {
        let p = tokio::task::spawn_blocking(move || pty::open(&link))
            .await
            .context("pty opener")??;
        pty_path = Some(p.link.clone());
        let (shared, rx) = (shared.clone(), stop_rx.clone());
        tasks.push(("pty", tokio::spawn(p.serve(shared, rx))));
    }

    let mut tcp_addr = None;
    if let Some(addr) = cfg.tcp {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind Modbus TCP on {addr}"))?;
        tcp_addr = Some(listener.local_addr()?);
        let (shared, rx) = (shared.clone(), stop_rx.clone());
        tasks.push(("modbus-tcp", tokio::spawn(tcp::serve(listener, shared, rx))));
    }

    let control = Control {
        shared: shared.clone(),
    };
    let mut control_addr = None;
    if let Some(addr) = cfg.control {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind the control API on {addr}"))?;
        control_addr = Some(listener.local_addr()?);
        let app = http::router(control.clone());
        let mut rx = stop_rx.clone();
        tasks.push((
            "control-http",
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = rx.changed().await;
                    })
                    .await
                    .context("control HTTP server")
            }),
        ));
    }

    info!(locks = cfg.locks.len(), "lock simulator started");
    Ok(SimHandle {
        control,
        pty_path,
        tcp_addr,
        control_addr,
        stop,
        tasks,
    })
}
