//! Commands from the cloud to a gateway (`dmr/v1/gw/{gw}/cmd`) and the acks that answer
//! them. A command is signed with the active cloud key, carries an `exp_ms`, is recorded in
//! `gateway_commands` before it is published (so an ack can never arrive for a command the
//! database does not know), and is settled by the gateway's first ack ([`on_ack`], called by
//! ingest inside its transaction) or marked expired by [`expire_once`], run under a lease.
//!
//! Unlock tokens are bearer secrets: the stored body names the token by its id only.
//!
//! The console routes live here too: `POST /api/v1/locks/{id}/unlock` signs a one-use,
//! five-minute maintenance token for the lock and sends it as `cmd unlock`;
//! `GET /api/v1/gateways/{id}/commands` lists recent commands with their ack state.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use dmr_protocol::message::{Ack, Command, Envelope, Message};
use dmr_protocol::token::{TokenClaims, TokenKind};
use dmr_protocol::topic::{TopicKind, topic};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::AnyConnection;
use uuid::Uuid;

use crate::AppState;
use crate::db::{Db, now_ms};
use crate::error::{ApiError, ApiResult};
use crate::gateways;
use crate::http::extract::{ApiQuery, IdPath};
use crate::http::guard::Caller;
use crate::http::list::{Page, Paging};
use crate::link::bridge::MqttLink;
use crate::link::keys::KeyRing;
use crate::locks;

/// How long a console unlock token (and its command) stays valid.
pub const UNLOCK_TTL: Duration = Duration::from_secs(300);

const LATENCY_BUCKETS_MS: [u64; 10] = [50, 100, 250, 500, 1000, 2000, 5000, 10_000, 30_000, 60_000];

/// Command counters. Acks are counted where they are applied (inside ingest's transaction,
/// which has no handle on this struct), so the ack side is process-wide.
#[derive(Debug, Default)]
struct AckMetrics {
    by_result: Mutex<std::collections::BTreeMap<String, u64>>,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_MS.len()],
    latency_count: AtomicU64,
    latency_sum_ms: AtomicU64,
}

static ACKS: std::sync::LazyLock<AckMetrics> = std::sync::LazyLock::new(AckMetrics::default);

/// Who asked for a command and about which lock (recorded with it).
#[derive(Clone, Debug, Default)]
pub struct CommandMeta {
    pub lock_id: Option<Uuid>,
    pub created_by: Option<String>,
}

/// A signed command not yet recorded nor published (see [`Commands::prepare`]).
#[derive(Debug)]
pub struct PreparedCommand {
    id: Uuid,
    gw: Uuid,
    merchant_id: String,
    lock_id: Option<Uuid>,
    created_by: Option<String>,
    op: &'static str,
    body: String,
    key_id: i64,
    exp_ms: i64,
    created_at: i64,
    jws: String,
}

impl PreparedCommand {
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Writes the `gateway_commands` row on `conn` (the caller's transaction).
    pub async fn record(&self, conn: &mut AnyConnection) -> Result<(), ApiError> {
        sqlx::query(
            "INSERT INTO gateway_commands (id, gateway_id, merchant_id, lock_id, op, body, key_id, \
             exp_ms, status, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'sent', $9, $10)",
        )
        .bind(self.id.to_string())
        .bind(self.gw.to_string())
        .bind(self.merchant_id.clone())
        .bind(self.lock_id.map(|l| l.to_string()))
        .bind(self.op)
        .bind(self.body.clone())
        .bind(self.key_id)
        .bind(self.exp_ms)
        .bind(self.created_by.clone())
        .bind(self.created_at)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// Sends commands; in `AppState` as `Arc<Commands>`.
#[derive(Debug)]
pub struct Commands {
    db: Db,
    keys: Arc<KeyRing>,
    link: Arc<MqttLink>,
    sent: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    expired: AtomicU64,
}

impl Commands {
    pub fn new(db: Db, keys: Arc<KeyRing>, link: Arc<MqttLink>) -> Self {
        Commands {
            db,
            keys,
            link,
            sent: Mutex::default(),
            expired: AtomicU64::new(0),
        }
    }

    /// Signs with the active cloud key, records in `gateway_commands`, publishes QoS 1 to
    /// `dmr/v1/gw/{gw}/cmd`. Returns the command id.
    pub async fn send(&self, gw: Uuid, cmd: Command, ttl: Duration) -> Result<Uuid, ApiError> {
        self.send_with(gw, cmd, ttl, CommandMeta::default()).await
    }

    /// [`Commands::send`] with who and what lock it is for.
    pub async fn send_with(
        &self,
        gw: Uuid,
        cmd: Command,
        ttl: Duration,
        meta: CommandMeta,
    ) -> Result<Uuid, ApiError> {
        let id = Uuid::now_v7();
        self.send_as(id, gw, cmd, ttl, meta).await?;
        Ok(id)
    }

    /// [`Commands::send_with`] under an id the caller chose (a fresh `Uuid::now_v7()`), so
    /// the caller can record the id in its own transaction before the command exists (the
    /// order dispatch does, saving a write per order).
    pub async fn send_as(
        &self,
        id: Uuid,
        gw: Uuid,
        cmd: Command,
        ttl: Duration,
        meta: CommandMeta,
    ) -> Result<(), ApiError> {
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT merchant_id, status FROM gateways WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(gw.to_string())
        .fetch_optional(&self.db.pool)
        .await?;
        let Some((merchant_id, status)) = row else {
            return Err(ApiError::NotFound);
        };
        let prepared = self
            .prepare(id, gw, merchant_id, &status, cmd, ttl, meta)
            .await?;
        let mut conn = self.db.pool.acquire().await?;
        prepared.record(&mut conn).await?;
        drop(conn);
        self.publish(prepared).await
    }

    /// The first half of a send for a caller that records the command in its own
    /// transaction (the payment notification does, with the order's move to `unlocking`):
    /// checks the gateway (its merchant and status as the caller read them, `None` if it
    /// has no row) and signs the envelope, all before any write lock is taken. Then
    /// [`PreparedCommand::record`] inside the transaction, and [`Commands::publish`] only
    /// after it committed, so an ack can never name a command the database does not know.
    // One argument per part of a command; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub async fn prepare(
        &self,
        id: Uuid,
        gw: Uuid,
        merchant_id: String,
        gateway_status: &str,
        cmd: Command,
        ttl: Duration,
        meta: CommandMeta,
    ) -> Result<PreparedCommand, ApiError> {
        if gateway_status != "enrolled" {
            return Err(ApiError::Conflict(format!(
                "gateway {gw} is {gateway_status}, not enrolled; enroll it before sending commands"
            )));
        }
        let signer = self.keys.signer().await?;
        let now = now_ms();
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 4);
        let exp_ms = now.saturating_add(ttl_ms);
        let op = cmd.op();
        let body = stored_body(&cmd).to_string();
        let mut env = Envelope::new(id, gw, u64::try_from(now).unwrap_or(0), Message::Cmd(cmd));
        env.exp_ms = Some(u64::try_from(exp_ms).unwrap_or(0));
        let jws = signer.sign_message(&env);
        Ok(PreparedCommand {
            id,
            gw,
            merchant_id,
            lock_id: meta.lock_id,
            created_by: meta.created_by,
            op,
            body,
            key_id: i64::from(signer.key_id),
            exp_ms,
            created_at: now,
            jws,
        })
    }

    /// Publishes a command whose row has committed. A publish that fails marks the row
    /// `expired` / `not_sent` at once so it does not look pending.
    pub async fn publish(&self, p: PreparedCommand) -> Result<(), ApiError> {
        if let Err(e) = self.link.publish(topic(p.gw, TopicKind::Cmd), p.jws).await {
            let _ = sqlx::query(
                "UPDATE gateway_commands SET status = 'expired', result = 'not_sent' WHERE id = $1",
            )
            .bind(p.id.to_string())
            .execute(&self.db.pool)
            .await;
            return Err(e);
        }
        *self
            .sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(p.op)
            .or_default() += 1;
        tracing::info!(gateway = %p.gw, cmd = %p.id, op = p.op, "command sent");
        Ok(())
    }

    /// Prometheus text: commands sent by op, acks by result, ack latency, expiries.
    pub fn render_metrics(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP dmr_commands_sent_total Commands published to gateways, by op."
        );
        let _ = writeln!(out, "# TYPE dmr_commands_sent_total counter");
        for (op, n) in self.sent.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "dmr_commands_sent_total{{op=\"{op}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP dmr_commands_expired_total Commands that expired unanswered (this instance's job runs)."
        );
        let _ = writeln!(out, "# TYPE dmr_commands_expired_total counter");
        let _ = writeln!(
            out,
            "dmr_commands_expired_total {}",
            self.expired.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP dmr_commands_acked_total Command acks applied, by result code."
        );
        let _ = writeln!(out, "# TYPE dmr_commands_acked_total counter");
        for (r, n) in ACKS
            .by_result
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(out, "dmr_commands_acked_total{{result=\"{r}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP dmr_command_ack_latency_seconds From sending a command to applying its ack."
        );
        let _ = writeln!(out, "# TYPE dmr_command_ack_latency_seconds histogram");
        for (i, le) in LATENCY_BUCKETS_MS.iter().enumerate() {
            let _ = writeln!(
                out,
                "dmr_command_ack_latency_seconds_bucket{{le=\"{}\"}} {}",
                *le as f64 / 1000.0,
                ACKS.latency_buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = ACKS.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "dmr_command_ack_latency_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "dmr_command_ack_latency_seconds_sum {}",
            ACKS.latency_sum_ms.load(Ordering::Relaxed) as f64 / 1000.0
        );
        let _ = writeln!(out, "dmr_command_ack_latency_seconds_count {count}");
    }
}

/// The command as stored: unlock tokens (bearer secrets) become their token id.
fn stored_body(cmd: &Command) -> Value {
    match cmd {
        Command::Unlock { token } => {
            let token_id = dmr_protocol::token::UnlockToken::from_text(token)
                .map(|t| t.claims().token_id.to_string())
                .ok();
            json!({ "op": "unlock", "token_id": token_id })
        }
        Command::TokensPut { tokens } => json!({ "op": "tokens.put", "count": tokens.len() }),
        other => serde_json::to_value(other).unwrap_or(Value::Null),
    }
}

/// The command an ack settled (see [`on_ack`]).
#[derive(Debug, Clone)]
pub struct Settled {
    pub op: String,
    /// The stored body (unlock tokens as their ids).
    pub body: String,
}

/// Applies an ack inside ingest's transaction: records it, and settles the command it names
/// if that command belongs to `gw` and is not settled yet. An ack after expiry still
/// settles it (the gateway did act; the truth beats the timeout). Returns the command it
/// settled (None: already settled, or no command of this gateway), so the order hook need
/// not read the same row again.
///
/// The settle is one conditional `UPDATE .. RETURNING` (the latency computed from the
/// row's own `created_at`) rather than a read then an update: one round trip inside the
/// batch transaction instead of two, and the same outcome (only the first ack matches).
pub async fn on_ack(
    tx: &mut AnyConnection,
    gw: Uuid,
    ack: &Ack,
    ts_ms: i64,
) -> Result<Option<Settled>, ApiError> {
    let now = now_ms();
    let result = ack.result.as_str();
    let settled: Option<(i64, String, String)> = sqlx::query_as(
        "UPDATE gateway_commands SET status = 'acked', result = $1, \
         latency_ms = CASE WHEN created_at < $2 THEN $2 - created_at ELSE 0 END, acked_at = $2 \
         WHERE id = $3 AND gateway_id = $4 AND status <> 'acked' \
         RETURNING latency_ms, op, body",
    )
    .bind(result)
    .bind(now)
    .bind(ack.cmd.to_string())
    .bind(gw.to_string())
    .fetch_optional(&mut *tx)
    .await?;
    let matched = settled.is_some();
    if let Some((latency, _, _)) = &settled {
        let ms = u64::try_from(*latency).unwrap_or(0);
        for (i, le) in LATENCY_BUCKETS_MS.iter().enumerate() {
            if ms <= *le {
                ACKS.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        ACKS.latency_count.fetch_add(1, Ordering::Relaxed);
        ACKS.latency_sum_ms.fetch_add(ms, Ordering::Relaxed);
        *ACKS
            .by_result
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(result.to_string())
            .or_default() += 1;
    } else {
        tracing::warn!(gateway = %gw, cmd = %ack.cmd, result, "ack for no open command of this gateway; recorded only");
    }
    sqlx::query(
        "INSERT INTO gateway_command_acks (id, gateway_id, command_id, result, latency_ms, matched, ts, received_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(Uuid::new_v4().to_string())
    .bind(gw.to_string())
    .bind(ack.cmd.to_string())
    .bind(result)
    .bind(i64::try_from(ack.latency_ms).unwrap_or(i64::MAX))
    .bind(i64::from(matched))
    .bind(ts_ms)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(settled.map(|(_, op, body)| Settled { op, body }))
}

/// Marks commands past `exp_ms` without an ack as expired. Returns how many.
pub async fn expire_once(db: &Db, now: i64) -> anyhow::Result<u64> {
    let n = sqlx::query(
        "UPDATE gateway_commands SET status = 'expired' WHERE status = 'sent' AND exp_ms < $1",
    )
    .bind(now)
    .execute(&db.pool)
    .await?
    .rows_affected();
    Ok(n)
}

/// Counts expiries in this instance's metrics.
pub fn count_expired(commands: &Commands, n: u64) {
    commands.expired.fetch_add(n, Ordering::Relaxed);
}

/// What `POST /api/v1/locks/{id}/unlock` answers (202: sent, not yet acknowledged).
#[derive(Debug, Serialize)]
pub struct UnlockSent {
    pub command_id: Uuid,
    pub gateway_id: String,
    pub token_id: Uuid,
    pub exp_ms: i64,
    pub status: &'static str,
}

/// `POST /api/v1/locks/{id}/unlock` (`device:unlock`): a maintenance token (kind 0x02, one
/// use, five minutes) for this lock, signed by the active cloud key, sent as `cmd unlock`.
pub async fn unlock_lock(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> ApiResult<(StatusCode, Json<UnlockSent>)> {
    let scope = caller.scope();
    let lock = locks::store::get(&state.db, &scope, &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if lock.status == "disabled" {
        return Err(ApiError::Conflict(
            "this lock is disabled; enable it before unlocking it".into(),
        ));
    }
    let lock_id = Uuid::try_parse(&lock.id).map_err(ApiError::internal)?;
    let gw = Uuid::try_parse(&lock.gateway_id).map_err(ApiError::internal)?;
    let signer = state.keys.signer().await?;
    let now_s = u64::try_from(now_ms() / 1000).unwrap_or(0);
    let claims = TokenClaims {
        kind: TokenKind::Maintenance,
        key_id: signer.key_id,
        token_id: Uuid::new_v4(),
        lock_id,
        order_id: Uuid::nil(),
        not_before: now_s,
        not_after: now_s + UNLOCK_TTL.as_secs(),
        max_uses: 1,
    };
    let token = signer
        .sign_token(claims)
        .map_err(|e| ApiError::internal(anyhow::anyhow!("signing a maintenance token: {e}")))?;
    let command_id = state
        .commands
        .send_with(
            gw,
            Command::Unlock {
                token: token.to_text(),
            },
            UNLOCK_TTL,
            CommandMeta {
                lock_id: Some(lock_id),
                created_by: Some(caller.user_id.clone()),
            },
        )
        .await?;
    tracing::info!(lock = %lock_id, gateway = %gw, cmd = %command_id, user = %caller.user_id, "console unlock sent");
    Ok((
        StatusCode::ACCEPTED,
        Json(UnlockSent {
            command_id,
            gateway_id: lock.gateway_id,
            token_id: claims.token_id,
            exp_ms: i64::try_from(claims.not_after)
                .unwrap_or(i64::MAX / 1000)
                .saturating_mul(1000),
            status: "sent",
        }),
    ))
}

/// One row of `GET /api/v1/gateways/{id}/commands`.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct CommandRow {
    pub id: String,
    pub gateway_id: String,
    pub lock_id: Option<String>,
    pub op: String,
    #[sqlx(rename = "body")]
    #[serde(skip)]
    pub body_text: String,
    #[sqlx(skip)]
    pub body: Value,
    pub key_id: i64,
    pub exp_ms: i64,
    pub status: String,
    pub result: Option<String>,
    pub latency_ms: Option<i64>,
    pub created_by: Option<String>,
    pub created_at: i64,
    pub acked_at: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandsQuery {
    page: Option<String>,
    per_page: Option<String>,
    status: Option<String>,
}

/// `GET /api/v1/gateways/{id}/commands` (`device:read`): newest first.
pub async fn list_for_gateway(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    ApiQuery(query): ApiQuery<CommandsQuery>,
) -> ApiResult<Json<Page<CommandRow>>> {
    let paging = Paging::parse(query.page.as_deref(), query.per_page.as_deref())?;
    if let Some(s) = &query.status
        && !matches!(s.as_str(), "sent" | "acked" | "expired")
    {
        return Err(ApiError::validation("status", "sent, acked or expired"));
    }
    let gateway = gateways::store::get(&state.db, &caller.scope(), &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let status = query.status.unwrap_or_default();
    let total: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM gateway_commands WHERE gateway_id = $1 AND ($2 = '' OR status = $2)",
    )
    .bind(gateway.id.clone())
    .bind(status.clone())
    .fetch_one(&state.db.pool)
    .await?;
    let mut items: Vec<CommandRow> = sqlx::query_as(
        "SELECT id, gateway_id, lock_id, op, body, key_id, exp_ms, status, result, latency_ms, \
         created_by, created_at, acked_at FROM gateway_commands \
         WHERE gateway_id = $1 AND ($2 = '' OR status = $2) \
         ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4",
    )
    .bind(gateway.id)
    .bind(status)
    .bind(paging.per_page)
    .bind(paging.offset())
    .fetch_all(&state.db.pool)
    .await?;
    for item in &mut items {
        item.body = serde_json::from_str(&item.body_text).unwrap_or(Value::Null);
    }
    Ok(Json(Page {
        items,
        page: paging.page,
        per_page: paging.per_page,
        total,
        total_exact: true,
    }))
}
