//! `/api/v1/users` and `/api/v1/me`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use crate::AppState;
use crate::auth::password;
use crate::config::Secret;
use crate::db::{Db, new_id, now_ms};
use crate::error::{ApiError, ApiResult};
use crate::http::extract::{ApiQuery, IdPath, RawJson};
use crate::http::guard::Caller;
use crate::http::list::{Page, Paging, order_by};
use crate::merchants;
use crate::rbac::{Role, Scope};
use crate::users::store::{self, UserFilter};
use crate::users::types::{
    CreateUser, UpdateMe, UpdateUser, User, UserRow, check_display_name, normalize_phone,
    normalize_username, parse_role,
};

const SORT_KEYS: &[(&str, &str)] = &[
    ("created_at", "created_at"),
    ("username", "username"),
    ("display_name", "display_name"),
];

/// Who is creating a user: a logged-in caller, or the operator at the command line.
#[derive(Debug)]
pub enum Creator<'a> {
    Caller(&'a Caller),
    CommandLine,
}

/// Validates and stores a new user. Shared by the API and `dmr-cloud admin create-user`.
pub async fn create_user(db: &Db, creator: Creator<'_>, input: CreateUser) -> ApiResult<UserRow> {
    let username = normalize_username(&input.username)?;
    let display_name = check_display_name(&input.display_name)?;
    let phone = input.phone.as_deref().map(normalize_phone).transpose()?;
    let role = parse_role(&input.role)?;
    password::check_policy(&input.password).map_err(|m| ApiError::validation("password", m))?;

    let merchant_id = match creator {
        Creator::Caller(c) if !c.is_platform_admin() => {
            // A merchant's user manager creates users for their own merchant only.
            if input.merchant_id.is_some() {
                return Err(ApiError::ProtectedField("merchant_id".into()));
            }
            if role == Role::PlatformAdmin {
                return Err(ApiError::validation("role", "not assignable by your role"));
            }
            c.merchant_id.clone()
        }
        _ => match (role, input.merchant_id) {
            (Role::PlatformAdmin, None) => None,
            (Role::PlatformAdmin, Some(_)) => {
                return Err(ApiError::validation(
                    "merchant_id",
                    "platform admins belong to no merchant",
                ));
            }
            (_, None) => {
                return Err(ApiError::validation(
                    "merchant_id",
                    "required for merchant roles",
                ));
            }
            (_, Some(m)) => {
                if merchants::store::get(db, &Scope::All, &m).await?.is_none() {
                    return Err(ApiError::validation("merchant_id", "no such merchant"));
                }
                Some(m)
            }
        },
    };

    let password_hash = password::hash(Secret::new(input.password)).await?;
    let now = now_ms();
    let row = UserRow {
        id: new_id(),
        merchant_id,
        username,
        phone,
        display_name,
        role: role.as_str().to_string(),
        password_hash,
        session_epoch: 0,
        created_at: now,
        updated_at: now,
    };
    store::insert(db, &row).await?;
    Ok(row)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    page: Option<String>,
    per_page: Option<String>,
    sort: Option<String>,
    q: Option<String>,
    role: Option<String>,
    merchant_id: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<User>>> {
    let paging = Paging::parse(query.page.as_deref(), query.per_page.as_deref())?;
    let order = order_by(query.sort.as_deref(), SORT_KEYS, "created_at")?;
    if let Some(r) = &query.role {
        parse_role(r)?;
    }
    let filter = UserFilter {
        merchant_id: query.merchant_id,
        role: query.role,
        q: query.q,
    };
    let page = store::list(&state.db, &caller.scope(), &filter, paging, &order).await?;
    Ok(Json(Page {
        items: page.items.into_iter().map(User::from).collect(),
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
) -> ApiResult<(StatusCode, Json<User>)> {
    let input: CreateUser = body.into_typed()?;
    let row = create_user(&state.db, Creator::Caller(&caller), input).await?;
    Ok((StatusCode::CREATED, Json(row.into())))
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> ApiResult<Json<User>> {
    let row = store::get(&state.db, &caller.scope(), &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(row.into()))
}

pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    body: RawJson,
) -> ApiResult<Json<User>> {
    let scope = caller.scope();
    // Existence first, so another tenant's id is 404 whatever the body says.
    store::get(&state.db, &scope, &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    body.reject_protected(&["merchant_id", "role", "id", "username"])?;
    let patch: UpdateUser = body.into_typed()?;
    let display_name = patch
        .display_name
        .as_deref()
        .map(check_display_name)
        .transpose()?;
    let phone = patch.phone.as_deref().map(normalize_phone).transpose()?;
    if let Some(pw) = &patch.password {
        password::check_policy(pw).map_err(|m| ApiError::validation("password", m))?;
    }
    if !store::update_profile(&state.db, &scope, &id, display_name, phone).await? {
        return Err(ApiError::NotFound);
    }
    if let Some(pw) = patch.password {
        let hash = password::hash(Secret::new(pw)).await?;
        store::set_password(&state.db, &scope, &id, hash).await?;
    }
    let row = store::get(&state.db, &scope, &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(row.into()))
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
    if id == caller.user_id {
        return Err(ApiError::Conflict(
            "you cannot delete your own account".into(),
        ));
    }
    if store::soft_delete(&state.db, &scope, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}

pub async fn me(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<User>> {
    let row = store::find_live(&state.db, &caller.user_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(row.into()))
}

pub async fn update_me(
    State(state): State<AppState>,
    caller: Caller,
    body: RawJson,
) -> ApiResult<Json<User>> {
    body.reject_protected(&["merchant_id", "role", "id", "username", "session_epoch"])?;
    let patch: UpdateMe = body.into_typed()?;
    let display_name = patch
        .display_name
        .as_deref()
        .map(check_display_name)
        .transpose()?;
    let phone = patch.phone.as_deref().map(normalize_phone).transpose()?;
    // Own row: scope by the user's own id is enough.
    store::update_profile(&state.db, &Scope::All, &caller.user_id, display_name, phone).await?;
    me(State(state), caller).await
}
