//! `/api/v1/venues` (`venue:read`, `venue:write`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use crate::AppState;
use crate::db::{new_id, now_ms};
use crate::error::{ApiError, ApiResult};
use crate::http::extract::{ApiQuery, IdPath, RawJson};
use crate::http::guard::Caller;
use crate::http::list::{Page, Paging, order_by};
use crate::merchants;
use crate::merchants::types::check_name;
use crate::rbac::Scope;
use crate::venues::store::{self, VenueFilter};
use crate::venues::types::{CreateVenue, UpdateVenue, Venue};

const SORT_KEYS: &[(&str, &str)] = &[("created_at", "created_at"), ("name", "name")];

fn check_address(raw: &str) -> Result<String, ApiError> {
    let a = raw.trim();
    if a.chars().count() > 300 {
        return Err(ApiError::validation("address", "at most 300 characters"));
    }
    Ok(a.to_string())
}

/// Decides the merchant a new object belongs to: the caller's own, or for platform admins
/// the one named in the body (which must exist).
pub async fn owning_merchant(
    state: &AppState,
    caller: &Caller,
    requested: Option<String>,
) -> ApiResult<String> {
    match (caller.scope(), requested) {
        (Scope::Merchant(_), Some(_)) => Err(ApiError::ProtectedField("merchant_id".into())),
        (Scope::Merchant(m), None) => Ok(m),
        (Scope::All, None) => Err(ApiError::validation(
            "merchant_id",
            "required for platform admins",
        )),
        (Scope::All, Some(m)) => {
            if merchants::store::get(&state.db, &Scope::All, &m)
                .await?
                .is_none()
            {
                return Err(ApiError::validation("merchant_id", "no such merchant"));
            }
            Ok(m)
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    page: Option<String>,
    per_page: Option<String>,
    sort: Option<String>,
    q: Option<String>,
    merchant_id: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<Venue>>> {
    let paging = Paging::parse(query.page.as_deref(), query.per_page.as_deref())?;
    let order = order_by(query.sort.as_deref(), SORT_KEYS, "created_at")?;
    let filter = VenueFilter {
        merchant_id: query.merchant_id,
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
) -> ApiResult<(StatusCode, Json<Venue>)> {
    let input: CreateVenue = body.into_typed()?;
    let name = check_name("name", &input.name)?;
    let address = check_address(input.address.as_deref().unwrap_or(""))?;
    let merchant_id = owning_merchant(&state, &caller, input.merchant_id).await?;
    let now = now_ms();
    let v = Venue {
        id: new_id(),
        merchant_id,
        name,
        address,
        created_at: now,
        updated_at: now,
    };
    store::insert(&state.db, &v).await?;
    Ok((StatusCode::CREATED, Json(v)))
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> ApiResult<Json<Venue>> {
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
) -> ApiResult<Json<Venue>> {
    let scope = caller.scope();
    store::get(&state.db, &scope, &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    body.reject_protected(&["merchant_id", "id"])?;
    let patch: UpdateVenue = body.into_typed()?;
    let name = patch
        .name
        .as_deref()
        .map(|n| check_name("name", n))
        .transpose()?;
    let address = patch.address.as_deref().map(check_address).transpose()?;
    if !store::update(&state.db, &scope, &id, name, address).await? {
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
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::Conflict(
            "venue still has gateways; delete those first".into(),
        ))
    }
}
