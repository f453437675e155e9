//! What the gateways tell orders: unlock events, door events and command acks.
//!
//! The link's ingest calls [`on_gateway_events`] once per batch with every applied event
//! (batched reads and inserts, the same outcome as event by event), and the command ack
//! hook calls [`on_unlock_command_result`] with the command its ack just settled (or
//! [`on_command_result`], which reads the command), both inside the ingest transaction.
//! Rules:
//! - `ok` (event or ack) proves the lock opened: `paid`/`unlocking` → `unlocked`. On an
//!   order that already failed over, a late `ok` cancels the refund if it was not sent yet
//!   (`unlock_failed` → `unlocked`); if the money already went back, the order is flagged
//!   for review and alerted.
//! - `accepted` means the gateway recorded the use and is driving the lock — not that it
//!   opened. It changes nothing; the outcome event or the timeout decides.
//! - A failed ack, or a `lock_unreachable`/`lock_fault`/`storage_error` event, fails the
//!   order over to `unlock_failed` with an automatic refund (sent after the grace period).
//! - Door `opened` then `closed` on an unlocked order completes it.
//!
//! Every piece of evidence is kept in `order_unlock_events` (keyed by the event id, so a
//! redelivered event changes nothing), which is what the order detail and the
//! reconciliation read.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};

use dmr_protocol::message::{DoorChange, Event, ResultCode, UnlockEvent};
use sqlx::{AnyConnection, FromRow, Row};
use uuid::Uuid;

use super::{Actor, Also, ORDER_COLUMNS, OrderRow, Status, alert, load, refunds, transition};
use crate::db::now_ms;
use crate::error::ApiError;
use crate::link::ingest::{in_list, placeholders, rows_per_statement};
use crate::payments::notify::{PAYMENT_COLUMNS, PaymentRow};

/// The refund grace period, set from the configuration when the app is built (the hooks
/// are called by the link with a connection only).
static REFUND_GRACE_MS: AtomicI64 = AtomicI64::new(120_000);

pub fn set_refund_grace_ms(ms: i64) {
    REFUND_GRACE_MS.store(ms, Ordering::Relaxed);
}

pub fn refund_grace_ms() -> i64 {
    REFUND_GRACE_MS.load(Ordering::Relaxed)
}

fn at_ms(at: u64, fallback: i64) -> i64 {
    i64::try_from(at)
        .ok()
        .filter(|v| *v > 0)
        .unwrap_or(fallback)
}

/// Records a piece of unlock evidence once; false if this id was seen before.
#[allow(clippy::too_many_arguments)]
async fn record(
    conn: &mut AnyConnection,
    id: &str,
    order_id: Option<&str>,
    lock_id: Uuid,
    gateway_id: Uuid,
    source: &str,
    result: &str,
    via: Option<&str>,
    token_id: Option<Uuid>,
    at: i64,
) -> Result<bool, ApiError> {
    let n = sqlx::query(
        "INSERT INTO order_unlock_events (id, order_id, lock_id, gateway_id, source, result, via, \
         token_id, at, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(id.to_string())
    .bind(order_id.map(String::from))
    .bind(lock_id.to_string())
    .bind(gateway_id.to_string())
    .bind(source.to_string())
    .bind(result.to_string())
    .bind(via.map(String::from))
    .bind(token_id.map(|t| t.to_string()))
    .bind(at)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// One applied gateway event, as the order hook takes it.
#[derive(Clone, Copy, Debug)]
pub struct AppliedEvent<'a> {
    pub gateway_id: Uuid,
    /// The message id, which is also the evidence row's id.
    pub event_id: Uuid,
    pub event: &'a Event,
    /// The message's time (the fallback when the event carries none).
    pub ts_ms: i64,
}

/// The hook for one applied gateway event: [`on_gateway_events`] with a batch of one.
pub async fn on_gateway_event(
    conn: &mut AnyConnection,
    gateway_id: Uuid,
    event_id: Uuid,
    event: &Event,
    ts_ms: i64,
) -> Result<(), ApiError> {
    on_gateway_events(
        conn,
        &[AppliedEvent {
            gateway_id,
            event_id,
            event,
            ts_ms,
        }],
    )
    .await
}

/// One row of `order_unlock_events`, to be inserted with the others of its batch.
struct Evidence {
    id: String,
    order_id: Option<String>,
    lock_id: Uuid,
    gateway_id: Uuid,
    source: &'static str,
    result: &'static str,
    via: Option<&'static str>,
    token_id: Option<Uuid>,
    at: i64,
}

/// What the batch does with one event after the evidence insert.
enum Plan {
    /// Nothing for orders (alarms, firmware, or a repeat of an id earlier in the batch).
    Skip,
    /// A door event whose open order (its id, if any) was read for the whole batch; its
    /// evidence is in the batch insert.
    Door(Option<String>),
    /// An unlock event; its evidence is in the batch insert.
    Unlock,
    /// A door event on a lock whose order an earlier event of this batch may have moved:
    /// done on its own, exactly as a single event.
    Alone,
}

fn door_result(d: DoorChange) -> &'static str {
    match d {
        DoorChange::Opened => "opened",
        DoorChange::Closed => "closed",
    }
}

fn via_str(via: Option<dmr_protocol::message::Presenter>) -> Option<&'static str> {
    via.map(|v| match v {
        dmr_protocol::message::Presenter::Cloud => "cloud",
        dmr_protocol::message::Presenter::Lan => "lan",
        dmr_protocol::message::Presenter::Scanner => "scanner",
    })
}

/// The hook the link's ingest calls once per batch with every applied event, in the
/// batch's apply order, inside the ingest transaction. The outcome is exactly that of
/// calling the per-event rules one event after the other; what is batched is the work
/// most events need and that cannot depend on an earlier event of the same batch:
///
/// - ONE read ([`Known`]) of the whole rows of every order the batch's unlock events name
///   and of the open orders (`unlocking`, `unlocked`, `unlock_failed`, newest per lock) of
///   every lock its door events name, with each one's door evidence so far, instead of a
///   lock read per batch plus an order read per event (an order the batch writes is read
///   again before its next use);
/// - ONE multi-row `order_unlock_events` insert (`ON CONFLICT (id) DO NOTHING RETURNING
///   id`, so a redelivered event still changes nothing) instead of one per event.
///
/// Only the events that can move an order then run statements of their own. The one
/// dependency inside a batch is per lock: an event that may move a lock's order (a door
/// event while the lock has an open order, an unlock event naming an order) can change
/// which order the lock's later door events belong to (completion takes the order out of
/// the open set; a late `ok` or a failure puts a `paid` one in), and door completion reads
/// the recorded door evidence. So every door event of that lock AFTER such an event is
/// done on its own, in order, with its own read and insert: the exact single-event path.
/// Before it, the lock's door events have no open order and only leave evidence. The
/// evidence of the first such event goes in the batch insert, and nothing it could be
/// read by (`door_cycled` of its order) runs before it. Unlock evidence is never read
/// while applying events.
pub async fn on_gateway_events(
    conn: &mut AnyConnection,
    events: &[AppliedEvent<'_>],
) -> Result<(), ApiError> {
    let mut door_locks: Vec<String> = events
        .iter()
        .filter_map(|e| match e.event {
            Event::Door(d) => Some(d.lock_id.to_string()),
            _ => None,
        })
        .collect();
    door_locks.sort();
    door_locks.dedup();
    let mut named: Vec<String> = events
        .iter()
        .filter_map(|e| match e.event {
            Event::Unlock(u) => u.order_id.filter(|o| !o.is_nil()).map(|o| o.to_string()),
            _ => None,
        })
        .collect();
    named.sort();
    named.dedup();
    let mut known = Known::read(conn, &named, &door_locks).await?;
    let open = known.open_by_lock(&door_locks);

    // Plan every event and gather the evidence rows, in apply order.
    let mut touched: HashSet<Uuid> = HashSet::new();
    let mut seen: HashSet<Uuid> = HashSet::new();
    let mut plans: Vec<Plan> = Vec::with_capacity(events.len());
    let mut rows: Vec<Evidence> = Vec::new();
    for a in events {
        let plan = match a.event {
            Event::Door(_) | Event::Unlock(_) if !seen.insert(a.event_id) => {
                // The same id again: its evidence is (or will be) recorded by the first
                // one, so this one changes nothing, as a redelivery.
                Plan::Skip
            }
            Event::Door(d) if touched.contains(&d.lock_id) => Plan::Alone,
            Event::Door(d) => {
                let order = open.get(&d.lock_id.to_string()).cloned();
                if order.is_some() {
                    touched.insert(d.lock_id);
                }
                rows.push(Evidence {
                    id: a.event_id.to_string(),
                    order_id: order.clone(),
                    lock_id: d.lock_id,
                    gateway_id: a.gateway_id,
                    source: "door",
                    result: door_result(d.door),
                    via: None,
                    token_id: None,
                    at: at_ms(d.at, a.ts_ms),
                });
                Plan::Door(order)
            }
            Event::Unlock(e) => {
                let order_id = e.order_id.filter(|o| !o.is_nil());
                if order_id.is_some() {
                    touched.insert(e.lock_id);
                }
                rows.push(Evidence {
                    id: a.event_id.to_string(),
                    order_id: order_id.map(|o| o.to_string()),
                    lock_id: e.lock_id,
                    gateway_id: a.gateway_id,
                    source: "event",
                    result: e.result.as_str(),
                    via: via_str(e.via),
                    token_id: e.token_id,
                    at: at_ms(e.at, a.ts_ms),
                });
                Plan::Unlock
            }
            _ => Plan::Skip,
        };
        plans.push(plan);
    }
    let new = record_many(conn, &rows).await?;

    for (a, plan) in events.iter().zip(plans) {
        match (plan, a.event) {
            (Plan::Door(order), Event::Door(d)) => {
                if !new.contains(&a.event_id.to_string()) {
                    continue;
                }
                let Some(order) = order else { continue };
                let Some(row) = known.get(conn, &order).await? else {
                    continue;
                };
                // This event is the only door evidence of its order in the batch (a later
                // one of the lock is done alone), so what was recorded before the batch
                // plus this event is all there is.
                let at = at_ms(d.at, a.ts_ms);
                let cycled = known
                    .doors
                    .get(&order)
                    .is_some_and(|s| s.with(d.door, at).cycled());
                known.wrote(&order);
                door_rest(conn, a.gateway_id, d.door, at, &row, cycled).await?;
            }
            (Plan::Unlock, Event::Unlock(e)) if new.contains(&a.event_id.to_string()) => {
                unlock_rest(conn, &mut known, a.gateway_id, e, at_ms(e.at, a.ts_ms)).await?;
            }
            (Plan::Alone, Event::Door(d)) => {
                let order = door_alone(
                    conn,
                    a.gateway_id,
                    a.event_id,
                    d.lock_id,
                    d.door,
                    d.at,
                    a.ts_ms,
                )
                .await?;
                if let Some(order) = order {
                    known.wrote(&order);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The door evidence an order had before the batch: its earliest `opened` and latest
/// `closed` (by the gateway's clock). The door cycled when a close is at or after an open.
#[derive(Clone, Copy, Debug, Default)]
struct DoorSeen {
    first_opened: Option<i64>,
    last_closed: Option<i64>,
}

impl DoorSeen {
    fn with(self, door: DoorChange, at: i64) -> DoorSeen {
        match door {
            DoorChange::Opened => DoorSeen {
                first_opened: Some(self.first_opened.map_or(at, |o| o.min(at))),
                ..self
            },
            DoorChange::Closed => DoorSeen {
                last_closed: Some(self.last_closed.map_or(at, |c| c.max(at))),
                ..self
            },
        }
    }

    fn cycled(self) -> bool {
        matches!((self.first_opened, self.last_closed), (Some(o), Some(c)) if c >= o)
    }
}

/// The orders of one batch, read once: every order an unlock event names and the open
/// orders of every lock a door event names, with their door evidence so far. Used instead
/// of a read per event; an order this batch writes is read again before its next use
/// (`dirty`), so a later event of the batch sees what an earlier one did.
///
/// On SQLite the read is as fresh as a read right before use (the batch holds the write
/// lock from its first insert on). On PostgreSQL another transaction (the order jobs, a
/// refund, the HTTP drain) may move an order in between, as it could between a per-event
/// read and its write before: every transition is conditional, and a proof of opening
/// whose transition lost reads the order again and decides on what it finds ([`opened`]).
struct Known {
    rows: HashMap<String, OrderRow>,
    doors: HashMap<String, DoorSeen>,
    /// Ids the read looked for and did not find.
    missing: HashSet<String>,
    dirty: HashSet<String>,
}

impl Known {
    async fn read(
        conn: &mut AnyConnection,
        ids: &[String],
        locks: &[String],
    ) -> Result<Known, ApiError> {
        let mut known = Known {
            rows: HashMap::new(),
            doors: HashMap::new(),
            missing: HashSet::new(),
            dirty: HashSet::new(),
        };
        if ids.is_empty() && locks.is_empty() {
            return Ok(known);
        }
        // One statement for both lists (a batch usually has a few of each); the lists are
        // split only past the parameter cap.
        let per = rows_per_statement(1);
        let id_chunks: Vec<&[String]> = ids.chunks(per).collect();
        let lock_chunks: Vec<&[String]> = locks.chunks(per).collect();
        for i in 0..id_chunks.len().max(lock_chunks.len()) {
            let by_id = id_chunks.get(i).copied().unwrap_or(&[]);
            let by_lock = lock_chunks.get(i).copied().unwrap_or(&[]);
            let mut cond = Vec::new();
            if !by_id.is_empty() {
                cond.push(format!("id IN ({})", in_list(by_id.len())));
            }
            if !by_lock.is_empty() {
                let list: Vec<String> = (by_id.len() + 1..=by_id.len() + by_lock.len())
                    .map(|n| format!("${n}"))
                    .collect();
                cond.push(format!(
                    "(lock_id IN ({}) AND status IN ('unlocking', 'unlocked', 'unlock_failed'))",
                    list.join(", ")
                ));
            }
            let sql = format!(
                "SELECT {ORDER_COLUMNS}, \
                 (SELECT MIN(e.at) FROM order_unlock_events e WHERE e.order_id = orders.id \
                  AND e.source = 'door' AND e.result = 'opened') AS door_first_opened, \
                 (SELECT MAX(e.at) FROM order_unlock_events e WHERE e.order_id = orders.id \
                  AND e.source = 'door' AND e.result = 'closed') AS door_last_closed \
                 FROM orders WHERE {}",
                cond.join(" OR ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in by_id.iter().chain(by_lock) {
                q = q.bind(id.clone());
            }
            for row in q.fetch_all(&mut *conn).await? {
                let order = OrderRow::from_row(&row)?;
                let seen = DoorSeen {
                    first_opened: row.try_get("door_first_opened")?,
                    last_closed: row.try_get("door_last_closed")?,
                };
                known.doors.insert(order.id.clone(), seen);
                known.rows.insert(order.id.clone(), order);
            }
            for id in by_id {
                if !known.rows.contains_key(id) {
                    known.missing.insert(id.clone());
                }
            }
        }
        Ok(known)
    }

    /// The open order of each of `locks` (`unlocking`, `unlocked`, `unlock_failed`; the
    /// newest when there are several), by lock id.
    fn open_by_lock(&self, locks: &[String]) -> HashMap<String, String> {
        let mut newest: HashMap<&str, (i64, &str)> = HashMap::new();
        for o in self.rows.values() {
            let open = matches!(
                o.status(),
                Status::Unlocking | Status::Unlocked | Status::UnlockFailed
            );
            if !open || locks.binary_search(&o.lock_id).is_err() {
                continue;
            }
            let key = (o.created_at, o.id.as_str());
            let slot = newest.entry(o.lock_id.as_str()).or_insert(key);
            if *slot < key {
                *slot = key;
            }
        }
        newest
            .into_iter()
            .map(|(lock, (_, id))| (lock.to_string(), id.to_string()))
            .collect()
    }

    /// The order as it is now: from the batch read, or read again if this batch wrote it
    /// since (or it was not part of the read).
    async fn get(
        &mut self,
        conn: &mut AnyConnection,
        id: &str,
    ) -> Result<Option<OrderRow>, ApiError> {
        if !self.dirty.contains(id) {
            if let Some(o) = self.rows.get(id) {
                return Ok(Some(o.clone()));
            }
            if self.missing.contains(id) {
                return Ok(None);
            }
        }
        let fresh = load(conn, id).await?;
        self.dirty.remove(id);
        match &fresh {
            Some(o) => {
                self.rows.insert(id.to_string(), o.clone());
            }
            None => {
                self.rows.remove(id);
                self.missing.insert(id.to_string());
            }
        }
        Ok(fresh)
    }

    /// The batch is about to change this order: its next use reads it again.
    fn wrote(&mut self, id: &str) {
        self.dirty.insert(id.to_string());
    }
}
/// Inserts evidence rows once each, in multi-row statements; returns the ids that were
/// new (an id already recorded, by an earlier batch or another path, is not).
async fn record_many(
    conn: &mut AnyConnection,
    rows: &[Evidence],
) -> Result<HashSet<String>, ApiError> {
    let mut new = HashSet::with_capacity(rows.len());
    let received_at = now_ms();
    for chunk in rows.chunks(rows_per_statement(10)) {
        let sql = format!(
            "INSERT INTO order_unlock_events (id, order_id, lock_id, gateway_id, source, result, \
             via, token_id, at, received_at) VALUES {} ON CONFLICT (id) DO NOTHING RETURNING id",
            placeholders(chunk.len(), 10)
        );
        let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
        for r in chunk {
            q = q
                .bind(r.id.clone())
                .bind(r.order_id.clone())
                .bind(r.lock_id.to_string())
                .bind(r.gateway_id.to_string())
                .bind(r.source)
                .bind(r.result)
                .bind(r.via)
                .bind(r.token_id.map(|t| t.to_string()))
                .bind(r.at)
                .bind(received_at);
        }
        new.extend(q.fetch_all(&mut *conn).await?);
    }
    Ok(new)
}

/// A door event on its own: the lock's open order now, the evidence, then the rules.
/// Returns the order it was applied to, if any.
async fn door_alone(
    conn: &mut AnyConnection,
    gateway_id: Uuid,
    event_id: Uuid,
    lock_id: Uuid,
    door: DoorChange,
    at: u64,
    ts_ms: i64,
) -> Result<Option<String>, ApiError> {
    let at = at_ms(at, ts_ms);
    let order: Option<String> = sqlx::query_scalar(
        "SELECT id FROM orders WHERE lock_id = $1 \
         AND status IN ('unlocking', 'unlocked', 'unlock_failed') \
         ORDER BY created_at DESC, id DESC LIMIT 1",
    )
    .bind(lock_id.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    if !record(
        conn,
        &event_id.to_string(),
        order.as_deref(),
        lock_id,
        gateway_id,
        "door",
        door_result(door),
        None,
        None,
        at,
    )
    .await?
    {
        return Ok(None);
    }
    let Some(order) = order else { return Ok(None) };
    let Some(order) = load(conn, &order).await? else {
        return Ok(None);
    };
    door_rest(conn, gateway_id, door, at, &order, false).await?;
    Ok(Some(order.id))
}

/// A new door event of `order` (its evidence recorded, `order` as it is now): the door
/// opening proves the unlock, and a recorded open-then-close completes the order.
/// `cycled`: the caller already knows the recorded evidence shows a cycle (evidence is only
/// ever added, so that cannot become untrue); when false the evidence is asked.
async fn door_rest(
    conn: &mut AnyConnection,
    gateway_id: Uuid,
    door: DoorChange,
    at: i64,
    order: &OrderRow,
    cycled: bool,
) -> Result<(), ApiError> {
    let actor = Actor::Gateway(gateway_id.to_string());
    if door == DoorChange::Opened {
        sqlx::query(
            "UPDATE orders SET door_opened_at = $1 WHERE id = $2 AND door_opened_at IS NULL",
        )
        .bind(at)
        .bind(order.id.clone())
        .execute(&mut *conn)
        .await?;
        if order.status() != Status::Unlocked {
            opened(conn, order, &actor, "the door opened", at).await?;
        }
    } else if order.status() != Status::Unlocked {
        // A close cannot complete an order that is not `unlocked` (nothing between here and
        // the transition moves it), so the evidence query would be for nothing.
        return Ok(());
    }
    // Either event may be the one that completes the order: the ingest applies
    // batches on several workers at once, so a `closed` can be applied before the
    // `opened` that preceded it at the door. What counts is the recorded evidence
    // (a close at or after an open, by the gateway's clock), not arrival order.
    if cycled || door_cycled(conn, &order.id).await? {
        transition(
            conn,
            &order.id,
            Status::Unlocked,
            Status::Completed,
            &actor,
            "the door opened and closed again",
            now_ms(),
            Also::default(),
        )
        .await?;
    }
    Ok(())
}

/// Whether the order's recorded door events show the door opened and then closed again.
/// A close at the same millisecond as an open counts (the agent reports the two edges at
/// least one poll apart, so a tie only comes from coarse clocks and is taken as a cycle).
async fn door_cycled(conn: &mut AnyConnection, order_id: &str) -> Result<bool, ApiError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM order_unlock_events c JOIN order_unlock_events o \
         ON o.order_id = c.order_id AND o.source = 'door' AND o.result = 'opened' \
         WHERE c.order_id = $1 AND c.source = 'door' AND c.result = 'closed' AND c.at >= o.at",
    )
    .bind(order_id.to_string())
    .fetch_one(&mut *conn)
    .await?;
    Ok(n > 0)
}

/// A new unlock event (its evidence recorded): the outcome of the token of the order it
/// names.
async fn unlock_rest(
    conn: &mut AnyConnection,
    known: &mut Known,
    gateway_id: Uuid,
    e: &UnlockEvent,
    at: i64,
) -> Result<(), ApiError> {
    let order_id = e.order_id.filter(|o| !o.is_nil()).map(|o| o.to_string());
    let via = via_str(e.via);
    let Some(order_id) = order_id else {
        return Ok(());
    };
    let Some(order) = known.get(conn, &order_id).await? else {
        if e.result == ResultCode::Ok {
            alert(
                conn,
                None,
                Some(&order_id),
                "opened_unknown_order",
                &format!(
                    "gateway {gateway_id} opened lock {} for an unknown order",
                    e.lock_id
                ),
            )
            .await?;
        }
        return Ok(());
    };
    if order.lock_id != e.lock_id.to_string() {
        alert(
            conn,
            Some(&order.merchant_id),
            Some(&order.id),
            "wrong_lock",
            &format!(
                "unlock event for lock {} names this order of another lock",
                e.lock_id
            ),
        )
        .await?;
        return Ok(());
    }
    let actor = Actor::Gateway(gateway_id.to_string());
    if matches!(
        e.result,
        ResultCode::Ok
            | ResultCode::LockUnreachable
            | ResultCode::LockFault
            | ResultCode::StorageError
    ) {
        known.wrote(&order.id);
    }
    match e.result {
        ResultCode::Ok => {
            let how = via.unwrap_or("unknown");
            opened(
                conn,
                &order,
                &actor,
                &format!("unlock event ok (via {how})"),
                at,
            )
            .await
        }
        // Recorded and driving the lock: not proof of opening.
        ResultCode::Accepted => Ok(()),
        ResultCode::LockUnreachable | ResultCode::LockFault | ResultCode::StorageError => {
            fail_and_refund(
                conn,
                &order,
                &actor,
                &format!("unlock event: {}", e.result.as_str()),
                now_ms(),
            )
            .await
        }
        // A refused presentation (expired, used up, rate limited...) is the presenter's
        // problem; the order's own path (command or timeout) decides.
        _ => Ok(()),
    }
}

/// The order a `cmd unlock` was sent for, found through the token it carried: the stored
/// command names its token id (by primary key), and `orders.token_id` is indexed. Not
/// through `orders.unlock_command_id`, which has no index (every ack scanned the whole
/// orders table, a cost that grew with every order ever sold) and is written only after the
/// command is published, so a fast ack could arrive before it and find no order.
/// `body`: the command's stored body when the caller already has it (the ack's own update
/// returned it), else it is read here.
async fn order_of_command(
    conn: &mut AnyConnection,
    gateway_id: Uuid,
    cmd_id: Uuid,
    body: Option<String>,
) -> Result<Option<OrderRow>, ApiError> {
    let body = match body {
        Some(b) => Some(b),
        None => sqlx::query_scalar(
            "SELECT body FROM gateway_commands WHERE id = $1 AND gateway_id = $2 AND op = 'unlock'",
        )
        .bind(cmd_id.to_string())
        .bind(gateway_id.to_string())
        .fetch_optional(&mut *conn)
        .await?,
    };
    let token_id = body
        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| v["token_id"].as_str().map(String::from));
    let Some(token_id) = token_id else {
        return Ok(None);
    };
    // The whole row at once: the order is needed right after, and a read by id on top
    // would be a second round trip for the same row.
    let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE token_id = $1 AND gateway_id = $2");
    Ok(sqlx::query_as::<_, OrderRow>(sqlx::AssertSqlSafe(sql))
        .bind(token_id)
        .bind(gateway_id.to_string())
        .fetch_optional(&mut *conn)
        .await?)
}

/// The ack hook: the result of the `cmd unlock` an order sent.
pub async fn on_command_result(
    conn: &mut AnyConnection,
    gateway_id: Uuid,
    cmd_id: Uuid,
    result: ResultCode,
    ts_ms: i64,
) -> Result<(), ApiError> {
    on_unlock_command_result(conn, gateway_id, cmd_id, result, ts_ms, None).await
}

/// [`on_command_result`] for an ack whose `cmd unlock` the caller has just settled and
/// whose stored body it holds (`unlock_body`, from
/// [`crate::link::commands::on_ack`]): the same rules without reading the command again.
pub async fn on_unlock_command_result(
    conn: &mut AnyConnection,
    gateway_id: Uuid,
    cmd_id: Uuid,
    result: ResultCode,
    ts_ms: i64,
    unlock_body: Option<String>,
) -> Result<(), ApiError> {
    let Some(order) = order_of_command(conn, gateway_id, cmd_id, unlock_body).await? else {
        return Ok(());
    };
    let lock = Uuid::try_parse(&order.lock_id).unwrap_or_default();
    let token = order
        .token_id
        .as_deref()
        .and_then(|t| Uuid::try_parse(t).ok());
    if !record(
        conn,
        &format!("ack:{cmd_id}:{}", result.as_str()),
        Some(&order.id),
        lock,
        gateway_id,
        "ack",
        result.as_str(),
        Some("cloud"),
        token,
        ts_ms,
    )
    .await?
    {
        return Ok(());
    }
    let actor = Actor::Gateway(gateway_id.to_string());
    match result {
        ResultCode::Ok => opened(conn, &order, &actor, "cmd unlock acked ok", ts_ms).await,
        ResultCode::Accepted => Ok(()),
        other => {
            fail_and_refund(
                conn,
                &order,
                &actor,
                &format!("cmd unlock answered {}", other.as_str()),
                now_ms(),
            )
            .await
        }
    }
}

/// Proof the lock opened for `order`. `order` may have been read a little earlier in the
/// transaction (the batch read): if the `paid`/`unlocking` → `unlocked` transition loses,
/// the order moved meanwhile (the unlock timeout, a refund), so it is read again and the
/// rules are applied once more to what it is now.
async fn opened(
    conn: &mut AnyConnection,
    order: &OrderRow,
    actor: &Actor,
    reason: &str,
    at: i64,
) -> Result<(), ApiError> {
    if opened_as(conn, order, actor, reason, at).await? {
        return Ok(());
    }
    if let Some(now) = load(conn, &order.id).await? {
        opened_as(conn, &now, actor, reason, at).await?;
    }
    Ok(())
}

/// [`opened`] on `order` as given; false if its transition to `unlocked` lost.
async fn opened_as(
    conn: &mut AnyConnection,
    order: &OrderRow,
    actor: &Actor,
    reason: &str,
    at: i64,
) -> Result<bool, ApiError> {
    let now = now_ms();
    match order.status() {
        from @ (Status::Paid | Status::Unlocking) => {
            return transition(
                conn,
                &order.id,
                from,
                Status::Unlocked,
                actor,
                reason,
                now,
                Also::default(),
            )
            .await;
        }
        Status::UnlockFailed => {
            let cancelled = refunds::cancel_unsent(conn, &order.id, now).await?;
            let sent: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM refunds WHERE order_id = $1 AND status IN ('processing', 'succeeded')",
            )
            .bind(order.id.clone())
            .fetch_one(&mut *conn)
            .await?;
            if sent == 0 {
                transition(
                    conn,
                    &order.id,
                    Status::UnlockFailed,
                    Status::Unlocked,
                    actor,
                    &format!(
                        "late proof of opening ({reason}); {cancelled} unsent refund(s) cancelled"
                    ),
                    now,
                    Also::default(),
                )
                .await?;
            } else {
                flag(conn, order, "opened after its refund was sent", at).await?;
            }
        }
        Status::Refunding | Status::Refunded => {
            refunds::cancel_unsent(conn, &order.id, now).await?;
            flag(conn, order, "opened after a refund was issued", at).await?;
        }
        Status::Created | Status::Expired | Status::Cancelled => {
            flag(conn, order, "opened without a payment", at).await?;
        }
        Status::Unlocked | Status::Completed => {}
    }
    Ok(true)
}

async fn flag(
    conn: &mut AnyConnection,
    order: &OrderRow,
    why: &str,
    at: i64,
) -> Result<(), ApiError> {
    sqlx::query("UPDATE orders SET review_reason = $1, updated_at = $2 WHERE id = $3")
        .bind(why.to_string())
        .bind(now_ms())
        .bind(order.id.clone())
        .execute(&mut *conn)
        .await?;
    alert(
        conn,
        Some(&order.merchant_id),
        Some(&order.id),
        "review",
        &format!("{why} (at {at})"),
    )
    .await
}

/// `unlocking` (or `paid`) → `unlock_failed`, with an automatic full refund that waits the
/// grace period. Losing the transition (someone else moved the order) does nothing.
pub async fn fail_and_refund(
    conn: &mut AnyConnection,
    order: &OrderRow,
    actor: &Actor,
    reason: &str,
    now: i64,
) -> Result<(), ApiError> {
    let from = order.status();
    if !matches!(from, Status::Paid | Status::Unlocking) {
        return Ok(());
    }
    if !transition(
        conn,
        &order.id,
        from,
        Status::UnlockFailed,
        actor,
        reason,
        now,
        Also::default(),
    )
    .await?
    {
        return Ok(());
    }
    let sql = format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE order_id = $1 AND status = 'succeeded' \
         ORDER BY paid_at LIMIT 1"
    );
    let payment = sqlx::query_as::<_, PaymentRow>(sqlx::AssertSqlSafe(sql))
        .bind(order.id.clone())
        .fetch_optional(&mut *conn)
        .await?;
    let Some(payment) = payment else {
        return Ok(());
    };
    let left = refunds::refundable(conn, &order.id).await?;
    if left > 0 {
        let mut failed = order.clone();
        failed.status = Status::UnlockFailed.as_str().into();
        refunds::create(
            conn,
            &failed,
            &payment,
            left,
            &format!("automatic refund: {reason}"),
            &Actor::System,
            now,
            refund_grace_ms(),
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_door_cycle_is_a_close_at_or_after_an_open() {
        let none = DoorSeen::default();
        assert!(!none.cycled());
        assert!(!none.with(DoorChange::Opened, 100).cycled());
        assert!(!none.with(DoorChange::Closed, 100).cycled());
        // The batch's own event completes what earlier batches recorded, in either order.
        let opened = none.with(DoorChange::Opened, 100);
        assert!(
            opened.with(DoorChange::Closed, 100).cycled(),
            "a tie counts"
        );
        assert!(opened.with(DoorChange::Closed, 400).cycled());
        assert!(!opened.with(DoorChange::Closed, 99).cycled());
        let closed = none.with(DoorChange::Closed, 300);
        assert!(closed.with(DoorChange::Opened, 200).cycled());
        assert!(!closed.with(DoorChange::Opened, 400).cycled());
        // The earliest open and the latest close are what count.
        let both = closed.with(DoorChange::Opened, 400);
        assert!(!both.cycled());
        assert!(both.with(DoorChange::Opened, 250).cycled());
        assert!(both.with(DoorChange::Closed, 450).cycled());
    }
}
