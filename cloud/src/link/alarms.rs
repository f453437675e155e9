//! `GET /api/v1/alarms` (paged, tenant-scoped; filter by lock, gateway, kind, open) and
//! `POST /api/v1/alarms/{id}/ack`. Alarms are raised by gateway `alarm` events in
//! [`crate::link::ingest`]; a `lock_online` event clears the open `lock_offline` one.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::AppState;
use crate::db::now_ms;
use crate::error::{ApiError, ApiResult};
use crate::http::extract::{ApiQuery, IdPath};
use crate::http::guard::Caller;
use crate::http::list::{Page, Paging, Sql, fetch_page, order_by};
use crate::link::ingest::record_change;

const COLUMNS: &str = "id, merchant_id, gateway_id, lock_id, kind, detail, raised_at, cleared_at, \
                       acked_at, acked_by, created_at";
const SORT_KEYS: &[(&str, &str)] = &[("created_at", "created_at"), ("raised_at", "raised_at")];

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Alarm {
    pub id: String,
    pub merchant_id: String,
    pub gateway_id: String,
    pub lock_id: Option<String>,
    pub kind: String,
    pub detail: Option<String>,
    pub raised_at: i64,
    pub cleared_at: Option<i64>,
    pub acked_at: Option<i64>,
    pub acked_by: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    page: Option<String>,
    per_page: Option<String>,
    sort: Option<String>,
    merchant_id: Option<String>,
    gateway_id: Option<String>,
    lock_id: Option<String>,
    kind: Option<String>,
    /// `true`: not cleared and not acknowledged; `false`: the others.
    open: Option<String>,
}

fn scoped(sql: &mut Sql, caller: &Caller) {
    if let Some(m) = caller.scope().merchant() {
        sql.push(" AND merchant_id = ").bind_text(m);
    }
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<Alarm>>> {
    let paging = Paging::parse(q.page.as_deref(), q.per_page.as_deref())?;
    // Newest first unless asked otherwise: an alarm list is read from the top.
    let order = order_by(
        Some(q.sort.as_deref().unwrap_or("-created_at")),
        SORT_KEYS,
        "created_at",
    )?;
    let mut w = Sql::new(" WHERE 1 = 1");
    scoped(&mut w, &caller);
    for (col, v) in [
        ("merchant_id", &q.merchant_id),
        ("gateway_id", &q.gateway_id),
        ("lock_id", &q.lock_id),
        ("kind", &q.kind),
    ] {
        if let Some(v) = v {
            w.push(&format!(" AND {col} = ")).bind_text(v.clone());
        }
    }
    match q.open.as_deref() {
        None => {}
        Some("true") => {
            w.push(" AND cleared_at IS NULL AND acked_at IS NULL");
        }
        Some("false") => {
            w.push(" AND (cleared_at IS NOT NULL OR acked_at IS NOT NULL)");
        }
        Some(_) => return Err(ApiError::validation("open", "must be true or false")),
    }
    Ok(Json(
        fetch_page::<Alarm>(&state.db, "alarms", COLUMNS, &w, &order, paging).await?,
    ))
}

pub async fn ack(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> ApiResult<Json<Alarm>> {
    let now = now_ms();
    let mut tx = state.db.pool.begin().await?;
    let mut q = Sql::new(&format!("SELECT {COLUMNS} FROM alarms WHERE id = "));
    q.bind_text(id.clone());
    scoped(&mut q, &caller);
    let alarm = q
        .query_as::<Alarm>()
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(ApiError::NotFound)?;
    if alarm.acked_at.is_some() {
        return Ok(Json(alarm));
    }
    sqlx::query(
        "UPDATE alarms SET acked_at = $1, acked_by = $2 WHERE id = $3 AND acked_at IS NULL",
    )
    .bind(now)
    .bind(caller.user_id.clone())
    .bind(id.clone())
    .execute(&mut *tx)
    .await?;
    let alarm = Alarm {
        acked_at: Some(now),
        acked_by: Some(caller.user_id.clone()),
        ..alarm
    };
    record_change(
        &mut tx,
        &alarm.merchant_id,
        "alarm",
        &alarm.id,
        &json!({ "alarm_id": alarm.id, "lock_id": alarm.lock_id, "gateway_id": alarm.gateway_id,
                 "kind": alarm.kind, "acked_at": now, "acked_by": caller.user_id }),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(alarm))
}
