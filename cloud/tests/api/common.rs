//! The test harness: starts the real app in-process on a free port with its own database,
//! once per backend. SQLite always (a temp file); PostgreSQL when DMR_TEST_DATABASE_URL is
//! set (a fresh schema per test). With DMR_REQUIRE_PG=1 a missing URL fails the test.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dmr_cloud::config::Config;
use dmr_cloud::http::routes::RouteSpec;
use dmr_cloud::users::handlers::{Creator, create_user};
use dmr_cloud::users::types::CreateUser;
use dmr_cloud::{AppState, build_app, serve};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub const PASSWORD: &str = "correct horse battery";
/// The master key every test app uses (32 bytes of 0x01, base64).
pub const TEST_MASTER_KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

/// Which database a test run uses.
#[derive(Clone, Debug)]
pub enum DbKind {
    Sqlite,
    Postgres(String),
}

/// The backends this run must cover.
pub fn kinds() -> Vec<DbKind> {
    let mut kinds = vec![DbKind::Sqlite];
    match std::env::var("DMR_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => {
            assert!(
                url.starts_with("postgres://") || url.starts_with("postgresql://"),
                "DMR_TEST_DATABASE_URL={url:?} is not a postgres:// URL; if it reads \"$DATABASE_URL\" \
                 the variable was never expanded: run \
                 scripts/run_postgres.sh sh -c 'DMR_TEST_DATABASE_URL=$DATABASE_URL cargo test -p dmr-cloud'"
            );
            kinds.push(DbKind::Postgres(url));
        }
        _ => {
            if std::env::var("DMR_REQUIRE_PG").is_ok_and(|v| v == "1") {
                panic!(
                    "DMR_REQUIRE_PG=1 but DMR_TEST_DATABASE_URL is not set: PostgreSQL tests cannot run"
                );
            }
        }
    }
    kinds
}

/// A database URL of its own for one test: a temp SQLite file, or a new PostgreSQL schema
/// selected through the connection's search_path.
pub async fn fresh_database(kind: &DbKind) -> (String, Option<tempfile::TempDir>) {
    match kind {
        DbKind::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("cloud.db").display());
            (url, Some(dir))
        }
        DbKind::Postgres(base) => {
            sqlx::any::install_default_drivers();
            let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
            let pool = sqlx::AnyPool::connect(base).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
            let sep = if base.contains('?') { '&' } else { '?' };
            (
                format!("{base}{sep}options=-c%20search_path%3D{schema}"),
                None,
            )
        }
    }
}

/// The pool size of every test app: 5, or DMR_TEST_MAX_CONNECTIONS. With 1, PostgreSQL (one
/// pool for reads and writes) and SQLite's read pool have a single connection each, so a code
/// path that holds a connection and asks its pool for another stalls until the 10 s acquire
/// timeout: `DMR_TEST_MAX_CONNECTIONS=1` turns the suite into a search for such paths.
fn max_connections() -> String {
    std::env::var("DMR_TEST_MAX_CONNECTIONS").unwrap_or_else(|_| "5".to_string())
}

pub fn test_config(url: &str) -> Config {
    let env = vec![
        ("DMR_DATABASE_URL".to_string(), url.to_string()),
        ("DMR_SERVER_LISTEN".to_string(), "127.0.0.1:0".to_string()),
        (
            "DMR_DATABASE_MAX_CONNECTIONS".to_string(),
            max_connections(),
        ),
        ("DMR_MASTER_KEY".to_string(), TEST_MASTER_KEY.to_string()),
        // Tests that start the embedded broker get a free port.
        (
            "DMR_MQTT_EMBEDDED_LISTEN".to_string(),
            "127.0.0.1:0".to_string(),
        ),
    ];
    Config::load_from(None, env).unwrap()
}

pub struct TestApp {
    pub kind: DbKind,
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub state: AppState,
    pub routes: Vec<RouteSpec>,
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestApp {
    pub async fn spawn(kind: &DbKind) -> TestApp {
        Self::spawn_with(kind, |_| {}).await
    }

    pub async fn spawn_with(kind: &DbKind, tweak: impl FnOnce(&mut Config)) -> TestApp {
        let (url, dir) = fresh_database(kind).await;
        let mut app = Self::spawn_on(kind, &url, tweak).await;
        app._dir = dir;
        app
    }

    /// Starts an app on an existing database (restarts use this).
    pub async fn spawn_on(kind: &DbKind, url: &str, tweak: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = test_config(url);
        tweak(&mut config);
        let app = build_app(config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = app.state.clone();
        let routes = app.routes.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(app, listener, async {
            let _ = stopped.await;
        }));
        TestApp {
            kind: kind.clone(),
            addr,
            client: reqwest::Client::new(),
            state,
            routes,
            url: url.to_string(),
            stop: Some(stop),
            task: Some(task),
            _dir: None,
        }
    }

    /// Stops serving and waits for the server task; keeps the database.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("server stops within 10 s")
                .unwrap()
                .unwrap();
        }
        self.state.db.pool.close().await;
        self._dir.take()
    }

    /// Another instance on `url`'s database (so the same cloud MQTT password) whose bridge
    /// would use the broker at `broker` instead of an embedded one; its bridge is not started.
    pub async fn spawn_bridged_to(
        kind: &DbKind,
        url: &str,
        broker: std::net::SocketAddr,
    ) -> TestApp {
        TestApp::spawn_on(kind, url, |c| {
            c.mqtt.embedded.enabled = false;
            c.mqtt.url = format!("mqtt://{broker}");
            c.mqtt.host = broker.ip().to_string();
            c.mqtt.port = broker.port();
            c.mqtt.client_id = format!("bridged-test-{}", uuid::Uuid::new_v4().simple());
        })
        .await
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url_of("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn url_of(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, self.url_of(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(token), Some(body))
            .await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::PATCH, path, Some(token), Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::DELETE, path, Some(token), None)
            .await
    }

    /// Creates a user directly in the store (as the CLI does).
    pub async fn create_user(
        &self,
        username: &str,
        role: &str,
        merchant_id: Option<&str>,
    ) -> String {
        let row = create_user(
            &self.state.db,
            Creator::CommandLine,
            CreateUser {
                username: username.into(),
                password: PASSWORD.into(),
                display_name: username.into(),
                role: role.into(),
                phone: None,
                merchant_id: merchant_id.map(String::from),
            },
        )
        .await
        .unwrap();
        row.id
    }

    pub async fn login(&self, login: &str, password: &str) -> (StatusCode, Value) {
        self.call(
            reqwest::Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({ "login": login, "password": password })),
        )
        .await
    }

    pub async fn token(&self, login: &str) -> String {
        let (status, body) = self.login(login, PASSWORD).await;
        assert_eq!(status, StatusCode::OK, "login {login}: {body}");
        body["access_token"].as_str().unwrap().to_string()
    }
}

/// One merchant with one of everything, and a token per merchant role.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub merchant_id: String,
    pub owner: String,
    pub staff: String,
    pub tech: String,
    pub staff_user_id: String,
    pub venue_id: String,
    pub gateway_id: String,
    pub lock_id: String,
    pub code_id: String,
    /// Filled by `orders::support::seed_money` for the tests that need them.
    pub order_id: String,
    pub settlement_id: String,
    pub report_id: String,
    /// An alarm raised on the tenant's lock (inserted directly: alarms come from gateways).
    pub alarm_id: String,
}

#[derive(Clone, Debug)]
pub struct World {
    pub admin: String,
    pub a: Tenant,
    pub b: Tenant,
}

pub async fn seed_tenant(app: &TestApp, admin: &str, tag: &str) -> Tenant {
    let (s, m) = app
        .post(
            "/api/v1/merchants",
            admin,
            json!({ "name": format!("Merchant {tag}"), "commission_bp": 500 }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{m}");
    let merchant_id = m["id"].as_str().unwrap().to_string();
    app.create_user(
        &format!("owner-{tag}"),
        "merchant_owner",
        Some(&merchant_id),
    )
    .await;
    let staff_user_id = app
        .create_user(
            &format!("staff-{tag}"),
            "merchant_staff",
            Some(&merchant_id),
        )
        .await;
    app.create_user(&format!("tech-{tag}"), "technician", Some(&merchant_id))
        .await;
    let owner = app.token(&format!("owner-{tag}")).await;
    let staff = app.token(&format!("staff-{tag}")).await;
    let tech = app.token(&format!("tech-{tag}")).await;
    let (s, v) = app
        .post(
            "/api/v1/venues",
            &owner,
            json!({ "name": format!("Venue {tag}") }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let venue_id = v["id"].as_str().unwrap().to_string();
    let (s, g) = app
        .post(
            "/api/v1/gateways",
            &owner,
            json!({ "venue_id": venue_id, "name": format!("GW {tag}") }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{g}");
    let gateway_id = g["id"].as_str().unwrap().to_string();
    let (s, l) = app
        .post(
            "/api/v1/locks",
            &owner,
            json!({ "gateway_id": gateway_id, "device_code": format!("DEV-{tag}-1"), "bus_address": 1,
                    "price_plans": [{ "name": "1 hour", "duration_minutes": 60, "price_fen": 300 }] }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{l}");
    let lock_id = l["id"].as_str().unwrap().to_string();
    let (s, c) = app
        .post(
            "/api/v1/enrollment-codes",
            &owner,
            json!({ "venue_id": venue_id }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    let code_id = c["id"].as_str().unwrap().to_string();
    let alarm_id = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO alarms (id, merchant_id, gateway_id, lock_id, kind, raised_at, created_at) \
         VALUES ($1, $2, $3, $4, 'tamper', 1, 1)",
    )
    .bind(alarm_id.clone())
    .bind(merchant_id.clone())
    .bind(gateway_id.clone())
    .bind(lock_id.clone())
    .execute(&app.state.db.pool)
    .await
    .unwrap();
    Tenant {
        alarm_id,
        merchant_id,
        owner,
        staff,
        tech,
        staff_user_id,
        venue_id,
        gateway_id,
        lock_id,
        code_id,
        order_id: String::new(),
        settlement_id: String::new(),
        report_id: String::new(),
    }
}

pub async fn seed_world(app: &TestApp) -> World {
    app.create_user("admin", "platform_admin", None).await;
    let admin = app.token("admin").await;
    let a = seed_tenant(app, &admin, "a").await;
    let b = seed_tenant(app, &admin, "b").await;
    World { admin, a, b }
}

/// Asserts the stable error body and returns its code.
pub fn error_code(body: &Value) -> &str {
    let e = &body["error"];
    assert!(e["message"].is_string(), "no error.message in {body}");
    assert!(e.get("details").is_some(), "no error.details in {body}");
    e["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.code in {body}"))
}

/// Waits for a condition with a deadline instead of sleeping a fixed time.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return;
        }
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a scenario once per backend this run covers.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                for kind in $crate::common::kinds() {
                    eprintln!("--- {} on {:?}", stringify!($name), match &kind {
                        $crate::common::DbKind::Sqlite => "sqlite",
                        $crate::common::DbKind::Postgres(_) => "postgres",
                    });
                    scenarios::$name(&kind).await;
                }
            }
        )*
    };
}
