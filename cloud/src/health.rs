//! Operations endpoints: `/health` (is the database answering? the MQTT broker joins this
//! check with the gateway link) and `/metrics` (Prometheus text).

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::AppState;

/// The database decides the status code; the broker is reported but does not fail the
/// check: with the broker down the API still works, and a load balancer that pulled every
/// instance on a broker blip would turn a partial outage into a full one.
pub async fn health(State(state): State<AppState>) -> Response {
    let broker = if !state.config.mqtt.enabled {
        "disabled"
    } else if state.mqtt.is_connected() {
        "ok"
    } else {
        "down"
    };
    match state.db.ping().await {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({ "status": "ok", "checks": { "database": "ok", "broker": broker } })),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = format!("{e:#}"), "health check: database down");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(
                    json!({ "status": "unavailable", "checks": { "database": "down", "broker": broker } }),
                ),
            )
                .into_response()
        }
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
