//! `/api/v1/merchants` (platform admins only: `merchant:manage`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use crate::AppState;
use crate::db::{new_id, now_ms};
use crate::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, ApiQuery, IdPath};
use crate::http::guard::Caller;
use crate::http::list::{Page, Paging, order_by};
use crate::merchants::store::{self, MerchantFilter};
use crate::merchants::types::{
    CreateMerchant, Merchant, UpdateMerchant, check_commission, check_name, check_status,
};
use crate::users::types::normalize_phone;

const SORT_KEYS: &[(&str, &str)] = &[
    ("created_at", "created_at"),
    ("name", "name"),
    ("commission_bp", "commission_bp"),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    page: Option<String>,
    per_page: Option<String>,
    sort: Option<String>,
    q: Option<String>,
    status: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<Merchant>>> {
    let paging = Paging::parse(query.page.as_deref(), query.per_page.as_deref())?;
    let order = order_by(query.sort.as_deref(), SORT_KEYS, "created_at")?;
    let status = query.status.as_deref().map(check_status).transpose()?;
    let filter = MerchantFilter { status, q: query.q };
    Ok(Json(
        store::list(&state.db, &caller.scope(), &filter, paging, &order).await?,
    ))
}

pub async fn create(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<CreateMerchant>,
) -> ApiResult<(StatusCode, Json<Merchant>)> {
    let now = now_ms();
    let m = Merchant {
        id: new_id(),
        name: check_name("name", &input.name)?,
        contact_phone: input
            .contact_phone
            .as_deref()
            .map(normalize_phone)
            .transpose()?,
        commission_bp: check_commission(input.commission_bp)?,
        status: "active".into(),
        created_at: now,
        updated_at: now,
    };
    store::insert(&state.db, &m).await?;
    Ok((StatusCode::CREATED, Json(m)))
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> ApiResult<Json<Merchant>> {
    store::get(&state.db, &caller.scope(), &id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound)
}

pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    ApiJson(patch): ApiJson<UpdateMerchant>,
) -> ApiResult<Json<Merchant>> {
    let name = patch
        .name
        .as_deref()
        .map(|n| check_name("name", n))
        .transpose()?;
    let phone = patch
        .contact_phone
        .as_deref()
        .map(normalize_phone)
        .transpose()?;
    let bp = patch.commission_bp.map(check_commission).transpose()?;
    let status = patch.status.as_deref().map(check_status).transpose()?;
    if !store::update(&state.db, &id, name, phone, bp, status).await? {
        return Err(ApiError::NotFound);
    }
    get(State(state), caller, IdPath(id)).await
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> ApiResult<StatusCode> {
    if store::get(&state.db, &caller.scope(), &id).await?.is_none() {
        return Err(ApiError::NotFound);
    }
    if store::soft_delete(&state.db, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::Conflict(
            "merchant still has venues or users; delete those first".into(),
        ))
    }
}
