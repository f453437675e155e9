//! Accounts: login, refresh rotation and reuse detection, logout, password change,
//! lockout that survives a restart, and the per-client rate limit.

use crate::on_every_backend;

on_every_backend!(
    login_by_username_or_phone_and_me,
    refresh_rotates_and_reuse_revokes_the_family,
    logout_and_password_change_end_sessions,
    lockout_survives_restart,
    public_endpoints_are_rate_limited,
);

mod scenarios {
    use reqwest::StatusCode;
    use serde_json::json;

    use crate::common::{DbKind, PASSWORD, TestApp, error_code};

    pub async fn login_by_username_or_phone_and_me(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        app.create_user("Root", "platform_admin", None).await;
        let admin = app.token("root").await;
        let (s, me) = app
            .patch(
                "/api/v1/me",
                &admin,
                json!({ "phone": "+86 138 0013 8000" }),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{me}");
        assert_eq!(me["phone"], "+8613800138000");

        let (s, body) = app.login("+86 138-0013-8000", PASSWORD).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["user"]["username"], "root");
        assert!(body["user"].get("password_hash").is_none());
        let token = body["access_token"].as_str().unwrap();
        let (s, me) = app.get("/api/v1/me", token).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(me["role"], "platform_admin");

        let (s, body) = app.login("root", "wrong password").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(error_code(&body), "invalid_credentials");
        let (s, body) = app.login("nobody", PASSWORD).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(
            error_code(&body),
            "invalid_credentials",
            "unknown users look the same"
        );

        // A forged token (signed with another key) is refused.
        let keys = dmr_cloud::auth::jwt::JwtKeys::new(
            &dmr_cloud::config::Secret::new(b"some other key some other key!!!".to_vec()),
            "dmr-cloud",
            "dmr-console",
        )
        .unwrap();
        let claims: dmr_cloud::auth::jwt::Claims = {
            let payload = token.split('.').nth(1).unwrap();
            serde_json::from_slice(&dmr_protocol::b64::decode(payload).unwrap()).unwrap()
        };
        let forged = keys.sign(&claims);
        let (s, body) = app.get("/api/v1/me", &forged).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(error_code(&body), "unauthorized");
        app.stop().await;
    }

    pub async fn refresh_rotates_and_reuse_revokes_the_family(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        app.create_user("root", "platform_admin", None).await;
        let (_, first) = app.login("root", PASSWORD).await;
        let r1 = first["refresh_token"].as_str().unwrap().to_string();
        let refresh = |t: String| {
            let app = &app;
            async move {
                app.call(
                    reqwest::Method::POST,
                    "/api/v1/auth/refresh",
                    None,
                    Some(json!({ "refresh_token": t })),
                )
                .await
            }
        };
        let (s, second) = refresh(r1.clone()).await;
        assert_eq!(s, StatusCode::OK, "{second}");
        let r2 = second["refresh_token"].as_str().unwrap().to_string();
        assert_ne!(r1, r2, "the refresh token rotates");
        let (s, _) = app
            .get("/api/v1/me", second["access_token"].as_str().unwrap())
            .await;
        assert_eq!(s, StatusCode::OK);

        // Presenting the spent token again is reuse: 401 and the whole family dies.
        let (s, body) = refresh(r1).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(error_code(&body), "refresh_token_reused");
        let (s, body) = refresh(r2).await;
        assert_eq!(
            s,
            StatusCode::UNAUTHORIZED,
            "the successor was revoked with its family: {body}"
        );

        // Two concurrent uses of one token: exactly one wins the conditional update; the
        // other is reuse, which revokes the family, the winner's new token included.
        let (_, fresh) = app.login("root", PASSWORD).await;
        let t = fresh["refresh_token"].as_str().unwrap().to_string();
        let (x, y) = tokio::join!(refresh(t.clone()), refresh(t));
        let mut statuses = [x.0, y.0];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::UNAUTHORIZED],
            "{} / {}",
            x.1,
            y.1
        );
        let winner = if x.0 == StatusCode::OK { x.1 } else { y.1 };
        let (s, _) = refresh(winner["refresh_token"].as_str().unwrap().to_string()).await;
        assert_eq!(
            s,
            StatusCode::UNAUTHORIZED,
            "the family was revoked by the losing reuse"
        );

        // Another login (another family) is unaffected.
        let (_, other) = app.login("root", PASSWORD).await;
        let (s, _) = refresh(other["refresh_token"].as_str().unwrap().to_string()).await;
        assert_eq!(s, StatusCode::OK);
        let (s, body) = refresh("garbage".into()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(error_code(&body), "unauthorized");
        app.stop().await;
    }

    pub async fn logout_and_password_change_end_sessions(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        app.create_user("root", "platform_admin", None).await;
        let (_, a) = app.login("root", PASSWORD).await;
        let (_, b) = app.login("root", PASSWORD).await;
        let (s, _) = app
            .call(
                reqwest::Method::POST,
                "/api/v1/auth/logout",
                None,
                Some(json!({ "refresh_token": a["refresh_token"] })),
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, _) = app
            .call(
                reqwest::Method::POST,
                "/api/v1/auth/refresh",
                None,
                Some(json!({ "refresh_token": a["refresh_token"] })),
            )
            .await;
        assert_eq!(
            s,
            StatusCode::UNAUTHORIZED,
            "logged-out refresh token is dead"
        );

        let access_b = b["access_token"].as_str().unwrap();
        let (s, body) = app
            .post(
                "/api/v1/auth/password",
                access_b,
                json!({ "current_password": "nope nope", "new_password": "a new password" }),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["error"]["details"]["field"], "current_password");
        let (s, _) = app
            .post(
                "/api/v1/auth/password",
                access_b,
                json!({ "current_password": PASSWORD, "new_password": "a new password" }),
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, _) = app.get("/api/v1/me", access_b).await;
        assert_eq!(
            s,
            StatusCode::UNAUTHORIZED,
            "old access tokens end with a password change"
        );
        let (s, _) = app
            .call(
                reqwest::Method::POST,
                "/api/v1/auth/refresh",
                None,
                Some(json!({ "refresh_token": b["refresh_token"] })),
            )
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "old refresh tokens too");
        let (s, _) = app.login("root", PASSWORD).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _) = app.login("root", "a new password").await;
        assert_eq!(s, StatusCode::OK);
        app.stop().await;
    }

    pub async fn lockout_survives_restart(kind: &DbKind) {
        let tweak = |c: &mut dmr_cloud::config::Config| {
            c.auth.login_max_failures = 3;
            c.auth.login_lockout_secs = 600;
        };
        let app = TestApp::spawn_with(kind, tweak).await;
        app.create_user("victim", "platform_admin", None).await;
        for _ in 0..3 {
            let (s, _) = app.login("victim", "wrong guess").await;
            assert_eq!(s, StatusCode::UNAUTHORIZED);
        }
        let (s, body) = app.login("victim", PASSWORD).await;
        assert_eq!(
            s,
            StatusCode::TOO_MANY_REQUESTS,
            "locked even with the right password: {body}"
        );
        assert_eq!(error_code(&body), "login_locked");
        assert!(
            body["error"]["details"]["retry_after_secs"]
                .as_u64()
                .unwrap()
                > 500
        );

        // A restart (new process state, same database) keeps the lock.
        let url = app.url.clone();
        let kind2 = app.kind.clone();
        let dir = app.stop().await;
        let again = TestApp::spawn_on(&kind2, &url, tweak).await;
        let (s, body) = again.login("VICTIM", PASSWORD).await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(error_code(&body), "login_locked");
        again.stop().await;
        drop(dir);
    }

    pub async fn public_endpoints_are_rate_limited(kind: &DbKind) {
        // No gateway link: /health then answers for the database alone.
        let app = TestApp::spawn_with(kind, |c| {
            c.rate_limit.per_minute = 5;
            c.mqtt.enabled = false;
        })
        .await;
        let mut statuses = Vec::new();
        for _ in 0..6 {
            let (s, body) = app
                .call(
                    reqwest::Method::POST,
                    "/api/v1/auth/refresh",
                    None,
                    Some(json!({ "refresh_token": "x" })),
                )
                .await;
            statuses.push(s);
            if s == StatusCode::TOO_MANY_REQUESTS {
                assert_eq!(error_code(&body), "rate_limited");
            }
        }
        assert_eq!(&statuses[..5], &[StatusCode::UNAUTHORIZED; 5]);
        assert_eq!(statuses[5], StatusCode::TOO_MANY_REQUESTS);
        // Operations endpoints are not limited.
        for _ in 0..10 {
            let (s, _) = app.call(reqwest::Method::GET, "/health", None, None).await;
            assert_eq!(s, StatusCode::OK);
        }
        app.stop().await;
    }
}
