//! Request extractors that turn every kind of bad input into the API error body: garbage
//! JSON is 400, a body over the limit 413, a wrong type or an unknown or protected field
//! 422 naming the field. axum's own rejections answer in plain text, so they are not used.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body. Fields listed in `protected` (via [`ApiJson::reject_protected`]) are
/// checked against the raw object, so a client cannot sneak `merchant_id` or `role` past a
/// struct that would silently ignore it.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

/// The parsed body before it is typed: handlers that guard protected fields use this.
#[derive(Debug)]
pub struct RawJson(pub serde_json::Value);

impl RawJson {
    /// Refuses the request if the object sets any of `fields`.
    pub fn reject_protected(&self, fields: &[&str]) -> Result<(), ApiError> {
        if let Some(obj) = self.0.as_object() {
            for f in fields {
                if obj.contains_key(*f) {
                    return Err(ApiError::ProtectedField((*f).to_string()));
                }
            }
        }
        Ok(())
    }

    /// Types the body; a type error names the field it happened at.
    pub fn into_typed<T: DeserializeOwned>(self) -> Result<T, ApiError> {
        serde_path_to_error::deserialize(self.0).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            // serde names unknown fields in the message, not the path.
            let field = if let Some(rest) = inner.strip_prefix("unknown field `") {
                rest.split('`').next().unwrap_or(&path).to_string()
            } else if let Some(rest) = inner.strip_prefix("missing field `") {
                rest.split('`').next().unwrap_or(&path).to_string()
            } else if path == "." {
                "body".to_string()
            } else {
                path
            };
            ApiError::validation(field, inner)
        })
    }
}

impl<S: Send + Sync> FromRequest<S> for RawJson {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                let mime = v.split(';').next().unwrap_or("").trim();
                mime.eq_ignore_ascii_case("application/json")
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::BadRequest {
                    code: "unreadable_body",
                    message: "the request body could not be read".into(),
                }
            }
        })?;
        RawJson::parse(&bytes)
    }
}

impl RawJson {
    /// Parses a body already read (gateway requests hash it first): garbage is 400, a
    /// non-object 422.
    pub fn parse(bytes: &[u8]) -> Result<RawJson, ApiError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| ApiError::BadRequest {
                code: "malformed_json",
                message: format!("request body is not valid JSON: {e}"),
            })?;
        if !value.is_object() {
            return Err(ApiError::validation("body", "must be a JSON object"));
        }
        Ok(RawJson(value))
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let raw = RawJson::from_request(req, state).await?;
        raw.into_typed().map(ApiJson)
    }
}

/// Query-string parameters; unknown or mistyped ones are 422 naming the parameter.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        let pairs: Vec<(String, String)> = form_pairs(query);
        let map: serde_json::Map<String, serde_json::Value> = pairs
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        RawJson(serde_json::Value::Object(map))
            .into_typed()
            .map(ApiQuery)
    }
}

/// Splits and percent-decodes `a=b&c=d`. Values stay strings; query types parse numbers
/// themselves (see `http::list`) so the error can name the parameter.
fn form_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A path id. Ids are UUIDs; anything else cannot name an object, so it is 404.
#[derive(Debug)]
pub struct IdPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(id) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| ApiError::NotFound)?;
        match uuid::Uuid::try_parse(&id) {
            Ok(u) if u.hyphenated().to_string() == id => Ok(IdPath(id)),
            _ => Err(ApiError::NotFound),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("%E4%B8%AD"), "中");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(
            form_pairs("page=2&sort=-name&x"),
            vec![
                ("page".into(), "2".into()),
                ("sort".into(), "-name".into()),
                ("x".into(), "".into())
            ]
        );
    }
}
