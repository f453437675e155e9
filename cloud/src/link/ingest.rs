//! Applying what gateways send, once. The MQTT bridge and the HTTP event drain both hand
//! their signed messages to [`Ingest::submit`], which verifies every message (signature by
//! the gateway's own registered key, signer and `gw` equal to the topic's or caller's
//! gateway), then applies the whole batch in ONE database transaction: a message id seen
//! before (table `gateway_messages`, insert-if-absent) is a duplicate and changes nothing,
//! so the same event delivered by MQTT and by HTTP, or redelivered after a lost ack, is
//! applied exactly once. Batching is what makes high message rates affordable: one commit
//! per batch instead of one per message.
//!
//! Ordering. Messages can arrive late (an outbox drained after an outage) or out of order
//! (MQTT and HTTP racing), so state is only moved forward by message time: a heartbeat
//! older than the lock's `last_heartbeat_at` does not overwrite it, a door event older than
//! `door_at` neither. Gateway `state` is subtler: the Last Will (`online:false`) is signed
//! when the session connects, so it is *older* than the `online:true` that follows it and
//! must still win when the broker publishes it. Hence two clocks: `online:true` applies when
//! newer than every state seen (`state_ts`); `online:false` applies when newer than the last
//! offline applied (`offline_ts`); a heartbeat newer than `offline_ts` proves the gateway is
//! online again (this heals the rare stale Will that arrives after a reconnect).
//!
//! Every visible change appends a row to `live_changes` in the same transaction, which the
//! console's live stream polls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dmr_protocol::jws::{JwsError, Kid};
use dmr_protocol::keys::VerifyingKey;
use dmr_protocol::message::{
    self, AlarmKind, DoorChange, Envelope, Event, Expect, GatewayState, Heartbeat, Message,
    MessageError,
};
use serde_json::{Value, json};
use sqlx::AnyConnection;
use uuid::Uuid;

use crate::db::{Db, new_id, now_ms};
use crate::error::ApiError;
use crate::link::metrics::LinkMetrics;

/// How long a gateway's public key is cached.
const KEY_TTL: Duration = Duration::from_secs(30);
/// Batches at least this long are verified on a blocking thread.
const BLOCKING_BATCH: usize = 8;

/// Which path a message came by (recorded with it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Mqtt,
    Http,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Mqtt => "mqtt",
            Via::Http => "http",
        }
    }
}

/// Why a message was refused. `as_str` is the metric label and the wire `error` prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// The gateway is unknown, not enrolled, retired or deleted.
    UnknownGateway,
    /// The signature does not verify with the gateway's registered key.
    BadSignature,
    /// Signed by a key other than the gateway's own (another gateway, a cloud kid).
    WrongSigner,
    /// The payload names another gateway than the topic or the authenticated caller.
    WrongGateway,
    /// Not a JWS, a bad header, a payload that is not a message of its type.
    Malformed(String),
    /// A message type gateways do not send (`cmd`).
    NotFromGateway,
}

impl RejectReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            RejectReason::UnknownGateway => "unknown_gateway",
            RejectReason::BadSignature => "bad_signature",
            RejectReason::WrongSigner => "wrong_signer",
            RejectReason::WrongGateway => "wrong_gateway",
            RejectReason::Malformed(_) => "malformed",
            RejectReason::NotFromGateway => "not_from_gateway",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RejectReason::UnknownGateway => {
                f.write_str("unknown_gateway: the gateway is not enrolled (or was retired)")
            }
            RejectReason::BadSignature => {
                f.write_str("bad_signature: does not verify with the gateway's registered key")
            }
            RejectReason::WrongSigner => {
                f.write_str("wrong_signer: not signed by this gateway's own key")
            }
            RejectReason::WrongGateway => {
                f.write_str("wrong_gateway: the message names another gateway")
            }
            RejectReason::Malformed(why) => write!(f, "malformed: {why}"),
            RejectReason::NotFromGateway => {
                f.write_str("not_from_gateway: gateways do not send this message type")
            }
        }
    }
}

/// What became of one submitted message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate,
    Rejected(RejectReason),
}

#[derive(Clone, Debug)]
struct GatewayEntry {
    /// None: unknown, not enrolled, retired or deleted.
    key: Option<(VerifyingKey, String)>,
    at: Instant,
}

/// Verifies and applies gateway messages. In `AppState` as `Arc<Ingest>`.
pub struct Ingest {
    db: Db,
    metrics: Arc<LinkMetrics>,
    keys: Mutex<HashMap<Uuid, GatewayEntry>>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest").finish_non_exhaustive()
    }
}

/// The gateway a batch is applied for.
#[derive(Clone, Debug)]
pub struct GatewayCtx {
    pub gateway_id: Uuid,
    pub merchant_id: String,
    pub via: Via,
}

fn verify_one(raw: &str, gw: Uuid, key: &VerifyingKey) -> Result<Envelope, RejectReason> {
    let expect = Expect {
        gw,
        now_ms: u64::try_from(now_ms()).unwrap_or(0),
    };
    let resolve = |kid: &Kid| (*kid == Kid::Gateway(gw)).then_some(key);
    classify(message::open(raw, resolve, expect))
}

/// What `open` answered, as an ingest outcome.
fn classify(r: Result<(Kid, Envelope), MessageError>) -> Result<Envelope, RejectReason> {
    match r {
        Ok((_, env)) if env.message.message_type().from_gateway() => Ok(env),
        Ok(_) => Err(RejectReason::NotFromGateway),
        Err(MessageError::Jws(JwsError::UnknownKid { .. })) => Err(RejectReason::WrongSigner),
        Err(MessageError::Jws(JwsError::BadSignature { .. })) => Err(RejectReason::BadSignature),
        Err(MessageError::WrongSigner { .. }) => Err(RejectReason::WrongSigner),
        Err(MessageError::WrongGateway { .. }) => Err(RejectReason::WrongGateway),
        Err(e) => Err(RejectReason::Malformed(e.to_string())),
    }
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn flag(b: bool) -> i64 {
    i64::from(b)
}

/// Appends a change to the live feed (same transaction as the change itself). Public so
/// other features (orders, commands) report their changes the same way.
pub async fn record_change(
    conn: &mut AnyConnection,
    merchant_id: &str,
    kind: &str,
    entity_id: &str,
    data: &Value,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO live_changes (id, merchant_id, kind, entity_id, data, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(new_id())
    .bind(merchant_id.to_string())
    .bind(kind.to_string())
    .bind(entity_id.to_string())
    .bind(data.to_string())
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
}

impl Ingest {
    pub fn new(db: Db, metrics: Arc<LinkMetrics>) -> Ingest {
        Ingest {
            db,
            metrics,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Forgets a gateway's cached key (after enrollment or deletion in this process).
    pub fn forget(&self, gw: Uuid) {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&gw);
    }

    async fn load_key(&self, gw: Uuid) -> Result<GatewayEntry, ApiError> {
        let row: Option<(Option<String>, String)> = sqlx::query_as(
            "SELECT public_key, merchant_id FROM gateways \
             WHERE id = $1 AND status = 'enrolled' AND deleted_at IS NULL",
        )
        .bind(gw.to_string())
        .fetch_optional(&self.db.pool)
        .await?;
        let key = row.and_then(|(pk, m)| {
            pk.and_then(|pk| dmr_protocol::keys::parse_public_b64u(&pk).ok())
                .map(|k| (k, m))
        });
        let entry = GatewayEntry {
            key,
            at: Instant::now(),
        };
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(gw, entry.clone());
        Ok(entry)
    }

    /// The gateway's key from the cache, or the database when absent, stale, or (`fresh`)
    /// when the caller wants it re-read.
    async fn key_of(&self, gw: Uuid, fresh: bool) -> Result<GatewayEntry, ApiError> {
        if !fresh {
            let cached = self
                .keys
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&gw)
                .cloned();
            // A cached miss is re-read at once: a gateway that just enrolled must not wait.
            if let Some(e) = cached
                && e.at.elapsed() < KEY_TTL
                && e.key.is_some()
            {
                return Ok(e);
            }
        }
        self.load_key(gw).await
    }

    /// Verifies every item whose gateway is known, on the blocking pool (signature checks are
    /// CPU work and must not hold up the async workers), in up to two halves so both cores
    /// share a large batch, each half checked with Ed25519 batch verification.
    async fn verify_items(
        &self,
        items: &[(Uuid, &str)],
        entries: &HashMap<Uuid, GatewayEntry>,
    ) -> Result<Vec<Option<Result<Envelope, RejectReason>>>, ApiError> {
        let work: Vec<(usize, Uuid, String, VerifyingKey)> = items
            .iter()
            .enumerate()
            .filter_map(|(i, (gw, raw))| {
                let (key, _) = entries.get(gw)?.key.clone()?;
                Some((i, *gw, (*raw).to_string(), key))
            })
            .collect();
        let mut verified: Vec<Option<Result<Envelope, RejectReason>>> =
            (0..items.len()).map(|_| None).collect();
        if work.len() < BLOCKING_BATCH {
            for (i, v) in verify_chunk(work) {
                verified[i] = Some(v);
            }
            return Ok(verified);
        }
        let half = work.len().div_ceil(2);
        let mut first = work;
        let second = first.split_off(half);
        let a = tokio::task::spawn_blocking(move || verify_chunk(first));
        let b = tokio::task::spawn_blocking(move || verify_chunk(second));
        for h in [a, b] {
            for (i, v) in h.await.map_err(ApiError::internal)? {
                verified[i] = Some(v);
            }
        }
        Ok(verified)
    }

    /// Verifies and applies gateway messages, each checked against the gateway it arrived
    /// for (the MQTT topic's, or the authenticated HTTP caller's), the whole batch in ONE
    /// transaction whatever the mix of gateways. Returns one [`Outcome`] per item, same
    /// order. An `Err` means the database failed and nothing of the batch was applied: retry
    /// it. Both paths (the MQTT bridge, the HTTP event drain) come through here, so they share
    /// one apply order (see [`apply_all`]).
    pub async fn submit_many(
        &self,
        via: Via,
        items: &[(Uuid, &str)],
    ) -> Result<Vec<Outcome>, ApiError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        // Keys, one lookup per distinct gateway.
        let mut entries: HashMap<Uuid, GatewayEntry> = HashMap::new();
        for (gw, _) in items {
            if !entries.contains_key(gw) {
                let e = self.key_of(*gw, false).await?;
                entries.insert(*gw, e);
            }
        }
        let mut verified = self.verify_items(items, &entries).await?;
        // A cached key may predate a re-enrollment: re-read once and retry the failures.
        let mut reread: HashMap<Uuid, GatewayEntry> = HashMap::new();
        for (i, (gw, raw)) in items.iter().enumerate() {
            let stale = entries
                .get(gw)
                .is_some_and(|e| e.at.elapsed() > Duration::from_millis(500));
            if stale && matches!(verified[i], Some(Err(RejectReason::BadSignature))) {
                let e = match reread.get(gw) {
                    Some(e) => e.clone(),
                    None => {
                        let e = self.key_of(*gw, true).await?;
                        reread.insert(*gw, e.clone());
                        e
                    }
                };
                verified[i] = e.key.as_ref().map(|(k, _)| verify_one(raw, *gw, k));
            }
        }
        entries.extend(reread);
        let received_at = now_ms();
        let mut tx = self.db.pool.begin().await?;
        let (outcomes, applied_kinds) =
            apply_all(&mut tx, via, items, &entries, &verified, received_at).await?;
        tx.commit().await?;
        for (o, (gw, _)) in outcomes.iter().zip(items) {
            match o {
                Outcome::Applied => {}
                Outcome::Duplicate => self.metrics.duplicates(1),
                Outcome::Rejected(r) => {
                    tracing::info!(gateway = %gw, via = via.as_str(), reason = %r, "gateway message rejected");
                    self.metrics.rejected(r.as_str());
                }
            }
        }
        for k in applied_kinds {
            self.metrics.applied(k, 1);
        }
        Ok(outcomes)
    }

    /// [`Ingest::submit_many`] for messages that all came for one gateway (the HTTP event
    /// drain): the same loop, the same order, the same outcomes.
    pub async fn submit(&self, gw: Uuid, via: Via, raw: &[&str]) -> Result<Vec<Outcome>, ApiError> {
        let items: Vec<(Uuid, &str)> = raw.iter().map(|r| (gw, *r)).collect();
        self.submit_many(via, &items).await
    }
}

/// Verifies one half of a batch (on a blocking thread) with [`message::open_many`].
fn verify_chunk(
    chunk: Vec<(usize, Uuid, String, VerifyingKey)>,
) -> Vec<(usize, Result<Envelope, RejectReason>)> {
    let now = u64::try_from(now_ms()).unwrap_or(0);
    let inputs: Vec<(&str, Expect)> = chunk
        .iter()
        .map(|(_, gw, raw, _)| {
            (
                raw.as_str(),
                Expect {
                    gw: *gw,
                    now_ms: now,
                },
            )
        })
        .collect();
    let results = message::open_many(&inputs, |i, kid| {
        let (_, gw, _, key) = &chunk[i];
        (*kid == Kid::Gateway(*gw)).then_some(key)
    });
    chunk
        .iter()
        .zip(results)
        .map(|((i, _, _, _), r)| (*i, classify(r)))
        .collect()
}

/// Bound parameters per multi-row statement. Far below SQLite's 32,766 and PostgreSQL's
/// 65,535, and deliberately small: sqlx binds SQLite parameters by name, and SQLite looks a
/// name up by a linear scan of the statement's parameter list, so binding costs grow with
/// the square of the parameters per statement (profiled: with 3,000-parameter statements,
/// `sqlite3_bind_parameter_name` and `strncmp` took 38% of the ingest bench's CPU). At 160
/// the lookups are negligible and a 500-message batch still needs only a few dozen statements.
const PARAMS_PER_STATEMENT: usize = 160;

/// Rows of `cols` parameters that fit in one statement.
pub(crate) fn rows_per_statement(cols: usize) -> usize {
    (PARAMS_PER_STATEMENT / cols.max(1)).max(1)
}

/// `($1, $2, $3), ($4, $5, $6)` for `rows` rows of `cols` placeholders. The dynamic SQL of
/// this module (`AssertSqlSafe`) is built only from these numbered placeholders and fixed
/// text; every value is bound.
pub(crate) fn placeholders(rows: usize, cols: usize) -> String {
    let mut out = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for c in 0..cols {
            if c > 0 {
                out.push_str(", ");
            }
            out.push('$');
            out.push_str(&(r * cols + c + 1).to_string());
        }
        out.push(')');
    }
    out
}

/// `$1, $2, ...` for an `IN (...)` list.
pub(crate) fn in_list(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A change for the live feed, inserted with the others of its batch in one statement.
struct Change {
    merchant_id: String,
    kind: &'static str,
    entity_id: String,
    data: Value,
}

async fn insert_changes(conn: &mut AnyConnection, changes: Vec<Change>) -> Result<(), ApiError> {
    let now = now_ms();
    for chunk in changes.chunks(rows_per_statement(6)) {
        let sql = format!(
            "INSERT INTO live_changes (id, merchant_id, kind, entity_id, data, created_at) VALUES {}",
            placeholders(chunk.len(), 6)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for c in chunk {
            q = q
                .bind(new_id())
                .bind(c.merchant_id.clone())
                .bind(c.kind)
                .bind(c.entity_id.clone())
                .bind(c.data.to_string())
                .bind(now);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// One lock's state from the newest heartbeat of its gateway, to be written.
struct HbLock<'a> {
    id: String,
    gw: String,
    status: &'static str,
    door: bool,
    locked: bool,
    fw: &'a str,
    ts: i64,
    /// Differs from the stored state in something the console shows.
    visible: bool,
    merchant: &'a str,
}

/// The newest heartbeat of each gateway in a batch.
type NewestHeartbeats<'a> = std::collections::BTreeMap<Uuid, (&'a Good<'a>, &'a Heartbeat)>;
/// The newest door event of each lock in a batch: (message, closed, at).
type NewestDoors<'a> = std::collections::BTreeMap<String, (&'a Good<'a>, bool, i64)>;
/// id, online, last_seen_at, outbox_pending, outbox_oldest_age_s
type GatewayAfter = (String, i64, Option<i64>, Option<i64>, Option<i64>);

/// One message that passed verification, for a known gateway.
struct Good<'a> {
    i: usize,
    ctx: GatewayCtx,
    env: &'a Envelope,
}

/// Applies a verified batch inside the caller's transaction; returns the outcomes (input
/// order) and the kinds applied (for metrics).
///
/// The work is done per batch, not per message: one multi-row insert claims every message
/// id (a duplicate is an id already there: `ON CONFLICT DO NOTHING RETURNING id` returns only
/// the new ones); heartbeats are coalesced, the newest per gateway wins the batch (an older
/// one would change nothing after it: every state column moves only forward by message
/// time), and update their gateways in one statement and their locks in another; door
/// events are coalesced per lock (newest wins) into one statement; event rows go in one
/// insert; the order hooks read the open orders of the batch's locks once and record their
/// evidence in one insert ([`crate::orders::on_gateway_events`]); live-feed rows in one
/// insert at the end. What stays per message is rare: gateway `state`, acks, alarms,
/// firmware, and the order transitions of the events that move an order.
///
/// Row-lock order. Concurrent batches (this instance's workers, other instances, the HTTP
/// drain) take row locks phase by phase in one fixed order, and within a phase in sorted
/// key order: message ids (sorted by id), gateway rows (state messages, then heartbeats,
/// sorted by gateway id), lock rows (sorted by lock id), then per-event work in (gateway,
/// message id) order. On PostgreSQL that keeps two batches from waiting on each other in
/// a cycle in the common case; a deadlock that still happens (a rare per-event update of
/// a row another batch took in an earlier phase) fails one batch as a whole, which the
/// bridge retries and the HTTP agent resends: nothing is applied twice or lost.
async fn apply_all(
    conn: &mut AnyConnection,
    via: Via,
    items: &[(Uuid, &str)],
    entries: &HashMap<Uuid, GatewayEntry>,
    verified: &[Option<Result<Envelope, RejectReason>>],
    received_at: i64,
) -> Result<(Vec<Outcome>, Vec<&'static str>), ApiError> {
    let mut outcomes: Vec<Option<Outcome>> = (0..items.len()).map(|_| None).collect();
    let mut good: Vec<Good<'_>> = Vec::new();
    for (i, (gw, _)) in items.iter().enumerate() {
        let merchant = entries
            .get(gw)
            .and_then(|e| e.key.as_ref().map(|(_, m)| m.clone()));
        match (&verified[i], merchant) {
            (Some(Ok(env)), Some(merchant_id)) => good.push(Good {
                i,
                ctx: GatewayCtx {
                    gateway_id: *gw,
                    merchant_id,
                    via,
                },
                env,
            }),
            (Some(Err(reason)), Some(_)) => outcomes[i] = Some(Outcome::Rejected(reason.clone())),
            _ => outcomes[i] = Some(Outcome::Rejected(RejectReason::UnknownGateway)),
        }
    }
    // Phase 1: claim the ids, sorted by id. A second copy of an id within the batch is a
    // duplicate like one from an earlier batch.
    good.sort_by_key(|g| (g.env.id, g.i));
    let mut claims: Vec<&Good<'_>> = Vec::with_capacity(good.len());
    for g in &good {
        if claims.last().is_some_and(|c| c.env.id == g.env.id) {
            outcomes[g.i] = Some(Outcome::Duplicate);
        } else {
            claims.push(g);
        }
    }
    let mut won: std::collections::HashSet<String> = std::collections::HashSet::new();
    for chunk in claims.chunks(rows_per_statement(6)) {
        let sql = format!(
            "INSERT INTO gateway_messages (id, gateway_id, type, ts, via, received_at) VALUES {} \
             ON CONFLICT (id) DO NOTHING RETURNING id",
            placeholders(chunk.len(), 6)
        );
        let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
        for g in chunk {
            q = q
                .bind(g.env.id.to_string())
                .bind(g.ctx.gateway_id.to_string())
                .bind(g.env.message.message_type().as_str())
                .bind(ms(g.env.ts))
                .bind(via.as_str())
                .bind(received_at);
        }
        won.extend(q.fetch_all(&mut *conn).await?);
    }
    let mut fresh: Vec<&Good<'_>> = Vec::with_capacity(claims.len());
    for g in claims {
        if won.contains(&g.env.id.to_string()) {
            fresh.push(g);
        } else {
            outcomes[g.i] = Some(Outcome::Duplicate);
        }
    }
    fresh.sort_by_key(|g| (g.ctx.gateway_id, g.env.id));
    let mut applied_kinds: Vec<&'static str> = Vec::with_capacity(fresh.len());
    for g in &fresh {
        outcomes[g.i] = Some(Outcome::Applied);
        applied_kinds.push(g.env.message.message_type().as_str());
    }
    let mut changes: Vec<Change> = Vec::new();

    // Phase 2: gateway rows. State messages one by one (rare: connects and Last Wills),
    // then the heartbeats, newest per gateway.
    for g in &fresh {
        if let Message::State(st) = &g.env.message {
            apply_state(conn, &g.ctx, g.env.ts, *st).await?;
        }
    }
    let mut newest_hb: NewestHeartbeats<'_> = std::collections::BTreeMap::new();
    for g in &fresh {
        if let Message::Heartbeat(hb) = &g.env.message {
            let newer = newest_hb
                .get(&g.ctx.gateway_id)
                .is_none_or(|(n, _)| (n.env.ts, n.env.id) < (g.env.ts, g.env.id));
            if newer {
                newest_hb.insert(g.ctx.gateway_id, (g, hb));
            }
        }
    }
    let hb_applied = apply_heartbeats(conn, &newest_hb, &mut changes).await?;

    // Phase 3: lock rows. Heartbeat lock states, then door events (newest per lock).
    apply_heartbeat_locks(conn, &newest_hb, &hb_applied, &mut changes).await?;
    let mut newest_door: NewestDoors<'_> = std::collections::BTreeMap::new();
    for g in &fresh {
        if let Message::Event(Event::Door(d)) = &g.env.message {
            let at = ms(d.at);
            let key = d.lock_id.to_string();
            let newer = newest_door
                .get(&key)
                .is_none_or(|(n, _, nat)| (*nat, n.env.id) < (at, g.env.id));
            if newer {
                newest_door.insert(key, (g, d.door == DoorChange::Closed, at));
            }
        }
    }
    apply_doors(conn, &newest_door, &mut changes).await?;

    // Phase 4: event rows, then per-event work in (gateway, id) order.
    let events: Vec<(&Good<'_>, &Event)> = fresh
        .iter()
        .filter_map(|g| match &g.env.message {
            Message::Event(ev) => Some((*g, ev)),
            _ => None,
        })
        .collect();
    insert_events(conn, &events, received_at).await?;
    for (g, ev) in &events {
        apply_event_rest(conn, &g.ctx, ev).await?;
    }
    // The order hooks, once for the whole batch (in the same (gateway, id) order): one read
    // of the open orders and one evidence insert instead of two statements per event.
    let applied: Vec<crate::orders::AppliedEvent<'_>> = events
        .iter()
        .map(|(g, ev)| crate::orders::AppliedEvent {
            gateway_id: g.ctx.gateway_id,
            event_id: g.env.id,
            event: ev,
            ts_ms: ms(g.env.ts),
        })
        .collect();
    crate::orders::on_gateway_events(conn, &applied).await?;
    for g in &fresh {
        if let Message::Ack(ack) = &g.env.message {
            let settled =
                crate::link::commands::on_ack(conn, g.ctx.gateway_id, ack, ms(g.env.ts)).await?;
            // An order's `cmd unlock` answered: the order moves on (or fails over). The
            // command this ack just settled is known (no second read of it); one settled
            // before (a repeated ack) is looked up as before.
            let body = match settled {
                Some(c) if c.op != "unlock" => continue,
                Some(c) => Some(c.body),
                None => None,
            };
            crate::orders::on_unlock_command_result(
                conn,
                g.ctx.gateway_id,
                ack.cmd,
                ack.result,
                ms(g.env.ts),
                body,
            )
            .await?;
        }
    }
    insert_changes(conn, changes).await?;
    // Every index was given an outcome above.
    let outcomes = outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::Rejected(RejectReason::UnknownGateway)))
        .collect();
    Ok((outcomes, applied_kinds))
}

/// online before the heartbeats (to tell whether they changed it).
async fn online_of(
    conn: &mut AnyConnection,
    gws: &[String],
) -> Result<HashMap<String, i64>, ApiError> {
    let mut out = HashMap::with_capacity(gws.len());
    for chunk in gws.chunks(rows_per_statement(1)) {
        let sql = format!(
            "SELECT id, online FROM gateways WHERE id IN ({})",
            in_list(chunk.len())
        );
        let mut q = sqlx::query_as::<_, (String, i64)>(sqlx::AssertSqlSafe(sql));
        for id in chunk {
            q = q.bind(id.clone());
        }
        out.extend(q.fetch_all(&mut *conn).await?);
    }
    Ok(out)
}

/// The gateway columns of the newest heartbeat per gateway, in multi-row statements
/// (sorted by gateway id). A heartbeat older than one already applied changes
/// nothing; one newer than the last offline state brings the gateway back online. Returns
/// the gateways whose row the heartbeat updated (their locks are next).
async fn apply_heartbeats(
    conn: &mut AnyConnection,
    newest: &NewestHeartbeats<'_>,
    changes: &mut Vec<Change>,
) -> Result<std::collections::HashSet<Uuid>, ApiError> {
    let mut applied = std::collections::HashSet::new();
    if newest.is_empty() {
        return Ok(applied);
    }
    let ids: Vec<String> = newest.keys().map(Uuid::to_string).collect();
    let before = online_of(conn, &ids).await?;
    let rows: Vec<(&Uuid, &(&Good<'_>, &Heartbeat))> = newest.iter().collect();
    for chunk in rows.chunks(rows_per_statement(4)) {
        let sql = format!(
            "WITH v (hb_gw, hb_ts, hb_pending, hb_oldest) AS (VALUES {}) \
             UPDATE gateways SET heartbeat_ts = hb_ts, outbox_pending = hb_pending, \
             outbox_oldest_age_s = hb_oldest, \
             last_seen_at = CASE WHEN last_seen_at IS NULL OR last_seen_at < hb_ts THEN hb_ts ELSE last_seen_at END, \
             online = CASE WHEN offline_ts IS NULL OR offline_ts < hb_ts THEN 1 ELSE online END \
             FROM v WHERE id = hb_gw AND (heartbeat_ts IS NULL OR heartbeat_ts < hb_ts) \
             RETURNING id, online, last_seen_at, outbox_pending, outbox_oldest_age_s",
            placeholders(chunk.len(), 4)
        );
        let mut q = sqlx::query_as::<_, GatewayAfter>(sqlx::AssertSqlSafe(sql));
        for (gw, (g, hb)) in chunk {
            q = q
                .bind(gw.to_string())
                .bind(ms(g.env.ts))
                .bind(i64::try_from(hb.outbox_pending).unwrap_or(i64::MAX))
                .bind(hb.outbox_oldest_age_s.map(ms));
        }
        for (id, online, last_seen_at, pending, oldest) in q.fetch_all(&mut *conn).await? {
            let Ok(gw) = Uuid::parse_str(&id) else {
                continue;
            };
            applied.insert(gw);
            if before.get(&id) != Some(&online)
                && let Some((g, _)) = newest.get(&gw)
            {
                changes.push(Change {
                    merchant_id: g.ctx.merchant_id.clone(),
                    kind: "gateway",
                    entity_id: id.clone(),
                    data: json!({
                        "gateway_id": gw, "online": online == 1, "last_seen_at": last_seen_at,
                        "outbox_pending": pending, "outbox_oldest_age_s": oldest,
                    }),
                });
            }
        }
    }
    Ok(applied)
}

/// The lock states the applied heartbeats report, in multi-row statements (sorted by
/// lock id). Only the reporting gateway's own locks, only when newer than the lock's last
/// heartbeat; a disabled lock stays disabled. A live change for each visible difference.
async fn apply_heartbeat_locks(
    conn: &mut AnyConnection,
    newest: &NewestHeartbeats<'_>,
    applied: &std::collections::HashSet<Uuid>,
    changes: &mut Vec<Change>,
) -> Result<(), ApiError> {
    let gws: Vec<String> = newest
        .keys()
        .filter(|g| applied.contains(g))
        .map(Uuid::to_string)
        .collect();
    if gws.is_empty() {
        return Ok(());
    }
    let mut current: HashMap<String, (String, LockNow)> = HashMap::new();
    for chunk in gws.chunks(rows_per_statement(1)) {
        let sql = format!(
            "SELECT id, gateway_id, status, door_closed, locked, fw_version, last_heartbeat_at FROM locks \
             WHERE gateway_id IN ({}) AND deleted_at IS NULL",
            in_list(chunk.len())
        );
        let mut q = sqlx::query_as::<_, LockNowGw>(sqlx::AssertSqlSafe(sql));
        for id in chunk {
            q = q.bind(id.clone());
        }
        for l in q.fetch_all(&mut *conn).await? {
            current.insert(
                l.id,
                (
                    l.gateway_id,
                    LockNow {
                        status: l.status,
                        door_closed: l.door_closed,
                        locked: l.locked,
                        fw_version: l.fw_version,
                        last_heartbeat_at: l.last_heartbeat_at,
                    },
                ),
            );
        }
    }
    let mut rows: Vec<HbLock<'_>> = Vec::new();
    for (gw, (g, hb)) in newest {
        if !applied.contains(gw) {
            continue;
        }
        let ts = ms(g.env.ts);
        let gw_s = gw.to_string();
        for ls in &hb.locks {
            let id = ls.lock_id.to_string();
            // Only this gateway's own locks: a heartbeat cannot touch another gateway's lock.
            let Some((owner, now)) = current.get(&id) else {
                continue;
            };
            if *owner != gw_s || now.last_heartbeat_at.is_some_and(|t| t >= ts) {
                continue;
            }
            let status = if now.status == "disabled" {
                "disabled"
            } else if ls.online {
                "online"
            } else {
                "offline"
            };
            let visible = now.status != status
                || now.door_closed != Some(flag(ls.door_closed))
                || now.locked != Some(flag(ls.locked))
                || now.fw_version.as_deref() != Some(ls.fw.as_str());
            rows.push(HbLock {
                id,
                gw: gw_s.clone(),
                status,
                door: ls.door_closed,
                locked: ls.locked,
                fw: ls.fw.as_str(),
                ts,
                visible,
                merchant: g.ctx.merchant_id.as_str(),
            });
        }
    }
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    rows.dedup_by(|a, b| a.id == b.id);
    for chunk in rows.chunks(rows_per_statement(7)) {
        let sql = format!(
            "WITH v (l_id, l_gw, l_status, l_door, l_locked, l_fw, l_ts) AS (VALUES {}) \
             UPDATE locks SET status = l_status, door_closed = l_door, locked = l_locked, \
             fw_version = l_fw, last_heartbeat_at = l_ts, \
             status_changed_at = CASE WHEN status <> l_status THEN l_ts ELSE status_changed_at END \
             FROM v WHERE id = l_id AND gateway_id = l_gw \
             AND (last_heartbeat_at IS NULL OR last_heartbeat_at < l_ts) RETURNING id",
            placeholders(chunk.len(), 7)
        );
        let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
        for r in chunk {
            q = q
                .bind(r.id.clone())
                .bind(r.gw.clone())
                .bind(r.status)
                .bind(flag(r.door))
                .bind(flag(r.locked))
                .bind(r.fw.to_string())
                .bind(r.ts);
        }
        let updated: std::collections::HashSet<String> =
            q.fetch_all(&mut *conn).await?.into_iter().collect();
        for r in chunk {
            if r.visible && updated.contains(&r.id) {
                changes.push(Change {
                    merchant_id: r.merchant.to_string(),
                    kind: "lock",
                    entity_id: r.id.clone(),
                    data: json!({
                        "lock_id": r.id, "gateway_id": r.gw, "status": r.status,
                        "door_closed": r.door, "locked": r.locked, "fw_version": r.fw,
                        "last_heartbeat_at": r.ts,
                    }),
                });
            }
        }
    }
    Ok(())
}

/// The newest door event per lock, in multi-row statements (sorted by lock id): moves
/// the door state only forward by event time, only on the sending gateway's own locks.
async fn apply_doors(
    conn: &mut AnyConnection,
    newest: &NewestDoors<'_>,
    changes: &mut Vec<Change>,
) -> Result<(), ApiError> {
    let rows: Vec<(&String, &(&Good<'_>, bool, i64))> = newest.iter().collect();
    for chunk in rows.chunks(rows_per_statement(4)) {
        let sql = format!(
            "WITH v (d_id, d_gw, d_closed, d_at) AS (VALUES {}) \
             UPDATE locks SET door_closed = d_closed, door_at = d_at FROM v \
             WHERE id = d_id AND gateway_id = d_gw AND deleted_at IS NULL \
             AND (door_at IS NULL OR door_at < d_at) \
             RETURNING id, gateway_id, status, door_closed, locked, fw_version, last_heartbeat_at",
            placeholders(chunk.len(), 4)
        );
        let mut q = sqlx::query_as::<_, LockNowGw>(sqlx::AssertSqlSafe(sql));
        for (id, (g, closed, at)) in chunk {
            q = q
                .bind((*id).clone())
                .bind(g.ctx.gateway_id.to_string())
                .bind(flag(*closed))
                .bind(*at);
        }
        for l in q.fetch_all(&mut *conn).await? {
            let Some((g, _, _)) = newest.get(&l.id) else {
                continue;
            };
            changes.push(Change {
                merchant_id: g.ctx.merchant_id.clone(),
                kind: "lock",
                entity_id: l.id.clone(),
                data: json!({
                    "lock_id": l.id, "gateway_id": g.ctx.gateway_id, "status": l.status,
                    "door_closed": l.door_closed.map(|d| d == 1), "locked": l.locked.map(|x| x == 1),
                    "fw_version": l.fw_version, "last_heartbeat_at": l.last_heartbeat_at,
                }),
            });
        }
    }
    Ok(())
}

/// Every applied event's row in `gateway_events`, in multi-row statements.
async fn insert_events(
    conn: &mut AnyConnection,
    events: &[(&Good<'_>, &Event)],
    received_at: i64,
) -> Result<(), ApiError> {
    for chunk in events.chunks(rows_per_statement(9)) {
        let sql = format!(
            "INSERT INTO gateway_events (id, gateway_id, merchant_id, lock_id, kind, payload, ts, via, \
             received_at) VALUES {}",
            placeholders(chunk.len(), 9)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (g, ev) in chunk {
            let (kind, at) = match ev {
                Event::Unlock(e) => ("unlock", e.at),
                Event::Door(e) => ("door", e.at),
                Event::Alarm(e) => ("alarm", e.at),
                Event::Fw(e) => ("fw", e.at),
            };
            let payload = serde_json::to_string(ev).map_err(ApiError::internal)?;
            q = q
                .bind(g.env.id.to_string())
                .bind(g.ctx.gateway_id.to_string())
                .bind(g.ctx.merchant_id.clone())
                .bind(ev.lock_id().to_string())
                .bind(kind)
                .bind(payload)
                .bind(ms(at))
                .bind(g.ctx.via.as_str())
                .bind(received_at);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// online, last_seen_at, outbox_pending, outbox_oldest_age_s
type GatewayNow = (i64, Option<i64>, Option<i64>, Option<i64>);
/// status, door_closed, locked, fw_version, last_heartbeat_at
type LockRow = (
    String,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<i64>,
);

async fn gateway_change(conn: &mut AnyConnection, ctx: &GatewayCtx) -> Result<(), ApiError> {
    let row: Option<GatewayNow> = sqlx::query_as(
        "SELECT online, last_seen_at, outbox_pending, outbox_oldest_age_s FROM gateways WHERE id = $1",
    )
    .bind(ctx.gateway_id.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((online, last_seen_at, pending, oldest)) = row {
        let data = json!({
            "gateway_id": ctx.gateway_id, "online": online == 1, "last_seen_at": last_seen_at,
            "outbox_pending": pending, "outbox_oldest_age_s": oldest,
        });
        record_change(
            conn,
            &ctx.merchant_id,
            "gateway",
            &ctx.gateway_id.to_string(),
            &data,
        )
        .await?;
    }
    Ok(())
}

async fn apply_state(
    conn: &mut AnyConnection,
    ctx: &GatewayCtx,
    ts: u64,
    state: GatewayState,
) -> Result<(), ApiError> {
    let ts = ms(ts);
    let gw = ctx.gateway_id.to_string();
    let changed = if state.online {
        sqlx::query(
            "UPDATE gateways SET online = 1, state_ts = $1, \
             last_seen_at = CASE WHEN last_seen_at IS NULL OR last_seen_at < $1 THEN $1 ELSE last_seen_at END \
             WHERE id = $2 AND (state_ts IS NULL OR state_ts < $1)",
        )
        .bind(ts)
        .bind(gw)
        .execute(&mut *conn)
        .await?
        .rows_affected()
    } else {
        sqlx::query(
            "UPDATE gateways SET online = 0, offline_ts = $1, \
             state_ts = CASE WHEN state_ts IS NULL OR state_ts < $1 THEN $1 ELSE state_ts END \
             WHERE id = $2 AND (offline_ts IS NULL OR offline_ts < $1)",
        )
        .bind(ts)
        .bind(gw)
        .execute(&mut *conn)
        .await?
        .rows_affected()
    };
    if changed > 0 {
        gateway_change(conn, ctx).await?;
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct LockNow {
    status: String,
    door_closed: Option<i64>,
    locked: Option<i64>,
    fw_version: Option<String>,
    last_heartbeat_at: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct LockNowGw {
    id: String,
    gateway_id: String,
    status: String,
    door_closed: Option<i64>,
    locked: Option<i64>,
    fw_version: Option<String>,
    last_heartbeat_at: Option<i64>,
}

async fn lock_change(
    conn: &mut AnyConnection,
    ctx: &GatewayCtx,
    lock_id: &str,
) -> Result<(), ApiError> {
    let row: Option<LockRow> = sqlx::query_as(
        "SELECT status, door_closed, locked, fw_version, last_heartbeat_at FROM locks \
             WHERE id = $1 AND gateway_id = $2",
    )
    .bind(lock_id.to_string())
    .bind(ctx.gateway_id.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((status, door, locked, fw, hb)) = row {
        let data = json!({
            "lock_id": lock_id, "gateway_id": ctx.gateway_id, "status": status,
            "door_closed": door.map(|d| d == 1), "locked": locked.map(|l| l == 1),
            "fw_version": fw, "last_heartbeat_at": hb,
        });
        record_change(conn, &ctx.merchant_id, "lock", lock_id, &data).await?;
    }
    Ok(())
}

/// What an applied event does beyond its `gateway_events` row, the batched door state and
/// the batched order hooks: alarms and firmware.
async fn apply_event_rest(
    conn: &mut AnyConnection,
    ctx: &GatewayCtx,
    ev: &Event,
) -> Result<(), ApiError> {
    let lock_id = ev.lock_id().to_string();
    let gw = ctx.gateway_id.to_string();
    match ev {
        Event::Unlock(_) | Event::Door(_) => {}
        Event::Alarm(a) => {
            let own: Option<(String,)> = sqlx::query_as(
                "SELECT id FROM locks WHERE id = $1 AND gateway_id = $2 AND deleted_at IS NULL",
            )
            .bind(lock_id.clone())
            .bind(gw.clone())
            .fetch_optional(&mut *conn)
            .await?;
            // An alarm about a lock that is not this gateway's is kept as an event only.
            if own.is_none() {
                tracing::info!(gateway = %gw, lock = %lock_id, "alarm for a lock not on this gateway");
            } else {
                apply_alarm(conn, ctx, &lock_id, a.alarm, a.detail.as_deref(), ms(a.at)).await?;
            }
        }
        Event::Fw(f) => {
            if f.stage == dmr_protocol::message::FwStage::Done {
                let n = sqlx::query(
                    "UPDATE locks SET fw_version = $1 WHERE id = $2 AND gateway_id = $3 AND deleted_at IS NULL",
                )
                .bind(f.version.clone())
                .bind(lock_id.clone())
                .bind(gw.clone())
                .execute(&mut *conn)
                .await?
                .rows_affected();
                if n > 0 {
                    lock_change(conn, ctx, &lock_id).await?;
                }
            }
        }
    }
    Ok(())
}

async fn apply_alarm(
    conn: &mut AnyConnection,
    ctx: &GatewayCtx,
    lock_id: &str,
    kind: AlarmKind,
    detail: Option<&str>,
    at: i64,
) -> Result<(), ApiError> {
    let gw = ctx.gateway_id.to_string();
    let now = now_ms();
    if kind == AlarmKind::LockOnline {
        // Clears the open "lock offline" alarm rather than raising one.
        let cleared: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM alarms WHERE lock_id = $1 AND kind = 'lock_offline' AND cleared_at IS NULL",
        )
        .bind(lock_id.to_string())
        .fetch_all(&mut *conn)
        .await?;
        for (id,) in cleared {
            sqlx::query("UPDATE alarms SET cleared_at = $1 WHERE id = $2")
                .bind(at)
                .bind(id.clone())
                .execute(&mut *conn)
                .await?;
            let data = json!({ "alarm_id": id, "lock_id": lock_id, "gateway_id": gw,
                               "kind": "lock_offline", "cleared_at": at });
            record_change(conn, &ctx.merchant_id, "alarm", &id, &data).await?;
        }
    } else {
        let id = new_id();
        sqlx::query(
            "INSERT INTO alarms (id, merchant_id, gateway_id, lock_id, kind, detail, raised_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id.clone())
        .bind(ctx.merchant_id.clone())
        .bind(gw.clone())
        .bind(lock_id.to_string())
        .bind(kind.as_str())
        .bind(detail.map(str::to_string))
        .bind(at)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        let data = json!({ "alarm_id": id, "lock_id": lock_id, "gateway_id": gw,
                           "kind": kind.as_str(), "detail": detail, "raised_at": at });
        record_change(conn, &ctx.merchant_id, "alarm", &id, &data).await?;
    }
    let status = match kind {
        AlarmKind::LockOffline => Some("offline"),
        AlarmKind::LockOnline => Some("online"),
        _ => None,
    };
    if let Some(status) = status {
        let n = sqlx::query(
            "UPDATE locks SET status = $1, status_changed_at = $2 \
             WHERE id = $3 AND gateway_id = $4 AND status <> 'disabled' AND status <> $1",
        )
        .bind(status)
        .bind(at)
        .bind(lock_id.to_string())
        .bind(gw)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if n > 0 {
            lock_change(conn, ctx, lock_id).await?;
        }
    }
    Ok(())
}
