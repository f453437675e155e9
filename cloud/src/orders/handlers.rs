//! Console endpoints (tenant-scoped): orders (`order:read`), refunds (`order:refund`),
//! settlements, reconciliation reports and the dashboard (`settlement:read` /
//! `order:read`). Another merchant's object answers 404, never the object.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sqlx::Acquire as _;

use super::refunds::{self, REFUND_COLUMNS, RefundRow};
use super::{Actor, ORDER_COLUMNS, OrderRow, Status, load, money};
use crate::AppState;
use crate::db::now_ms;
use crate::error::{ApiError, ApiResult};
use crate::http::extract::{ApiQuery, IdPath, RawJson};
use crate::http::guard::Caller;
use crate::http::list::{Page, Paging, Sql, fetch_page, like_pattern, order_by, parse_int};
use crate::payments::notify::{PAYMENT_COLUMNS, PaymentRow};
use crate::rbac::Scope;

const SORT_KEYS: &[(&str, &str)] = &[
    ("created_at", "created_at"),
    ("amount_fen", "amount_fen"),
    ("status", "status"),
    ("paid_at", "paid_at"),
];

fn scoped(sql: &mut Sql, scope: &Scope) {
    if let Some(m) = scope.merchant() {
        sql.push(" AND merchant_id = ").bind_text(m);
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    page: Option<String>,
    per_page: Option<String>,
    sort: Option<String>,
    q: Option<String>,
    status: Option<String>,
    merchant_id: Option<String>,
    venue_id: Option<String>,
    lock_id: Option<String>,
    /// Created at or after (Unix ms).
    from: Option<String>,
    /// Created before (Unix ms).
    to: Option<String>,
}

fn filters(scope: &Scope, q: &ListQuery) -> Result<Sql, ApiError> {
    let mut w = Sql::new(" WHERE 1 = 1");
    scoped(&mut w, scope);
    if let Some(s) = &q.status {
        let st = Status::parse(s).ok_or_else(|| {
            ApiError::validation(
                "status",
                "one of created, paid, unlocking, unlocked, completed, expired, unlock_failed, refunding, refunded, cancelled",
            )
        })?;
        w.push(" AND status = ").bind_text(st.as_str());
    }
    for (col, v) in [
        ("merchant_id", &q.merchant_id),
        ("venue_id", &q.venue_id),
        ("lock_id", &q.lock_id),
    ] {
        if let Some(v) = v {
            w.push(&format!(" AND {col} = ")).bind_text(v.clone());
        }
    }
    if q.from.is_some() {
        let from = parse_int("from", q.from.as_deref(), 0, 0, i64::MAX)?;
        w.push(" AND created_at >= ").bind_int(from);
    }
    if q.to.is_some() {
        let to = parse_int("to", q.to.as_deref(), 0, 0, i64::MAX)?;
        w.push(" AND created_at < ").bind_int(to);
    }
    if let Some(s) = q.q.as_deref().filter(|s| !s.is_empty()) {
        let pat = like_pattern(&s.to_lowercase());
        w.push(" AND (LOWER(id) LIKE ")
            .bind_text(pat.clone())
            .push(" ESCAPE '\\' OR LOWER(plan_name) LIKE ")
            .bind_text(pat)
            .push(" ESCAPE '\\')");
    }
    Ok(w)
}

/// `GET /api/v1/orders`
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<OrderRow>>> {
    let paging = Paging::parse(q.page.as_deref(), q.per_page.as_deref())?;
    let order = order_by(q.sort.as_deref(), SORT_KEYS, "created_at")?;
    let w = filters(&caller.scope(), &q)?;
    Ok(Json(
        fetch_page::<OrderRow>(&state.db, "orders", ORDER_COLUMNS, &w, &order, paging).await?,
    ))
}

fn csv_field(s: &str) -> String {
    // Quote everything that could break a cell, and defuse spreadsheet formulas.
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn opt(v: Option<i64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn csv_response(name: &str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response()
}

/// `GET /api/v1/orders.csv`: the same filters as the list, up to 10 000 rows.
pub async fn csv(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Response> {
    let order = order_by(q.sort.as_deref(), SORT_KEYS, "created_at")?;
    let w = filters(&caller.scope(), &q)?;
    let mut sql = Sql::new(&format!("SELECT {ORDER_COLUMNS} FROM orders"));
    sql.append(&w)
        .push(&format!(" ORDER BY {order} LIMIT 10000"));
    let rows = sql.query_as::<OrderRow>().fetch_all(&state.db.read).await?;
    let mut out = String::from(
        "id,merchant_id,venue_id,lock_id,plan_name,duration_minutes,amount_fen,refunded_fen,status,created_at,paid_at,unlocked_at,completed_at\n",
    );
    for o in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            o.id,
            o.merchant_id,
            o.venue_id,
            o.lock_id,
            csv_field(&o.plan_name),
            o.duration_minutes,
            o.amount_fen,
            o.refunded_fen,
            o.status,
            o.created_at,
            opt(o.paid_at),
            opt(o.unlocked_at),
            opt(o.completed_at)
        ));
    }
    Ok(csv_response("orders.csv", out))
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct TransitionRow {
    pub from_status: Option<String>,
    pub to_status: String,
    pub actor: String,
    pub reason: String,
    pub at: i64,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct UnlockEvidence {
    pub id: String,
    pub source: String,
    pub result: String,
    pub via: Option<String>,
    pub gateway_id: String,
    pub token_id: Option<String>,
    pub at: i64,
    pub received_at: i64,
}

#[derive(Debug, Serialize)]
pub struct PaymentView {
    pub id: String,
    pub provider: String,
    pub out_trade_no: String,
    pub amount_fen: i64,
    pub status: String,
    pub provider_txn_id: Option<String>,
    pub created_at: i64,
    pub paid_at: Option<i64>,
}

/// The one record linking payment, unlock and door.
#[derive(Debug, Serialize)]
pub struct OrderDetail {
    #[serde(flatten)]
    pub order: OrderRow,
    pub transitions: Vec<TransitionRow>,
    pub payments: Vec<PaymentView>,
    pub refunds: Vec<RefundRow>,
    pub unlock_events: Vec<UnlockEvidence>,
}

async fn scoped_order(state: &AppState, scope: &Scope, id: &str) -> ApiResult<OrderRow> {
    let mut conn = state.db.read.acquire().await?;
    let o = load(&mut conn, id).await?.ok_or(ApiError::NotFound)?;
    if !scope.allows(&o.merchant_id) {
        return Err(ApiError::NotFound);
    }
    Ok(o)
}

async fn detail(state: &AppState, o: OrderRow) -> ApiResult<OrderDetail> {
    let pool = &state.db.read;
    let transitions = sqlx::query_as::<_, TransitionRow>(
        "SELECT from_status, to_status, actor, reason, at FROM order_transitions \
         WHERE order_id = $1 ORDER BY at, id",
    )
    .bind(o.id.clone())
    .fetch_all(pool)
    .await?;
    let sql =
        format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE order_id = $1 ORDER BY created_at");
    let payments = sqlx::query_as::<_, PaymentRow>(sqlx::AssertSqlSafe(sql))
        .bind(o.id.clone())
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|p| PaymentView {
            id: p.id,
            provider: p.provider,
            out_trade_no: p.out_trade_no,
            amount_fen: p.amount_fen,
            status: p.status,
            provider_txn_id: p.provider_txn_id,
            created_at: p.created_at,
            paid_at: p.paid_at,
        })
        .collect();
    let sql =
        format!("SELECT {REFUND_COLUMNS} FROM refunds WHERE order_id = $1 ORDER BY created_at");
    let refunds = sqlx::query_as::<_, RefundRow>(sqlx::AssertSqlSafe(sql))
        .bind(o.id.clone())
        .fetch_all(pool)
        .await?;
    let unlock_events = sqlx::query_as::<_, UnlockEvidence>(
        "SELECT id, source, result, via, gateway_id, token_id, at, received_at \
         FROM order_unlock_events WHERE order_id = $1 ORDER BY at, id",
    )
    .bind(o.id.clone())
    .fetch_all(pool)
    .await?;
    Ok(OrderDetail {
        order: o,
        transitions,
        payments,
        refunds,
        unlock_events,
    })
}

/// `GET /api/v1/orders/{id}`
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> ApiResult<Json<OrderDetail>> {
    let o = scoped_order(&state, &caller.scope(), &id).await?;
    Ok(Json(detail(&state, o).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundInput {
    reason: String,
    /// Default: everything not yet refunded.
    #[serde(default)]
    amount_fen: Option<i64>,
}

/// `POST /api/v1/orders/{id}/refund` (`order:refund`): reason required; over the paid
/// amount or more than 365 days after payment refused.
pub async fn refund(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    body: RawJson,
) -> ApiResult<Json<OrderDetail>> {
    // The object first: another tenant's order is 404 whatever the body says.
    scoped_order(&state, &caller.scope(), &id).await?;
    let input: RefundInput = body.into_typed()?;
    let reason = input.reason.trim();
    if reason.is_empty() || reason.chars().count() > 200 {
        return Err(ApiError::validation("reason", "1 to 200 characters"));
    }
    let now = now_ms();
    let mut conn = state.db.pool.acquire().await?;
    let mut tx = conn.begin().await?;
    money::write_lock(&mut tx).await?;
    let o = load(&mut tx, &id).await?.ok_or(ApiError::NotFound)?;
    let sql = format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE order_id = $1 AND status = 'succeeded' ORDER BY paid_at LIMIT 1"
    );
    let p = sqlx::query_as::<_, PaymentRow>(sqlx::AssertSqlSafe(sql))
        .bind(id.clone())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| ApiError::Conflict("this order has no payment to refund".into()))?;
    let left = refunds::refundable(&mut tx, &id).await?;
    let amount = input.amount_fen.unwrap_or(left);
    if amount > left {
        return Err(ApiError::validation(
            "amount_fen",
            format!(
                "exceeds the refundable {left} fen (paid {} fen)",
                p.amount_fen
            ),
        ));
    }
    if left == 0 {
        return Err(ApiError::Conflict(
            "this order is already fully refunded".into(),
        ));
    }
    refunds::create(
        &mut tx,
        &o,
        &p,
        amount,
        reason,
        &Actor::User(caller.user_id.clone()),
        now,
        0,
    )
    .await?;
    tx.commit().await?;
    drop(conn);
    // A full refund revoked the order's token: tell a connected gateway now.
    super::push_revocations(&state, &id);
    // Send now rather than on the next job round; the job retries if this fails.
    if let Err(e) = refunds::send_due(&state, now_ms(), 10).await {
        tracing::warn!(error = %e, "sending a refund right away failed; the job retries");
    }
    let o = scoped_order(&state, &caller.scope(), &id).await?;
    Ok(Json(detail(&state, o).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DayListQuery {
    page: Option<String>,
    per_page: Option<String>,
    merchant_id: Option<String>,
    /// First day (YYYY-MM-DD), inclusive.
    from: Option<String>,
    /// Last day (YYYY-MM-DD), inclusive.
    to: Option<String>,
}

fn day_filters(scope: &Scope, q: &DayListQuery) -> Result<Sql, ApiError> {
    let mut w = Sql::new(" WHERE 1 = 1");
    scoped(&mut w, scope);
    if let Some(m) = &q.merchant_id {
        w.push(" AND merchant_id = ").bind_text(m.clone());
    }
    for (name, v, op) in [("from", &q.from, ">="), ("to", &q.to, "<=")] {
        if let Some(d) = v {
            if money::shanghai_day_start(d).is_none() {
                return Err(ApiError::validation(name, "must be a date YYYY-MM-DD"));
            }
            w.push(&format!(" AND day {op} ")).bind_text(d.clone());
        }
    }
    Ok(w)
}

/// `GET /api/v1/settlements`
pub async fn settlements(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<DayListQuery>,
) -> ApiResult<Json<Page<money::SettlementRow>>> {
    let paging = Paging::parse(q.page.as_deref(), q.per_page.as_deref())?;
    let w = day_filters(&caller.scope(), &q)?;
    Ok(Json(
        fetch_page(
            &state.db,
            "settlements",
            money::SETTLEMENT_COLUMNS,
            &w,
            "day DESC, id DESC",
            paging,
        )
        .await?,
    ))
}

/// `GET /api/v1/settlements/{id}/csv`
pub async fn settlement_csv(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> ApiResult<Response> {
    let mut q = Sql::new(&format!(
        "SELECT {} FROM settlements WHERE id = ",
        money::SETTLEMENT_COLUMNS
    ));
    q.bind_text(id);
    scoped(&mut q, &caller.scope());
    let s = q
        .query_as::<money::SettlementRow>()
        .fetch_optional(&state.db.read)
        .await?
        .ok_or(ApiError::NotFound)?;
    let mut conn = state.db.read.acquire().await?;
    let body = money::settlement_csv(&mut conn, &s).await?;
    Ok(csv_response(
        &format!("settlement-{}-{}.csv", s.day, s.merchant_id),
        body,
    ))
}

/// `GET /api/v1/reconciliation/reports`: merchants see their own; platform admins also
/// the platform-level reports (unknown payments), which have no merchant.
pub async fn reports(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<DayListQuery>,
) -> ApiResult<Json<Page<money::ReportRow>>> {
    let paging = Paging::parse(q.page.as_deref(), q.per_page.as_deref())?;
    let w = day_filters(&caller.scope(), &q)?;
    Ok(Json(
        fetch_page(
            &state.db,
            "reconciliation_reports",
            money::REPORT_COLUMNS,
            &w,
            "day DESC, id DESC",
            paging,
        )
        .await?,
    ))
}

/// The kinds of reconciliation item (the `reconciliation_items.kind` CHECK).
pub const ITEM_KINDS: &[&str] = &[
    "missing_notification",
    "unknown_payment",
    "amount_mismatch",
    "paid_never_opened",
    "opened_without_payment",
];

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct ReportItem {
    pub id: String,
    pub report_id: String,
    pub kind: String,
    pub order_id: Option<String>,
    pub out_trade_no: Option<String>,
    pub detail: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemsQuery {
    page: Option<String>,
    per_page: Option<String>,
    kind: Option<String>,
}

/// `GET /api/v1/reconciliation/reports/{id}/items`: what one report found, paged and
/// optionally of one kind. The report is looked up in the caller's scope first, so another
/// merchant's report (or a platform report, for a merchant) is a 404.
pub async fn report_items(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<ItemsQuery>,
) -> ApiResult<Json<Page<ReportItem>>> {
    let paging = Paging::parse(q.page.as_deref(), q.per_page.as_deref())?;
    let mut r = Sql::new("SELECT id FROM reconciliation_reports WHERE id = ");
    r.bind_text(id.clone());
    scoped(&mut r, &caller.scope());
    r.query_scalar::<String>()
        .fetch_optional(&state.db.read)
        .await?
        .ok_or(ApiError::NotFound)?;
    let mut w = Sql::new(" WHERE report_id = ");
    w.bind_text(id);
    if let Some(kind) = q.kind {
        if !ITEM_KINDS.contains(&kind.as_str()) {
            return Err(ApiError::validation(
                "kind",
                format!("must be one of {ITEM_KINDS:?}"),
            ));
        }
        w.push(" AND kind = ").bind_text(kind);
    }
    Ok(Json(
        fetch_page(
            &state.db,
            "reconciliation_items",
            "id, report_id, kind, order_id, out_trade_no, detail",
            &w,
            "kind, id",
            paging,
        )
        .await?,
    ))
}

#[derive(Debug, Serialize)]
pub struct DayRevenue {
    pub day: String,
    pub revenue_fen: i64,
}

#[derive(Debug, Serialize)]
pub struct DaySales {
    pub day: String,
    /// Payments minus refunds booked that day.
    pub revenue_fen: i64,
    /// Orders paid that day.
    pub orders: i64,
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct BusyLock {
    pub lock_id: String,
    pub name: String,
    /// Orders paid in the last 30 days.
    pub orders: i64,
    /// Payments minus refunds booked for this lock's orders in the last 30 days.
    pub revenue_fen: i64,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    /// Payments minus refunds booked today (Asia/Shanghai).
    pub today_revenue_fen: i64,
    /// Orders paid today.
    pub today_orders: i64,
    /// Refunds booked today, as a positive amount.
    pub today_refunds_fen: i64,
    /// The last 7 days, oldest first, today included (kept for older consoles).
    pub revenue_by_day: Vec<DayRevenue>,
    /// The last 30 days, oldest first, today included.
    pub days: Vec<DaySales>,
    /// Live (not deleted) locks whose last reported state is online / offline.
    pub locks_online: i64,
    pub locks_offline: i64,
    /// Alarms neither cleared nor acknowledged.
    pub open_alarms: i64,
    /// Top 5 locks by orders paid in the last 30 days.
    pub busiest_locks: Vec<BusyLock>,
}

const SUMMARY_DAYS: i64 = 30;

/// `GET /api/v1/dashboard/summary`: every figure is scoped to the caller's merchant
/// (platform admins see all merchants).
pub async fn summary(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Summary>> {
    let scope = caller.scope();
    let now = now_ms();
    // Asia/Shanghai has no daylight saving, so stepping back 24 h always lands on the
    // previous calendar day.
    let day_list: Vec<String> = (0..SUMMARY_DAYS)
        .rev()
        .map(|i| money::shanghai_day(now - i * 24 * 3_600_000))
        .collect();
    let first_day = day_list.first().cloned().unwrap_or_default();
    let today = day_list.last().cloned().unwrap_or_default();

    // From the daily roll-up (migration 0007, kept by `money::book` in the ledger's own
    // transaction): at most 30 rows per merchant, however many orders it has.
    let mut q = Sql::new(
        "SELECT day, CAST(SUM(revenue_fen) AS BIGINT), CAST(SUM(orders) AS BIGINT), \
         CAST(SUM(refunds_fen) AS BIGINT) FROM ledger_merchant_days WHERE day >= ",
    );
    q.bind_text(first_day.clone());
    scoped(&mut q, &scope);
    q.push(" GROUP BY day");
    let rows = q
        .query_as::<(String, i64, i64, i64)>()
        .fetch_all(&state.db.read)
        .await?;
    let days: Vec<DaySales> = day_list
        .into_iter()
        .map(|d| {
            let r = rows.iter().find(|r| r.0 == d);
            DaySales {
                revenue_fen: r.map_or(0, |r| r.1),
                orders: r.map_or(0, |r| r.2),
                day: d,
            }
        })
        .collect();
    let today_refunds_fen = rows.iter().find(|r| r.0 == today).map_or(0, |r| r.3);
    let (today_revenue_fen, today_orders) =
        days.last().map_or((0, 0), |d| (d.revenue_fen, d.orders));
    let week_start = days.len().saturating_sub(7);
    let revenue_by_day = days[week_start..]
        .iter()
        .map(|d| DayRevenue {
            day: d.day.clone(),
            revenue_fen: d.revenue_fen,
        })
        .collect();

    let mut q = Sql::new(
        "SELECT CAST(COALESCE(SUM(CASE WHEN status = 'online' THEN 1 ELSE 0 END), 0) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN status = 'offline' THEN 1 ELSE 0 END), 0) AS BIGINT) \
         FROM locks WHERE deleted_at IS NULL",
    );
    scoped(&mut q, &scope);
    let (locks_online, locks_offline) =
        q.query_as::<(i64, i64)>().fetch_one(&state.db.read).await?;

    let mut q = Sql::new(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM alarms WHERE cleared_at IS NULL AND acked_at IS NULL",
    );
    scoped(&mut q, &scope);
    let open_alarms = q.query_scalar::<i64>().fetch_one(&state.db.read).await?;

    let busiest_locks = match scope.merchant() {
        Some(m) => busiest_locks(&state, &first_day, Some(m)).await?,
        None => platform_busiest_locks(&state, &first_day).await?,
    };

    Ok(Json(Summary {
        today_revenue_fen,
        today_orders,
        today_refunds_fen,
        revenue_by_day,
        days,
        locks_online,
        locks_offline,
        open_alarms,
        busiest_locks,
    }))
}

/// How long the platform-wide busiest locks are served before they are ranked again. A
/// merchant's ranking reads at most 30 rows per lock of its own; the platform's reads 30
/// days of every merchant's locks (hundreds of thousands of rows at 100,000 locks), so a
/// platform admin's dashboard, refreshed by the page every few seconds, ranks them at most
/// once a minute per cloud instance. Every other figure of the summary stays live.
pub(crate) const PLATFORM_BUSIEST_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// A platform-wide ranking: when, and from which first day, it was made.
#[derive(Debug)]
pub(crate) struct BusiestCache {
    at: std::time::Instant,
    first_day: String,
    rows: Vec<BusyLock>,
}

async fn platform_busiest_locks(state: &AppState, first_day: &str) -> ApiResult<Vec<BusyLock>> {
    let cache = &state.orders.platform_busiest;
    if let Ok(c) = cache.lock()
        && let Some(c) = c.as_ref()
        && c.first_day == first_day
        && c.at.elapsed() < PLATFORM_BUSIEST_TTL
    {
        return Ok(c.rows.clone());
    }
    let rows = busiest_locks(state, first_day, None).await?;
    if let Ok(mut c) = cache.lock() {
        *c = Some(BusiestCache {
            at: std::time::Instant::now(),
            first_day: first_day.to_string(),
            rows: rows.clone(),
        });
    }
    Ok(rows)
}

/// The top 5 locks of the last 30 days, of one merchant or (None) of all.
async fn busiest_locks(
    state: &AppState,
    first_day: &str,
    merchant: Option<&str>,
) -> ApiResult<Vec<BusyLock>> {
    // Ledger figures (not orders.status) so a paid-then-refunded order still counts as an
    // order and its refund lowers the revenue, the same accounting as `days`; read from the
    // per-lock daily roll-up (at most 30 rows per lock), ranked before the lock names are
    // joined so only the top 5 are looked up.
    let mut q = Sql::new(
        "SELECT t.lock_id AS lock_id, l.name AS name, t.orders AS orders, t.revenue_fen AS revenue_fen \
         FROM (SELECT lock_id, CAST(SUM(orders) AS BIGINT) AS orders, \
         CAST(SUM(revenue_fen) AS BIGINT) AS revenue_fen \
         FROM ledger_lock_days WHERE lock_id <> '' AND day >= ",
    );
    q.bind_text(first_day.to_string());
    if let Some(m) = merchant {
        q.push(" AND merchant_id = ").bind_text(m);
    }
    q.push(
        " GROUP BY lock_id HAVING SUM(orders) > 0 \
         ORDER BY orders DESC, revenue_fen DESC, lock_id LIMIT 5) t \
         JOIN locks l ON l.id = t.lock_id \
         ORDER BY t.orders DESC, t.revenue_fen DESC, t.lock_id",
    );
    Ok(q.query_as::<BusyLock>().fetch_all(&state.db.read).await?)
}
