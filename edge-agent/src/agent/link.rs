//! The MQTT link to the cloud: publishes the outbox, heartbeats and the retained state,
//! and receives commands.
//!
//! Each connection is one *session*: a fresh rumqttc client and event loop whose Last Will is
//! a `{"online":false}` state message signed at connect. The event loop runs in its own task
//! and hands events over a bounded channel (1,024; when full the event loop waits, which
//! back-pressures the socket). Any error, and a watchdog that sees no event for twice the
//! keep-alive, ends the session; the link then builds a new client after an exponential
//! backoff. Rebuilding instead of letting rumqttc reconnect by itself sidesteps its reconnect
//! livelock (rumqttc issue #1056) and means no packet state survives from the old session, so
//! the outbox is simply republished from its oldest row.
//!
//! Outbox rows go out at QoS 1 with up to `inflight` unacknowledged at once. rumqttc reports
//! the packet id of each publish it sends (`Outgoing::Publish`) in the order the requests
//! were made, which maps ids back to outbox rows; a row is deleted only after its PUBACK,
//! and then without a store round trip or an fsync of its own: the store deletes it with its
//! next commit ([`Store::delivered`]; a lost deletion only republishes a row the cloud drops
//! by id). Once a read of the outbox came back short (everything committed was in it), new
//! rows are taken from the store's list of freshly committed rows ([`Store::take_fresh`])
//! instead of reading the outbox again at every wake-up; a row gets there only after its
//! transaction committed, so nothing is published before it is durable.
//! Rows are published in `seq` order on one connection, so the broker sees them in order per
//! lock; after a reconnect some may arrive twice, with the same signed id. Heartbeats are
//! telemetry: QoS 0, sent only while connected, never queued (dropped if the request
//! channel is full).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dmr_protocol::jws::Kid;
use dmr_protocol::keys::SigningKey;
use dmr_protocol::message::{Envelope, GatewayState, Heartbeat, Message};
use dmr_protocol::topic::{TopicKind, topic};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
    Transport,
};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::clock::TrustedClock;
use super::config::MqttConfig;
use super::health::Health;
use super::store::{OutRow, Store};

/// Acknowledged rows are deleted with the store's next commit; when none comes along, in a
/// commit of their own once this many wait or the oldest has waited [`DELETE_AFTER`].
const ACK_BATCH: usize = 256;
/// See [`ACK_BATCH`]. Rows waiting are invisible to a reader of this session (it publishes
/// after the last seq it sent), and a restart republishes them at worst (the cloud drops the
/// copies by id), so the wait only bounds how long the backlog figure counts them.
const DELETE_AFTER: Duration = Duration::from_millis(1000);
/// Commands waiting for the command handler; at the bound the link stops reading the socket.
pub const CMD_QUEUE: usize = 64;

/// What the link needs.
#[derive(Clone)]
pub struct LinkDeps {
    pub cfg: MqttConfig,
    pub gw: Uuid,
    pub key: SigningKey,
    pub store: Store,
    pub health: Arc<Health>,
    pub clock: Arc<TrustedClock>,
    /// Raw command payloads to the command handler.
    pub commands: mpsc::Sender<String>,
    /// Woken when the outbox has new rows.
    pub kick: Arc<Notify>,
    /// Heartbeat interval (the cloud may change it with config.set).
    pub heartbeat: watch::Receiver<Duration>,
    /// The CA bundle read from `cfg.ca_file` (filled in by [`run`]).
    pub ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for LinkDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkDeps")
            .field("cfg", &self.cfg)
            .field("gw", &self.gw)
            .finish_non_exhaustive()
    }
}

enum End {
    Shutdown,
    Failed { why: String, was_connected: bool },
}

/// Runs the link until `shutdown`.
pub async fn run(mut deps: LinkDeps, shutdown: CancellationToken) -> anyhow::Result<()> {
    if let Some(path) = &deps.cfg.ca_file {
        let pem = tokio::fs::read(path)
            .await
            .with_context(|| format!("reading the MQTT CA file {}", path.display()))?;
        deps.ca = Some(pem);
    }
    let mut backoff = deps.cfg.reconnect_min;
    loop {
        match session(&deps, &shutdown).await {
            End::Shutdown => return Ok(()),
            End::Failed { why, was_connected } => {
                deps.health.cloud_lost(&why);
                if was_connected {
                    backoff = deps.cfg.reconnect_min;
                }
                tracing::warn!(error = %why, retry_in_ms = backoff.as_millis() as u64, "MQTT link down");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(deps.cfg.reconnect_max);
            }
        }
    }
}

fn sign(deps: &LinkDeps, message: Message) -> String {
    Envelope::new(Uuid::now_v7(), deps.gw, deps.clock.now_ms(), message)
        .sign(Kid::Gateway(deps.gw), &deps.key)
}

fn build(deps: &LinkDeps) -> anyhow::Result<(AsyncClient, EventLoop)> {
    let cfg = &deps.cfg;
    let mut opts = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    opts.set_keep_alive(cfg.keep_alive);
    // Keep the session so commands sent while we were away are delivered on reconnect.
    opts.set_clean_session(false);
    opts.set_inflight(cfg.inflight);
    opts.set_max_packet_size(
        dmr_protocol::jws::MAX_COMPACT_LEN + 4096,
        dmr_protocol::jws::MAX_COMPACT_LEN + 4096,
    );
    if let Some(user) = &cfg.username {
        opts.set_credentials(
            user.clone(),
            cfg.password
                .as_ref()
                .map(|p| p.expose().to_string())
                .unwrap_or_default(),
        );
    }
    let will = sign(deps, Message::State(GatewayState { online: false }));
    opts.set_last_will(LastWill::new(
        topic(deps.gw, TopicKind::State),
        will,
        QoS::AtLeastOnce,
        true,
    ));
    if cfg.tls {
        install_crypto_provider();
        opts.set_transport(match &deps.ca {
            Some(ca) => Transport::tls(ca.clone(), None, None),
            None => Transport::tls_with_default_config(),
        });
    }
    let (client, mut el) = AsyncClient::new(opts, usize::from(cfg.inflight) + 64);
    let mut net = el.network_options();
    net.set_connection_timeout(cfg.keep_alive.as_secs().clamp(5, 30));
    // No Nagle: an unlock's result is two small publishes (the event, the ack) written one
    // after the other, and with Nagle the second waits for the broker's TCP ACK of the
    // first, which a quiet connection delays up to 40 ms (delayed ACK). rumqttc already
    // writes whatever is queued in one go, so Nagle has nothing left to coalesce.
    net.set_tcp_nodelay(true);
    el.set_network_options(net);
    Ok((client, el))
}

/// rumqttc builds its TLS configuration with rustls' process-wide default provider. When the
/// binary is built together with crates that enable rustls' `ring` as well as `aws-lc-rs`
/// (a workspace build does), rustls cannot pick one and panics at the first TLS connect;
/// naming the provider once removes the ambiguity. Installing twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

struct Session<'a> {
    deps: &'a LinkDeps,
    client: AsyncClient,
    connected: bool,
    /// For every publish request, in order: the outbox seq, or None for state/heartbeat.
    sent: VecDeque<Option<i64>>,
    by_pkid: HashMap<u16, i64>,
    in_flight: usize,
    last_sent: i64,
    /// A read of the outbox found every committed row after `last_sent`: what is committed
    /// since is taken from the store's list of fresh rows, without a round trip to its thread.
    caught_up: bool,
}

async fn session(deps: &LinkDeps, shutdown: &CancellationToken) -> End {
    let (client, mut el) = match build(deps).context("building the MQTT client") {
        Ok(v) => v,
        Err(e) => {
            return End::Failed {
                why: format!("{e:#}"),
                was_connected: false,
            };
        }
    };
    let (ev_tx, mut ev_rx) = mpsc::channel(1024);
    let poller = tokio::spawn(async move {
        loop {
            let r = el.poll().await;
            let stop = r.is_err();
            if ev_tx.send(r).await.is_err() || stop {
                break;
            }
        }
    });
    let mut s = Session {
        deps,
        client,
        connected: false,
        sent: VecDeque::new(),
        by_pkid: HashMap::new(),
        in_flight: 0,
        last_sent: 0,
        caught_up: false,
    };
    let watchdog = deps.cfg.keep_alive * 2 + Duration::from_secs(5);
    let mut last_progress = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut hb_rx = deps.heartbeat.clone();
    let mut hb = tokio::time::interval(*hb_rx.borrow());
    let end = loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                s.goodbye(&mut ev_rx).await;
                break End::Shutdown;
            }
            ev = ev_rx.recv() => match ev {
                None => break End::Failed { why: "MQTT event loop task ended".into(), was_connected: s.connected },
                Some(Err(e)) => break End::Failed { why: format!("MQTT connection error: {e}"), was_connected: s.connected },
                Some(Ok(event)) => {
                    last_progress = Instant::now();
                    if let Err(why) = s.on_event(event).await {
                        break End::Failed { why, was_connected: s.connected };
                    }
                }
            },
            () = deps.kick.notified(), if s.connected => s.fill().await,
            _ = tick.tick() => {
                if s.connected {
                    s.fill().await;
                }
                let (waiting, age) = deps.store.delivered_waiting();
                if waiting >= ACK_BATCH || age.is_some_and(|a| a >= DELETE_AFTER) {
                    s.flush_acks().await;
                }
                if last_progress.elapsed() > watchdog {
                    break End::Failed {
                        why: format!("watchdog: no MQTT progress for {} s; rebuilding the client", watchdog.as_secs()),
                        was_connected: s.connected,
                    };
                }
            }
            _ = hb.tick() => if s.connected { s.heartbeat().await },
            Ok(()) = hb_rx.changed() => {
                hb = tokio::time::interval(*hb_rx.borrow());
            }
        }
    };
    s.flush_acks().await;
    poller.abort();
    end
}

impl Session<'_> {
    async fn on_event(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Incoming(Packet::ConnAck(ack)) => {
                if ack.code != ConnectReturnCode::Success {
                    return Err(format!("broker refused the connection: {:?}", ack.code));
                }
                self.connected = true;
                self.deps.health.cloud_connected();
                tracing::info!(session_present = ack.session_present, "MQTT link up");
                let gw = self.deps.gw;
                self.client
                    .try_subscribe(topic(gw, TopicKind::Cmd), QoS::AtLeastOnce)
                    .map_err(|e| format!("subscribe: {e}"))?;
                let state = sign(self.deps, Message::State(GatewayState { online: true }));
                self.client
                    .try_publish(topic(gw, TopicKind::State), QoS::AtLeastOnce, true, state)
                    .map_err(|e| format!("publish state: {e}"))?;
                self.sent.push_back(None);
                self.fill().await;
            }
            Event::Incoming(Packet::Publish(p))
                if p.topic == topic(self.deps.gw, TopicKind::Cmd) =>
            {
                match String::from_utf8(p.payload.to_vec()) {
                    Ok(text) => {
                        // Bounded: when the handler is behind, the link waits here.
                        if self.deps.commands.send(text).await.is_err() {
                            return Err("command handler stopped".into());
                        }
                    }
                    Err(_) => tracing::warn!("command payload is not UTF-8; dropped"),
                }
            }
            Event::Incoming(Packet::PubAck(a)) => {
                if let Some(seq) = self.by_pkid.remove(&a.pkid) {
                    self.in_flight = self.in_flight.saturating_sub(1);
                    // Deleted with the store's next commit, no fsync of its own.
                    self.deps.store.delivered(&[seq]);
                }
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(Some(seq)) = self.sent.pop_front() {
                    self.by_pkid.insert(pkid, seq);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Publishes outbox rows until `inflight` are unacknowledged.
    async fn fill(&mut self) {
        let window = usize::from(self.deps.cfg.inflight);
        while self.in_flight < window {
            let room = window - self.in_flight;
            let after = self.last_sent;
            let want = room.min(512);
            if self.caught_up {
                match self.deps.store.take_fresh(after, want) {
                    Some(rows) if rows.is_empty() => return,
                    Some(rows) => {
                        if !self.publish(rows) {
                            return;
                        }
                        continue;
                    }
                    // Rows were dropped from the list: read the outbox itself.
                    None => self.caught_up = false,
                }
            }
            let rows = match self
                .deps
                .store
                .call(move |db| db.outbox_batch(after, want))
                .await
            {
                Ok(Ok(rows)) => rows,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot read the outbox");
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "store stopped");
                    return;
                }
            };
            // Fewer than asked for: nothing committed after `after` was left out.
            self.caught_up = rows.len() < want;
            if rows.is_empty() {
                return;
            }
            if !self.publish(rows) {
                return;
            }
        }
    }

    /// Publishes rows in order; false when the request channel was full (the rest waits for
    /// the next tick, read from the outbox again).
    fn publish(&mut self, rows: Vec<OutRow>) -> bool {
        for row in rows {
            let t = topic(self.deps.gw, row.topic);
            match self.client.try_publish(t, QoS::AtLeastOnce, false, row.jws) {
                Ok(()) => {
                    self.sent.push_back(Some(row.seq));
                    self.in_flight += 1;
                    self.last_sent = row.seq;
                }
                Err(_) => {
                    self.caught_up = false;
                    return false;
                }
            }
        }
        true
    }

    /// Deletes the acknowledged rows no commit has taken along yet. Always before a new
    /// session reads the outbox from its start, so it does not publish them again.
    async fn flush_acks(&mut self) {
        if self.deps.store.delivered_waiting().0 == 0 {
            return;
        }
        // Rows not deleted are published again later; the cloud drops duplicates by id.
        if let Err(e) = self.deps.store.flush_delivered().await {
            tracing::warn!(error = %e, "cannot delete acknowledged outbox rows");
        }
    }

    async fn heartbeat(&mut self) {
        let stats = match self.deps.store.call(|db| db.outbox_stats()).await {
            Ok(Ok(s)) => s,
            _ => return,
        };
        let now = self.deps.clock.now_ms();
        let hb = Heartbeat {
            uptime_s: self.deps.health.uptime_s(),
            outbox_pending: stats.pending,
            outbox_oldest_age_s: stats.oldest_ms.map(|o| now.saturating_sub(o) / 1000),
            locks: self.deps.health.lock_statuses(),
        };
        let jws = sign(self.deps, Message::Heartbeat(hb));
        // Telemetry: if the request channel is full the heartbeat is dropped, never queued.
        if self
            .client
            .try_publish(
                topic(self.deps.gw, TopicKind::Heartbeat),
                QoS::AtMostOnce,
                false,
                jws,
            )
            .is_ok()
        {
            self.sent.push_back(None);
        }
    }

    /// Clean shutdown: say we are going offline (the Will is not sent on a clean
    /// disconnect), disconnect, and give the event loop a moment to write it out.
    async fn goodbye(
        &mut self,
        ev_rx: &mut mpsc::Receiver<Result<Event, rumqttc::ConnectionError>>,
    ) {
        if !self.connected {
            return;
        }
        let state = sign(self.deps, Message::State(GatewayState { online: false }));
        if self
            .client
            .try_publish(
                topic(self.deps.gw, TopicKind::State),
                QoS::AtLeastOnce,
                true,
                state,
            )
            .is_ok()
        {
            self.sent.push_back(None);
        }
        let _ = self.client.try_disconnect();
        let deadline = tokio::time::sleep(Duration::from_secs(2));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => break,
                ev = ev_rx.recv() => match ev {
                    Some(Ok(Event::Outgoing(Outgoing::Disconnect))) | None | Some(Err(_)) => break,
                    Some(Ok(other)) => { let _ = self.on_event(other).await; }
                }
            }
        }
        self.deps.health.cloud_lost("shut down");
    }
}
