//! `/api/v1/locks` (`device:read`, `device:write`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use crate::AppState;
use crate::db::{new_id, now_ms};
use crate::error::{ApiError, ApiResult};
use crate::gateways;
use crate::http::extract::{ApiQuery, IdPath, RawJson};
use crate::http::guard::Caller;
use crate::http::list::{Page, Paging, order_by};
use crate::locks::store::{self, LockChange, LockFilter};
use crate::locks::types::{
    CreateLock, Lock, LockRow, PROTECTED, UpdateLock, check_bus_address, check_device_code,
    check_lock_name, check_plans, check_status, new_qr_code,
};

const SORT_KEYS: &[(&str, &str)] = &[
    ("created_at", "created_at"),
    ("name", "name"),
    ("device_code", "device_code"),
    ("bus_address", "bus_address"),
    ("status", "status"),
];

async fn with_plans(state: &AppState, rows: Vec<LockRow>) -> ApiResult<Vec<Lock>> {
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let mut plans = store::plans_of(&state.db, &ids).await?;
    let base = &state.config.server.public_base_url;
    Ok(rows
        .into_iter()
        .map(|r| {
            let mine: Vec<_> = plans.extract_if(.., |p| p.lock_id == r.id).collect();
            Lock::from_row(r, mine, base)
        })
        .collect())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    page: Option<String>,
    per_page: Option<String>,
    sort: Option<String>,
    q: Option<String>,
    merchant_id: Option<String>,
    venue_id: Option<String>,
    gateway_id: Option<String>,
    status: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<Lock>>> {
    let paging = Paging::parse(query.page.as_deref(), query.per_page.as_deref())?;
    let order = order_by(query.sort.as_deref(), SORT_KEYS, "created_at")?;
    if let Some(s) = &query.status
        && !matches!(s.as_str(), "unknown" | "online" | "offline" | "disabled")
    {
        return Err(ApiError::validation(
            "status",
            "unknown, online, offline or disabled",
        ));
    }
    let filter = LockFilter {
        merchant_id: query.merchant_id,
        venue_id: query.venue_id,
        gateway_id: query.gateway_id,
        status: query.status,
        q: query.q,
    };
    let page = store::list(&state.db, &caller.scope(), &filter, paging, &order).await?;
    Ok(Json(Page {
        items: with_plans(&state, page.items).await?,
        page: page.page,
        per_page: page.per_page,
        total: page.total,
        total_exact: page.total_exact,
    }))
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: RawJson,
) -> ApiResult<(StatusCode, Json<Lock>)> {
    body.reject_protected(PROTECTED)?;
    let input: CreateLock = body.into_typed()?;
    let device_code = check_device_code(&input.device_code)?;
    let bus_address = check_bus_address(input.bus_address)?;
    let name = check_lock_name(input.name.as_deref().unwrap_or(""))?;
    check_plans(&input.price_plans)?;
    let gateway = gateways::store::get(&state.db, &caller.scope(), &input.gateway_id)
        .await?
        .ok_or_else(|| ApiError::validation("gateway_id", "no such gateway"))?;
    let now = now_ms();
    let row = LockRow {
        id: new_id(),
        merchant_id: gateway.merchant_id,
        venue_id: gateway.venue_id,
        gateway_id: gateway.id,
        name,
        device_code,
        bus_address,
        qr_code: new_qr_code(),
        status: "unknown".into(),
        created_at: now,
        updated_at: now,
        door_closed: None,
        locked: None,
        fw_version: None,
        last_heartbeat_at: None,
    };
    store::insert(&state.db, &row, &input.price_plans).await?;
    let mut locks = with_plans(&state, vec![row]).await?;
    let lock = locks
        .pop()
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("lock vanished")))?;
    Ok((StatusCode::CREATED, Json(lock)))
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> ApiResult<Json<Lock>> {
    let row = store::get(&state.db, &caller.scope(), &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let mut locks = with_plans(&state, vec![row]).await?;
    locks.pop().map(Json).ok_or(ApiError::NotFound)
}

pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    body: RawJson,
) -> ApiResult<Json<Lock>> {
    let scope = caller.scope();
    let current = store::get(&state.db, &scope, &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    body.reject_protected(PROTECTED)?;
    let patch: UpdateLock = body.into_typed()?;
    let mut change = LockChange {
        name: patch.name.as_deref().map(check_lock_name).transpose()?,
        bus_address: patch.bus_address.map(check_bus_address).transpose()?,
        status: patch.status.as_deref().map(check_status).transpose()?,
        ..LockChange::default()
    };
    if let Some(plans) = patch.price_plans {
        check_plans(&plans)?;
        change.plans = Some(plans);
    }
    if let Some(gw) = patch.gateway_id {
        let gateway = gateways::store::get(&state.db, &scope, &gw)
            .await?
            .filter(|g| g.merchant_id == current.merchant_id)
            .ok_or_else(|| {
                ApiError::validation("gateway_id", "no such gateway of this merchant")
            })?;
        change.gateway = Some((gateway.id, gateway.venue_id));
    }
    if !store::update(&state.db, &scope, &id, change).await? {
        return Err(ApiError::NotFound);
    }
    get(State(state), caller, IdPath(id)).await
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> ApiResult<StatusCode> {
    if store::soft_delete(&state.db, &caller.scope(), &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}
