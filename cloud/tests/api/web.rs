//! The front end is served by the same process: files with the right caching, the
//! single-page apps' entry pages for their routes, the printed QR links redirected, and the
//! API's JSON 404 untouched. Not database dependent, so SQLite only.

use reqwest::StatusCode;
use reqwest::redirect::Policy;

use crate::common::{DbKind, TestApp, error_code};

#[tokio::test]
async fn serves_console_phone_pages_and_assets() {
    let web = tempfile::tempdir().unwrap();
    let d = web.path();
    std::fs::create_dir_all(d.join("assets")).unwrap();
    std::fs::create_dir_all(d.join("h5")).unwrap();
    std::fs::write(d.join("index.html"), "<html>console</html>").unwrap();
    std::fs::write(d.join("h5/index.html"), "<html>phone</html>").unwrap();
    std::fs::write(d.join("assets/index-abc123.js"), "console.log(1)").unwrap();
    let dir = d.to_path_buf();
    let app = TestApp::spawn_with(&DbKind::Sqlite, move |c| c.server.web_dir = Some(dir)).await;
    let client = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    let get = |path: &str| client.get(app.url_of(path)).send();

    let r = get("/").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-cache");
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(r.text().await.unwrap(), "<html>console</html>");

    // A console route and a phone route get their app's entry page.
    assert_eq!(
        get("/locks/7").await.unwrap().text().await.unwrap(),
        "<html>console</html>"
    );
    assert_eq!(
        get("/h5/l/L0001").await.unwrap().text().await.unwrap(),
        "<html>phone</html>"
    );

    let r = get("/assets/index-abc123.js").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );

    // A missing asset is a 404, never an HTML page in its place.
    assert_eq!(
        get("/assets/gone.js").await.unwrap().status(),
        StatusCode::NOT_FOUND
    );

    // The QR code printed on a lock.
    let r = get("/q/L0001").await.unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    assert_eq!(r.headers()["location"], "/h5/l/L0001");

    // Unknown API paths keep the JSON error body.
    let r = get("/api/v1/nope").await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(error_code(&body), "not_found");

    // Paths are never percent-decoded into the file system, so an encoded escape is just
    // an unknown console route.
    let r = get("/..%2f..%2fetc/passwd").await.unwrap();
    assert_eq!(r.text().await.unwrap(), "<html>console</html>");
    let r = client.post(app.url_of("/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    app.stop().await;
}

/// The build writes `.br` and `.gz` next to each text file; the server picks the one the
/// client accepts (the bytes here are markers, not real compressed data: the server never
/// decodes them, it only chooses the file) and keeps the caching headers.
#[tokio::test]
async fn serves_precompressed_variants_by_accept_encoding() {
    let web = tempfile::tempdir().unwrap();
    let d = web.path();
    std::fs::create_dir_all(d.join("assets")).unwrap();
    std::fs::create_dir_all(d.join("h5")).unwrap();
    std::fs::write(d.join("index.html"), "<html>console</html>").unwrap();
    std::fs::write(d.join("index.html.gz"), "GZ-console").unwrap();
    std::fs::write(d.join("h5/index.html"), "<html>phone</html>").unwrap();
    std::fs::write(d.join("h5/index.html.br"), "BR-phone").unwrap();
    std::fs::write(d.join("assets/app-1.js"), "console.log('plain')").unwrap();
    std::fs::write(d.join("assets/app-1.js.gz"), "GZ-js").unwrap();
    std::fs::write(d.join("assets/app-1.js.br"), "BR-js").unwrap();
    std::fs::write(d.join("assets/logo-2.png"), "png").unwrap();
    let dir = d.to_path_buf();
    let app = TestApp::spawn_with(&DbKind::Sqlite, move |c| c.server.web_dir = Some(dir)).await;
    let client = reqwest::Client::new();
    let fetch = |method: reqwest::Method, path: &str, accept: Option<&str>| {
        let mut req = client.request(method, app.url_of(path));
        if let Some(a) = accept {
            req = req.header("accept-encoding", a);
        }
        req.send()
    };
    let get = |path: &str, accept: Option<&str>| fetch(reqwest::Method::GET, path, accept);

    // Brotli is preferred when accepted, then gzip, then the plain file.
    for (accept, body, encoding) in [
        (Some("gzip, deflate, br, zstd"), "BR-js", Some("br")),
        (Some("gzip"), "GZ-js", Some("gzip")),
        (Some("br;q=0, gzip;q=0.8"), "GZ-js", Some("gzip")),
        (Some("identity"), "console.log('plain')", None),
        (None, "console.log('plain')", None),
    ] {
        let r = get("/assets/app-1.js", accept).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let h = r.headers().clone();
        assert_eq!(
            h.get("content-encoding").map(|v| v.to_str().unwrap()),
            encoding,
            "{accept:?}"
        );
        assert_eq!(h["vary"], "Accept-Encoding");
        assert_eq!(h["cache-control"], "public, max-age=31536000, immutable");
        assert!(
            h["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/javascript"),
            "the original type, not the .br/.gz file's"
        );
        assert_eq!(h["content-length"], body.len().to_string().as_str());
        assert_eq!(r.text().await.unwrap(), body, "{accept:?}");
    }

    // Entry pages too, for their SPA routes, still no-cache.
    let r = get("/orders/5", Some("gzip, br")).await.unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(r.headers()["cache-control"], "no-cache");
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(r.text().await.unwrap(), "GZ-console");
    let r = get("/h5/l/L1", Some("gzip, br")).await.unwrap();
    assert_eq!(r.headers()["content-encoding"], "br");
    assert_eq!(r.text().await.unwrap(), "BR-phone");
    // Only gzip accepted and only a .br made: the plain page.
    let r = get("/h5/", Some("gzip")).await.unwrap();
    assert!(r.headers().get("content-encoding").is_none());
    assert_eq!(r.text().await.unwrap(), "<html>phone</html>");
    // No variant built (images are not compressed): the plain file.
    let r = get("/assets/logo-2.png", Some("gzip, br")).await.unwrap();
    assert!(r.headers().get("content-encoding").is_none());
    assert_eq!(r.text().await.unwrap(), "png");
    // HEAD says how long the chosen variant is.
    let r = fetch(reqwest::Method::HEAD, "/assets/app-1.js", Some("gzip"))
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(r.headers()["content-length"], "5");
    // A missing asset stays a 404 whatever the client accepts.
    let r = get("/assets/gone-3.js", Some("gzip")).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(r.headers().get("content-encoding").is_none());
    app.stop().await;
}

#[tokio::test]
async fn without_a_web_dir_only_the_api_answers() {
    let app = TestApp::spawn(&DbKind::Sqlite).await;
    let r = app.client.get(app.url_of("/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(error_code(&body), "not_found");
    app.stop().await;
}
