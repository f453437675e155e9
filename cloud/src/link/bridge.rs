//! The MQTT bridge: the cloud's one connection to the broker. It consumes every gateway's
//! `state`, `heartbeat`, `event` and `ack` topics and feeds them to [`Ingest`] in batches,
//! and it is the handle [`crate::link::commands::Commands`] publishes `cmd` messages through.
//!
//! Shape: one task polls the rumqttc event loop (reconnecting with an exponential backoff;
//! the session is persistent and the subscriptions are made again on every ConnAck, so a
//! broker that lost them is covered too) and pushes each publish into a bounded queue. When
//! the queue is full the poller waits, which stops reading the socket: back-pressure reaches
//! the broker instead of memory growing. Batches close at `batch_max` messages or
//! `batch_wait_ms`, each applied in one [`Ingest::submit_many`] call (one transaction), up
//! to `workers` at once: on PostgreSQL each gateway has a lane ([`lane_of`]) so concurrent
//! batches touch disjoint gateways; on SQLite batches mix gateways (see [`batcher`]).
//!
//! Nothing is dropped silently. Acknowledgements are manual: a QoS 1 message is PUBACKed
//! only after ingest answered for it (applied, duplicate, or rejected and counted), so a
//! crash before the database commit means the broker redelivers it, and the redelivery is
//! dropped as a duplicate by its id if the commit had in fact happened. When ingest fails
//! (database down) the batch is retried with a backoff and never acknowledged meanwhile.
//! Messages that are not ours (bad topic, not UTF-8) are counted, logged and acknowledged.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dmr_protocol::topic::{self, TopicKind};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, Publish, QoS,
    SubscribeFilter, SubscribeReasonCode, Transport,
};
use tokio::sync::{Semaphore, mpsc, watch};
use uuid::Uuid;

use crate::AppState;
use crate::config::MqttConfig;
use crate::db::Backend;
use crate::error::ApiError;
use crate::link::ingest::{Outcome, Via};

/// The topic kinds the cloud consumes.
pub const CONSUMED: [TopicKind; 4] = [
    TopicKind::State,
    TopicKind::Heartbeat,
    TopicKind::Event,
    TopicKind::Ack,
];

/// The filters the bridge subscribes to.
pub fn filters(shared: bool) -> Vec<String> {
    CONSUMED
        .iter()
        .map(|k| {
            if shared {
                topic::shared(*k)
            } else {
                topic::all_gateways(*k)
            }
        })
        .collect()
}

/// Counters of the bridge, rendered into `/metrics`.
#[derive(Debug, Default)]
pub struct BridgeStats {
    pub received: AtomicU64,
    pub applied: AtomicU64,
    pub duplicates: AtomicU64,
    pub batches: AtomicU64,
    pub ingest_errors: AtomicU64,
    pub reconnects: AtomicU64,
    /// Messages queued or being applied, not yet answered.
    pub pending: AtomicU64,
    /// Sum of the time batches spent in ingest, in microseconds.
    pub apply_micros: AtomicU64,
    /// Rejected messages by reason.
    rejected: Mutex<BTreeMap<String, u64>>,
}

impl BridgeStats {
    pub fn reject(&self, reason: &str) {
        let mut m = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(reason.to_string()).or_default() += 1;
    }

    /// Rejections so far by reason (tests read this).
    pub fn rejected(&self) -> BTreeMap<String, u64> {
        self.rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn render(&self, connected: bool, out: &mut String) {
        let c = |name: &str, help: &str, v: u64, out: &mut String| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {v}");
        };
        let g = |name: &str, help: &str, v: u64, out: &mut String| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {v}");
        };
        g(
            "dmr_mqtt_connected",
            "Whether the bridge is connected to the broker.",
            u64::from(connected),
            out,
        );
        c(
            "dmr_mqtt_reconnects_total",
            "Broker connections lost.",
            self.reconnects.load(Ordering::Relaxed),
            out,
        );
        c(
            "dmr_mqtt_messages_received_total",
            "Gateway messages received from the broker.",
            self.received.load(Ordering::Relaxed),
            out,
        );
        c(
            "dmr_mqtt_messages_applied_total",
            "Gateway messages received over MQTT and applied.",
            self.applied.load(Ordering::Relaxed),
            out,
        );
        c(
            "dmr_mqtt_messages_duplicate_total",
            "Gateway messages received over MQTT that were already applied (dropped by id).",
            self.duplicates.load(Ordering::Relaxed),
            out,
        );
        let _ = writeln!(
            out,
            "# HELP dmr_mqtt_messages_rejected_total Gateway messages refused (signature, signer, topic, replay), by reason; nothing changed."
        );
        let _ = writeln!(out, "# TYPE dmr_mqtt_messages_rejected_total counter");
        for (reason, n) in self.rejected() {
            let _ = writeln!(
                out,
                "dmr_mqtt_messages_rejected_total{{reason=\"{reason}\"}} {n}"
            );
        }
        c(
            "dmr_mqtt_batches_total",
            "Batches handed to ingest.",
            self.batches.load(Ordering::Relaxed),
            out,
        );
        c(
            "dmr_mqtt_ingest_errors_total",
            "Batches ingest failed on (database errors); they are retried, never acknowledged meanwhile.",
            self.ingest_errors.load(Ordering::Relaxed),
            out,
        );
        g(
            "dmr_mqtt_messages_pending",
            "Messages received and not yet answered by ingest.",
            self.pending.load(Ordering::Relaxed),
            out,
        );
        let _ = writeln!(
            out,
            "# HELP dmr_mqtt_apply_seconds_total Time batches spent in ingest (verify + apply)."
        );
        let _ = writeln!(out, "# TYPE dmr_mqtt_apply_seconds_total counter");
        let _ = writeln!(
            out,
            "dmr_mqtt_apply_seconds_total {}",
            self.apply_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
    }
}

/// The broker connection shared by the bridge (consuming) and commands (publishing).
pub struct MqttLink {
    client: AsyncClient,
    event_loop: Mutex<Option<EventLoop>>,
    cfg: MqttConfig,
    connected: AtomicBool,
    pub stats: BridgeStats,
}

impl std::fmt::Debug for MqttLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttLink")
            .field("url", &self.cfg.url)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

/// rumqttc builds its TLS configuration with rustls' process-wide default provider. The
/// workspace enables both `ring` and `aws-lc-rs` in rustls, so rustls cannot pick one and
/// would panic at the first TLS connect; naming it once removes the ambiguity.
fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The client id when the config leaves it empty: stable across restarts of one host (the
/// persistent session and its queued messages survive a restart), distinct between hosts.
fn default_client_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    format!("dmr-cloud-{}", if host.is_empty() { "host" } else { &host })
}

impl MqttLink {
    /// Builds the client; nothing connects until [`run`] polls the event loop.
    pub fn new(cfg: &MqttConfig) -> anyhow::Result<Arc<MqttLink>> {
        let client_id = if cfg.client_id.is_empty() {
            default_client_id()
        } else {
            cfg.client_id.clone()
        };
        let mut opts = MqttOptions::new(client_id, cfg.host.clone(), cfg.port);
        opts.set_keep_alive(Duration::from_secs(cfg.keep_alive_secs));
        // Persistent session: QoS 1 messages published while the cloud is away are queued
        // by the broker and delivered when it is back.
        opts.set_clean_session(false);
        opts.set_manual_acks(true);
        opts.set_inflight(cfg.inflight);
        let max = dmr_protocol::jws::MAX_COMPACT_LEN + 4096;
        opts.set_max_packet_size(max, max);
        opts.set_credentials(
            cfg.username.clone(),
            cfg.password
                .as_ref()
                .map(|p| p.expose().clone())
                .unwrap_or_default(),
        );
        if cfg.tls {
            install_crypto_provider();
            let transport = match &cfg.ca_file {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|e| {
                        anyhow::anyhow!("reading the MQTT CA file {}: {e}", path.display())
                    })?;
                    Transport::tls(pem, None, None)
                }
                None => Transport::tls_with_default_config(),
            };
            opts.set_transport(transport);
        }
        // Room for one manual ack per in-flight message plus commands, so workers acking
        // never wait on a poller that waits on them.
        let cap = usize::from(cfg.inflight) + cfg.queue.min(65_536) + 1024;
        let (client, mut event_loop) = AsyncClient::new(opts, cap);
        let mut net = event_loop.network_options();
        net.set_connection_timeout(cfg.keep_alive_secs.clamp(5, 30));
        // No Nagle: a `cmd unlock` is a small publish that should leave at once, not wait
        // for the broker's (delayed, up to 40 ms) TCP ACK of the previous packet.
        net.set_tcp_nodelay(true);
        event_loop.set_network_options(net);
        Ok(Arc::new(MqttLink {
            client,
            event_loop: Mutex::new(Some(event_loop)),
            cfg: cfg.clone(),
            connected: AtomicBool::new(false),
            stats: BridgeStats::default(),
        }))
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Publishes at QoS 1 (commands). Refuses while the broker is unreachable rather than
    /// queueing: a console user should hear now that the gateway cannot be reached.
    pub async fn publish(&self, topic: String, payload: String) -> Result<(), ApiError> {
        if !self.is_connected() {
            return Err(ApiError::Unavailable {
                code: "broker_unavailable",
                message: "the cloud is not connected to the MQTT broker; try again shortly".into(),
            });
        }
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| ApiError::Unavailable {
                code: "broker_unavailable",
                message: format!("cannot hand the command to the MQTT client: {e}"),
            })
    }

    /// The Prometheus text of the bridge.
    pub fn render_metrics(&self, out: &mut String) {
        self.stats.render(self.is_connected(), out);
    }
}

/// Runs the bridge until `stop` turns true: polls the broker, batches, applies, acks.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let link = state.mqtt.clone();
    let taken = link
        .event_loop
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let Some(mut event_loop) = taken else {
        tracing::error!("MQTT bridge started twice; the second one does nothing");
        return;
    };
    let cfg = link.cfg.clone();
    let (tx, rx) = mpsc::channel::<Publish>(cfg.queue);
    let batcher = tokio::spawn(batcher(state.clone(), rx));
    let min_backoff = Duration::from_millis(250);
    let mut backoff = min_backoff;
    tracing::info!(url = %cfg.url, shared = cfg.shared_subscription, "MQTT bridge starting");
    loop {
        let event = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            ev = event_loop.poll() => ev,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if ack.code != ConnectReturnCode::Success {
                    tracing::error!(code = ?ack.code, "broker refused the cloud's connection");
                    continue;
                }
                backoff = min_backoff;
                link.connected.store(true, Ordering::Relaxed);
                tracing::info!(
                    session_present = ack.session_present,
                    "MQTT bridge connected"
                );
                let subs = filters(cfg.shared_subscription)
                    .into_iter()
                    .map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce));
                if let Err(e) = link.client.try_subscribe_many(subs) {
                    tracing::error!(error = %e, "cannot queue the subscriptions");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                for code in &ack.return_codes {
                    if matches!(code, SubscribeReasonCode::Failure) {
                        tracing::error!(
                            "broker refused a gateway-topic subscription; check the cloud account's ACL"
                        );
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                link.stats.received.fetch_add(1, Ordering::Relaxed);
                link.stats.pending.fetch_add(1, Ordering::Relaxed);
                // Waiting here (queue full) stops reading the socket: back-pressure.
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    sent = tx.send(p) => if sent.is_err() {
                        tracing::error!("MQTT batcher stopped; bridge ends");
                        break;
                    },
                }
            }
            Ok(_) => {}
            Err(e) => {
                if link.connected.swap(false, Ordering::Relaxed) {
                    link.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "MQTT bridge: broker connection down");
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    link.connected.store(false, Ordering::Relaxed);
    drop(tx);
    // Let batches in flight finish (and ack) before disconnecting; unacknowledged ones are
    // redelivered to whichever instance takes over.
    match tokio::time::timeout(Duration::from_secs(10), batcher).await {
        Ok(_) => {}
        Err(_) => tracing::warn!("MQTT batches still in flight after 10 s; leaving them"),
    }
    let _ = link.client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while event_loop.poll().await.is_ok() {}
    })
    .await;
    tracing::info!("MQTT bridge stopped");
}

/// Feeds ingest: by gateway lanes on PostgreSQL ([`lanes`]), mixed batches on SQLite
/// ([`mixed`]).
///
/// Measured with `ingest_mqtt` on the same machine and minute (docs/benchmarks.md): lanes
/// took PostgreSQL from 5.6–11.2k to 11.9–12.9k msg/s (no more row-lock waits between
/// concurrent batches), but cost SQLite about 20% (8.0–9.0k against 10.0–11.2k): SQLite
/// has one write lock for the whole file, so there is no row contention to remove, and
/// per-lane batches are smaller.
async fn batcher(state: AppState, rx: mpsc::Receiver<Publish>) {
    match state.db.backend {
        Backend::Postgres => lanes(state, rx).await,
        Backend::Sqlite => mixed(state, rx).await,
    }
}

/// SQLite: one batch at a time is collected from every gateway's messages, and up to
/// `workers` batches are verified and applied at once (verification overlaps the apply).
async fn mixed(state: AppState, mut rx: mpsc::Receiver<Publish>) {
    let cfg = &state.mqtt.cfg;
    let workers = cfg.workers.max(1);
    let sem = Arc::new(Semaphore::new(workers));
    while let Some(first) = rx.recv().await {
        let batch = collect(&state, &mut rx, first).await;
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let state = state.clone();
        tokio::spawn(async move {
            apply_batch(&state, batch).await;
            drop(permit);
        });
    }
    // Wait for every batch in flight.
    let _ = sem.acquire_many(u32::try_from(workers).unwrap_or(1)).await;
}

/// Closes a batch at `batch_max` messages or `batch_wait_ms` after its first.
async fn collect(
    state: &AppState,
    rx: &mut mpsc::Receiver<Publish>,
    first: Publish,
) -> Vec<Publish> {
    let cfg = &state.mqtt.cfg;
    let wait = Duration::from_millis(cfg.batch_wait_ms);
    let mut batch = Vec::with_capacity(cfg.batch_max.min(1024));
    batch.push(first);
    let deadline = tokio::time::Instant::now() + wait;
    while batch.len() < cfg.batch_max {
        match rx.try_recv() {
            Ok(p) => batch.push(p),
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(p)) => batch.push(p),
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
    batch
}

/// PostgreSQL: routes every publish to its gateway's lane ([`lane_of`]) and waits for the
/// lanes to finish when the poller stops.
async fn lanes(state: AppState, mut rx: mpsc::Receiver<Publish>) {
    let cfg = &state.mqtt.cfg;
    let lanes = cfg.workers.max(1);
    let room = cfg.batch_max.max(1);
    let mut senders = Vec::with_capacity(lanes);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..lanes {
        let (tx, lane_rx) = mpsc::channel::<Publish>(room);
        senders.push(tx);
        tasks.spawn(lane(state.clone(), lane_rx));
    }
    while let Some(p) = rx.recv().await {
        // A topic that does not parse goes to lane 0, where apply_batch counts and acks it.
        let i = topic::parse(&p.topic)
            .map(|(gw, _)| lane_of(gw, lanes))
            .unwrap_or(0);
        // A full lane waits here, which fills the poller's queue: back-pressure as before.
        if senders[i].send(p).await.is_err() {
            break;
        }
    }
    drop(senders);
    while tasks.join_next().await.is_some() {}
}

/// The lane that applies a gateway's messages: the same gateway always gets the same lane.
///
/// Why lanes: batches applied at once used to mix every gateway, so two of them updated the
/// same gateway and lock rows and waited on each other's PostgreSQL row locks (sampled in
/// the order-flow bench), and a gateway's door `closed` could be applied before its
/// `opened`. With one lane per worker, a gateway's messages are applied one batch at a time
/// and in arrival order, and concurrent batches touch disjoint gateways.
pub fn lane_of(gateway: Uuid, lanes: usize) -> usize {
    // The low 64 bits are random in both v4 and v7 ids.
    let low = gateway.as_u128() as u64;
    usize::try_from(low % lanes.max(1) as u64).unwrap_or(0)
}

/// One lane: collects a batch, applies it, and only then starts the next.
async fn lane(state: AppState, mut rx: mpsc::Receiver<Publish>) {
    while let Some(first) = rx.recv().await {
        let batch = collect(&state, &mut rx, first).await;
        apply_batch(&state, batch).await;
    }
}

/// Why a publish never reached ingest.
fn precheck(p: &Publish) -> Result<(Uuid, &str), &'static str> {
    let (gw, kind) = topic::parse(&p.topic).map_err(|_| "bad_topic")?;
    if !kind.from_gateway() {
        return Err("bad_topic");
    }
    let text = std::str::from_utf8(&p.payload).map_err(|_| "not_utf8")?;
    Ok((gw, text))
}

/// Verifies and applies one batch, then acknowledges every message in it.
pub async fn apply_batch(state: &AppState, batch: Vec<Publish>) {
    let link = &state.mqtt;
    let stats = &link.stats;
    stats.batches.fetch_add(1, Ordering::Relaxed);
    // Every message is checked against the gateway its topic names; the whole batch,
    // whatever mix of gateways, is verified and applied in one ingest call (one transaction).
    let mut items: Vec<(Uuid, &str)> = Vec::with_capacity(batch.len());
    let mut index: Vec<usize> = Vec::with_capacity(batch.len());
    for (i, p) in batch.iter().enumerate() {
        match precheck(p) {
            Ok((gw, text)) => {
                items.push((gw, text));
                index.push(i);
            }
            Err(reason) => {
                stats.reject(reason);
                tracing::warn!(topic = %p.topic.chars().take(200).collect::<String>(), reason, "MQTT message refused before verification");
            }
        }
    }
    let started = Instant::now();
    let outcomes = submit_until_done(state, &items).await;
    for _ in outcomes.len()..items.len() {
        stats.reject("ingest_mismatch");
    }
    for (i, outcome) in index.iter().zip(outcomes) {
        match outcome {
            Outcome::Applied => {
                stats.applied.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Duplicate => {
                stats.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Rejected(reason) => {
                stats.reject(reason.as_str());
                tracing::warn!(topic = %batch[*i].topic, reason = %reason, "MQTT message rejected; nothing changed");
            }
        }
    }
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    stats.apply_micros.fetch_add(micros, Ordering::Relaxed);
    for p in &batch {
        // QoS 0 messages have nothing to acknowledge; rumqttc ignores them.
        if p.qos != QoS::AtMostOnce
            && let Err(e) = link.client.ack(p).await
        {
            tracing::warn!(error = %e, "cannot acknowledge an MQTT message; the broker will redeliver it");
        }
    }
    stats
        .pending
        .fetch_sub(u64::try_from(batch.len()).unwrap_or(0), Ordering::Relaxed);
}

/// Ingest, retried with a backoff while it fails (database unreachable): the messages stay
/// unacknowledged meanwhile, so nothing is lost, and the full queue pushes back on the broker.
async fn submit_until_done(state: &AppState, items: &[(Uuid, &str)]) -> Vec<Outcome> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match state.ingest.submit_many(Via::Mqtt, items).await {
            Ok(outcomes) => {
                if outcomes.len() != items.len() {
                    // A contract breach; retrying would give the same answer.
                    tracing::error!(
                        expected = items.len(),
                        got = outcomes.len(),
                        "ingest answered a different number of outcomes"
                    );
                }
                return outcomes;
            }
            Err(e) => {
                state
                    .mqtt
                    .stats
                    .ingest_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = ?e, messages = items.len(), retry_in_ms = backoff.as_millis() as u64, "ingest failed; retrying the batch");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod lane_tests {
    use super::*;

    #[test]
    fn a_gateway_always_gets_the_same_lane_and_lanes_share_the_gateways() {
        let mut counts = [0usize; 4];
        for _ in 0..4_000 {
            let gw = Uuid::now_v7();
            let lane = lane_of(gw, 4);
            assert_eq!(lane, lane_of(gw, 4));
            counts[lane] += 1;
        }
        // 1,000 expected per lane; v7 ids must not all land together.
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        assert_eq!(lane_of(Uuid::new_v4(), 1), 0);
        assert_eq!(lane_of(Uuid::new_v4(), 0), 0);
    }
}
