//! Two small HTTP servers.
//!
//! - The venue LAN API: `POST /v1/unlock` with `{"token": "<DMR1. text or 8-digit code>"}`,
//!   answered with `{"result": "<code>", ...}`: 200 for `ok`, 403 for a refused token, 429
//!   when the client is over its rate, 502 when the lock did not confirm, 503 when the use
//!   cannot be recorded. Each client IP gets `rate_per_min` attempts per minute (a token
//!   bucket); the table of buckets is bounded (4,096 clients; when full, idle entries are
//!   evicted, and if none are idle new clients are refused as rate limited).
//! - The loopback status listener: `GET /status` (JSON), `GET /metrics` (Prometheus text)
//!   and `GET /healthz`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dmr_protocol::message::{Presenter, ResultCode};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::clock::TrustedClock;
use super::health::Health;
use super::store::Store;
use super::unlock::Unlocker;

const MAX_CLIENTS: usize = 4096;

/// Per-client token buckets.
#[derive(Debug)]
pub struct RateLimiter {
    per_min: f64,
    // Held only while one bucket is updated, never across an await.
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    /// `per_min` attempts per minute per client, with a burst of the same size.
    pub fn new(per_min: u32) -> Self {
        RateLimiter {
            per_min: f64::from(per_min.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one attempt for `ip`; false when over the rate.
    pub fn allow(&self, ip: IpAddr) -> bool {
        let Ok(mut b) = self.buckets.lock() else {
            return false;
        };
        let now = Instant::now();
        let rate = self.per_min / 60.0;
        if !b.contains_key(&ip) && b.len() >= MAX_CLIENTS {
            let cap = self.per_min;
            b.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < cap
            });
            if b.len() >= MAX_CLIENTS {
                return false;
            }
        }
        let e = b.entry(ip).or_insert((self.per_min, now));
        e.0 = (e.0 + now.duration_since(e.1).as_secs_f64() * rate).min(self.per_min);
        e.1 = now;
        if e.0 >= 1.0 {
            e.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Clone)]
struct LanState {
    unlocker: Unlocker,
    limiter: Arc<RateLimiter>,
}

#[derive(Deserialize)]
struct UnlockRequest {
    token: String,
}

#[derive(Serialize)]
struct UnlockResponse {
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_id: Option<uuid::Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lock_id: Option<uuid::Uuid>,
}

async fn unlock(
    State(st): State<LanState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<UnlockRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if !st.limiter.allow(peer.ip()) {
        tracing::info!(client = %peer.ip(), "local unlock rate limited");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            Json(UnlockResponse {
                result: ResultCode::RateLimited.as_str(),
                token_id: None,
                lock_id: None,
            }),
        )
            .into_response();
    }
    let Ok(Json(req)) = body else {
        return (
            StatusCode::BAD_REQUEST,
            Json(UnlockResponse {
                result: ResultCode::BadFormat.as_str(),
                token_id: None,
                lock_id: None,
            }),
        )
            .into_response();
    };
    let reply = st.unlocker.present(&req.token, Presenter::Lan).await;
    let status = match reply.result {
        ResultCode::Ok => StatusCode::OK,
        ResultCode::LockUnreachable | ResultCode::LockFault => StatusCode::BAD_GATEWAY,
        ResultCode::StorageError => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::FORBIDDEN,
    };
    (
        status,
        Json(UnlockResponse {
            result: reply.result.as_str(),
            token_id: reply.token_id,
            lock_id: reply.lock_id,
        }),
    )
        .into_response()
}

/// The LAN API router.
pub fn lan_router(unlocker: Unlocker, rate_per_min: u32) -> Router {
    Router::new()
        .route("/v1/unlock", post(unlock))
        .with_state(LanState {
            unlocker,
            limiter: Arc::new(RateLimiter::new(rate_per_min)),
        })
}

#[derive(Clone)]
struct StatusState {
    store: Store,
    health: Arc<Health>,
    clock: Arc<TrustedClock>,
}

async fn snapshot(st: &StatusState) -> Result<super::health::StatusReport, StatusCode> {
    let stats = st
        .store
        .call(|db| db.outbox_stats())
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    Ok(st.health.status(stats, st.clock.now_ms()))
}

async fn status(State(st): State<StatusState>) -> Response {
    match snapshot(&st).await {
        Ok(s) => Json(s).into_response(),
        Err(code) => code.into_response(),
    }
}

async fn metrics(State(st): State<StatusState>) -> Response {
    match snapshot(&st).await {
        Ok(s) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            st.health.metrics(&s),
        )
            .into_response(),
        Err(code) => code.into_response(),
    }
}

/// The loopback status router.
pub fn status_router(store: Store, health: Arc<Health>, clock: Arc<TrustedClock>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(StatusState {
            store,
            health,
            clock,
        })
}

/// Serves `router` on an already bound listener until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_refuses_over_rate_per_client() {
        let l = RateLimiter::new(3);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        assert!(l.allow(a) && l.allow(a) && l.allow(a));
        assert!(!l.allow(a));
        assert!(l.allow(b));
    }
}
