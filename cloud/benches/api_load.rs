#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Console-read latency under load: seeds 100 merchants × 1,000 locks (100,000 locks, each
//! with a price plan) straight into the database, starts the real app in-process, and drives
//! it open-loop at a fixed rate with a mix of console reads (lock lists, lock details,
//! venue and gateway lists, `me`), timing each request from its scheduled start so a
//! stalled server cannot hide its queueing. Prints p50/p95/p99/max and error counts.
//!
//! `cargo bench -p dmr-cloud --bench api_load` (SQLite in a temp dir); set
//! `DMR_BENCH_DATABASE_URL` to a PostgreSQL URL to measure that instead; `DMR_BENCH_RPS`
//! (default 1000) and `DMR_BENCH_SECS` (default 10) change the load. Client and server
//! share the machine, so the numbers are an upper bound on server latency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dmr_cloud::config::Config;
use dmr_cloud::db::{Db, now_ms};
use dmr_cloud::users::handlers::{Creator, create_user};
use dmr_cloud::users::types::CreateUser;

const MERCHANTS: usize = 100;
const LOCKS_PER_MERCHANT: usize = 1_000;
const LOCKS_PER_GATEWAY: usize = 100;

fn id(prefix: &str, m: usize, n: usize) -> String {
    // Deterministic UUID-shaped ids so the load mix can name objects without a lookup.
    format!("{prefix:0>8}-{m:04x}-4000-8000-{n:012x}")
}

async fn seed(db: &Db) {
    let now = now_ms();
    let mut tx = db.pool.begin().await.unwrap();
    for m in 0..MERCHANTS {
        let mid = id("1", m, 0);
        sqlx::query("INSERT INTO merchants (id, name, commission_bp, created_at, updated_at) VALUES ($1, $2, 500, $3, $3)")
            .bind(mid.clone()).bind(format!("Merchant {m}")).bind(now)
            .execute(&mut *tx).await.unwrap();
        let vid = id("2", m, 0);
        sqlx::query("INSERT INTO venues (id, merchant_id, name, created_at, updated_at) VALUES ($1, $2, 'Venue', $3, $3)")
            .bind(vid.clone()).bind(mid.clone()).bind(now)
            .execute(&mut *tx).await.unwrap();
        for g in 0..LOCKS_PER_MERCHANT / LOCKS_PER_GATEWAY {
            sqlx::query("INSERT INTO gateways (id, merchant_id, venue_id, name, created_at, updated_at) VALUES ($1, $2, $3, 'GW', $4, $4)")
                .bind(id("3", m, g)).bind(mid.clone()).bind(vid.clone()).bind(now)
                .execute(&mut *tx).await.unwrap();
        }
        // Multi-row inserts keep seeding to seconds.
        for chunk in (0..LOCKS_PER_MERCHANT).collect::<Vec<_>>().chunks(100) {
            let mut locks = String::from(
                "INSERT INTO locks (id, merchant_id, venue_id, gateway_id, name, device_code, bus_address, qr_code, created_at, updated_at) VALUES ",
            );
            let mut plans = String::from(
                "INSERT INTO price_plans (id, merchant_id, lock_id, name, duration_minutes, price_fen, position, created_at) VALUES ",
            );
            for (i, n) in chunk.iter().enumerate() {
                let sep = if i == 0 { "" } else { ", " };
                let lid = id("4", m, *n);
                let gid = id("3", m, n / LOCKS_PER_GATEWAY);
                let addr = n % LOCKS_PER_GATEWAY + 1;
                let t = now + *n as i64;
                locks.push_str(&format!("{sep}('{lid}', '{mid}', '{vid}', '{gid}', 'Lock {n}', 'D-{m}-{n}', {addr}, 'Q{m}X{n}', {t}, {t})"));
                plans.push_str(&format!(
                    "{sep}('{}', '{mid}', '{lid}', '1 hour', 60, 300, 0, {t})",
                    id("5", m, *n)
                ));
            }
            sqlx::query(sqlx::AssertSqlSafe(locks))
                .execute(&mut *tx)
                .await
                .unwrap();
            sqlx::query(sqlx::AssertSqlSafe(plans))
                .execute(&mut *tx)
                .await
                .unwrap();
        }
    }
    tx.commit().await.unwrap();
    // Fresh statistics, as autovacuum (PostgreSQL) or a periodic ANALYZE would have by
    // the time a real deployment has this much data; without them the planner guesses.
    sqlx::query("ANALYZE").execute(&db.pool).await.unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let rps: u64 = std::env::var("DMR_BENCH_RPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let secs: u64 = std::env::var("DMR_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    let url = std::env::var("DMR_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let config = Config::load_from(
        None,
        vec![
            ("DMR_DATABASE_URL".to_string(), url.clone()),
            ("DMR_LOG_FILTER".to_string(), "warn".to_string()),
            ("DMR_DATABASE_MAX_CONNECTIONS".to_string(), "16".to_string()),
        ],
    )
    .unwrap();
    let app = dmr_cloud::build_app(config).await.unwrap();
    let t0 = Instant::now();
    seed(&app.state.db).await;
    eprintln!(
        "seeded {} locks in {:?}",
        MERCHANTS * LOCKS_PER_MERCHANT,
        t0.elapsed()
    );
    let mut tokens = Vec::new();
    for m in 0..4 {
        let name = format!("owner{m}");
        create_user(
            &app.state.db,
            Creator::CommandLine,
            CreateUser {
                username: name.clone(),
                password: "bench password".into(),
                display_name: name.clone(),
                role: "merchant_owner".into(),
                phone: None,
                merchant_id: Some(id("1", m, 0)),
            },
        )
        .await
        .unwrap();
        tokens.push((m, name));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(dmr_cloud::serve(app, listener, async {
        let _ = stop_rx.await;
    }));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let mut bearer = Vec::new();
    for (m, name) in &tokens {
        let r: serde_json::Value = client
            .post(format!("http://{addr}/api/v1/auth/login"))
            .json(&serde_json::json!({ "login": name, "password": "bench password" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        bearer.push((*m, r["access_token"].as_str().unwrap().to_string()));
    }
    let bearer = Arc::new(bearer);

    let total = rps * secs;
    let interval = Duration::from_nanos(1_000_000_000 / rps.max(1));
    let start = Instant::now() + Duration::from_millis(100);
    let mut handles = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = start + interval * i as u32;
        tokio::time::sleep_until(scheduled.into()).await;
        let client = client.clone();
        let bearer = bearer.clone();
        handles.push(tokio::spawn(async move {
            let (m, token) = &bearer[(i as usize) % bearer.len()];
            let n = (i as usize * 7919) % LOCKS_PER_MERCHANT;
            let path = match i % 10 {
                0..=3 => format!("/api/v1/locks?page={}&per_page=20", (n % 50) + 1),
                4..=6 => format!("/api/v1/locks/{}", id("4", *m, n)),
                7 => format!(
                    "/api/v1/locks?gateway_id={}&sort=-bus_address",
                    id("3", *m, n / LOCKS_PER_GATEWAY)
                ),
                8 => "/api/v1/gateways?per_page=50".to_string(),
                _ => "/api/v1/me".to_string(),
            };
            let ok = client
                .get(format!("http://{addr}{path}"))
                .bearer_auth(token)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            (scheduled.elapsed(), ok, i % 10)
        }));
    }
    let mut lat = Vec::with_capacity(handles.len());
    let mut by_kind: Vec<Vec<Duration>> = vec![Vec::new(); 5];
    let mut errors = 0;
    for h in handles {
        let (d, ok, k) = h.await.unwrap();
        if !ok {
            errors += 1;
        }
        lat.push(d);
        let kind = match k {
            0..=3 => 0,
            4..=6 => 1,
            7 => 2,
            8 => 3,
            _ => 4,
        };
        by_kind[kind].push(d);
    }
    lat.sort();
    let names = [
        "locks page",
        "lock get",
        "locks by gateway",
        "gateways",
        "me",
    ];
    for (name, mut l) in names.into_iter().zip(by_kind) {
        l.sort();
        println!(
            "  {name:>16}: n={} p50={:?} p99={:?}",
            l.len(),
            percentile(&l, 0.5),
            percentile(&l, 0.99)
        );
    }
    let achieved = total as f64 / start.elapsed().as_secs_f64();
    println!(
        "api_load: backend={} requests={total} target_rps={rps} achieved_rps={achieved:.0} errors={errors} p50={:?} p95={:?} p99={:?} max={:?}",
        if url.starts_with("sqlite") {
            "sqlite"
        } else {
            "postgres"
        },
        percentile(&lat, 0.50),
        percentile(&lat, 0.95),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or_default(),
    );
    let _ = stop_tx.send(());
    let _ = server.await;
}
