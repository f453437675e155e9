//! The control HTTP API (JSON, meant for loopback): the same operations as [`Control`],
//! for tests in other processes and for the demo.
//!
//! Errors use the project's one shape, `{"error":{"code","message"}}`: 404 for a lock that
//! is not on the bus, 422 for a body that does not parse or validate.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::bus::{Control, ControlError};
use crate::device::AlarmInput;
use crate::faults::Faults;

/// An API error with its status and stable code.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::UnknownLock(_) => ApiError {
                status: StatusCode::NOT_FOUND,
                code: "unknown_lock",
                message: e.to_string(),
            },
            ControlError::Invalid(m) => unprocessable(m),
        }
    }
}

fn unprocessable(message: String) -> ApiError {
    ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: "invalid_body",
        message,
    }
}

fn addr(text: &str) -> Result<u8, ApiError> {
    text.parse::<u8>().map_err(|_| ApiError {
        status: StatusCode::NOT_FOUND,
        code: "unknown_lock",
        message: format!("{text:?} is not a bus address"),
    })
}

fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| unprocessable(format!("bad JSON body: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DoorBody {
    open: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlarmBody {
    kind: AlarmInput,
    on: bool,
}

type Api = Result<Response, ApiError>;

async fn list(State(c): State<Control>) -> Api {
    Ok(axum::Json(c.locks()).into_response())
}

async fn one(State(c): State<Control>, Path(a): Path<String>) -> Api {
    let a = addr(&a)?;
    let view = c.lock(a).ok_or(ControlError::UnknownLock(a))?;
    Ok(axum::Json(view).into_response())
}

async fn door(State(c): State<Control>, Path(a): Path<String>, b: Bytes) -> Api {
    let a = addr(&a)?;
    c.lock(a).ok_or(ControlError::UnknownLock(a))?;
    let d: DoorBody = body(&b)?;
    c.set_door(a, d.open)?;
    one(State(c), Path(a.to_string())).await
}

async fn alarm(State(c): State<Control>, Path(a): Path<String>, b: Bytes) -> Api {
    let a = addr(&a)?;
    c.lock(a).ok_or(ControlError::UnknownLock(a))?;
    let d: AlarmBody = body(&b)?;
    c.set_alarm(a, d.kind, d.on)?;
    one(State(c), Path(a.to_string())).await
}

async fn bus_faults(State(c): State<Control>, b: Bytes) -> Api {
    let f: Faults = body(&b)?;
    c.set_faults(f)?;
    Ok(axum::Json(c.faults()).into_response())
}

async fn get_faults(State(c): State<Control>) -> Api {
    Ok(axum::Json(c.faults()).into_response())
}

async fn lock_faults(State(c): State<Control>, Path(a): Path<String>, b: Bytes) -> Api {
    let a = addr(&a)?;
    c.lock(a).ok_or(ControlError::UnknownLock(a))?;
    let f: Faults = body(&b)?;
    c.set_lock_faults(a, f)?;
    Ok(axum::Json(f).into_response())
}

async fn power_cycle(State(c): State<Control>, Path(a): Path<String>) -> Api {
    let a = addr(&a)?;
    c.power_cycle(a)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn fallback() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        message: "no such endpoint".into(),
    }
}

/// The API's routes over `control`.
pub(crate) fn router(control: Control) -> Router {
    Router::new()
        .route("/locks", get(list))
        .route("/locks/{addr}", get(one))
        .route("/locks/{addr}/door", post(door))
        .route("/locks/{addr}/alarm", post(alarm))
        .route("/locks/{addr}/faults", put(lock_faults))
        .route("/locks/{addr}/power_cycle", post(power_cycle))
        .route("/faults", put(bus_faults).get(get_faults))
        .fallback(fallback)
        .with_state(control)
}
