//! The one error type every handler returns. It decides the status code and the stable JSON
//! body `{"error":{"code","message","details"}}`; anything internal is logged with its full
//! cause chain and replaced by a generic message, so database text never reaches a client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// An API failure, as the client will see it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("authentication required: {0}")]
    Unauthorized(&'static str),
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("forbidden: missing permission {0}")]
    Forbidden(&'static str),
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("validation failed on {field}: {message}")]
    Validation { field: String, message: String },
    #[error("field {0} may not be set by this request")]
    ProtectedField(String),
    #[error("request body too large")]
    PayloadTooLarge,
    /// A body over a limit of its own (a firmware image), with a message naming the limit.
    #[error("{0}")]
    TooLarge(String),
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("too many requests")]
    TooManyRequests { retry_after_secs: u64 },
    #[error("login locked")]
    LoginLocked { retry_after_secs: u64 },
    #[error("refresh token reused; all sessions of this login were revoked")]
    RefreshReuse,
    /// A dependency (the MQTT broker) is down; retrying later can succeed.
    #[error("{message}")]
    Unavailable { code: &'static str, message: String },
    /// An upstream service (WeChat) answered, but with an error or nonsense.
    #[error("{message}")]
    BadGateway { code: &'static str, message: String },
    #[error("enrollment code invalid")]
    EnrollmentCodeInvalid,
    #[error("gateway authentication failed ({reason}): {message}")]
    GatewayAuth {
        reason: &'static str,
        message: String,
    },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation {
            field: field.into(),
            message: message.into(),
        }
    }

    /// An unexpected failure. A database that is busy or unreachable is still a 503, even
    /// when the error comes wrapped in context (the key ring's reload, for one): the client
    /// should retry, not report a bug.
    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        let e = e.into();
        match e.downcast_ref::<sqlx::Error>() {
            Some(sqlx::Error::PoolTimedOut) => ApiError::from(sqlx::Error::PoolTimedOut),
            Some(sqlx::Error::Io(io)) => ApiError::from(sqlx::Error::Io(std::io::Error::new(
                io.kind(),
                io.to_string(),
            ))),
            _ => ApiError::Internal(e),
        }
    }

    /// Status, stable code, client message and optional details.
    fn parts(&self) -> (StatusCode, &'static str, String, Value) {
        use ApiError::*;
        match self {
            BadRequest { code, message } => {
                (StatusCode::BAD_REQUEST, code, message.clone(), Value::Null)
            }
            Unauthorized(why) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("authentication required: {why}"),
                Value::Null,
            ),
            InvalidCredentials => (
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "login or password is wrong".into(),
                Value::Null,
            ),
            Forbidden(perm) => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "your role does not allow this".into(),
                json!({ "permission": perm }),
            ),
            NotFound => (
                StatusCode::NOT_FOUND,
                "not_found",
                "no such resource".into(),
                Value::Null,
            ),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this resource does not support that method".into(),
                Value::Null,
            ),
            Conflict(msg) => (StatusCode::CONFLICT, "conflict", msg.clone(), Value::Null),
            Validation { field, message } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                format!("{field}: {message}"),
                json!({ "field": field }),
            ),
            ProtectedField(field) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "protected_field",
                format!("{field} may not be set by this request"),
                json!({ "field": field }),
            ),
            PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body is larger than the server accepts".into(),
                Value::Null,
            ),
            TooLarge(message) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                message.clone(),
                Value::Null,
            ),
            UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send Content-Type: application/json".into(),
                Value::Null,
            ),
            TooManyRequests { retry_after_secs } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests; slow down".into(),
                json!({ "retry_after_secs": retry_after_secs }),
            ),
            LoginLocked { retry_after_secs } => (
                StatusCode::TOO_MANY_REQUESTS,
                "login_locked",
                "too many failed logins; try again later".into(),
                json!({ "retry_after_secs": retry_after_secs }),
            ),
            RefreshReuse => (
                StatusCode::UNAUTHORIZED,
                "refresh_token_reused",
                "this refresh token was already used; every session of this login was revoked"
                    .into(),
                Value::Null,
            ),
            Unavailable { code, message } => (
                StatusCode::SERVICE_UNAVAILABLE,
                code,
                message.clone(),
                Value::Null,
            ),
            BadGateway { code, message } => {
                (StatusCode::BAD_GATEWAY, code, message.clone(), Value::Null)
            }
            EnrollmentCodeInvalid => (
                StatusCode::FORBIDDEN,
                "enrollment_code_invalid",
                "the enrollment code is unknown, used, revoked or expired; ask for a new code"
                    .into(),
                Value::Null,
            ),
            GatewayAuth { reason, message } => (
                StatusCode::UNAUTHORIZED,
                "gateway_auth_failed",
                message.clone(),
                json!({ "reason": reason }),
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal server error".into(),
                Value::Null,
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(e) = &self {
            tracing::error!(error = format!("{e:#}"), "request failed");
        }
        let (status, code, message, details) = self.parts();
        let body = json!({ "error": { "code": code, "message": message, "details": details } });
        let mut resp = (status, axum::Json(body)).into_response();
        if let ApiError::TooManyRequests { retry_after_secs }
        | ApiError::LoginLocked { retry_after_secs } = &self
            && let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        // Constraint violations are the client's doing (a duplicate code, a missing parent),
        // so they become 409/422; the constraint's name goes to the log, not the client.
        if let sqlx::Error::Database(db) = &e {
            use sqlx::error::ErrorKind;
            let constraint = db.constraint().unwrap_or("").to_string();
            tracing::info!(%constraint, message = db.message(), "constraint violation");
            match db.kind() {
                ErrorKind::UniqueViolation => {
                    return ApiError::Conflict(
                        "an object with the same unique value already exists".into(),
                    );
                }
                ErrorKind::ForeignKeyViolation => {
                    return ApiError::validation(
                        "reference",
                        "refers to an object that does not exist",
                    );
                }
                ErrorKind::NotNullViolation | ErrorKind::CheckViolation => {
                    return ApiError::validation("body", "a value is missing or out of range");
                }
                _ => {}
            }
        }
        if matches!(e, sqlx::Error::RowNotFound) {
            return ApiError::NotFound;
        }
        // Every pooled connection stayed busy for the whole acquire timeout: the server is
        // overloaded, not broken, and the same request can succeed shortly (seen in the
        // order_flow bench past saturation, where these were 500s).
        if matches!(e, sqlx::Error::PoolTimedOut) {
            tracing::warn!("database pool exhausted; answering 503");
            return ApiError::Unavailable {
                code: "database_busy",
                message: "the server is too busy to reach its database right now; try again in a few seconds".into(),
            };
        }
        // The connection to the database broke (a PostgreSQL restart or failover): the
        // request itself was fine and a retry gets a fresh connection.
        if let sqlx::Error::Io(io) = &e {
            tracing::warn!(error = %io, "database connection lost; answering 503");
            return ApiError::Unavailable {
                code: "database_unavailable",
                message:
                    "the server lost its connection to the database; try again in a few seconds"
                        .into(),
            };
        }
        ApiError::Internal(anyhow::Error::new(e).context("database"))
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::Internal(e)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn an_exhausted_pool_is_a_503_not_a_500() {
        let r = ApiError::from(sqlx::Error::PoolTimedOut).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let r = ApiError::from(sqlx::Error::Io(io)).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let r = ApiError::from(sqlx::Error::PoolClosed).into_response();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn a_busy_database_under_context_is_still_a_503() {
        let wrapped = anyhow::Error::from(sqlx::Error::PoolTimedOut).context("reading cloud_keys");
        let r = ApiError::internal(wrapped).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let wrapped = anyhow::Error::from(sqlx::Error::Io(io)).context("reading cloud_keys");
        let r = ApiError::internal(wrapped).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let other = anyhow::anyhow!("a bug").context("somewhere");
        let r = ApiError::internal(other).into_response();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
