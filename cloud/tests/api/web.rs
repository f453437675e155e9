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

#[tokio::test]
async fn without_a_web_dir_only_the_api_answers() {
    let app = TestApp::spawn(&DbKind::Sqlite).await;
    let r = app.client.get(app.url_of("/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(error_code(&body), "not_found");
    app.stop().await;
}
