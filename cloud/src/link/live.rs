//! `GET /api/v1/live`: server-sent events of lock, gateway, alarm (and order) changes for
//! the console, scoped to the caller's tenant (a platform admin sees every tenant).
//!
//! The stream reads the `live_changes` table, which every change appends to in its own
//! transaction, polling about every 500 ms. Nothing lives in one instance's memory, so a
//! console connected to any instance sees changes made through any other. Event ids are
//! `<created_at>:<id>`; a browser reconnecting sends `Last-Event-ID` and resumes after it.
//!
//! Why each poll re-reads a two-second window instead of strictly "after the last id":
//! `created_at` is taken before a transaction commits, so a change can become visible a
//! moment after a newer one. The window catches such late commits; ids already sent are
//! remembered for the window's length so nothing is sent twice.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::AppState;
use crate::db::{Db, now_ms};
use crate::error::{ApiError, ApiResult};
use crate::http::guard::Caller;
use crate::http::list::Sql;

/// Time between polls of the change table.
pub const POLL: Duration = Duration::from_millis(500);
/// How far back each poll looks for late commits.
const WINDOW_MS: i64 = 2000;
/// Rows read per poll.
const BATCH: i64 = 500;

#[derive(Debug, sqlx::FromRow)]
struct Change {
    id: String,
    merchant_id: String,
    kind: String,
    entity_id: String,
    data: String,
    created_at: i64,
}

struct Feed {
    db: Db,
    merchant: Option<String>,
    /// Nothing at or before this (created_at, id) is sent (connect time or Last-Event-ID).
    floor: (i64, String),
    /// Lower bound of the next read.
    low: i64,
    /// Ids sent within the window, with their created_at.
    sent: HashMap<String, i64>,
    pending: std::collections::VecDeque<Event>,
    first: bool,
    stop: watch::Receiver<bool>,
}

fn parse_last_event_id(headers: &HeaderMap) -> Option<(i64, String)> {
    let v = headers.get("last-event-id")?.to_str().ok()?;
    let (t, id) = v.trim().split_once(':')?;
    Some((t.parse().ok()?, id.to_string()))
}

impl Feed {
    async fn poll(&mut self) -> Result<(), ApiError> {
        let mut q = Sql::new(
            "SELECT id, merchant_id, kind, entity_id, data, created_at FROM live_changes \
             WHERE created_at >= ",
        );
        q.bind_int(self.low);
        if let Some(m) = &self.merchant {
            q.push(" AND merchant_id = ").bind_text(m.clone());
        }
        q.push(" ORDER BY created_at, id LIMIT ").bind_int(BATCH);
        let rows = q.query_as::<Change>().fetch_all(&self.db.read).await?;
        let full = i64::try_from(rows.len()).unwrap_or(0) >= BATCH;
        let mut newest = self.low;
        for r in rows {
            newest = newest.max(r.created_at);
            if (r.created_at, r.id.as_str()) <= (self.floor.0, self.floor.1.as_str())
                || self.sent.contains_key(&r.id)
            {
                continue;
            }
            let data: Value = serde_json::from_str(&r.data).unwrap_or(Value::Null);
            let body = json!({
                "kind": r.kind, "entity_id": r.entity_id, "merchant_id": r.merchant_id,
                "at": r.created_at, "data": data,
            });
            self.pending.push_back(
                Event::default()
                    .id(format!("{}:{}", r.created_at, r.id))
                    .event(r.kind.clone())
                    .data(body.to_string()),
            );
            self.sent.insert(r.id, r.created_at);
        }
        // A full batch moves on without the window so a burst cannot stall the reader.
        self.low = if full {
            newest
        } else {
            newest
                .max(now_ms() - WINDOW_MS)
                .saturating_sub(WINDOW_MS)
                .max(self.low)
        };
        let keep_from = self.low;
        self.sent.retain(|_, t| *t >= keep_from);
        Ok(())
    }
}

pub async fn live(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let floor = parse_last_event_id(&headers).unwrap_or_else(|| (now_ms(), String::new()));
    let feed = Feed {
        db: state.db.clone(),
        merchant: caller.scope().merchant().map(str::to_string),
        low: floor.0.saturating_sub(WINDOW_MS),
        floor,
        sent: HashMap::new(),
        pending: Default::default(),
        first: true,
        stop: state.stop.subscribe(),
    };
    let stream = stream::unfold(feed, |mut feed| async move {
        loop {
            if let Some(ev) = feed.pending.pop_front() {
                return Some((Ok(ev), feed));
            }
            if *feed.stop.borrow() {
                return None;
            }
            if !feed.first {
                tokio::select! {
                    () = tokio::time::sleep(POLL) => {}
                    _ = feed.stop.changed() => return None,
                }
            }
            feed.first = false;
            if let Err(e) = feed.poll().await {
                tracing::warn!(error = %e, "live feed poll failed");
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
