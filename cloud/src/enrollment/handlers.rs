//! `/api/v1/enrollment-codes` (`device:write` to make, list and revoke codes).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use crate::AppState;
use crate::db::{new_id, now_ms};
use crate::enrollment::store::{self, CodeFilter};
use crate::enrollment::types::{CodeRow, CreateCode, CreatedCode, EnrollmentCode, new_code};
use crate::error::{ApiError, ApiResult};
use crate::http::extract::{ApiQuery, IdPath, RawJson};
use crate::http::guard::Caller;
use crate::http::list::{Page, Paging, order_by};
use crate::venues;

const SORT_KEYS: &[(&str, &str)] = &[("created_at", "created_at"), ("expires_at", "expires_at")];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    page: Option<String>,
    per_page: Option<String>,
    sort: Option<String>,
    merchant_id: Option<String>,
    venue_id: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<EnrollmentCode>>> {
    let paging = Paging::parse(query.page.as_deref(), query.per_page.as_deref())?;
    let order = order_by(query.sort.as_deref(), SORT_KEYS, "created_at")?;
    let filter = CodeFilter {
        merchant_id: query.merchant_id,
        venue_id: query.venue_id,
    };
    let page = store::list(&state.db, &caller.scope(), &filter, paging, &order).await?;
    let now = now_ms();
    Ok(Json(Page {
        items: page
            .items
            .into_iter()
            .map(|r| EnrollmentCode::from_row(r, now))
            .collect(),
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
) -> ApiResult<(StatusCode, Json<CreatedCode>)> {
    body.reject_protected(&["merchant_id", "code", "code_hash", "used_at", "expires_at"])?;
    let input: CreateCode = body.into_typed()?;
    let ttl = input.ttl_minutes.unwrap_or(60);
    if !(1..=10_080).contains(&ttl) {
        return Err(ApiError::validation("ttl_minutes", "1..=10080 minutes"));
    }
    let venue = venues::store::get(&state.db, &caller.scope(), &input.venue_id)
        .await?
        .ok_or_else(|| ApiError::validation("venue_id", "no such venue"))?;
    if let Some(gw) = &input.gateway_id {
        let g = crate::gateways::store::get(&state.db, &caller.scope(), gw)
            .await?
            .ok_or_else(|| ApiError::validation("gateway_id", "no such gateway"))?;
        if g.venue_id != venue.id {
            return Err(ApiError::validation(
                "gateway_id",
                "the gateway is in another venue than venue_id",
            ));
        }
        if g.status == "retired" {
            return Err(ApiError::validation(
                "gateway_id",
                "the gateway is retired; create a new gateway instead",
            ));
        }
    }
    let now = now_ms();
    let row = CodeRow {
        id: new_id(),
        merchant_id: venue.merchant_id,
        venue_id: venue.id,
        expires_at: now + ttl * 60_000,
        used_at: None,
        used_by_gateway: None,
        gateway_id: input.gateway_id.clone(),
        created_by: caller.user_id.clone(),
        created_at: now,
    };
    let code = new_code();
    store::insert(&state.db, &row, &code).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedCode {
            code_info: EnrollmentCode::from_row(row, now),
            code,
        }),
    ))
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> ApiResult<Json<EnrollmentCode>> {
    let row = store::get(&state.db, &caller.scope(), &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(EnrollmentCode::from_row(row, now_ms())))
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> ApiResult<StatusCode> {
    if store::revoke(&state.db, &caller.scope(), &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}
