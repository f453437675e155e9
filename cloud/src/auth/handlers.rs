//! `/api/v1/auth/*`: login, refresh, logout, change password.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::jwt::Claims;
use crate::auth::{password, store};
use crate::config::Secret;
use crate::db::{new_id, now_ms};
use crate::error::{ApiError, ApiResult};
use crate::http::extract::ApiJson;
use crate::http::guard::Caller;
use crate::rbac::Scope;
use crate::users;
use crate::users::types::{User, UserRow};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Username or phone number.
    login: String,
    password: String,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("login", &self.login)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize)]
pub struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    refresh_token: String,
    refresh_expires_in: u64,
    user: User,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    refresh_token: String,
}

impl std::fmt::Debug for RefreshRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshRequest { .. }")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    current_password: String,
    new_password: String,
}

impl std::fmt::Debug for ChangePassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChangePassword { .. }")
    }
}

fn access_token(state: &AppState, user: &UserRow) -> String {
    let now = now_ms() / 1000;
    let ttl = i64::try_from(state.config.auth.access_ttl_secs).unwrap_or(900);
    state.jwt.sign(&Claims {
        iss: state.jwt.issuer.clone(),
        aud: state.jwt.audience.clone(),
        sub: user.id.clone(),
        role: user.role.clone(),
        mid: user.merchant_id.clone(),
        ep: user.session_epoch,
        iat: now,
        nbf: now,
        exp: now + ttl,
        jti: new_id(),
    })
}

fn refresh_ttl_ms(state: &AppState) -> i64 {
    i64::try_from(state.config.auth.refresh_ttl_secs)
        .unwrap_or(86_400)
        .saturating_mul(1000)
}

fn tokens(state: &AppState, user: UserRow, refresh_token: String) -> TokenResponse {
    TokenResponse {
        access_token: access_token(state, &user),
        token_type: "Bearer",
        expires_in: state.config.auth.access_ttl_secs,
        refresh_token,
        refresh_expires_in: state.config.auth.refresh_ttl_secs,
        user: user.into(),
    }
}

fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs)
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000)
}

pub async fn login(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> ApiResult<Json<TokenResponse>> {
    let login = req.login.trim().to_lowercase();
    if login.is_empty() || login.len() > 128 {
        return Err(ApiError::validation("login", "1-128 characters"));
    }
    if req.password.len() > 256 {
        return Err(ApiError::InvalidCredentials);
    }
    let subject = format!("login:{login}");
    if let Some(ms) = store::locked_for(&state.db, &subject).await? {
        return Err(ApiError::LoginLocked {
            retry_after_secs: u64::try_from(ms / 1000 + 1).unwrap_or(1),
        });
    }
    let auth = &state.config.auth;
    let user = users::store::find_for_login(&state.db, &login).await?;
    let ok = match &user {
        Some(u) => password::verify(Secret::new(req.password), u.password_hash.clone()).await?,
        None => {
            password::verify_dummy(Secret::new(req.password)).await?;
            false
        }
    };
    let Some(user) = user.filter(|_| ok) else {
        let locked = store::record_failure(
            &state.db,
            &subject,
            auth.login_max_failures,
            secs_to_ms(auth.login_window_secs),
            secs_to_ms(auth.login_lockout_secs),
        )
        .await?;
        if locked {
            tracing::warn!(%login, "login locked after repeated failures");
        }
        return Err(ApiError::InvalidCredentials);
    };
    store::clear_failures(&state.db, &subject).await?;
    let refresh =
        store::insert_refresh(&state.db, &user.id, &new_id(), refresh_ttl_ms(&state)).await?;
    tracing::info!(user = %user.id, "login");
    Ok(Json(tokens(&state, user, refresh)))
}

pub async fn refresh(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> ApiResult<Json<TokenResponse>> {
    match store::rotate(&state.db, req.refresh_token.trim(), refresh_ttl_ms(&state)).await? {
        store::Rotation::Rotated {
            user_id,
            new_secret,
        } => {
            let user = users::store::find_live(&state.db, &user_id)
                .await?
                .ok_or(ApiError::Unauthorized("user no longer exists"))?;
            Ok(Json(tokens(&state, user, new_secret)))
        }
        store::Rotation::Invalid => Err(ApiError::Unauthorized("invalid or expired refresh token")),
        store::Rotation::Reused => Err(ApiError::RefreshReuse),
    }
}

pub async fn logout(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> ApiResult<StatusCode> {
    store::revoke_family_of(&state.db, req.refresh_token.trim()).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn change_password(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<ChangePassword>,
) -> ApiResult<StatusCode> {
    password::check_policy(&req.new_password)
        .map_err(|m| ApiError::validation("new_password", m))?;
    let user = users::store::find_live(&state.db, &caller.user_id)
        .await?
        .ok_or(ApiError::Unauthorized("user no longer exists"))?;
    if !password::verify(Secret::new(req.current_password), user.password_hash).await? {
        return Err(ApiError::validation(
            "current_password",
            "is not your current password",
        ));
    }
    let hash = password::hash(Secret::new(req.new_password)).await?;
    users::store::set_password(&state.db, &Scope::All, &caller.user_id, hash).await?;
    Ok(StatusCode::NO_CONTENT)
}
