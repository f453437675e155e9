//! Bad input never becomes a 500: garbage JSON, oversize bodies, wrong types, unknown
//! fields, wrong media types, unknown routes and methods all answer with the error body.

use crate::on_every_backend;

on_every_backend!(
    bad_input_gets_4xx_with_the_error_body,
    health_and_metrics,
    health_checks_the_embedded_broker_and_the_external_bridge
);

mod scenarios {
    use reqwest::StatusCode;
    use serde_json::{Value, json};

    use crate::common::{DbKind, TestApp, error_code};

    async fn raw(
        app: &TestApp,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, serde_json::Value) {
        // A client of its own: after a 413 the server closes a connection whose body it did
        // not read, and a pooled connection reused by the next request would fail it.
        let mut req = reqwest::Client::new()
            .request(method, app.url_of(path))
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let value = resp.json().await.unwrap_or(serde_json::Value::Null);
        (status, value)
    }

    pub async fn bad_input_gets_4xx_with_the_error_body(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        app.create_user("root", "platform_admin", None).await;
        let t = app.token("root").await;
        let post = reqwest::Method::POST;
        let json_ct = Some("application/json");

        let (s, b) = raw(
            &app,
            post.clone(),
            "/api/v1/merchants",
            Some(&t),
            json_ct,
            b"{not json".to_vec(),
        )
        .await;
        assert_eq!(
            (s, error_code(&b)),
            (StatusCode::BAD_REQUEST, "malformed_json")
        );

        let big = format!(
            "{{\"name\":\"{}\",\"commission_bp\":1}}",
            "x".repeat(2 << 20)
        );
        let (s, b) = raw(
            &app,
            post.clone(),
            "/api/v1/merchants",
            Some(&t),
            json_ct,
            big.into_bytes(),
        )
        .await;
        assert_eq!(
            (s, error_code(&b)),
            (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
        );

        let (s, b) = app
            .post(
                "/api/v1/merchants",
                &t,
                json!({ "name": "M", "commission_bp": "lots" }),
            )
            .await;
        assert_eq!(
            (s, error_code(&b)),
            (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed")
        );
        assert_eq!(b["error"]["details"]["field"], "commission_bp");

        let (s, b) = app
            .post("/api/v1/merchants", &t, json!({ "name": "M" }))
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(b["error"]["details"]["field"], "commission_bp");

        let (s, b) = app
            .post(
                "/api/v1/merchants",
                &t,
                json!({ "name": "M", "commission_bp": 10001 }),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(b["error"]["details"]["field"], "commission_bp");

        let (s, b) = app
            .post(
                "/api/v1/merchants",
                &t,
                json!({ "name": "M", "commission_bp": 1, "extra": 1 }),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(b["error"]["details"]["field"], "extra");

        let (s, b) = app.post("/api/v1/merchants", &t, json!([1, 2])).await;
        assert_eq!(
            (s, error_code(&b)),
            (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed")
        );

        let (s, b) = raw(
            &app,
            post.clone(),
            "/api/v1/merchants",
            Some(&t),
            Some("text/plain"),
            b"{}".to_vec(),
        )
        .await;
        assert_eq!(
            (s, error_code(&b)),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
        );

        let (s, b) = raw(
            &app,
            post.clone(),
            "/api/v1/auth/login",
            None,
            json_ct,
            b"\xff\xfe".to_vec(),
        )
        .await;
        assert_eq!(
            (s, error_code(&b)),
            (StatusCode::BAD_REQUEST, "malformed_json")
        );

        let (s, b) = app.get("/api/v1/nowhere", &t).await;
        assert_eq!((s, error_code(&b)), (StatusCode::NOT_FOUND, "not_found"));
        let (s, b) = app
            .call(reqwest::Method::PUT, "/api/v1/merchants", Some(&t), None)
            .await;
        assert_eq!(
            (s, error_code(&b)),
            (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
        );
        let (s, b) = app.get("/api/v1/merchants/not-a-uuid", &t).await;
        assert_eq!((s, error_code(&b)), (StatusCode::NOT_FOUND, "not_found"));
        let (s, b) = app.get("/api/v1/merchants?bogus=1", &t).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(b["error"]["details"]["field"], "bogus");
        let (s, b) = app.get("/api/v1/merchants?per_page=100000", &t).await;
        assert_eq!(b["error"]["details"]["field"], "per_page", "{s}");
        let (s, b) = app.get("/api/v1/merchants?sort=password_hash", &t).await;
        assert_eq!(
            (s, b["error"]["details"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("sort"))
        );

        let (s, b) = app
            .call(reqwest::Method::GET, "/api/v1/merchants", None, None)
            .await;
        assert_eq!(
            (s, error_code(&b)),
            (StatusCode::UNAUTHORIZED, "unauthorized")
        );
        let (s, b) = app.get("/api/v1/merchants", "not.a.token").await;
        assert_eq!(
            (s, error_code(&b)),
            (StatusCode::UNAUTHORIZED, "unauthorized")
        );
        app.stop().await;
    }

    pub async fn health_and_metrics(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let _broker = dmr_cloud::broker::start_embedded(&app.state)
            .await
            .unwrap()
            .expect("the embedded broker is on by default");
        let (s, b) = app.call(reqwest::Method::GET, "/health", None, None).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["checks"]["database"], "ok");
        assert_eq!(b["checks"]["broker"], "ok");
        let _ = app
            .call(reqwest::Method::GET, "/api/v1/venues", None, None)
            .await;
        let _ = app
            .call(reqwest::Method::GET, "/no/such/route", None, None)
            .await;
        let text = app.metrics().await;
        assert!(
            text.contains(
                "dmr_http_requests_total{method=\"GET\",route=\"/health\",status=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("route=\"/api/v1/venues\",status=\"401\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("route=\"unmatched\",status=\"404\"} 1"),
            "{text}"
        );
        assert!(text.contains("dmr_http_request_duration_seconds_bucket{method=\"GET\",route=\"/health\",le=\"+Inf\"} 1"));

        // With the database gone, health says so instead of pretending.
        app.state.db.pool.close().await;
        let (s, b) = app.call(reqwest::Method::GET, "/health", None, None).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(b["checks"]["database"], "down");
        assert_eq!(b["failed"], json!(["database"]));
        app.stop().await;
    }

    async fn health(app: &TestApp) -> (StatusCode, Value) {
        app.call(reqwest::Method::GET, "/health", None, None).await
    }

    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// `/health` answers 503 naming the broker when the embedded broker's listener is not
    /// accepting, or (external broker) when the cloud's bridge is not connected to it.
    pub async fn health_checks_the_embedded_broker_and_the_external_bridge(kind: &DbKind) {
        // Embedded (the default): configured but not running is a failure.
        let host = TestApp::spawn(kind).await;
        let (s, b) = health(&host).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
        assert_eq!(b["checks"]["database"], "ok");
        assert_eq!(b["checks"]["broker"], "down");
        assert_eq!(b["failed"], json!(["broker"]));
        let broker = dmr_cloud::broker::start_embedded(&host.state)
            .await
            .unwrap()
            .expect("enabled by default");
        let addr = broker.local_addr();
        let (s, b) = health(&host).await;
        assert_eq!((s, &b["checks"]["broker"]), (StatusCode::OK, &json!("ok")));

        // External: another instance on the same database (so the same cloud password)
        // uses that broker through its bridge.
        let ext = TestApp::spawn_bridged_to(kind, &host.url, addr).await;
        let (s, b) = health(&ext).await;
        assert_eq!(
            s,
            StatusCode::SERVICE_UNAVAILABLE,
            "bridge not started: {b}"
        );
        assert_eq!(b["failed"], json!(["broker"]));
        let (stop, rx) = tokio::sync::watch::channel(false);
        let (bridge, liveness) = dmr_cloud::app::spawn_link(&ext.state, "health-test", &rx);
        wait_for("the bridge connects", || ext.state.mqtt.is_connected()).await;
        let (s, b) = health(&ext).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["checks"]["broker"], "ok");

        // The broker goes away: both instances say so.
        broker.shutdown().await;
        let (s, b) = health(&host).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
        assert_eq!(b["failed"], json!(["broker"]));
        wait_for("the bridge notices", || !ext.state.mqtt.is_connected()).await;
        let (s, b) = health(&ext).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
        assert_eq!(b["checks"]["broker"], "down");
        assert_eq!(b["checks"]["database"], "ok");

        let _ = stop.send(true);
        for t in [bridge, liveness].into_iter().flatten() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(15), t).await;
        }
        ext.stop().await;
        host.stop().await;
    }
}
