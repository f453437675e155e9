//! EMQX 5 HTTP hooks, for deployments that use an external EMQX cluster instead of the
//! embedded broker: `POST /api/v1/broker/auth` (the HTTP authenticator) and
//! `POST /api/v1/broker/acl` (the HTTP authorizer). They answer with the same credential
//! check and the same policy ([`crate::broker::acl`]) as the embedded broker. EMQX is
//! configured to send a shared secret in the `X-DMR-Hook-Secret` header
//! (`packaging/emqx/`); without `mqtt.hook_secret` configured the hooks refuse every call.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::broker::acl::{self, Action, principal_of};
use crate::error::ApiError;
use crate::http::extract::ApiJson;

/// The header EMQX sends the shared secret in.
pub const SECRET_HEADER: &str = "x-dmr-hook-secret";

/// Route guard: the request carries the configured hook secret.
pub async fn require_secret(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(secret) = &state.broker.hook_secret else {
        return Err(ApiError::Unauthorized(
            "broker hooks are off: set mqtt.hook_secret and send it in X-DMR-Hook-Secret",
        ));
    };
    let presented = req
        .headers()
        .get(SECRET_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !bool::from(presented.ct_eq(secret.expose().as_bytes())) {
        state
            .broker
            .counters
            .hook_bad_secret
            .fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::Unauthorized(
            "missing or wrong X-DMR-Hook-Secret header",
        ));
    }
    Ok(next.run(req).await)
}

/// What EMQX's HTTP authenticator posts (the body template in packaging/emqx/).
#[derive(Debug, Deserialize)]
pub struct AuthRequest {
    #[serde(default)]
    pub clientid: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub peerhost: Option<String>,
}

/// `POST /api/v1/broker/auth`: `{"result":"allow"|"deny","is_superuser":bool}`.
pub async fn auth(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<AuthRequest>,
) -> Result<Json<Value>, ApiError> {
    let verdict = state
        .broker
        .auth
        .check(req.username.as_deref(), req.password.as_deref(), false)
        .await?;
    let c = &state.broker.counters;
    Ok(Json(match verdict {
        Ok(who) => {
            c.hook_auth_allowed.fetch_add(1, Ordering::Relaxed);
            json!({ "result": "allow", "is_superuser": who == acl::Principal::Cloud })
        }
        Err(why) => {
            c.hook_auth_denied.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                username = req.username.as_deref().unwrap_or(""),
                clientid = req.clientid.as_deref().unwrap_or(""),
                peerhost = req.peerhost.as_deref().unwrap_or(""),
                reason = why.as_str(),
                "MQTT login refused (EMQX hook)"
            );
            json!({ "result": "deny", "is_superuser": false })
        }
    }))
}

/// What EMQX's HTTP authorizer posts.
#[derive(Debug, Deserialize)]
pub struct AclRequest {
    #[serde(default)]
    pub clientid: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    pub topic: String,
    pub action: String,
}

/// `POST /api/v1/broker/acl`: `{"result":"allow"|"deny"}`.
pub async fn acl(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<AclRequest>,
) -> Result<Json<Value>, ApiError> {
    let Some(action) = Action::parse(&req.action) else {
        return Err(ApiError::validation(
            "action",
            format!("{:?} is neither \"publish\" nor \"subscribe\"", req.action),
        ));
    };
    let ok = req
        .username
        .as_deref()
        .and_then(principal_of)
        .is_some_and(|who| acl::allowed(&who, action, &req.topic));
    let c = &state.broker.counters;
    if ok {
        c.hook_acl_allowed.fetch_add(1, Ordering::Relaxed);
    } else {
        c.hook_acl_denied.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            username = req.username.as_deref().unwrap_or(""),
            clientid = req.clientid.as_deref().unwrap_or(""),
            topic = %req.topic,
            action = %req.action,
            "MQTT access denied (EMQX hook)"
        );
    }
    Ok(Json(json!({ "result": if ok { "allow" } else { "deny" } })))
}
