//! MQTT broker side of the gateway link: the credentials (`auth`), the access policy
//! (`acl`), the embedded broker that `serve` starts by default so one process runs
//! everything, and the EMQX HTTP hooks (`hooks`) for clusters that use EMQX instead.
//! Both brokers enforce the same rules: a gateway publishes only under its own prefix and
//! subscribes only to its own command topic; the cloud (`dmr-cloud`) may do anything.

pub mod acl;
pub mod auth;
pub mod hooks;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::Context as _;

use crate::config::{Config, Secret};

/// Hook counters for `/metrics`.
#[derive(Debug, Default)]
pub struct HookCounters {
    pub hook_auth_allowed: AtomicU64,
    pub hook_auth_denied: AtomicU64,
    pub hook_acl_allowed: AtomicU64,
    pub hook_acl_denied: AtomicU64,
    pub hook_bad_secret: AtomicU64,
}

/// Broker-related shared state, in `AppState::broker`.
#[derive(Debug)]
pub struct BrokerState {
    pub auth: Arc<auth::BrokerAuth>,
    pub hook_secret: Option<Secret<String>>,
    pub counters: HookCounters,
    /// The embedded broker's counters, once it runs.
    pub embedded: OnceLock<Arc<dmr_broker::Stats>>,
}

impl BrokerState {
    pub fn new(auth: Arc<auth::BrokerAuth>, hook_secret: Option<Secret<String>>) -> BrokerState {
        BrokerState {
            auth,
            hook_secret,
            counters: HookCounters::default(),
            embedded: OnceLock::new(),
        }
    }

    /// Prometheus text for the hooks and, when it runs, the embedded broker.
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.push_str("# HELP dmr_broker_hook_auth_total EMQX authentication hook answers.\n");
        out.push_str("# TYPE dmr_broker_hook_auth_total counter\n");
        let _ = writeln!(
            out,
            "dmr_broker_hook_auth_total{{result=\"allow\"}} {}",
            g(&c.hook_auth_allowed)
        );
        let _ = writeln!(
            out,
            "dmr_broker_hook_auth_total{{result=\"deny\"}} {}",
            g(&c.hook_auth_denied)
        );
        out.push_str("# HELP dmr_broker_hook_acl_total EMQX authorization hook answers.\n");
        out.push_str("# TYPE dmr_broker_hook_acl_total counter\n");
        let _ = writeln!(
            out,
            "dmr_broker_hook_acl_total{{result=\"allow\"}} {}",
            g(&c.hook_acl_allowed)
        );
        let _ = writeln!(
            out,
            "dmr_broker_hook_acl_total{{result=\"deny\"}} {}",
            g(&c.hook_acl_denied)
        );
        out.push_str("# HELP dmr_broker_hook_bad_secret_total Hook calls with a wrong secret.\n");
        out.push_str("# TYPE dmr_broker_hook_bad_secret_total counter\n");
        let _ = writeln!(
            out,
            "dmr_broker_hook_bad_secret_total {}",
            g(&c.hook_bad_secret)
        );
        if let Some(stats) = self.embedded.get() {
            let s = stats.snapshot();
            out.push_str("# HELP dmr_mqtt_connections Clients connected to the embedded broker.\n");
            out.push_str("# TYPE dmr_mqtt_connections gauge\n");
            let _ = writeln!(out, "dmr_mqtt_connections {}", s.connections_current);
            out.push_str("# HELP dmr_mqtt_events_total Embedded broker events by kind.\n");
            out.push_str("# TYPE dmr_mqtt_events_total counter\n");
            for (kind, n) in [
                ("connection", s.connections_total),
                ("connection_refused_limit", s.connections_refused_limit),
                ("connect_denied", s.connect_denied),
                ("publish_received", s.publishes_received),
                ("publish_denied", s.publishes_denied),
                ("subscribe_denied", s.subscriptions_denied),
                ("message_delivered", s.messages_delivered),
                ("message_dropped", s.messages_dropped),
                ("slow_disconnect", s.slow_disconnects),
                ("oversize_disconnect", s.oversize_disconnects),
                ("protocol_error", s.protocol_errors),
                ("keepalive_timeout", s.keepalive_timeouts),
                ("will_published", s.wills_published),
                ("takeover", s.takeovers),
                // A gateway's event or ack found no one to take it (the bridge was away):
                // its connection was closed unacknowledged and the gateway sends it again.
                ("undelivered_disconnect", s.undelivered_disconnects),
            ] {
                let _ = writeln!(out, "dmr_mqtt_events_total{{kind=\"{kind}\"}} {n}");
            }
        }
        out
    }
}

/// A fresh random secret (for the cloud's MQTT password when none is configured).
pub fn new_secret() -> String {
    crate::auth::store::new_refresh_secret()
}

/// The cloud's MQTT password: configured, or generated once and kept in `app_secrets` so
/// every instance sharing the database (and the bridge) agrees on it.
pub async fn cloud_password(config: &Config, db: &crate::db::Db) -> anyhow::Result<Secret<String>> {
    Ok(match &config.mqtt.password {
        Some(p) => p.clone(),
        None => Secret::new(
            db.shared_secret("mqtt_cloud_password", new_secret)
                .await
                .context("the generated MQTT cloud password")?,
        ),
    })
}

/// Starts the embedded broker if the configuration enables it (the default).
pub async fn start_embedded(state: &crate::AppState) -> anyhow::Result<Option<dmr_broker::Broker>> {
    let c = &state.config.mqtt.embedded;
    if !c.enabled {
        return Ok(None);
    }
    let config = dmr_broker::BrokerConfig {
        listen: c.listen,
        max_connections: c.max_connections,
        max_packet_bytes: c.max_packet_bytes,
        // A gateway's outbox message is PUBACKed only once the bridge has committed it
        // (acl.rs, needs_consumer): broker and bridge share this process, so a PUBACK given
        // earlier would be lost with it.
        ack_after_delivery: true,
        ..dmr_broker::BrokerConfig::default()
    };
    let authenticator = Arc::new(auth::EmbeddedAuthenticator {
        auth: state.broker.auth.clone(),
    });
    let broker = dmr_broker::Broker::start(config, authenticator)
        .await
        .with_context(|| {
            format!(
                "starting the embedded MQTT broker on {} (set mqtt.embedded.listen, or \
                 mqtt.embedded.enabled = false to use an external broker)",
                c.listen
            )
        })?;
    let _ = state.broker.embedded.set(broker.stats().clone());
    Ok(Some(broker))
}
