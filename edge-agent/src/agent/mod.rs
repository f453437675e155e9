//! `dmr-agent`, the venue gateway daemon: offline-first unlocking from signed tokens.
//!
//! Layout, one file per job:
//! - [`config`]: defaults → TOML → `DMR_` environment, validated before anything opens.
//! - [`store`]: SQLite state on one dedicated thread (uses, cached tokens, revocations,
//!   outbox, time anchor).
//! - [`clock`]: trusted time that a wall clock stepping back cannot fool.
//! - [`unlock`]: the one verify → record → drive path; presenters are [`commands`] (MQTT
//!   `cmd unlock`), [`http`] (venue LAN) and [`scanner`] (QR scanner UART).
//! - [`link`]: the MQTT link (outbox publishing, heartbeats, retained state, Last Will).
//! - [`sync`]: the signed HTTP sync (outbox drain when MQTT cannot, pull of tokens,
//!   revocations, settings, keys and the time beacon); [`enroll`]: `dmr-agent enroll`;
//!   [`cloud_http`]: how both build, sign and send a request to the cloud API.
//! - [`monitor`]: polls lock state into door/alarm events; [`health`]: the derived health
//!   signals behind `/status`, `/metrics` and heartbeats.
//! - [`locks`]: the port trait over the Modbus bus driver.
//!
//! [`start`] wires it all up and returns a [`Running`] agent whose tasks share one
//! shutdown token; [`Running::shutdown`] cancels them and waits under a grace timeout,
//! logging which task ended and why.

pub mod clock;
pub mod cloud_http;
pub mod commands;
pub mod config;
pub mod enroll;
pub mod health;
pub mod http;
pub mod link;
pub mod locks;
pub mod monitor;
pub mod scanner;
pub mod store;
pub mod sync;
pub mod unlock;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use dmr_protocol::keys::SigningKey;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::clock::{TrustedClock, WallClock};
use self::config::AgentConfig;
use self::health::Health;
use self::locks::{LockPort, Ports};
use self::store::{LockPlace, Store, StoreConfig};
use self::unlock::Unlocker;

type TaskResult = (&'static str, anyhow::Result<()>);

/// A started agent.
pub struct Running {
    pub store: Store,
    pub unlocker: Unlocker,
    pub health: Arc<Health>,
    pub clock: Arc<TrustedClock>,
    /// Where the LAN API listens, if enabled.
    pub lan_addr: Option<SocketAddr>,
    /// Where `/status` and `/metrics` listen.
    pub status_addr: SocketAddr,
    /// Wakes the outbox publisher.
    pub kick: Arc<Notify>,
    /// Wakes the HTTP sync for an immediate pull and drain.
    pub sync_now: Arc<Notify>,
    shutdown: CancellationToken,
    tasks: JoinSet<TaskResult>,
    store_thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("lan_addr", &self.lan_addr)
            .field("status_addr", &self.status_addr)
            .finish_non_exhaustive()
    }
}

/// Opens the state, binds the listeners and starts every task. `ports` are the lock buses in
/// the order of `cfg.buses`.
pub async fn start(
    cfg: AgentConfig,
    key: SigningKey,
    ports: Vec<Arc<dyn LockPort>>,
    wall: impl WallClock,
) -> anyhow::Result<Running> {
    anyhow::ensure!(
        ports.len() == cfg.buses.len(),
        "{} bus port(s) given for {} configured bus(es)",
        ports.len(),
        cfg.buses.len()
    );
    let clock = Arc::new(TrustedClock::new(wall, None));
    let mut locks: Vec<(uuid::Uuid, LockPlace)> = Vec::new();
    for (bus, b) in cfg.buses.iter().enumerate() {
        for l in &b.locks {
            locks.push((l.lock_id, LockPlace { bus, addr: l.addr }));
        }
    }
    let (store, store_thread) = Store::open(
        StoreConfig {
            path: cfg.db_path(),
            gateway_id: cfg.gateway_id,
            key: key.clone(),
            skew_s: cfg.token_skew_s,
            locks: locks.clone(),
            trusted_keys: cfg.trusted_keys.clone(),
            enrolled_keys: cfg.enrolled_keys.clone(),
            max_db_pages: cfg.max_db_pages,
            mmap_bytes: cfg.state_mmap_mb * 1024 * 1024,
        },
        clock.clone(),
    )
    .with_context(|| format!("opening the state database {}", cfg.db_path().display()))?;
    // With one bus and no locks in the file the cloud manages the lock map: the last list a
    // sync applied is put back (it may be newer than the enrollment's).
    let lock_policy = sync::LockPolicy::for_config(cfg.buses.len(), cfg.locks_in_file);
    if let sync::LockPolicy::Apply { .. } = lock_policy {
        let buses = cfg.buses.len();
        if store
            .call(move |db| db.restore_cloud_locks(buses))
            .await
            .context("store thread")??
        {
            locks = store.call(|db| db.locks()).await.context("store thread")?;
            tracing::info!(locks = locks.len(), "lock map from the last sync restored");
        }
    }
    let (locks_tx, locks_rx) = watch::channel(locks.clone());
    let locks_tx = Arc::new(locks_tx);
    if let Some(anchor) = store
        .call(|db| db.time_anchor())
        .await
        .context("store thread")??
    {
        clock.observe_cloud_ms(anchor);
    }
    if let Some(cs) = cfg.enrolled_config.clone() {
        // Versioned: a newer setting already received from the cloud is kept.
        store
            .call(move |db| db.config_set(&cs))
            .await
            .context("store thread")??;
    }
    let hb_override = store
        .call(|db| db.heartbeat_override_s())
        .await
        .context("store thread")??;
    let heartbeat = hb_override.map_or(cfg.heartbeat_interval, Duration::from_secs);
    let health = Arc::new(Health::new(
        cfg.gateway_id,
        cfg.offline_after,
        &locks
            .iter()
            .map(|(id, p)| (*id, p.bus, p.addr))
            .collect::<Vec<_>>(),
    ));
    let ports: Ports = Arc::new(ports);
    let unlocker = Unlocker::new(
        store.clone(),
        ports.clone(),
        clock.clone(),
        health.clone(),
        cfg.unlock_timeout,
    );
    let kick = Arc::new(Notify::new());
    let sync_now = Arc::new(Notify::new());
    let shutdown = CancellationToken::new();
    let mut tasks: JoinSet<TaskResult> = JoinSet::new();

    // Listeners first: a port that cannot be bound is a start failure, not a task failure.
    let status_listener = tokio::net::TcpListener::bind(cfg.http.status_listen)
        .await
        .with_context(|| format!("binding the status listener {}", cfg.http.status_listen))?;
    let status_addr = status_listener.local_addr()?;
    let lan = match cfg.http.listen {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding the LAN API listener {a}"))?,
        ),
        None => None,
    };
    let lan_addr = match &lan {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };

    {
        let router = http::status_router(store.clone(), health.clone(), clock.clone());
        let sd = shutdown.clone();
        tasks.spawn(async move {
            (
                "status-http",
                http::serve(status_listener, router, sd).await,
            )
        });
    }
    if let Some(l) = lan {
        let router = http::lan_router(unlocker.clone(), cfg.http.rate_per_min);
        let sd = shutdown.clone();
        tasks.spawn(async move { ("lan-http", http::serve(l, router, sd).await) });
    }
    let (hb_tx, hb_rx) = watch::channel(heartbeat);
    let (cmd_tx, cmd_rx) = mpsc::channel(link::CMD_QUEUE);
    let cmd_deps = commands::CommandDeps {
        store: store.clone(),
        unlocker: unlocker.clone(),
        kick: kick.clone(),
        heartbeat: hb_tx,
        sync_now: sync_now.clone(),
    };
    {
        let deps = cmd_deps.clone();
        let sd = shutdown.clone();
        tasks.spawn(async move { ("commands", commands::run(deps, cmd_rx, sd).await) });
    }
    if let Some(url) = cfg.cloud_url.clone() {
        let deps = sync::SyncDeps {
            base_url: url,
            gw: cfg.gateway_id,
            key: key.clone(),
            store: store.clone(),
            clock: clock.clone(),
            health: health.clone(),
            commands: cmd_deps,
            interval: cfg.sync_interval,
            drain_after: cfg.sync_drain_after,
            sync_now: sync_now.clone(),
            mqtt_configured: cfg.mqtt.is_some(),
            locks: locks_tx.clone(),
            lock_policy,
        };
        let sd = shutdown.clone();
        tasks.spawn(async move { ("http-sync", sync::run(deps, sd).await) });
    } else {
        tracing::warn!("no cloud_url configured: no HTTP sync (events go over MQTT only)");
        drop(cmd_deps);
    }
    if let Some(m) = cfg.mqtt.clone() {
        let deps = link::LinkDeps {
            cfg: m,
            gw: cfg.gateway_id,
            key: key.clone(),
            store: store.clone(),
            health: health.clone(),
            clock: clock.clone(),
            commands: cmd_tx,
            kick: kick.clone(),
            heartbeat: hb_rx,
            ca: None,
        };
        let sd = shutdown.clone();
        tasks.spawn(async move { ("mqtt-link", link::run(deps, sd).await) });
    } else {
        tracing::warn!("no [mqtt] configured: events stay in the outbox until a broker is set");
        drop(cmd_tx);
    }
    for bus in 0..cfg.buses.len() {
        let Some(port) = ports.get(bus).cloned() else {
            continue;
        };
        let deps = monitor::MonitorDeps {
            port,
            bus,
            locks: locks_rx.clone(),
            interval: cfg.poll_interval,
            watch_interval: cfg.door_watch_interval,
            store: store.clone(),
            health: health.clone(),
            clock: clock.clone(),
            kick: kick.clone(),
        };
        let sd = shutdown.clone();
        tasks.spawn(async move { ("lock-monitor", monitor::run(deps, sd).await) });
    }
    if let Some(sc) = cfg.scanner.clone() {
        let u = unlocker.clone();
        let sd = shutdown.clone();
        tasks.spawn(async move { ("scanner", scanner::run(sc, u, sd).await) });
    }
    {
        let st = store.clone();
        let sd = shutdown.clone();
        tasks.spawn(async move { ("maintenance", maintenance(st, sd).await) });
    }
    {
        let st = store.clone();
        let sd = shutdown.clone();
        tasks.spawn(async move { ("systemd-watchdog", systemd_watchdog(st, sd).await) });
    }
    tracing::info!(gateway_id = %cfg.gateway_id, %status_addr, lan = ?lan_addr, locks = locks.len(), "agent started");
    Ok(Running {
        store,
        unlocker,
        health,
        clock,
        lan_addr,
        status_addr,
        kick,
        sync_now,
        shutdown,
        tasks,
        store_thread: Some(store_thread),
    })
}

/// Prunes expired cached tokens and old command ids every hour.
async fn maintenance(store: Store, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        match store.call(|db| db.prune()).await? {
            Ok((tokens, cmds)) => {
                tracing::debug!(
                    tokens,
                    cmds,
                    "pruned expired cached tokens and old command ids"
                )
            }
            Err(e) => tracing::warn!(error = %e, "prune failed"),
        }
    }
}

/// systemd watchdog: pings only while the store thread answers, so a wedged database
/// gets the service restarted. A no-op without `WATCHDOG_USEC`.
async fn systemd_watchdog(store: Store, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        shutdown.cancelled().await;
        return Ok(());
    }
    let every = Duration::from_micros(usec / 2);
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        match tokio::time::timeout(every, store.call(|_| ())).await {
            Ok(Ok(())) => {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
            _ => {
                tracing::error!("store thread not answering; withholding the systemd watchdog ping")
            }
        }
    }
}

impl Running {
    /// The shutdown token (cancel it to stop everything).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until `signal` resolves or a task ends on its own (which is a fault: it is
    /// logged and the agent shuts down). Returns the name of a task that ended early.
    pub async fn run_until(
        &mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> Option<&'static str> {
        tokio::select! {
            () = signal => None,
            Some(done) = self.tasks.join_next() => {
                match done {
                    Ok((name, Ok(()))) => { tracing::error!(task = name, "task ended on its own"); Some(name) }
                    Ok((name, Err(e))) => { tracing::error!(task = name, error = format!("{e:#}"), "task failed"); Some(name) }
                    Err(e) => { tracing::error!(error = %e, "task panicked"); Some("unknown") }
                }
            }
        }
    }

    /// Cancels every task and waits up to `grace` for them, then closes the database.
    /// Returns the names of tasks that had to be aborted.
    pub async fn shutdown(mut self, grace: Duration) -> Vec<&'static str> {
        self.shutdown.cancel();
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        let deadline = tokio::time::Instant::now() + grace;
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(Ok((name, Ok(()))))) => tracing::info!(task = name, "task stopped"),
                Ok(Some(Ok((name, Err(e))))) => {
                    tracing::warn!(
                        task = name,
                        error = format!("{e:#}"),
                        "task stopped with an error"
                    )
                }
                Ok(Some(Err(e))) => tracing::error!(error = %e, "task panicked"),
                Ok(None) => break,
                Err(_) => break,
            }
        }
        let mut aborted = Vec::new();
        if !self.tasks.is_empty() {
            self.tasks.abort_all();
            while let Some(r) = self.tasks.join_next().await {
                if let Ok((name, _)) = r {
                    aborted.push(name);
                }
            }
            tracing::warn!(
                count = self.tasks.len(),
                "tasks aborted after the grace period"
            );
        }
        // Requests already queued are finished first; handles held elsewhere get Stopped.
        if let Err(e) = self.store.close().await {
            tracing::warn!(error = %e, "store already stopped");
        }
        let thread = self.store_thread.take();
        drop(self);
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        tracing::info!("agent stopped");
        aborted
    }
}
