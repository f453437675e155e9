//! The phone's endpoints (no login, rate limited per client): the lock behind a QR code,
//! creating an order, its status (JSON and server-sent events), the offline token, and the
//! orders of this device.
//!
//! There are no accounts here, so two secrets stand in: the order's access key (returned
//! once by create, derived by HMAC so a double tap can return it again; only its hash is
//! stored) proves a caller placed the order, and the `X-Device-Session` header (a random
//! value the page keeps in local storage) groups "my orders". A wrong key answers 404, the
//! same as a missing order, so ids cannot be probed.
//!
//! Shapes follow `cloud/web/src/h5/api.ts`.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

use super::{Actor, OrderRow, Status, hash_key, record_transition};
use crate::AppState;
use crate::db::{new_id, now_ms};
use crate::error::{ApiError, ApiResult};
use crate::http::extract::{ApiQuery, IdPath, RawJson};
use crate::payments::{CreatePayment, PaymentStep, provider_for_request};

#[derive(Debug, Serialize)]
pub struct PublicPlan {
    pub id: String,
    pub name: String,
    pub duration_minutes: i64,
    pub price_fen: i64,
}

#[derive(Debug, Serialize)]
pub struct PublicVenue {
    pub name: String,
    pub address: String,
}

#[derive(Debug, Serialize)]
pub struct PublicLock {
    pub qr_code: String,
    pub name: String,
    pub venue: PublicVenue,
    pub status: String,
    pub available: bool,
    pub price_plans: Vec<PublicPlan>,
    /// Payment providers this server offers (`sandbox`, `wechat`).
    pub providers: Vec<String>,
    /// Whether the page can run WeChat sign-in (OAuth) to pay by JSAPI inside WeChat.
    pub wechat_oauth: bool,
}

/// [`LockInfo`] with the chosen plan, if it is one of the lock's (create's one read).
#[derive(Debug, sqlx::FromRow)]
struct LockAndPlan {
    #[sqlx(flatten)]
    lock: LockInfo,
    plan_id: Option<String>,
    plan_name: Option<String>,
    duration_minutes: Option<i64>,
    price_fen: Option<i64>,
}

#[derive(Debug)]
struct PlanPick {
    id: String,
    name: String,
    duration_minutes: i64,
    price_fen: i64,
}

#[derive(Debug, sqlx::FromRow)]
struct LockInfo {
    id: String,
    name: String,
    qr_code: String,
    status: String,
    venue_name: String,
    venue_address: String,
    merchant_id: String,
    venue_id: String,
    gateway_id: String,
}

fn check_qr(qr: &str) -> Result<(), ApiError> {
    if qr.is_empty() || qr.len() > 64 || !qr.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(ApiError::NotFound);
    }
    Ok(())
}

async fn lock_by_qr(state: &AppState, qr: &str) -> Result<Option<LockInfo>, ApiError> {
    Ok(sqlx::query_as::<_, LockInfo>(
        "SELECT l.id, l.name, l.qr_code, l.status, v.name AS venue_name, v.address AS venue_address, \
         l.merchant_id, l.venue_id, l.gateway_id \
         FROM locks l JOIN venues v ON v.id = l.venue_id \
         WHERE l.qr_code = $1 AND l.deleted_at IS NULL",
    )
    .bind(qr.to_string())
    .fetch_optional(&state.db.read)
    .await?)
}

fn offered(state: &AppState) -> Vec<String> {
    state
        .orders
        .providers
        .names()
        .into_iter()
        .map(|n| if n == "wechatpay" { "wechat".into() } else { n })
        .collect()
}

/// `GET /api/v1/public/locks/{qr_code}`
pub async fn lock(
    State(state): State<AppState>,
    Path(qr): Path<String>,
) -> ApiResult<Json<PublicLock>> {
    check_qr(&qr)?;
    let l = lock_by_qr(&state, &qr).await?.ok_or(ApiError::NotFound)?;
    let plans = crate::locks::store::plans_of(&state.db, std::slice::from_ref(&l.id)).await?;
    let busy: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE active_lock_id = $1")
        .bind(l.id.clone())
        .fetch_one(&state.db.read)
        .await?;
    Ok(Json(PublicLock {
        available: busy == 0 && l.status != "disabled" && !plans.is_empty(),
        qr_code: l.qr_code,
        name: l.name,
        venue: PublicVenue {
            name: l.venue_name,
            address: l.venue_address,
        },
        status: l.status,
        price_plans: plans
            .into_iter()
            .map(|p| PublicPlan {
                id: p.id,
                name: p.name,
                duration_minutes: p.duration_minutes,
                price_fen: p.price_fen,
            })
            .collect(),
        providers: offered(&state),
        wechat_oauth: state.config.wechat_oauth.is_some(),
    }))
}

/// An order as the phone sees it.
#[derive(Debug, Serialize, PartialEq, Eq, Clone)]
pub struct PublicOrder {
    pub id: String,
    pub lock_name: String,
    pub venue_name: String,
    pub plan_name: String,
    pub duration_minutes: i64,
    pub amount_fen: i64,
    pub refunded_fen: i64,
    pub status: String,
    pub created_at: i64,
    pub pay_deadline_at: i64,
    pub paid_at: Option<i64>,
    pub unlocked_at: Option<i64>,
    pub ends_at: Option<i64>,
    pub updated_at: i64,
}

#[derive(Debug, sqlx::FromRow)]
struct Names {
    lock_name: String,
    venue_name: String,
    access_key_hash: String,
}

async fn names(state: &AppState, o: &OrderRow) -> Result<Names, ApiError> {
    Ok(sqlx::query_as::<_, Names>(
        "SELECT l.name AS lock_name, v.name AS venue_name, o.access_key_hash \
         FROM orders o JOIN locks l ON l.id = o.lock_id JOIN venues v ON v.id = o.venue_id WHERE o.id = $1",
    )
    .bind(o.id.clone())
    .fetch_one(&state.db.read)
    .await?)
}

fn public(o: &OrderRow, n: &Names) -> PublicOrder {
    PublicOrder {
        id: o.id.clone(),
        lock_name: n.lock_name.clone(),
        venue_name: n.venue_name.clone(),
        plan_name: o.plan_name.clone(),
        duration_minutes: o.duration_minutes,
        amount_fen: o.amount_fen,
        refunded_fen: o.refunded_fen,
        status: o.status.clone(),
        created_at: o.created_at,
        pay_deadline_at: o.pay_deadline_at,
        paid_at: o.paid_at,
        unlocked_at: o.unlocked_at,
        ends_at: o.ends_at(),
        updated_at: o.updated_at,
    }
}

#[derive(Debug, Serialize)]
pub struct CreatedOrder {
    pub order: PublicOrder,
    pub access_key: String,
    pub payment: PaymentStep,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateOrder {
    qr_code: String,
    plan_id: String,
    #[serde(default)]
    provider: Option<String>,
    /// WeChat JSAPI only: the payer's openid (from the page's OAuth step).
    #[serde(default)]
    openid: Option<String>,
}

/// A header value the client chooses (idempotency key, device session): 8..=128 visible
/// ASCII characters without spaces.
pub(crate) fn client_token(
    headers: &HeaderMap,
    name: &'static str,
) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(name) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| ApiError::validation(name, "must be visible ASCII"))?;
    if !(8..=128).contains(&v.len()) || !v.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ApiError::validation(
            name,
            "must be 8 to 128 visible ASCII characters (e.g. a UUID)",
        ));
    }
    Ok(Some(v.to_string()))
}

fn is_unique_violation(e: &sqlx::Error, needle: &str) -> bool {
    if let sqlx::Error::Database(db) = e {
        return db.kind() == sqlx::error::ErrorKind::UniqueViolation
            && (db.constraint().is_some_and(|c| c.contains(needle))
                || db.message().contains(needle));
    }
    false
}

async fn existing(
    state: &AppState,
    session: &str,
    idem: &str,
) -> Result<Option<OrderRow>, ApiError> {
    let sql = format!(
        "SELECT {} FROM orders WHERE device_session = $1 AND idempotency_key = $2",
        super::ORDER_COLUMNS
    );
    Ok(sqlx::query_as::<_, OrderRow>(sqlx::AssertSqlSafe(sql))
        .bind(session.to_string())
        .bind(idem.to_string())
        .fetch_optional(&state.db.pool)
        .await?)
}

async fn payment_step(
    state: &AppState,
    o: &OrderRow,
    openid: Option<String>,
) -> ApiResult<PaymentStep> {
    let (payment_id, out_trade_no): (String, String) = sqlx::query_as(
        "SELECT id, out_trade_no FROM payments WHERE order_id = $1 ORDER BY created_at LIMIT 1",
    )
    .bind(o.id.clone())
    .fetch_one(&state.db.pool)
    .await?;
    create_payment(state, o, openid, payment_id, out_trade_no).await
}

/// The provider's side of the payment whose row is `payment_id`.
async fn create_payment(
    state: &AppState,
    o: &OrderRow,
    openid: Option<String>,
    payment_id: String,
    out_trade_no: String,
) -> ApiResult<PaymentStep> {
    let provider =
        state
            .orders
            .providers
            .get(&o.provider)
            .ok_or_else(|| ApiError::Unavailable {
                code: "payment_unavailable",
                message: format!("payment provider {} is not configured", o.provider),
            })?;
    let req = CreatePayment {
        payment_id,
        out_trade_no,
        order_id: o.id.clone(),
        amount_fen: o.amount_fen,
        description: o.plan_name.clone(),
        expires_at_ms: o.pay_deadline_at,
        payer_openid: openid,
    };
    provider.create_payment(&req).await.map_err(|e| {
        tracing::warn!(error = %e, order_id = o.id, "creating the payment failed");
        ApiError::Unavailable {
            code: "payment_unavailable",
            message: format!("the payment provider is unavailable: {e}; try again"),
        }
    })
}

async fn replay(
    state: &AppState,
    o: OrderRow,
    lock_id: &str,
    plan_id: &str,
    openid: Option<String>,
) -> ApiResult<(StatusCode, Json<CreatedOrder>)> {
    if o.lock_id != lock_id || o.plan_id != plan_id {
        return Err(ApiError::Conflict(
            "this Idempotency-Key was already used for a different order; send a new key".into(),
        ));
    }
    let n = names(state, &o).await?;
    let payment = payment_step(state, &o, openid).await?;
    Ok((
        StatusCode::OK,
        Json(CreatedOrder {
            access_key: state.orders.access_key(&o.id),
            order: public(&o, &n),
            payment,
        }),
    ))
}

/// `POST /api/v1/public/orders`
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: RawJson,
) -> ApiResult<(StatusCode, Json<CreatedOrder>)> {
    let idem = client_token(&headers, "Idempotency-Key")?;
    let session = client_token(&headers, "X-Device-Session")?;
    let input: CreateOrder = body.into_typed()?;
    let provider_name =
        provider_for_request(input.provider.as_deref().unwrap_or("sandbox")).to_string();
    if state.orders.providers.get(&provider_name).is_none() {
        return Err(ApiError::validation(
            "provider",
            format!("not offered here; use one of {:?}", offered(&state)),
        ));
    }
    // The openid goes to WeChat Pay as is: refuse anything an openid cannot be (WeChat's
    // are 28 characters of [A-Za-z0-9_-]; leave room for other app types).
    if let Some(openid) = &input.openid
        && (openid.is_empty()
            || openid.len() > 128
            || !openid
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    {
        return Err(ApiError::validation(
            "openid",
            "must be the payer's openid from WeChat's OAuth step (1 to 128 characters of A-Z a-z 0-9 _ -)",
        ));
    }
    if input.qr_code.is_empty() || check_qr(&input.qr_code).is_err() {
        return Err(ApiError::validation("qr_code", "no such lock"));
    }
    // The lock, its venue and the chosen plan in one read, on a read connection: on SQLite
    // the one writer connection is the flow's bottleneck, and this read needs nothing from it.
    let found = sqlx::query_as::<_, LockAndPlan>(
        "SELECT l.id, l.name, l.qr_code, l.status, v.name AS venue_name, v.address AS venue_address, \
         l.merchant_id, l.venue_id, l.gateway_id, p.id AS plan_id, p.name AS plan_name, \
         p.duration_minutes, p.price_fen \
         FROM locks l JOIN venues v ON v.id = l.venue_id \
         LEFT JOIN price_plans p ON p.lock_id = l.id AND p.id = $2 AND p.deleted_at IS NULL \
         WHERE l.qr_code = $1 AND l.deleted_at IS NULL",
    )
    .bind(input.qr_code.clone())
    .bind(input.plan_id.clone())
    .fetch_optional(&state.db.read)
    .await?
    .ok_or_else(|| ApiError::validation("qr_code", "no such lock"))?;
    let lock = found.lock;
    if lock.status == "disabled" {
        return Err(ApiError::Conflict("this lock is out of service".into()));
    }
    let plan = match (
        found.plan_id,
        found.plan_name,
        found.duration_minutes,
        found.price_fen,
    ) {
        (Some(id), Some(name), Some(duration_minutes), Some(price_fen)) => PlanPick {
            id,
            name,
            duration_minutes,
            price_fen,
        },
        _ => return Err(ApiError::validation("plan_id", "not a plan of this lock")),
    };
    // Without the headers there is no double-tap protection and no "my orders"; the page
    // should send both (see h5/api.ts).
    let session = session.unwrap_or_else(|| format!("anon-{}", new_id()));
    let idem = idem.unwrap_or_else(new_id);
    // Inside WeChat the page does not know the openid: the OAuth step bound it to this
    // device session (orders::wechat_oauth), so JSAPI uses it. No binding: Native.
    let mut input = input;
    if provider_name == "wechatpay" && input.openid.is_none() {
        input.openid = super::wechat_oauth::bound_openid(&state, &session).await?;
    }
    // No look for an earlier order under this Idempotency-Key first: a repeat fails the
    // insert below on the unique key, and that path looks it up (one read fewer for every
    // payer, one more only for a double tap).
    let (merchant_id, venue_id, gateway_id) = (
        lock.merchant_id.clone(),
        lock.venue_id.clone(),
        lock.gateway_id.clone(),
    );
    let now = now_ms();
    let order_id = new_id();
    let payment_id = new_id();
    let out_trade_no = payment_id.replace('-', "");
    let key = state.orders.access_key(&order_id);
    let deadline = now + state.orders.config.pay_timeout_ms;
    let mut tx = state.db.pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO orders (id, merchant_id, venue_id, lock_id, gateway_id, plan_id, plan_name, \
         duration_minutes, amount_fen, status, active_lock_id, device_session, idempotency_key, \
         access_key_hash, provider, pay_deadline_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'created', $4, $10, $11, $12, $13, $14, $15, $15)",
    )
    .bind(order_id.clone())
    .bind(merchant_id.clone())
    .bind(venue_id)
    .bind(lock.id.clone())
    .bind(gateway_id)
    .bind(plan.id.clone())
    .bind(plan.name.clone())
    .bind(plan.duration_minutes)
    .bind(plan.price_fen)
    .bind(session.clone())
    .bind(idem.clone())
    .bind(hash_key(&key))
    .bind(provider_name.clone())
    .bind(deadline)
    .bind(now)
    .execute(&mut *tx)
    .await;
    if let Err(e) = inserted {
        // Ended now (not on drop) so the connection is clean before the look-up below.
        let _ = tx.rollback().await;
        // A repeat of this Idempotency-Key (a double tap, or its twin that committed first)
        // also holds the lock, so either unique key may be the one reported: look first.
        if (is_unique_violation(&e, "idempotency") || is_unique_violation(&e, "active_lock"))
            && let Some(o) = existing(&state, &session, &idem).await?
        {
            return replay(&state, o, &lock.id, &plan.id, input.openid).await;
        }
        if is_unique_violation(&e, "active_lock") {
            return Err(ApiError::Conflict(
                "this lock is in use by another order; try again when it is free".into(),
            ));
        }
        return Err(e.into());
    }
    sqlx::query(
        "INSERT INTO payments (id, order_id, merchant_id, provider, out_trade_no, amount_fen, status, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $7)",
    )
    .bind(payment_id.clone())
    .bind(order_id.clone())
    .bind(merchant_id)
    .bind(provider_name.clone())
    .bind(out_trade_no.clone())
    .bind(plan.price_fen)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    record_transition(
        &mut tx,
        &order_id,
        None,
        Status::Created,
        &Actor::Payer,
        "order placed",
        now,
    )
    .await?;
    tx.commit().await?;
    // The row as just written (no read back: every column is known here).
    let o = OrderRow {
        id: order_id,
        merchant_id: lock.merchant_id.clone(),
        venue_id: lock.venue_id.clone(),
        lock_id: lock.id.clone(),
        gateway_id: lock.gateway_id.clone(),
        plan_id: plan.id,
        plan_name: plan.name,
        duration_minutes: plan.duration_minutes,
        amount_fen: plan.price_fen,
        refunded_fen: 0,
        status: Status::Created.as_str().to_string(),
        provider: provider_name,
        pay_deadline_at: deadline,
        unlock_deadline_at: None,
        token_id: None,
        token_not_after: None,
        unlock_command_id: None,
        door_opened_at: None,
        review_reason: None,
        created_at: now,
        paid_at: None,
        unlocking_at: None,
        unlocked_at: None,
        completed_at: None,
        ended_at: None,
        updated_at: now,
    };
    let n = Names {
        lock_name: lock.name.clone(),
        venue_name: lock.venue_name.clone(),
        access_key_hash: hash_key(&key),
    };
    let payment = create_payment(&state, &o, input.openid, payment_id, out_trade_no).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedOrder {
            order: public(&o, &n),
            access_key: key,
            payment,
        }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyQuery {
    key: Option<String>,
}

/// The order if `key` is its access key; 404 otherwise (no oracle).
async fn authorized(state: &AppState, id: &str, key: Option<&str>) -> ApiResult<(OrderRow, Names)> {
    let key = key.ok_or(ApiError::NotFound)?;
    let mut conn = state.db.read.acquire().await?;
    let o = super::load(&mut conn, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    drop(conn);
    let n = names(state, &o).await?;
    let ok: bool = hash_key(key)
        .as_bytes()
        .ct_eq(n.access_key_hash.as_bytes())
        .into();
    if !ok {
        return Err(ApiError::NotFound);
    }
    Ok((o, n))
}

/// `GET /api/v1/public/orders/{id}?key=`
pub async fn get(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<KeyQuery>,
) -> ApiResult<Json<PublicOrder>> {
    let (o, n) = authorized(&state, &id, q.key.as_deref()).await?;
    Ok(Json(public(&o, &n)))
}

#[derive(Debug, Serialize)]
pub struct OfflineToken {
    pub token: String,
    pub expires_at: i64,
}

/// `GET /api/v1/public/orders/{id}/offline-token?key=`: the signed unlock token, for the
/// page to show as a QR code when the venue's gateway is offline.
pub async fn offline_token(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<KeyQuery>,
) -> ApiResult<Json<OfflineToken>> {
    let (o, _) = authorized(&state, &id, q.key.as_deref()).await?;
    if !matches!(
        o.status(),
        Status::Unlocking | Status::Unlocked | Status::UnlockFailed
    ) {
        return Err(ApiError::Conflict(format!(
            "no unlock token while the order is {}",
            o.status
        )));
    }
    let token: Option<String> = sqlx::query_scalar("SELECT token_text FROM orders WHERE id = $1")
        .bind(o.id.clone())
        .fetch_one(&state.db.read)
        .await?;
    let token = token.ok_or_else(|| ApiError::Conflict("the token is not signed yet".into()))?;
    Ok(Json(OfflineToken {
        token,
        expires_at: o.token_not_after.unwrap_or(0),
    }))
}

/// `GET /api/v1/public/orders/{id}/events?key=`: `event: order` with the order each time it
/// changes; the stream ends after a final status. Polls the database (no in-memory state
/// shared between instances), every 500 ms, for at most 15 minutes.
pub async fn events(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<KeyQuery>,
) -> ApiResult<Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>>> {
    let (o, n) = authorized(&state, &id, q.key.as_deref()).await?;
    let first = public(&o, &n);
    let started = std::time::Instant::now();
    let stream = futures_util::stream::unfold(
        (state, id, Some(first), None::<PublicOrder>, false),
        move |(state, id, pending, last, done)| async move {
            if done {
                return None;
            }
            let mut pending = pending;
            let mut last = last;
            loop {
                if let Some(p) = pending.take() {
                    let fin = Status::parse(&p.status).is_some_and(Status::is_final)
                        || started.elapsed() > Duration::from_secs(900);
                    let ev = SseEvent::default()
                        .event("order")
                        .json_data(&p)
                        .unwrap_or_else(|_| SseEvent::default().event("order"));
                    return Some((Ok(ev), (state, id, None, Some(p), fin)));
                }
                if started.elapsed() > Duration::from_secs(900) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Ok(mut conn) = state.db.read.acquire().await else {
                    continue;
                };
                let Ok(Some(o)) = super::load(&mut conn, &id).await else {
                    continue;
                };
                drop(conn);
                let Ok(n) = names(&state, &o).await else {
                    continue;
                };
                let now = public(&o, &n);
                if last.as_ref() != Some(&now) {
                    last = None;
                    pending = Some(now);
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[derive(Debug, Serialize)]
pub struct MyOrder {
    #[serde(flatten)]
    pub order: PublicOrder,
    pub access_key: String,
}

#[derive(Debug, Serialize)]
pub struct MyOrders {
    pub items: Vec<MyOrder>,
}

/// `GET /api/v1/public/my/orders`: the latest 50 orders of this `X-Device-Session`.
pub async fn my_orders(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<MyOrders>> {
    let session = client_token(&headers, "X-Device-Session")?
        .ok_or_else(|| ApiError::validation("X-Device-Session", "header required"))?;
    let sql = format!(
        "SELECT {} FROM orders WHERE device_session = $1 ORDER BY created_at DESC, id DESC LIMIT 50",
        super::ORDER_COLUMNS
    );
    let rows = sqlx::query_as::<_, OrderRow>(sqlx::AssertSqlSafe(sql))
        .bind(session)
        .fetch_all(&state.db.read)
        .await?;
    let mut items = Vec::with_capacity(rows.len());
    for o in rows {
        let n = names(&state, &o).await?;
        items.push(MyOrder {
            order: public(&o, &n),
            access_key: state.orders.access_key(&o.id),
        });
    }
    Ok(Json(MyOrders { items }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_tokens_are_bounded() {
        let mut h = HeaderMap::new();
        assert_eq!(client_token(&h, "X-Device-Session").unwrap(), None);
        h.insert("X-Device-Session", "short".parse().unwrap());
        assert!(client_token(&h, "X-Device-Session").is_err());
        h.insert("X-Device-Session", "0123456789abcdef".parse().unwrap());
        assert_eq!(
            client_token(&h, "X-Device-Session").unwrap().as_deref(),
            Some("0123456789abcdef")
        );
    }
}
