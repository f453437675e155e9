//! Counters of the gateway link for `/metrics`: messages applied (by type), duplicates
//! dropped, messages rejected and gateway requests refused (by reason). Gauges of gateways
//! and locks online are not kept here: they are counted in the database at scrape time, so
//! every instance reports the same truth.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use crate::db::Db;

#[derive(Debug, Default)]
struct Inner {
    applied: BTreeMap<&'static str, u64>,
    duplicates: u64,
    rejected: BTreeMap<&'static str, u64>,
    auth_failed: BTreeMap<&'static str, u64>,
}

/// Link counters; one per process, in `AppState`.
#[derive(Debug, Default)]
pub struct LinkMetrics {
    inner: Mutex<Inner>,
}

impl LinkMetrics {
    fn with(&self, f: impl FnOnce(&mut Inner)) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut inner);
    }

    pub fn applied(&self, kind: &'static str, n: u64) {
        self.with(|i| *i.applied.entry(kind).or_default() += n);
    }

    pub fn duplicates(&self, n: u64) {
        self.with(|i| i.duplicates += n);
    }

    pub fn rejected(&self, reason: &'static str) {
        self.with(|i| *i.rejected.entry(reason).or_default() += 1);
    }

    pub fn auth_failed(&self, reason: &'static str) {
        self.with(|i| *i.auth_failed.entry(reason).or_default() += 1);
    }

    /// Current value of a rejection counter (tests).
    pub fn rejected_count(&self, reason: &str) -> u64 {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.rejected.get(reason).copied().unwrap_or(0)
    }

    /// Current value of a gateway-auth failure counter (tests).
    pub fn auth_failed_count(&self, reason: &str) -> u64 {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.auth_failed.get(reason).copied().unwrap_or(0)
    }

    pub fn duplicates_count(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .duplicates
    }

    pub fn render(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        out.push_str("# HELP dmr_link_messages_applied_total Gateway messages applied, by type.\n");
        out.push_str("# TYPE dmr_link_messages_applied_total counter\n");
        for (k, n) in &inner.applied {
            let _ = writeln!(out, "dmr_link_messages_applied_total{{type=\"{k}\"}} {n}");
        }
        out.push_str(
            "# HELP dmr_link_duplicates_dropped_total Gateway messages dropped as already applied.\n",
        );
        out.push_str("# TYPE dmr_link_duplicates_dropped_total counter\n");
        let _ = writeln!(
            out,
            "dmr_link_duplicates_dropped_total {}",
            inner.duplicates
        );
        out.push_str(
            "# HELP dmr_link_messages_rejected_total Gateway messages refused, by reason.\n",
        );
        out.push_str("# TYPE dmr_link_messages_rejected_total counter\n");
        for (k, n) in &inner.rejected {
            let _ = writeln!(
                out,
                "dmr_link_messages_rejected_total{{reason=\"{k}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP dmr_link_gateway_auth_failed_total Gateway HTTP requests refused, by reason.\n",
        );
        out.push_str("# TYPE dmr_link_gateway_auth_failed_total counter\n");
        for (k, n) in &inner.auth_failed {
            let _ = writeln!(
                out,
                "dmr_link_gateway_auth_failed_total{{reason=\"{k}\"}} {n}"
            );
        }
        out
    }
}

/// Gauges counted in the database: gateways and locks online.
pub async fn render_gauges(db: &Db) -> String {
    let gw: Result<i64, _> =
        sqlx::query_scalar("SELECT COUNT(*) FROM gateways WHERE online = 1 AND deleted_at IS NULL")
            .fetch_one(&db.pool)
            .await;
    let locks: Result<i64, _> = sqlx::query_scalar(
        "SELECT COUNT(*) FROM locks WHERE status = 'online' AND deleted_at IS NULL",
    )
    .fetch_one(&db.pool)
    .await;
    let mut out = String::new();
    match (gw, locks) {
        (Ok(g), Ok(l)) => {
            out.push_str("# HELP dmr_gateways_online Gateways whose last state was online.\n");
            out.push_str("# TYPE dmr_gateways_online gauge\n");
            let _ = writeln!(out, "dmr_gateways_online {g}");
            out.push_str("# HELP dmr_locks_online Locks whose last heartbeat said online.\n");
            out.push_str("# TYPE dmr_locks_online gauge\n");
            let _ = writeln!(out, "dmr_locks_online {l}");
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "cannot count online gateways and locks for /metrics");
        }
    }
    out
}
