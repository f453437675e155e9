//! `/api/v1/gateways` (`device:read`, `device:write`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use crate::AppState;
use crate::db::{new_id, now_ms};
use crate::error::{ApiError, ApiResult};
use crate::gateways::store::{self, GatewayFilter};
use crate::gateways::types::{CreateGateway, Gateway, PROTECTED, UpdateGateway};
use crate::http::extract::{ApiQuery, IdPath, RawJson};
use crate::http::guard::Caller;
use crate::http::list::{Page, Paging, order_by};
use crate::merchants::types::check_name;
use crate::venues;

const SORT_KEYS: &[(&str, &str)] = &[
    ("created_at", "created_at"),
    ("name", "name"),
    ("status", "status"),
    ("last_seen_at", "last_seen_at"),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    page: Option<String>,
    per_page: Option<String>,
    sort: Option<String>,
    q: Option<String>,
    merchant_id: Option<String>,
    venue_id: Option<String>,
    status: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<Gateway>>> {
    let paging = Paging::parse(query.page.as_deref(), query.per_page.as_deref())?;
    let order = order_by(query.sort.as_deref(), SORT_KEYS, "created_at")?;
    if let Some(s) = &query.status
        && !matches!(s.as_str(), "pending" | "enrolled" | "retired")
    {
        return Err(ApiError::validation(
            "status",
            "pending, enrolled or retired",
        ));
    }
    let filter = GatewayFilter {
        merchant_id: query.merchant_id,
        venue_id: query.venue_id,
        status: query.status,
        q: query.q,
    };
    Ok(Json(
        store::list(&state.db, &caller.scope(), &filter, paging, &order).await?,
    ))
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: RawJson,
) -> ApiResult<(StatusCode, Json<Gateway>)> {
    body.reject_protected(PROTECTED)?;
    let input: CreateGateway = body.into_typed()?;
    let name = check_name("name", &input.name)?;
    // The venue decides the merchant; a venue outside the caller's tenant does not exist.
    let venue = venues::store::get(&state.db, &caller.scope(), &input.venue_id)
        .await?
        .ok_or_else(|| ApiError::validation("venue_id", "no such venue"))?;
    let now = now_ms();
    let g = Gateway {
        id: new_id(),
        merchant_id: venue.merchant_id,
        venue_id: venue.id,
        name,
        status: "pending".into(),
        public_key: None,
        enrolled_at: None,
        last_seen_at: None,
        created_at: now,
        updated_at: now,
        online: 0,
        agent_version: None,
        outbox_pending: None,
        outbox_oldest_age_s: None,
    };
    store::insert(&state.db, &g).await?;
    Ok((StatusCode::CREATED, Json(g)))
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> ApiResult<Json<Gateway>> {
    store::get(&state.db, &caller.scope(), &id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound)
}

pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    body: RawJson,
) -> ApiResult<Json<Gateway>> {
    let scope = caller.scope();
    let current = store::get(&state.db, &scope, &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    body.reject_protected(PROTECTED)?;
    let patch: UpdateGateway = body.into_typed()?;
    let name = patch
        .name
        .as_deref()
        .map(|n| check_name("name", n))
        .transpose()?;
    if let Some(v) = &patch.venue_id {
        let venue = venues::store::get(&state.db, &scope, v)
            .await?
            .filter(|venue| venue.merchant_id == current.merchant_id)
            .ok_or_else(|| ApiError::validation("venue_id", "no such venue of this merchant"))?;
        drop(venue);
    }
    if !store::update(&state.db, &scope, &id, name, patch.venue_id).await? {
        return Err(ApiError::NotFound);
    }
    get(State(state), caller, IdPath(id)).await
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> ApiResult<StatusCode> {
    let scope = caller.scope();
    store::get(&state.db, &scope, &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if store::soft_delete(&state.db, &scope, &id).await? {
        // A deleted gateway must not keep a cached broker login or key.
        if let Ok(u) = uuid::Uuid::parse_str(&id) {
            state.broker.auth.forget(u);
            state.ingest.forget(u);
        }
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::Conflict(
            "gateway still has locks; delete those first".into(),
        ))
    }
}
