//! Operations endpoints: `/health` (is the database answering, is the MQTT broker up?) and
//! `/metrics` (Prometheus text).

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::AppState;

/// The broker part of `/health`: with the embedded broker (the default), its listener must
/// be accepting; with an external broker, the cloud's bridge must be connected to it.
/// "disabled" when the gateway link is switched off (nothing to check).
fn broker_check(state: &AppState) -> &'static str {
    let mqtt = &state.config.mqtt;
    if !mqtt.enabled {
        return "disabled";
    }
    let up = if mqtt.embedded.enabled {
        state
            .broker
            .embedded
            .get()
            .is_some_and(|s| s.listening.load(std::sync::atomic::Ordering::Relaxed))
    } else {
        state.mqtt.is_connected()
    };
    if up { "ok" } else { "down" }
}

/// 200 when the database answers and the broker is up; otherwise 503 naming the failed
/// part(s) in `failed`, so a load balancer takes out an instance that cannot serve
/// gateways (no broker: heartbeats, events and commands stop) as well as one that cannot
/// reach its database.
pub async fn health(State(state): State<AppState>) -> Response {
    let broker = broker_check(&state);
    let database = match state.db.ping().await {
        Ok(()) => "ok",
        Err(e) => {
            tracing::warn!(error = format!("{e:#}"), "health check: database down");
            "down"
        }
    };
    if broker == "down" {
        tracing::warn!(
            embedded = state.config.mqtt.embedded.enabled,
            "health check: MQTT broker down"
        );
    }
    let failed: Vec<&str> = [("database", database), ("broker", broker)]
        .into_iter()
        .filter(|(_, v)| *v == "down")
        .map(|(k, _)| k)
        .collect();
    let checks = json!({ "database": database, "broker": broker });
    if failed.is_empty() {
        (
            StatusCode::OK,
            Json(json!({ "status": "ok", "checks": checks })),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "checks": checks, "failed": failed })),
        )
            .into_response()
    }
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut text = state.metrics.render();
    text.push_str(&state.link_metrics.render());
    text.push_str(&crate::link::metrics::render_gauges(&state.db).await);
    state.mqtt.render_metrics(&mut text);
    state.commands.render_metrics(&mut text);
    text.push_str(&state.broker.render_metrics());
    crate::orders::render_metrics(&mut text);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
