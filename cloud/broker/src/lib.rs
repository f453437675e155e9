//! `dmr-broker`: the small MQTT 3.1.1 broker that `dmr-cloud serve` runs in its own process,
//! so one command runs everything. It exists because the cloud needs per-client topic ACLs
//! decided by its own database (a gateway may only publish under its own prefix and only
//! subscribe to its own command topic), which rumqttd 0.20 cannot express: its only hook is
//! a yes/no at CONNECT.
//!
//! Scope, on purpose: MQTT 3.1.1 over plain TCP (TLS belongs to a front proxy or to an
//! external broker such as EMQX); QoS 0 and 1 end to end, QoS 2 accepted from publishers
//! (PUBREC/PUBREL/PUBCOMP, routed once) but granted as QoS 1 to subscribers; retained
//! messages; Last Will on any end that is not a DISCONNECT (kept-alive timeout, dropped
//! socket, protocol or ACL violation), checked against the ACL at CONNECT; session takeover
//! by client id (the old connection is closed without its will); `$share/<group>/<filter>`
//! shared subscriptions (round robin within a group). Every session is clean: nothing is
//! kept for a client that is gone (CONNACK never says session present), so a gateway
//! re-subscribes on reconnect and catches up through HTTP sync.
//!
//! With `ack_after_delivery` (the cloud turns it on), a QoS 1 publish to a topic the ACL says
//! must reach a consumer is PUBACKed only once its subscribers have PUBACKed their copies
//! (see `ack.rs`): a gateway forgets an event when it is acknowledged, and broker and
//! cloud share a process, so an earlier PUBACK would die with that process.
//!
//! Authentication and authorisation are the embedder's: an [`Authenticator`] answers each
//! CONNECT with an [`Acl`] for that connection. A PUBLISH the ACL refuses closes the
//! connection (MQTT-3.3.5-2 allows a positive ack or a close; closing makes a misbehaving
//! gateway visible instead of silently losing its data) and is counted; a refused
//! subscription gets return code 0x80 in the SUBACK.
//!
//! Memory is bounded per client: a subscriber's queue holds `queue_capacity` messages and
//! `inflight_window` unacknowledged QoS 1 messages. When a queue is full the publisher is
//! throttled (the broker stops reading from it until there is room, so TCP pushes back on
//! the sender); a subscriber that makes no room within five seconds is disconnected rather
//! than buffered without limit. Packets larger than `max_packet_bytes` close the
//! connection before their body is read.

mod ack;
mod conn;
mod router;
pub mod topic;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// What a connection may do, decided once at CONNECT.
pub trait Acl: Send + Sync + fmt::Debug {
    /// May it publish to this topic name (Last Will included)?
    fn may_publish(&self, topic: &str) -> bool;
    /// May it subscribe to this filter, exactly as sent (a `$share/<group>/` prefix included)?
    fn may_subscribe(&self, filter: &str) -> bool;
    /// With [`BrokerConfig::ack_after_delivery`]: must a QoS 1 publish to this topic reach a
    /// QoS 1 subscriber before the publisher may forget it? If so, its PUBACK waits until
    /// every QoS 1 subscriber acknowledged its copy, and if none is subscribed or a copy is
    /// lost, the publisher's connection is closed unacknowledged, so it keeps the message
    /// and sends it again later. Default: no (PUBACK as soon as the message is queued).
    fn needs_consumer(&self, _topic: &str) -> bool {
        false
    }
}

/// An ACL that allows everything (tests, trusted local clients).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Acl for AllowAll {
    fn may_publish(&self, _topic: &str) -> bool {
        true
    }
    fn may_subscribe(&self, _filter: &str) -> bool {
        true
    }
}

/// The credentials of one CONNECT.
#[derive(Debug, Clone)]
pub struct ConnectInfo {
    pub client_id: String,
    pub username: Option<String>,
    /// Never logged.
    pub password: Option<String>,
    pub peer: SocketAddr,
}

/// The answer to a CONNECT.
#[derive(Debug, Clone)]
pub enum AuthDecision {
    Allow(Arc<dyn Acl>),
    /// CONNACK return code 4.
    BadCredentials,
    /// CONNACK return code 5.
    NotAuthorized,
    /// The authenticator could not decide (its database is down): CONNACK code 3, so the
    /// client retries later instead of concluding its password is wrong.
    Unavailable,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Decides who may connect, and with which rights.
pub trait Authenticator: Send + Sync + fmt::Debug + 'static {
    fn authenticate<'a>(&'a self, info: &'a ConnectInfo) -> BoxFuture<'a, AuthDecision>;
}

/// Tunables; [`BrokerConfig::default`] suits tests and the single-process default.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub listen: SocketAddr,
    pub max_connections: usize,
    /// Largest accepted packet (its remaining length), in bytes.
    pub max_packet_bytes: usize,
    /// Messages queued per subscriber before it is disconnected as too slow.
    pub queue_capacity: usize,
    /// Unacknowledged QoS 1 messages in flight per subscriber.
    pub inflight_window: usize,
    /// Time from TCP accept to a complete CONNECT.
    pub connect_timeout: Duration,
    /// Time a single socket write may take before the peer counts as stuck.
    pub write_timeout: Duration,
    /// For topics the publisher's [`Acl::needs_consumer`] names: PUBACK a QoS 1 publish only
    /// once every QoS 1 subscriber that got a copy has PUBACKed it; a copy that is lost, or
    /// no subscriber at all, closes the publisher's connection instead (see `ack.rs`).
    /// Off: PUBACK as soon as the message is queued (plain MQTT broker behaviour).
    pub ack_after_delivery: bool,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            max_connections: 10_000,
            max_packet_bytes: 256 * 1024,
            queue_capacity: 8192,
            inflight_window: 1000,
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            ack_after_delivery: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Counters for `/metrics` and the tests. Monotonic except `connections_current`.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections_total: AtomicU64,
    pub connections_current: AtomicU64,
    pub connections_refused_limit: AtomicU64,
    pub connect_denied: AtomicU64,
    pub publishes_received: AtomicU64,
    pub publishes_denied: AtomicU64,
    pub subscriptions_denied: AtomicU64,
    pub messages_delivered: AtomicU64,
    pub messages_dropped: AtomicU64,
    pub slow_disconnects: AtomicU64,
    pub oversize_disconnects: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub keepalive_timeouts: AtomicU64,
    pub wills_published: AtomicU64,
    pub takeovers: AtomicU64,
    /// Publisher connections closed because a copy of a message of theirs was lost
    /// (`ack_after_delivery`).
    pub undelivered_disconnects: AtomicU64,
    /// Whether the accept loop is running (the listener is alive): `/health` reads it.
    pub listening: std::sync::atomic::AtomicBool,
}

/// Clears [`Stats::listening`] however the accept loop ends (stop, or a panic).
struct ListeningGuard(Arc<Stats>);

impl Drop for ListeningGuard {
    fn drop(&mut self) {
        self.0.listening.store(false, Ordering::Relaxed);
    }
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub connections_total: u64,
    pub connections_current: u64,
    pub connections_refused_limit: u64,
    pub connect_denied: u64,
    pub publishes_received: u64,
    pub publishes_denied: u64,
    pub subscriptions_denied: u64,
    pub messages_delivered: u64,
    pub messages_dropped: u64,
    pub slow_disconnects: u64,
    pub oversize_disconnects: u64,
    pub protocol_errors: u64,
    pub keepalive_timeouts: u64,
    pub wills_published: u64,
    pub takeovers: u64,
    pub undelivered_disconnects: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            connections_total: g(&self.connections_total),
            connections_current: g(&self.connections_current),
            connections_refused_limit: g(&self.connections_refused_limit),
            connect_denied: g(&self.connect_denied),
            publishes_received: g(&self.publishes_received),
            publishes_denied: g(&self.publishes_denied),
            subscriptions_denied: g(&self.subscriptions_denied),
            messages_delivered: g(&self.messages_delivered),
            messages_dropped: g(&self.messages_dropped),
            slow_disconnects: g(&self.slow_disconnects),
            oversize_disconnects: g(&self.oversize_disconnects),
            protocol_errors: g(&self.protocol_errors),
            keepalive_timeouts: g(&self.keepalive_timeouts),
            wills_published: g(&self.wills_published),
            takeovers: g(&self.takeovers),
            undelivered_disconnects: g(&self.undelivered_disconnects),
        }
    }
}

/// What every connection task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: BrokerConfig,
    pub auth: Arc<dyn Authenticator>,
    pub router: Mutex<router::Router>,
    pub stats: Arc<Stats>,
}

/// A running broker. Dropping it does not stop it; call [`Broker::shutdown`].
#[derive(Debug)]
pub struct Broker {
    addr: SocketAddr,
    stats: Arc<Stats>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Broker {
    /// Binds the listener and starts accepting. Port 0 picks a free port
    /// ([`Broker::local_addr`] tells which).
    pub async fn start(
        config: BrokerConfig,
        auth: Arc<dyn Authenticator>,
    ) -> Result<Broker, BrokerError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| BrokerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| BrokerError::Bind {
            addr: config.listen,
            source,
        })?;
        let stats = Arc::new(Stats::default());
        let shared = Arc::new(Shared {
            config,
            auth,
            router: Mutex::new(router::Router::default()),
            stats: stats.clone(),
        });
        let (stop, stop_rx) = watch::channel(false);
        stats.listening.store(true, Ordering::Relaxed);
        let task = tokio::spawn(accept_loop(listener, shared.clone(), stop_rx));
        tracing::info!(%addr, "embedded MQTT broker listening");
        Ok(Broker {
            addr,
            stats,
            shared,
            stop,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Clients connected and authenticated right now.
    pub fn clients(&self) -> usize {
        self.router().connected()
    }

    /// Topics holding a retained message.
    pub fn retained_topics(&self) -> usize {
        self.router().retained_count()
    }

    fn router(&self) -> std::sync::MutexGuard<'_, router::Router> {
        self.shared
            .router
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stops accepting, closes every connection (no wills: the broker, not the clients,
    /// is going away) and waits up to five seconds for the connection tasks.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let _listening = ListeningGuard(shared.stats.clone());
    let limit = Arc::new(Semaphore::new(shared.config.max_connections));
    let mut tasks = JoinSet::new();
    let mut next_id: u64 = 0;
    // Each connection watches its own receiver; the loop watches this clone.
    let conn_stop = stop.clone();
    loop {
        while tasks.try_join_next().is_some() {}
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "MQTT accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    shared.stats.connections_refused_limit.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, "MQTT connection refused: max_connections reached");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                next_id += 1;
                let shared = shared.clone();
                let stop = conn_stop.clone();
                let id = next_id;
                tasks.spawn(async move {
                    shared.stats.connections_total.fetch_add(1, Ordering::Relaxed);
                    shared.stats.connections_current.fetch_add(1, Ordering::Relaxed);
                    conn::run(stream, peer, id, &shared, stop).await;
                    shared.stats.connections_current.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    shared.stats.listening.store(false, Ordering::Relaxed);
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("MQTT connections did not close within 5 s; aborting them");
        tasks.abort_all();
    }
    tracing::info!("embedded MQTT broker stopped");
}
