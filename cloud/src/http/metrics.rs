//! Request metrics in the Prometheus text format: a counter per method, route template and
//! status, and a latency histogram per method and route. Route templates (`/venues/{id}`),
//! not raw paths, are the labels, so the series count stays bounded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::AppState;

const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Debug, Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<(String, String, u16), u64>,
    latency: BTreeMap<(String, String), Histogram>,
    /// Plain event counters (`dmr_<name>`), e.g. payment notifications by outcome.
    events: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    pub fn record(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *inner
            .requests
            .entry((method.to_string(), route.to_string(), status))
            .or_default() += 1;
        let h = inner
            .latency
            .entry((method.to_string(), route.to_string()))
            .or_default();
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                h.buckets[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }

    /// Adds one to the event counter `name` (a static name, so the series stay bounded).
    pub fn count(&self, name: &'static str) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *inner.events.entry(name).or_default() += 1;
    }

    pub fn render(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for (name, n) in &inner.events {
            let _ = writeln!(out, "# TYPE dmr_{name} counter\ndmr_{name} {n}");
        }
        out.push_str("# HELP dmr_http_requests_total HTTP requests by method, route and status.\n");
        out.push_str("# TYPE dmr_http_requests_total counter\n");
        for ((m, r, s), n) in &inner.requests {
            let _ = writeln!(
                out,
                "dmr_http_requests_total{{method=\"{m}\",route=\"{}\",status=\"{s}\"}} {n}",
                escape(r)
            );
        }
        out.push_str("# HELP dmr_http_request_duration_seconds HTTP request latency.\n");
        out.push_str("# TYPE dmr_http_request_duration_seconds histogram\n");
        for ((m, r), h) in &inner.latency {
            let r = escape(r);
            for (i, le) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "dmr_http_request_duration_seconds_bucket{{method=\"{m}\",route=\"{r}\",le=\"{le}\"}} {}",
                    h.buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "dmr_http_request_duration_seconds_bucket{{method=\"{m}\",route=\"{r}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "dmr_http_request_duration_seconds_sum{{method=\"{m}\",route=\"{r}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "dmr_http_request_duration_seconds_count{{method=\"{m}\",route=\"{r}\"}} {}",
                h.count
            );
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Middleware that times every request.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    // Clients can send any method token; only standard ones become labels, so a client
    // cannot grow the series count without bound.
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m.to_string(),
        _ => "OTHER".to_string(),
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let elapsed = start.elapsed().as_secs_f64();
    state.metrics.record(&method, &route, status, elapsed);
    tracing::info!(%method, %route, status, latency_ms = elapsed * 1000.0, "request");
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.record("GET", "/a/{id}", 200, 0.003);
        m.record("GET", "/a/{id}", 200, 0.3);
        m.record("GET", "/a/{id}", 404, 0.001);
        let text = m.render();
        assert!(text.contains(
            "dmr_http_requests_total{method=\"GET\",route=\"/a/{id}\",status=\"200\"} 2"
        ));
        assert!(text.contains(
            "dmr_http_requests_total{method=\"GET\",route=\"/a/{id}\",status=\"404\"} 1"
        ));
        assert!(text.contains("le=\"0.005\"} 2"), "{text}");
        assert!(text.contains("le=\"+Inf\"} 3"));
        assert!(text.contains(
            "dmr_http_request_duration_seconds_count{method=\"GET\",route=\"/a/{id}\"} 3"
        ));
    }
}
