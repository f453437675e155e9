//! WeChat OAuth (snsapi_base) for the phone page, on both backends: the cloud talks to a fake
//! `/sns/oauth2/access_token` on loopback (and to the fake WeChat Pay of `wechatpay.rs`).
//! A good code binds the openid to the device session and the next WeChat order is JSAPI
//! with it; states are single-use and unguessable; WeChat's refusals, errors and silence
//! come back as clear 4xx/502/503 API errors.

use crate::on_every_backend;

on_every_backend!(
    wechat_oauth_binds_the_openid_and_pays_by_jsapi,
    wechat_oauth_upstream_failures_are_clear_errors,
);

pub mod fake {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::extract::{Query, State};
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use serde_json::json;

    pub const SECRET: &str = "0123456789abcdef0123456789abcdef";
    pub const OPENID: &str = "oOAuthPayer_0123456789abcdef";

    #[derive(Clone, Default)]
    pub struct OAuth {
        /// Every query the cloud sent.
        pub seen: Arc<Mutex<Vec<HashMap<String, String>>>>,
        pub base_url: String,
    }

    async fn token(State(f): State<OAuth>, Query(q): Query<HashMap<String, String>>) -> Response {
        f.seen.lock().unwrap().push(q.clone());
        let appid_ok = q.get("appid").is_some_and(|a| !a.is_empty());
        if !appid_ok
            || q.get("secret").map(String::as_str) != Some(SECRET)
            || q.get("grant_type").map(String::as_str) != Some("authorization_code")
        {
            return axum::Json(json!({ "errcode": 40125, "errmsg": "invalid appsecret" }))
                .into_response();
        }
        match q.get("code").map(String::as_str).unwrap_or("") {
            "goodcode" => axum::Json(json!({
                "access_token": "ACCESS", "expires_in": 7200, "refresh_token": "REFRESH",
                "openid": OPENID, "scope": "snsapi_base"
            }))
            .into_response(),
            "usedcode" => {
                axum::Json(json!({ "errcode": 40163, "errmsg": "code been used" })).into_response()
            }
            "busycode" => {
                axum::Json(json!({ "errcode": -1, "errmsg": "system error" })).into_response()
            }
            "crashcode" => (StatusCode::INTERNAL_SERVER_ERROR, "upstream down").into_response(),
            "htmlcode" => (StatusCode::OK, "<html>maintenance</html>").into_response(),
            "slowcode" => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                axum::Json(json!({ "openid": OPENID })).into_response()
            }
            _ => axum::Json(json!({ "errcode": 40029, "errmsg": "invalid code" })).into_response(),
        }
    }

    pub async fn start() -> OAuth {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let f = OAuth {
            base_url: format!("http://{}", listener.local_addr().unwrap()),
            ..OAuth::default()
        };
        let app = axum::Router::new()
            .route("/sns/oauth2/access_token", axum::routing::get(token))
            .with_state(f.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        f
    }
}

mod scenarios {
    use std::time::{Duration, Instant};

    use dmr_cloud::config::{Secret, WechatOAuthConfig};
    use reqwest::StatusCode;
    use serde_json::{Value, json};

    use super::fake;
    use crate::common::{DbKind, TestApp, error_code, seed_world};
    use crate::order_fixtures::public_lock;
    use crate::orders::support::lock_qr_and_plan;
    use crate::wechatpay::fake::{Fake, Keys};

    const REDIRECT: &str = "https://cloud.example.invalid/api/v1/public/wechat/oauth/callback";

    async fn spawn(kind: &DbKind, oauth: bool) -> (TestApp, Fake, Keys, fake::OAuth) {
        let k = crate::wechatpay::fake::keys();
        let pay = Fake::start(&k).await;
        let wx = crate::wechatpay::support::config(&k, &pay);
        let of = fake::start().await;
        let oc = WechatOAuthConfig {
            appid: k.appid.clone(),
            app_secret: Secret::new(fake::SECRET.to_string()),
            base_url: of.base_url.clone(),
            redirect_uri: REDIRECT.into(),
            timeout: Duration::from_millis(500),
        };
        let app = TestApp::spawn_with(kind, move |cfg| {
            cfg.wechatpay = Some(wx);
            if oauth {
                cfg.wechat_oauth = Some(oc);
            }
        })
        .await;
        (app, pay, k, of)
    }

    fn no_redirects() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    async fn start(app: &TestApp, session: Option<&str>, qr: &str) -> (StatusCode, Value) {
        let mut req = app
            .client
            .post(app.url_of("/api/v1/public/wechat/oauth"))
            .json(&json!({ "qr_code": qr }));
        if let Some(s) = session {
            req = req.header("X-Device-Session", s);
        }
        let resp = req.send().await.unwrap();
        let s = resp.status();
        (s, resp.json().await.unwrap_or(Value::Null))
    }

    /// The state inside an authorize URL.
    fn state_of(url: &str) -> String {
        let q = url.split_once('?').unwrap().1;
        let q = q.split_once('#').unwrap().0;
        q.split('&')
            .find_map(|p| p.strip_prefix("state="))
            .unwrap()
            .to_string()
    }

    /// GET the callback without following the redirect: (status, Location, body).
    async fn callback(app: &TestApp, query: &str) -> (StatusCode, Option<String>, Value) {
        let resp = no_redirects()
            .get(app.url_of(&format!("/api/v1/public/wechat/oauth/callback?{query}")))
            .send()
            .await
            .unwrap();
        let s = resp.status();
        let loc = resp
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string());
        let text = resp.text().await.unwrap();
        (s, loc, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn identity(app: &TestApp, session: &str) -> Value {
        let resp = app
            .client
            .get(app.url_of("/api/v1/public/wechat/identity"))
            .header("X-Device-Session", session)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.unwrap()
    }

    async fn create(app: &TestApp, session: &str, qr: &str, plan: &str) -> (StatusCode, Value) {
        let resp = app
            .client
            .post(app.url_of("/api/v1/public/orders"))
            .header("Idempotency-Key", format!("idem-{}", uuid::Uuid::new_v4()))
            .header("X-Device-Session", session)
            .json(&json!({ "qr_code": qr, "plan_id": plan, "provider": "wechat" }))
            .send()
            .await
            .unwrap();
        let s = resp.status();
        (s, resp.json().await.unwrap())
    }

    pub async fn wechat_oauth_binds_the_openid_and_pays_by_jsapi(kind: &DbKind) {
        let (app, pay, k, oauth) = spawn(kind, true).await;
        let w = seed_world(&app).await;
        let (qr, plan) = lock_qr_and_plan(&app, &w.a).await;
        let session = "device-session-aaaaaaaaaaaaaaaa";
        let other = "device-session-bbbbbbbbbbbbbbbb";

        let (s, lock) = public_lock(&app, &qr).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(lock["wechat_oauth"], true, "{lock}");
        assert_eq!(identity(&app, session).await["bound"], false);

        // The device session is required, and the lock code is checked.
        let (s, b) = start(&app, None, &qr).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        let (s, b) = start(&app, Some(session), "no/such lock").await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");

        let (s, started) = start(&app, Some(session), &qr).await;
        assert_eq!(s, StatusCode::OK, "{started}");
        let url = started["authorize_url"].as_str().unwrap();
        let expected_prefix = format!(
            "https://open.weixin.qq.com/connect/oauth2/authorize?appid={}&redirect_uri=\
             https%3A%2F%2Fcloud.example.invalid%2Fapi%2Fv1%2Fpublic%2Fwechat%2Foauth%2Fcallback\
             &response_type=code&scope=snsapi_base&state=",
            k.appid
        );
        assert!(url.starts_with(&expected_prefix), "{url}");
        assert!(url.ends_with("#wechat_redirect"), "{url}");
        assert!(!url.contains(fake::SECRET));
        let state = state_of(url);
        assert_eq!(state.len(), 64);
        assert!(state.chars().all(|c| c.is_ascii_hexdigit()));
        // Unguessable: a second start gets an unrelated state.
        let (_, again) = start(&app, Some(session), &qr).await;
        let state2 = state_of(again["authorize_url"].as_str().unwrap());
        assert_ne!(state, state2);
        // Only hashes are stored: neither the state nor the session appears in the table.
        let leaked: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM app_secrets WHERE name LIKE $1 OR value LIKE $1 OR name LIKE $2 OR value LIKE $2",
        )
        .bind(format!("%{state}%"))
        .bind(format!("%{session}%"))
        .fetch_one(&app.state.db.pool)
        .await
        .unwrap();
        assert_eq!(leaked, 0);

        // A state nobody issued, a malformed one, none: 400 without asking WeChat.
        let forged = "ab".repeat(32);
        let (s, _, b) = callback(&app, &format!("code=goodcode&state={forged}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
        assert_eq!(error_code(&b), "wechat_oauth_state_invalid");
        let (s, _, b) = callback(&app, "code=goodcode&state=short").await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
        let (s, _, b) = callback(&app, "code=goodcode").await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
        assert!(oauth.seen.lock().unwrap().is_empty());

        // The good code: exchanged with the app's id and secret, bound, back to the lock.
        let (s, loc, b) = callback(&app, &format!("code=goodcode&state={state}")).await;
        assert_eq!(s, StatusCode::FOUND, "{b}");
        assert_eq!(
            loc.as_deref(),
            Some(format!("/h5/l/{qr}?wechat=1").as_str())
        );
        {
            let seen = oauth.seen.lock().unwrap();
            assert_eq!(seen.len(), 1);
            assert_eq!(seen[0]["appid"], k.appid);
            assert_eq!(seen[0]["code"], "goodcode");
        }
        // Single use: the same state again is refused and WeChat is not asked again.
        let (s, _, b) = callback(&app, &format!("code=goodcode&state={state}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
        assert_eq!(error_code(&b), "wechat_oauth_state_invalid");
        assert_eq!(oauth.seen.lock().unwrap().len(), 1);

        assert_eq!(identity(&app, session).await["bound"], true);
        assert_eq!(identity(&app, other).await["bound"], false);

        // The bound session's WeChat order is JSAPI for that openid, without sending it.
        let (s, a) = create(&app, session, &qr, &plan).await;
        assert_eq!(s, StatusCode::CREATED, "{a}");
        assert!(a["payment"]["jsapi"]["paySign"].is_string(), "{a}");
        assert!(a["payment"]["code_url"].is_null(), "{a}");
        let jsapi = pay.hits("/v3/pay/transactions/jsapi");
        assert_eq!(jsapi.len(), 1);
        assert_eq!(jsapi[0].body["payer"]["openid"], fake::OPENID);
        let id = a["order"]["id"].as_str().unwrap().to_string();
        sqlx::query("UPDATE orders SET active_lock_id = NULL, status = 'cancelled' WHERE id = $1")
            .bind(id)
            .execute(&app.state.db.pool)
            .await
            .unwrap();

        // Another device (outside WeChat, never signed in): Native, a code_url to show.
        let (s, b) = create(&app, other, &qr, &plan).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        assert!(
            b["payment"]["code_url"]
                .as_str()
                .unwrap()
                .starts_with("weixin://"),
            "{b}"
        );
        assert!(b["payment"]["jsapi"].is_null());
        assert_eq!(pay.hits("/v3/pay/transactions/jsapi").len(), 1);

        // A binding lapses after 30 days: the page then signs in again.
        sqlx::query("UPDATE wechat_openids SET bound_at = bound_at - $1")
            .bind(dmr_cloud::orders::wechat_oauth::BINDING_TTL_MS + 1)
            .execute(&app.state.db.pool)
            .await
            .unwrap();
        assert_eq!(identity(&app, session).await["bound"], false);

        // A server without the app secret offers no sign-in.
        let (plain, _, _, _) = spawn(kind, false).await;
        let w2 = seed_world(&plain).await;
        let (qr2, _) = lock_qr_and_plan(&plain, &w2.a).await;
        let (_, lock2) = plain
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/public/locks/{qr2}"),
                None,
                None,
            )
            .await;
        assert_eq!(lock2["wechat_oauth"], false);
        let (s, b) = start(&plain, Some(session), &qr2).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
        assert_eq!(error_code(&b), "wechat_oauth_not_configured");
        assert_eq!(identity(&plain, session).await["oauth"], false);
    }

    pub async fn wechat_oauth_upstream_failures_are_clear_errors(kind: &DbKind) {
        let (app, _pay, _k, oauth) = spawn(kind, true).await;
        let w = seed_world(&app).await;
        let (qr, _) = lock_qr_and_plan(&app, &w.a).await;
        let session = "device-session-cccccccccccccccc";
        for (code, status, api_code) in [
            (
                "usedcode",
                StatusCode::BAD_REQUEST,
                "wechat_oauth_code_invalid",
            ),
            (
                "badcode",
                StatusCode::BAD_REQUEST,
                "wechat_oauth_code_invalid",
            ),
            ("busycode", StatusCode::BAD_GATEWAY, "wechat_oauth_failed"),
            ("crashcode", StatusCode::BAD_GATEWAY, "wechat_oauth_failed"),
            ("htmlcode", StatusCode::BAD_GATEWAY, "wechat_oauth_failed"),
            (
                "slowcode",
                StatusCode::SERVICE_UNAVAILABLE,
                "wechat_oauth_unavailable",
            ),
        ] {
            let (s, b) = start(&app, Some(session), &qr).await;
            assert_eq!(s, StatusCode::OK, "{b}");
            let state = state_of(b["authorize_url"].as_str().unwrap());
            let t = Instant::now();
            let (s, loc, b) = callback(&app, &format!("code={code}&state={state}")).await;
            assert_eq!(s, status, "{code}: {b}");
            assert!(loc.is_none());
            assert_eq!(error_code(&b), api_code, "{code}: {b}");
            let text = b.to_string();
            assert!(!text.contains(fake::SECRET), "{text}");
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "{code} took {:?}",
                t.elapsed()
            );
            // A failed exchange used the state up: it cannot be replayed.
            let (s, _, b) = callback(&app, &format!("code=goodcode&state={state}")).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
        }
        // Nothing was bound by any of it.
        assert_eq!(identity(&app, session).await["bound"], false);
        assert_eq!(oauth.seen.lock().unwrap().len(), 6);

        // WeChat unreachable altogether: 503 as well.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let c = WechatOAuthConfig {
            appid: "wxdead".into(),
            app_secret: Secret::new(fake::SECRET.into()),
            base_url: dead,
            redirect_uri: REDIRECT.into(),
            timeout: Duration::from_millis(500),
        };
        let e = dmr_cloud::orders::wechat_oauth::exchange(&c, "goodcode")
            .await
            .unwrap_err();
        assert!(
            matches!(e, dmr_cloud::error::ApiError::Unavailable { .. }),
            "{e:?}"
        );
    }
}
