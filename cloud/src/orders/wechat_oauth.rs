//! WeChat OAuth (`snsapi_base`) for the phone page, so a payer inside WeChat can pay by
//! JSAPI, which needs their openid.
//!
//! The page (inside WeChat, WeChat Pay offered) asks `POST /api/v1/public/wechat/oauth` for an
//! authorize URL, sending its `X-Device-Session` header (a navigation could not carry the
//! header, and the session must not travel in URLs: it is what lists "my orders"). The cloud
//! answers with `https://open.weixin.qq.com/connect/oauth2/authorize?...&state=S#wechat_redirect`
//! where `S` is 32 random bytes (hex) remembered for ten minutes together with a hash of the
//! device session and the lock's code. WeChat sends the browser back to
//! `GET /api/v1/public/wechat/oauth/callback?code=C&state=S`: the state is consumed (a
//! conditional delete, so it works once, across instances, and a forged or replayed one is a
//! 400), the code exchanged at `{oauth_base_url}/sns/oauth2/access_token` with a timeout, and
//! the openid bound to the hashed device session. The browser is then redirected back to the
//! lock page, and creating a WeChat order from that session uses the bound openid.
//!
//! Pending states live in `wechat_oauth_states` and bindings in `wechat_openids` (migration
//! 0011); only hashes of the state and of the session are stored, never the values. A binding
//! is used for [`BINDING_TTL_MS`] after it was made; the cleanup job (`crate::jobs`) deletes
//! older ones and states nobody came back with.

use std::sync::OnceLock;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::hash_key;
use crate::AppState;
use crate::config::WechatOAuthConfig;
use crate::db::now_ms;
use crate::error::{ApiError, ApiResult};
use crate::http::extract::{ApiQuery, RawJson};

/// WeChat's authorize page (not configurable: the browser goes there, never the cloud).
pub const AUTHORIZE_URL: &str = "https://open.weixin.qq.com/connect/oauth2/authorize";
/// How long an authorize URL may take to come back.
pub const STATE_TTL_MS: i64 = 10 * 60_000;
/// How long an openid stays bound to a device session. A payer's openid is personal data we
/// need only while they keep paying from that phone; after this the page signs in once more
/// (one silent `snsapi_base` round trip inside WeChat), and the cleanup job deletes the row.
pub const BINDING_TTL_MS: i64 = 30 * 24 * 3_600_000;

fn oauth(state: &AppState) -> Result<&WechatOAuthConfig, ApiError> {
    state
        .config
        .wechat_oauth
        .as_ref()
        .ok_or(ApiError::BadRequest {
            code: "wechat_oauth_not_configured",
            message:
                "WeChat sign-in is not configured on this server; pay with the Native QR code \
                      or another provider"
                    .into(),
        })
}

fn session_of(headers: &HeaderMap) -> Result<String, ApiError> {
    super::public::client_token(headers, "X-Device-Session")?.ok_or_else(|| {
        ApiError::validation(
            "X-Device-Session",
            "header required (the page's device session)",
        )
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    qr_code: String,
}

#[derive(Debug, Serialize)]
pub struct Started {
    /// Where to send the browser (WeChat's authorize page).
    pub authorize_url: String,
    /// The state is refused after this time (Unix ms).
    pub expires_at: i64,
}

#[derive(Debug)]
struct Pending {
    /// hash_key(device session)
    session: String,
    qr: String,
    expires_at: i64,
}

fn random_hex() -> String {
    use rand_core::RngCore as _;
    let mut b = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The authorize URL, parameters in the order WeChat requires.
pub fn authorize_url(c: &WechatOAuthConfig, state: &str) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    format!(
        "{AUTHORIZE_URL}?appid={}&redirect_uri={}&response_type=code&scope=snsapi_base&state={}#wechat_redirect",
        enc(&c.appid),
        enc(&c.redirect_uri),
        state
    )
}

/// `POST /api/v1/public/wechat/oauth` (header `X-Device-Session`, body `{qr_code}`).
pub async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: RawJson,
) -> ApiResult<Json<Started>> {
    let c = oauth(&state)?;
    let session = session_of(&headers)?;
    let input: StartBody = body.into_typed()?;
    if input.qr_code.is_empty()
        || input.qr_code.len() > 64
        || !input.qr_code.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(ApiError::validation(
            "qr_code",
            "must be the lock's code from its QR code (letters and digits)",
        ));
    }
    let now = now_ms();
    // Forget states nobody came back with (an index range on expires_at).
    sqlx::query("DELETE FROM wechat_oauth_states WHERE expires_at < $1")
        .bind(now)
        .execute(&state.db.pool)
        .await?;
    let s = random_hex();
    let pending = Pending {
        session: hash_key(&session),
        qr: input.qr_code,
        expires_at: now + STATE_TTL_MS,
    };
    sqlx::query(
        "INSERT INTO wechat_oauth_states (state_hash, session_hash, qr_code, expires_at, \
         created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(hash_key(&s))
    .bind(pending.session.clone())
    .bind(pending.qr.clone())
    .bind(pending.expires_at)
    .bind(now)
    .execute(&state.db.pool)
    .await?;
    Ok(Json(Started {
        authorize_url: authorize_url(c, &s),
        expires_at: pending.expires_at,
    }))
}

#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
}

fn bad_state() -> ApiError {
    ApiError::BadRequest {
        code: "wechat_oauth_state_invalid",
        message:
            "this WeChat sign-in link is unknown, expired or already used; open the lock page \
                  again to start over"
                .into(),
    }
}

/// Consumes a state: the first caller gets its record, everyone after gets nothing.
async fn take_state(state: &AppState, s: &str) -> Result<Option<Pending>, ApiError> {
    // Whoever deletes the row owns the state; a concurrent replay deletes nothing and so
    // gets no row back.
    let row: Option<(String, String, i64)> = sqlx::query_as(
        "DELETE FROM wechat_oauth_states WHERE state_hash = $1 \
         RETURNING session_hash, qr_code, expires_at",
    )
    .bind(hash_key(s))
    .fetch_optional(&state.db.pool)
    .await?;
    Ok(row.map(|(session, qr, expires_at)| Pending {
        session,
        qr,
        expires_at,
    }))
}

#[derive(Debug, Deserialize)]
struct TokenAnswer {
    openid: Option<String>,
    errcode: Option<i64>,
    errmsg: Option<String>,
}

fn http() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default()
    })
}

fn valid_openid(o: &str) -> bool {
    !o.is_empty()
        && o.len() <= 128
        && o.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Exchanges the code for the openid at `{base}/sns/oauth2/access_token`.
pub async fn exchange(c: &WechatOAuthConfig, code: &str) -> Result<String, ApiError> {
    let url = format!("{}/sns/oauth2/access_token", c.base_url);
    let unavailable = |why: String| ApiError::Unavailable {
        code: "wechat_oauth_unavailable",
        message: format!("WeChat sign-in did not answer ({why}); try again in a moment"),
    };
    let resp = http()
        .get(&url)
        .query(&[
            ("appid", c.appid.as_str()),
            ("secret", c.app_secret.expose().as_str()),
            ("code", code),
            ("grant_type", "authorization_code"),
        ])
        .timeout(c.timeout)
        .send()
        .await
        .map_err(|e| {
            // Without the URL: it carries the AppSecret.
            let e = e.without_url();
            tracing::warn!(error = %e, "WeChat OAuth code exchange failed");
            if e.is_timeout() {
                unavailable(format!("no answer within {} ms", c.timeout.as_millis()))
            } else {
                unavailable("connection failed".into())
            }
        })?;
    let status = resp.status();
    let failed = |message: String| ApiError::BadGateway {
        code: "wechat_oauth_failed",
        message,
    };
    if !status.is_success() {
        tracing::warn!(%status, "WeChat OAuth code exchange answered an error status");
        return Err(failed(format!(
            "WeChat sign-in answered HTTP {status}; try again later"
        )));
    }
    let body = resp.bytes().await.map_err(|e| {
        if e.is_timeout() {
            unavailable(format!("no answer within {} ms", c.timeout.as_millis()))
        } else {
            unavailable("the answer was cut off".into())
        }
    })?;
    let answer: TokenAnswer = serde_json::from_slice(&body)
        .map_err(|_| failed("WeChat sign-in answered something that is not JSON".into()))?;
    match (answer.errcode.filter(|e| *e != 0), answer.openid) {
        // 40029 invalid code, 40163 code already used: the code the browser brought is bad.
        (Some(code @ (40029 | 40163)), _) => Err(ApiError::BadRequest {
            code: "wechat_oauth_code_invalid",
            message: format!(
                "WeChat refused the sign-in code ({code}: it is invalid or was already used); \
                 open the lock page again to start over"
            ),
        }),
        (Some(code), _) => {
            let msg = answer.errmsg.unwrap_or_default();
            tracing::warn!(errcode = code, errmsg = %msg, "WeChat OAuth refused the exchange");
            Err(failed(format!(
                "WeChat sign-in failed (errcode {code}: {}); try again later",
                msg.chars().take(120).collect::<String>()
            )))
        }
        (None, Some(openid)) if valid_openid(&openid) => Ok(openid),
        (None, _) => Err(failed(
            "WeChat sign-in answered without a usable openid".into(),
        )),
    }
}

/// `GET /api/v1/public/wechat/oauth/callback?code=&state=`: WeChat sends the browser here.
pub async fn callback(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<CallbackQuery>,
) -> ApiResult<Response> {
    let c = oauth(&state)?;
    let s = q.state.unwrap_or_default();
    if s.len() != 64 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad_state());
    }
    let pending = take_state(&state, &s).await?.ok_or_else(bad_state)?;
    if pending.expires_at < now_ms() {
        return Err(bad_state());
    }
    let code = q.code.unwrap_or_default();
    if code.is_empty() {
        return Err(ApiError::BadRequest {
            code: "wechat_oauth_denied",
            message:
                "WeChat sent no sign-in code (authorization refused); open the lock page again"
                    .into(),
        });
    }
    if code.len() > 256
        || !code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ApiError::validation(
            "code",
            "not a WeChat sign-in code; open the lock page again",
        ));
    }
    let openid = exchange(c, &code).await?;
    let now = now_ms();
    sqlx::query(
        "INSERT INTO wechat_openids (session_hash, openid, bound_at) VALUES ($1, $2, $3) \
         ON CONFLICT (session_hash) DO UPDATE SET openid = excluded.openid, \
         bound_at = excluded.bound_at",
    )
    .bind(pending.session)
    .bind(openid)
    .bind(now)
    .execute(&state.db.pool)
    .await?;
    let back = format!("/h5/l/{}?wechat=1", pending.qr);
    let mut resp = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(&back) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// The openid bound to a device session by the OAuth step, if any.
pub async fn bound_openid(state: &AppState, session: &str) -> Result<Option<String>, ApiError> {
    Ok(sqlx::query_scalar(
        "SELECT openid FROM wechat_openids WHERE session_hash = $1 AND bound_at >= $2",
    )
    .bind(hash_key(session))
    .bind(now_ms().saturating_sub(BINDING_TTL_MS))
    .fetch_optional(&state.db.pool)
    .await?)
}

#[derive(Debug, Serialize)]
pub struct Identity {
    /// Whether this server can run WeChat sign-in at all.
    pub oauth: bool,
    /// Whether this device session has an openid (JSAPI can be used).
    pub bound: bool,
}

/// `GET /api/v1/public/wechat/identity` (header `X-Device-Session`).
pub async fn identity(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<Identity>> {
    let session = session_of(&headers)?;
    let bound = bound_openid(&state, &session).await?.is_some();
    Ok(Json(Identity {
        oauth: state.config.wechat_oauth.is_some(),
        bound,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn authorize_url_keeps_wechats_parameter_order_and_encodes_the_redirect() {
        let c = WechatOAuthConfig {
            appid: "wx1234567890abcdef".into(),
            app_secret: Secret::new("s".repeat(32)),
            base_url: "https://api.weixin.qq.com".into(),
            redirect_uri: "https://cloud.example.com/api/v1/public/wechat/oauth/callback".into(),
            timeout: Duration::from_secs(3),
        };
        let u = authorize_url(&c, "ab12");
        assert_eq!(
            u,
            "https://open.weixin.qq.com/connect/oauth2/authorize?appid=wx1234567890abcdef\
             &redirect_uri=https%3A%2F%2Fcloud.example.com%2Fapi%2Fv1%2Fpublic%2Fwechat%2Foauth%2Fcallback\
             &response_type=code&scope=snsapi_base&state=ab12#wechat_redirect"
        );
        assert!(!u.contains(&"s".repeat(32)));
    }
}
