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
    match message::open(raw, resolve, expect) {
        Ok((_, env)) if env.message.message_type().from_gateway() => Ok(env),
        Ok(_) => Err(RejectReason::NotFromGateway),
        Err(MessageError::Jws(JwsError::UnknownKid { .. })) => Err(RejectReason::WrongSigner),
        Err(MessageError::Jws(JwsError::BadSignature { .. })) => Err(RejectReason::BadSignature),
        Err(MessageError::WrongSigner { .. }) => Err(RejectReason::WrongSigner),
        Err(MessageError::WrongGateway { .. }) => Err(RejectReason::WrongGateway),
        Err(e) => Err(RejectReason::Malformed(e.to_string())),
    }
}

fn verify_all(raw: &[String], gw: Uuid, key: &VerifyingKey) -> Vec<Result<Envelope, RejectReason>> {
    raw.iter().map(|r| verify_one(r, gw, key)).collect()
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

    async fn verify_batch(
        &self,
        gw: Uuid,
        key: VerifyingKey,
        raw: &[&str],
    ) -> Result<Vec<Result<Envelope, RejectReason>>, ApiError> {
        if raw.len() < BLOCKING_BATCH {
            return Ok(raw.iter().map(|r| verify_one(r, gw, &key)).collect());
        }
        // Signature checks are CPU work: keep them off the async workers.
        let owned: Vec<String> = raw.iter().map(|s| (*s).to_string()).collect();
        tokio::task::spawn_blocking(move || verify_all(&owned, gw, &key))
            .await
            .map_err(ApiError::internal)
    }

    /// [`Ingest::submit`] for a batch that mixes gateways (the MQTT bridge's case: one
    /// heartbeat from each of many gateways). Each item is checked against the gateway it
    /// arrived for, exactly as `submit` does, but the whole batch is applied in ONE
    /// transaction and verified on up to two blocking threads, so the per-commit cost is
    /// paid once per batch instead of once per gateway. Same order and meaning of outcomes;
    /// an `Err` means nothing of the batch was applied.
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
        // Signature checks are CPU work: off the async workers, split in two halves.
        let half = work.len().div_ceil(2).max(1);
        let mut handles = Vec::new();
        let mut work = work;
        while !work.is_empty() {
            let rest = work.split_off(work.len().min(half));
            let chunk = std::mem::replace(&mut work, rest);
            handles.push(tokio::task::spawn_blocking(move || {
                chunk
                    .into_iter()
                    .map(|(i, gw, raw, key)| (i, verify_one(&raw, gw, &key)))
                    .collect::<Vec<_>>()
            }));
        }
        for h in handles {
            for (i, v) in h.await.map_err(ApiError::internal)? {
                verified[i] = Some(v);
            }
        }
        // A cached key may predate a re-enrollment: re-read once and retry the failures.
        for (i, (gw, raw)) in items.iter().enumerate() {
            let stale = entries
                .get(gw)
                .is_some_and(|e| e.at.elapsed() > Duration::from_millis(500));
            if stale && matches!(verified[i], Some(Err(RejectReason::BadSignature))) {
                let e = self.key_of(*gw, true).await?;
                verified[i] = e.key.as_ref().map(|(k, _)| verify_one(raw, *gw, k));
                entries.insert(*gw, e);
            }
        }
        let received_at = now_ms();
        let mut outcomes: Vec<Option<Outcome>> = (0..items.len()).map(|_| None).collect();
        let mut applied_kinds: Vec<&'static str> = Vec::new();
        // Apply in one fixed order, by gateway and then message id, whatever order the
        // messages arrived in: concurrent batches (this instance's workers, other
        // instances) then take row locks (message ids, gateway rows, their locks' rows) in
        // the same order, instead of deadlocking on PostgreSQL and retrying. Per-gateway
        // state is ordered by the messages' own timestamps, not by arrival, so this changes
        // no result.
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by_key(|&i| {
            let id = verified[i]
                .as_ref()
                .and_then(|v| v.as_ref().ok())
                .map(|env| env.id);
            (items[i].0, id)
        });
        let mut tx = self.db.pool.begin().await?;
        for i in order {
            let gw = &items[i].0;
            let merchant = entries
                .get(gw)
                .and_then(|e| e.key.as_ref().map(|(_, m)| m.clone()));
            let (Some(v), Some(merchant_id)) = (&verified[i], merchant) else {
                outcomes[i] = Some(Outcome::Rejected(RejectReason::UnknownGateway));
                continue;
            };
            match v {
                Err(reason) => outcomes[i] = Some(Outcome::Rejected(reason.clone())),
                Ok(env) => {
                    let kind = env.message.message_type().as_str();
                    let fresh = sqlx::query(
                        "INSERT INTO gateway_messages (id, gateway_id, type, ts, via, received_at) \
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(env.id.to_string())
                    .bind(gw.to_string())
                    .bind(kind)
                    .bind(ms(env.ts))
                    .bind(via.as_str())
                    .bind(received_at)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                        == 1;
                    if fresh {
                        let ctx = GatewayCtx {
                            gateway_id: *gw,
                            merchant_id,
                            via,
                        };
                        apply(&mut tx, &ctx, env, received_at).await?;
                        applied_kinds.push(kind);
                        outcomes[i] = Some(Outcome::Applied);
                    } else {
                        outcomes[i] = Some(Outcome::Duplicate);
                    }
                }
            }
        }
        tx.commit().await?;
        // Every index was visited exactly once above.
        let outcomes: Vec<Outcome> = outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Outcome::Rejected(RejectReason::UnknownGateway)))
            .collect();
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

    /// Verify (signature, signer, gw == topic/caller) and apply a batch in ONE transaction
    /// per call. Duplicate ids are dropped (table `gateway_messages`, primary key = message
    /// id, insert-if-absent). Returns one Outcome per input, same order. An `Err` means the
    /// database failed and nothing of the batch was applied: retry it.
    pub async fn submit(&self, gw: Uuid, via: Via, raw: &[&str]) -> Result<Vec<Outcome>, ApiError> {
        if raw.is_empty() {
            return Ok(Vec::new());
        }
        let mut entry = self.key_of(gw, false).await?;
        let Some((mut key, mut merchant_id)) = entry.key.clone() else {
            for _ in raw {
                self.metrics.rejected(RejectReason::UnknownGateway.as_str());
            }
            return Ok(vec![
                Outcome::Rejected(RejectReason::UnknownGateway);
                raw.len()
            ]);
        };
        let mut verified = self.verify_batch(gw, key, raw).await?;
        // A cached key may predate a re-enrollment: re-read once and retry the failures.
        if entry.at.elapsed() > Duration::from_millis(500)
            && verified
                .iter()
                .any(|v| matches!(v, Err(RejectReason::BadSignature)))
        {
            entry = self.key_of(gw, true).await?;
            match entry.key.clone() {
                None => {
                    for _ in raw {
                        self.metrics.rejected(RejectReason::UnknownGateway.as_str());
                    }
                    return Ok(vec![
                        Outcome::Rejected(RejectReason::UnknownGateway);
                        raw.len()
                    ]);
                }
                Some((k, m)) => {
                    key = k;
                    merchant_id = m;
                    for (i, v) in verified.iter_mut().enumerate() {
                        if matches!(v, Err(RejectReason::BadSignature)) {
                            *v = verify_one(raw[i], gw, &key);
                        }
                    }
                }
            }
        }
        let ctx = GatewayCtx {
            gateway_id: gw,
            merchant_id,
            via,
        };
        let received_at = now_ms();
        let mut outcomes = Vec::with_capacity(raw.len());
        let mut applied_kinds: Vec<&'static str> = Vec::new();
        let mut tx = self.db.pool.begin().await?;
        // Phase 1: claim every message id, in sorted order. Two batches that share ids (the
        // same outbox drained by HTTP while MQTT redelivers) then take the unique-index
        // entries in the same order, so on PostgreSQL one waits for the other instead of
        // deadlocking; neither holds a gateway or lock row yet.
        let mut ids: Vec<(Uuid, &Envelope)> = verified
            .iter()
            .filter_map(|v| v.as_ref().ok())
            .map(|e| (e.id, e))
            .collect();
        ids.sort_by_key(|(id, _)| *id);
        ids.dedup_by_key(|(id, _)| *id);
        let mut fresh = std::collections::HashSet::new();
        for (id, env) in &ids {
            let won = sqlx::query(
                "INSERT INTO gateway_messages (id, gateway_id, type, ts, via, received_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
            )
            .bind(id.to_string())
            .bind(gw.to_string())
            .bind(env.message.message_type().as_str())
            .bind(ms(env.ts))
            .bind(via.as_str())
            .bind(received_at)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if won {
                fresh.insert(*id);
            }
        }
        // Phase 2: apply the new ones in the order they were sent.
        for v in &verified {
            match v {
                Err(reason) => outcomes.push(Outcome::Rejected(reason.clone())),
                Ok(env) => {
                    // `remove`: a second copy of an id in the same batch is a duplicate.
                    if fresh.remove(&env.id) {
                        apply(&mut tx, &ctx, env, received_at).await?;
                        applied_kinds.push(env.message.message_type().as_str());
                        outcomes.push(Outcome::Applied);
                    } else {
                        outcomes.push(Outcome::Duplicate);
                    }
                }
            }
        }
        tx.commit().await?;
        for o in &outcomes {
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
}

async fn apply(
    conn: &mut AnyConnection,
    ctx: &GatewayCtx,
    env: &Envelope,
    received_at: i64,
) -> Result<(), ApiError> {
    match &env.message {
        Message::Heartbeat(hb) => apply_heartbeat(conn, ctx, env.ts, hb).await,
        Message::State(s) => apply_state(conn, ctx, env.ts, *s).await,
        Message::Event(ev) => apply_event(conn, ctx, env, ev, received_at).await,
        Message::Ack(ack) => {
            crate::link::commands::on_ack(conn, ctx.gateway_id, ack, ms(env.ts)).await?;
            // An order's `cmd unlock` answered: the order moves on (or fails over).
            crate::orders::on_command_result(conn, ctx.gateway_id, ack.cmd, ack.result, ms(env.ts))
                .await
        }
        // verify_one refuses commands before they get here.
        Message::Cmd(_) => Ok(()),
    }
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
    id: String,
    status: String,
    door_closed: Option<i64>,
    locked: Option<i64>,
    fw_version: Option<String>,
    last_heartbeat_at: Option<i64>,
}

async fn apply_heartbeat(
    conn: &mut AnyConnection,
    ctx: &GatewayCtx,
    ts: u64,
    hb: &Heartbeat,
) -> Result<(), ApiError> {
    let ts = ms(ts);
    let gw = ctx.gateway_id.to_string();
    // Gateway: last seen, outbox figures (newest heartbeat only), and online again if this
    // heartbeat is newer than the last offline state.
    let before: Option<(i64,)> = sqlx::query_as("SELECT online FROM gateways WHERE id = $1")
        .bind(gw.clone())
        .fetch_optional(&mut *conn)
        .await?;
    let updated = sqlx::query(
        "UPDATE gateways SET heartbeat_ts = $1, outbox_pending = $2, outbox_oldest_age_s = $3, \
         last_seen_at = CASE WHEN last_seen_at IS NULL OR last_seen_at < $1 THEN $1 ELSE last_seen_at END, \
         online = CASE WHEN offline_ts IS NULL OR offline_ts < $1 THEN 1 ELSE online END \
         WHERE id = $4 AND (heartbeat_ts IS NULL OR heartbeat_ts < $1)",
    )
    .bind(ts)
    .bind(i64::try_from(hb.outbox_pending).unwrap_or(i64::MAX))
    .bind(hb.outbox_oldest_age_s.map(ms))
    .bind(gw.clone())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if updated == 0 {
        // An older heartbeat than one already applied: nothing of it is newer.
        return Ok(());
    }
    let after: Option<(i64,)> = sqlx::query_as("SELECT online FROM gateways WHERE id = $1")
        .bind(gw.clone())
        .fetch_optional(&mut *conn)
        .await?;
    if before != after {
        gateway_change(conn, ctx).await?;
    }
    let locks: Vec<LockNow> = sqlx::query_as(
        "SELECT id, status, door_closed, locked, fw_version, last_heartbeat_at FROM locks \
         WHERE gateway_id = $1 AND deleted_at IS NULL",
    )
    .bind(gw.clone())
    .fetch_all(&mut *conn)
    .await?;
    let by_id: HashMap<&str, &LockNow> = locks.iter().map(|l| (l.id.as_str(), l)).collect();
    for ls in &hb.locks {
        let id = ls.lock_id.to_string();
        // Only this gateway's own locks: a heartbeat cannot touch another gateway's lock.
        let Some(now) = by_id.get(id.as_str()) else {
            continue;
        };
        if now.last_heartbeat_at.is_some_and(|t| t >= ts) {
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
        sqlx::query(
            "UPDATE locks SET status = $1, door_closed = $2, locked = $3, fw_version = $4, \
             last_heartbeat_at = $5, \
             status_changed_at = CASE WHEN status <> $1 THEN $5 ELSE status_changed_at END \
             WHERE id = $6 AND gateway_id = $7",
        )
        .bind(status)
        .bind(flag(ls.door_closed))
        .bind(flag(ls.locked))
        .bind(ls.fw.clone())
        .bind(ts)
        .bind(id.clone())
        .bind(gw.clone())
        .execute(&mut *conn)
        .await?;
        if visible {
            let data = json!({
                "lock_id": id, "gateway_id": gw, "status": status, "door_closed": ls.door_closed,
                "locked": ls.locked, "fw_version": ls.fw, "last_heartbeat_at": ts,
            });
            record_change(conn, &ctx.merchant_id, "lock", &id, &data).await?;
        }
    }
    Ok(())
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

async fn apply_event(
    conn: &mut AnyConnection,
    ctx: &GatewayCtx,
    env: &Envelope,
    ev: &Event,
    received_at: i64,
) -> Result<(), ApiError> {
    let lock_id = ev.lock_id().to_string();
    let gw = ctx.gateway_id.to_string();
    let (kind, at) = match ev {
        Event::Unlock(e) => ("unlock", e.at),
        Event::Door(e) => ("door", e.at),
        Event::Alarm(e) => ("alarm", e.at),
        Event::Fw(e) => ("fw", e.at),
    };
    let at = ms(at);
    let payload = serde_json::to_string(ev).map_err(ApiError::internal)?;
    sqlx::query(
        "INSERT INTO gateway_events (id, gateway_id, merchant_id, lock_id, kind, payload, ts, via, \
         received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(env.id.to_string())
    .bind(gw.clone())
    .bind(ctx.merchant_id.clone())
    .bind(lock_id.clone())
    .bind(kind)
    .bind(payload)
    .bind(at)
    .bind(ctx.via.as_str())
    .bind(received_at)
    .execute(&mut *conn)
    .await?;
    match ev {
        Event::Unlock(_) => {}
        Event::Door(d) => {
            let n = sqlx::query(
                "UPDATE locks SET door_closed = $1, door_at = $2 \
                 WHERE id = $3 AND gateway_id = $4 AND deleted_at IS NULL \
                 AND (door_at IS NULL OR door_at < $2)",
            )
            .bind(flag(d.door == DoorChange::Closed))
            .bind(at)
            .bind(lock_id.clone())
            .bind(gw.clone())
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if n > 0 {
                lock_change(conn, ctx, &lock_id).await?;
            }
        }
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
                apply_alarm(conn, ctx, &lock_id, a.alarm, a.detail.as_deref(), at).await?;
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
    on_applied_event(conn, ctx, env, ev).await
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

/// The one place an applied gateway event reaches other features, inside the ingest
/// transaction. Orders take `unlock` events (the outcome of an order's token) and `door`
/// events (opened then closed completes an order); the event itself is already stored in
/// `gateway_events`.
async fn on_applied_event(
    conn: &mut AnyConnection,
    ctx: &GatewayCtx,
    env: &Envelope,
    event: &Event,
) -> Result<(), ApiError> {
    crate::orders::on_gateway_event(conn, ctx.gateway_id, env.id, event, ms(env.ts)).await
}
