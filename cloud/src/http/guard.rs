//! Authentication and authorization for protected routes. The guard verifies the bearer
//! token, reloads the user (so a deleted user or a changed password ends access at once,
//! not at token expiry), checks the route's permission, and hands the handler a [`Caller`].

use axum::extract::{FromRequestParts, Request, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};

use crate::AppState;
use crate::error::ApiError;
use crate::http::routes::Access;
use crate::rbac::{Role, Scope};
use crate::users;

/// The authenticated user behind a request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user_id: String,
    pub role: Role,
    pub merchant_id: Option<String>,
}

impl Caller {
    /// The tenant filter every store query applies.
    pub fn scope(&self) -> Scope {
        match (&self.merchant_id, self.role) {
            (_, Role::PlatformAdmin) => Scope::All,
            (Some(m), _) => Scope::Merchant(m.clone()),
            // A merchant role without a merchant cannot exist (a CHECK constraint forbids
            // it); should one appear, it sees nothing rather than everything.
            (None, _) => Scope::Merchant(String::new()),
        }
    }

    pub fn is_platform_admin(&self) -> bool {
        self.role == Role::PlatformAdmin
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or(ApiError::Unauthorized("missing bearer token"))
    }
}

/// Resolves the bearer token of a request to a live user.
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let header = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::Unauthorized("missing bearer token"))?;
    let token = header
        .strip_prefix("Bearer ")
        .ok_or(ApiError::Unauthorized("missing bearer token"))?;
    let now = crate::db::now_ms() / 1000;
    let claims = state.jwt.verify(token.trim(), now).map_err(|e| {
        tracing::debug!(error = %e, "access token refused");
        ApiError::Unauthorized("invalid or expired access token")
    })?;
    let user = users::store::find_live(&state.db, &claims.sub)
        .await?
        .ok_or(ApiError::Unauthorized("user no longer exists"))?;
    if user.session_epoch != claims.ep {
        return Err(ApiError::Unauthorized("session ended; log in again"));
    }
    let role = Role::parse(&user.role)
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("user {} has unknown role", user.id)))?;
    Ok(Caller {
        user_id: user.id,
        role,
        merchant_id: user.merchant_id,
    })
}

/// Middleware for `Access::Authenticated` and `Access::Perm` routes.
pub async fn require(
    State((state, access)): State<(AppState, Access)>,
    mut req: Request,
    next: Next,
) -> Response {
    let caller = match authenticate(&state, req.headers()).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if let Access::Perm(p) = access
        && !caller.role.has(p)
    {
        return ApiError::Forbidden(p.as_str()).into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}
