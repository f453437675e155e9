//! One way to call the cloud API, shared by enrollment ([`super::enroll`]) and the HTTP
//! sync ([`super::sync`]), so the two cannot drift apart in how a request is built or how an
//! answer is read.
//!
//! [`CloudRequest`] carries the method, the path with its query (exactly as sent), an
//! optional JSON body and, for the sync, the gateway's signature: the `DMR-Gateway`
//! authorization is computed here over the very path and body bytes that go on the wire
//! ([`super::sync::auth_header`]), so a caller cannot sign one thing and send another.
//! [`send`] returns the status and the body text; transport failures come back as one line
//! naming every cause in the chain. [`api_error`] reads the cloud's error body
//! `{"error":{"code","message","details"}}`.

use std::time::Duration;

use dmr_protocol::keys::SigningKey;
use uuid::Uuid;

/// Builds an HTTP client for the cloud. rustls uses the process provider named by
/// [`super::link::install_crypto_provider`].
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    super::link::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("dmr-agent/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Who signs a request, and with which time and nonce.
#[derive(Debug, Clone, Copy)]
pub struct GatewaySignature<'a> {
    pub gw: Uuid,
    pub key: &'a SigningKey,
    /// Unix ms (trusted time).
    pub ts: u64,
    pub nonce: Uuid,
}

/// A request to the cloud API.
#[derive(Debug, Clone)]
pub struct CloudRequest<'a> {
    pub method: reqwest::Method,
    /// Base URL (`https://cloud.example`), a trailing slash is ignored.
    pub base: &'a str,
    /// Path with its query, exactly as sent and signed.
    pub path: &'a str,
    /// A JSON body (sent with `Content-Type: application/json`).
    pub json: Option<Vec<u8>>,
    /// Sign with the gateway key (`Authorization: DMR-Gateway ...`).
    pub sign: Option<GatewaySignature<'a>>,
}

impl CloudRequest<'_> {
    /// The full URL.
    pub fn url(&self) -> String {
        format!("{}{}", self.base.trim_end_matches('/'), self.path)
    }

    /// The `Authorization` value, when the request is signed: over the method, the path
    /// and the body bytes this request sends (an empty body for none).
    pub fn authorization(&self) -> Option<String> {
        self.sign.map(|s| {
            super::sync::auth_header(
                s.gw,
                s.key,
                s.ts,
                s.nonce,
                self.method.as_str(),
                self.path,
                self.json.as_deref().unwrap_or(b""),
            )
        })
    }
}

/// The status and body text of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub text: String,
}

/// Sends `req` and reads the whole answer. `Err` is a transport failure (no answer or a
/// broken one), as one line with every cause.
pub async fn send(client: &reqwest::Client, req: CloudRequest<'_>) -> Result<Answer, String> {
    let mut b = client.request(req.method.clone(), req.url());
    if let Some(auth) = req.authorization() {
        b = b.header(reqwest::header::AUTHORIZATION, auth);
    }
    if let Some(body) = req.json {
        b = b
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
    }
    let resp = b.send().await.map_err(|e| error_chain(&e))?;
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(|e| error_chain(&e))?;
    Ok(Answer { status, text })
}

/// An error and all its sources, `: `-separated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// What the cloud's error body says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiErrorBody {
    /// `error.code`, when the body is the API's error shape.
    pub code: Option<String>,
    /// `error.message`, or the start of the raw body when it is not JSON.
    pub message: String,
    /// `error.details.reason`, when given (the sync's 401 says why the signature failed).
    pub reason: Option<String>,
}

/// Reads the API error body `{"error":{"code","message","details"}}`; anything else gives
/// the first 300 characters of the raw text as the message.
pub fn api_error(body: &str) -> ApiErrorBody {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let e = &v["error"];
    ApiErrorBody {
        code: e["code"].as_str().map(str::to_string),
        message: e["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| body.chars().take(300).collect()),
        reason: e["details"]["reason"].as_str().map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_signature_covers_the_path_and_body_that_are_sent() {
        let key = dmr_protocol::keys::signing_key_from_seed([7; 32]);
        let gw = Uuid::from_u128(7);
        let nonce = super::super::sync::new_nonce();
        let req = CloudRequest {
            method: reqwest::Method::POST,
            base: "http://cloud.test/",
            path: "/api/v1/gateway/events?x=1",
            json: Some(b"{\"messages\":[]}".to_vec()),
            sign: Some(GatewaySignature {
                gw,
                key: &key,
                ts: 5,
                nonce,
            }),
        };
        assert_eq!(req.url(), "http://cloud.test/api/v1/gateway/events?x=1");
        let h = req.authorization().unwrap();
        let vk = key.verifying_key();
        let (_, payload) =
            dmr_protocol::jws::verify(h.strip_prefix("DMR-Gateway ").unwrap(), |_| Some(&vk))
                .unwrap();
        let a: super::super::sync::RequestAuth = serde_json::from_slice(&payload).unwrap();
        assert_eq!(a.method, "POST");
        assert_eq!(a.path, "/api/v1/gateway/events?x=1");
        assert_eq!(
            a.body_sha256,
            super::super::sync::body_sha256(b"{\"messages\":[]}")
        );
        let unsigned = CloudRequest { sign: None, ..req };
        assert!(unsigned.authorization().is_none());
    }

    #[test]
    fn api_error_reads_the_error_shape_or_the_raw_text() {
        let e = api_error(
            r#"{"error":{"code":"unauthorized","message":"bad sig","details":{"reason":"stale"}}}"#,
        );
        assert_eq!(e.code.as_deref(), Some("unauthorized"));
        assert_eq!(e.message, "bad sig");
        assert_eq!(e.reason.as_deref(), Some("stale"));
        let raw = api_error("<html>gateway timeout</html>");
        assert_eq!(raw.code, None);
        assert_eq!(raw.message, "<html>gateway timeout</html>");
    }
}
