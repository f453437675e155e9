#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Console-read latency under load: seeds 100 merchants × 1,000 locks (100,000 locks, each
//! with a price plan) and 1,000,000 orders over 30 days (with their transitions, payments,
//! refunds, ledger entries and daily settlements) straight into the database, starts the
//! real app in-process, and drives it open-loop at a fixed rate with a mix of console reads
//! (lock lists, lock details, gateway lists, `me`, filtered order lists, order details,
//! the dashboard summary, settlement lists), timing each request from its scheduled start
//! so a stalled server cannot hide its queueing. Prints p50/p95/p99/max and error counts per
//! endpoint class and overall.
//!
//! `cargo bench -p dmr-cloud --bench api_load` (SQLite in a temp dir); set
//! `DMR_BENCH_DATABASE_URL` to a PostgreSQL URL to measure that instead; `DMR_BENCH_RPS`
//! (default 1000) and `DMR_BENCH_SECS` (default 10) change the load; `DMR_BENCH_RUNS`
//! (default 1) repeats the load on the same seeded data and prints the medians. Client and server
//! share the machine, so the numbers are an upper bound on server latency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dmr_cloud::config::Config;
use dmr_cloud::db::{Db, now_ms};
use dmr_cloud::orders::money;
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

const ORDERS_PER_MERCHANT: usize = 10_000;
const ORDER_CHUNK: usize = 250;
const DAY_MS: i64 = 24 * 3_600_000;
const PRICE_FEN: i64 = 300;
const COMMISSION_FEN: i64 = PRICE_FEN * 500 / 10_000;

/// xorshift64*: deterministic and dependency-free; quality is irrelevant here.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Default)]
struct DayTotals {
    orders: i64,
    gross: i64,
    refunds: i64,
    commission: i64,
}

/// Appends `(a, b, ...)` rows to a multi-row INSERT; the values are our own literals.
struct Insert {
    head: &'static str,
    sql: String,
    rows: usize,
}
impl Insert {
    fn new(head: &'static str) -> Self {
        Insert {
            head,
            sql: String::new(),
            rows: 0,
        }
    }
    fn row(&mut self, values: String) {
        if self.rows == 0 {
            self.sql.push_str(self.head);
        } else {
            self.sql.push_str(", ");
        }
        self.sql.push('(');
        self.sql.push_str(&values);
        self.sql.push(')');
        self.rows += 1;
    }
    async fn flush(&mut self, conn: &mut sqlx::AnyConnection) {
        if self.rows > 0 {
            let sql = std::mem::take(&mut self.sql);
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut *conn)
                .await
                .unwrap();
            self.rows = 0;
        }
    }
}

fn lit(v: Option<i64>) -> String {
    v.map_or_else(|| "NULL".to_string(), |v| v.to_string())
}

/// 1,000,000 orders over 30 days (10,000 per merchant, random locks), each with the rows
/// the console reads for it: transitions (order detail), a payment (order detail), a
/// refund (order detail, 5 %), ledger entries (dashboard) and one settlement per merchant
/// and settled day (settlements list). Mix: 85 % completed, 8 % expired (payment closed),
/// 2 % cancelled, 5 % unlock failed and refunded. No order is active, so the one-active-
/// order-per-lock index holds NULLs only.
async fn seed_orders(db: &Db) -> usize {
    let now = now_ms();
    let today = money::shanghai_day(now);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut conn = db.pool.acquire().await.unwrap();
    let mut orders = Insert::new(
        "INSERT INTO orders (id, merchant_id, venue_id, lock_id, gateway_id, plan_id, plan_name, duration_minutes, \
         amount_fen, refunded_fen, status, device_session, idempotency_key, access_key_hash, provider, \
         pay_deadline_at, unlock_deadline_at, created_at, paid_at, unlocking_at, unlocked_at, completed_at, ended_at, updated_at) VALUES ",
    );
    let mut trans = Insert::new(
        "INSERT INTO order_transitions (id, order_id, from_status, to_status, actor, reason, at) VALUES ",
    );
    let mut pays = Insert::new(
        "INSERT INTO payments (id, order_id, merchant_id, provider, out_trade_no, amount_fen, status, provider_txn_id, \
         created_at, paid_at, notified_at, updated_at) VALUES ",
    );
    let mut refunds = Insert::new(
        "INSERT INTO refunds (id, order_id, payment_id, merchant_id, provider, out_refund_no, amount_fen, reason, actor, \
         status, send_after, attempts, created_at, sent_at, completed_at, updated_at) VALUES ",
    );
    let mut ledger = Insert::new(
        "INSERT INTO ledger_entries (id, merchant_id, order_id, settlement_id, kind, amount_fen, ref_id, day, at) VALUES ",
    );
    let mut total = 0;
    for m in 0..MERCHANTS {
        let mut tx = sqlx::Acquire::begin(&mut *conn).await.unwrap();
        let mid = id("1", m, 0);
        let vid = id("2", m, 0);
        let mut days: std::collections::BTreeMap<String, DayTotals> = Default::default();
        let mut ledger_n = 0usize;
        for n in 0..ORDERS_PER_MERCHANT {
            let oid = id("6", m, n);
            let ln = rng.below(LOCKS_PER_MERCHANT as u64) as usize;
            let lid = id("4", m, ln);
            let gid = id("3", m, ln / LOCKS_PER_GATEWAY);
            let pid = id("5", m, ln);
            let created = now - 3_600_000 - rng.below((30 * DAY_MS - 3_600_000) as u64) as i64;
            let roll = rng.below(100);
            let status = match roll {
                0..=84 => "completed",
                85..=92 => "expired",
                93..=94 => "cancelled",
                _ => "refunded",
            };
            let paid = (status == "completed" || status == "refunded").then_some(created + 20_000);
            let unlocking = paid.map(|p| p + 1_000);
            let unlocked = (status == "completed").then(|| created + 23_000);
            let completed = unlocked.map(|u| u + 3_600_000);
            let ended = match status {
                "expired" => Some(created + 300_000),
                "cancelled" => Some(created + 30_000),
                "refunded" => Some(created + 120_000),
                _ => None,
            };
            let refunded_fen = if status == "refunded" { PRICE_FEN } else { 0 };
            let updated = completed.or(ended).unwrap_or(created);
            orders.row(format!(
                "'{oid}', '{mid}', '{vid}', '{lid}', '{gid}', '{pid}', '1 hour', 60, {PRICE_FEN}, {refunded_fen}, '{status}', \
                 'sess-{m}-{n}', 'idem-{n}', 'h{m}x{n}', 'wechat', {}, {}, {created}, {}, {}, {}, {}, {}, {updated}",
                created + 300_000,
                lit(unlocking.map(|u| u + 30_000)),
                lit(paid),
                lit(unlocking),
                lit(unlocked),
                lit(completed),
                lit(ended),
            ));
            let mut steps: Vec<(Option<&str>, &str, &str, i64)> =
                vec![(None, "created", "payer", created)];
            match status {
                "completed" => steps.extend([
                    (Some("created"), "paid", "provider:wechat", created + 20_000),
                    (Some("paid"), "unlocking", "system", created + 21_000),
                    (
                        Some("unlocking"),
                        "unlocked",
                        "gateway:gw",
                        created + 23_000,
                    ),
                    (Some("unlocked"), "completed", "system", created + 3_623_000),
                ]),
                "expired" => steps.push((Some("created"), "expired", "system", created + 300_000)),
                "cancelled" => {
                    steps.push((Some("created"), "cancelled", "payer", created + 30_000))
                }
                _ => steps.extend([
                    (Some("created"), "paid", "provider:wechat", created + 20_000),
                    (Some("paid"), "unlocking", "system", created + 21_000),
                    (
                        Some("unlocking"),
                        "unlock_failed",
                        "gateway:gw",
                        created + 51_000,
                    ),
                    (
                        Some("unlock_failed"),
                        "refunding",
                        "system",
                        created + 52_000,
                    ),
                    (
                        Some("refunding"),
                        "refunded",
                        "provider:wechat",
                        created + 120_000,
                    ),
                ]),
            }
            for (k, (from, to, actor, at)) in steps.into_iter().enumerate() {
                let from = from.map_or_else(|| "NULL".to_string(), |f| format!("'{f}'"));
                trans.row(format!(
                    "'{}', '{oid}', {from}, '{to}', '{actor}', 'bench', {at}",
                    id("7", m, n * 8 + k)
                ));
            }
            // Payment: every order but a cancelled one had one opened; an expired one's was closed.
            let pay_id = id("8", m, n);
            if status != "cancelled" {
                let (pstatus, txn) = match paid {
                    Some(_) => ("succeeded", format!("'wx{m}x{n}'")),
                    None => ("closed", "NULL".to_string()),
                };
                pays.row(format!(
                    "'{pay_id}', '{oid}', '{mid}', 'wechat', '{}', {PRICE_FEN}, '{pstatus}', {txn}, {created}, {}, {}, {updated}",
                    pay_id.replace('-', ""),
                    lit(paid),
                    lit(paid),
                ));
            }
            if let Some(p) = paid {
                let day = money::shanghai_day(p);
                let settled = day < today;
                let sid = id("b", m, 0) + &day;
                let t = days.entry(day.clone()).or_default();
                t.orders += 1;
                t.gross += PRICE_FEN;
                let settle = |s: bool| if s { format!("'{sid}'") } else { "NULL".into() };
                ledger.row(format!(
                    "'{}', '{mid}', '{oid}', NULL, 'payment', {PRICE_FEN}, '{pay_id}', '{day}', {p}",
                    id("a", m, ledger_n)
                ));
                ledger_n += 1;
                if status == "refunded" {
                    let rid = id("9", m, n);
                    let at = created + 120_000;
                    let rday = money::shanghai_day(at);
                    days.entry(rday.clone()).or_default().refunds += PRICE_FEN;
                    refunds.row(format!(
                        "'{rid}', '{oid}', '{pay_id}', '{mid}', 'wechat', '{}', {PRICE_FEN}, 'unlock failed', 'system', \
                         'succeeded', {}, 1, {}, {}, {at}, {at}",
                        rid.replace('-', ""),
                        created + 52_000,
                        created + 52_000,
                        created + 53_000,
                    ));
                    ledger.row(format!(
                        "'{}', '{mid}', '{oid}', NULL, 'refund', -{PRICE_FEN}, '{rid}', '{rday}', {at}",
                        id("a", m, ledger_n)
                    ));
                    ledger_n += 1;
                } else if settled {
                    // A settled day's orders move on: commission and the merchant's share.
                    let t = days.entry(day.clone()).or_default();
                    t.commission += COMMISSION_FEN;
                    for (kind, amount) in [
                        ("commission", COMMISSION_FEN),
                        ("merchant_share", PRICE_FEN - COMMISSION_FEN),
                    ] {
                        ledger.row(format!(
                            "'{}', '{mid}', '{oid}', {}, '{kind}', -{amount}, '{oid}', '{day}', {}",
                            id("a", m, ledger_n),
                            settle(true),
                            now - DAY_MS
                        ));
                        ledger_n += 1;
                    }
                }
            }
            if (n + 1) % ORDER_CHUNK == 0 {
                orders.flush(&mut tx).await;
                trans.flush(&mut tx).await;
                pays.flush(&mut tx).await;
                refunds.flush(&mut tx).await;
                ledger.flush(&mut tx).await;
            }
            total += 1;
        }
        orders.flush(&mut tx).await;
        trans.flush(&mut tx).await;
        pays.flush(&mut tx).await;
        refunds.flush(&mut tx).await;
        ledger.flush(&mut tx).await;
        let mut st = Insert::new(
            "INSERT INTO settlements (id, merchant_id, day, commission_bp, orders_count, gross_fen, refunds_fen, \
             commission_fen, net_fen, status, created_at) VALUES ",
        );
        for (day, t) in days.iter().filter(|(d, _)| **d < today) {
            st.row(format!(
                "'{}', '{mid}', '{day}', 500, {}, {}, {}, {}, {}, 'issued', {}",
                id("b", m, 0) + day,
                t.orders,
                t.gross,
                t.refunds,
                t.commission,
                t.gross - t.refunds - t.commission,
                now - DAY_MS
            ));
        }
        st.flush(&mut tx).await;
        tx.commit().await.unwrap();
    }
    total
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
            // A fixed bench key: the app refuses to start without a master key.
            (
                "DMR_MASTER_KEY".to_string(),
                "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=".to_string(),
            ),
        ],
    )
    .unwrap();
    let app = dmr_cloud::build_app(config).await.unwrap();
    // DMR_BENCH_REUSE=1 with a database this bench already seeded (a kept SQLite file)
    // skips the minutes of seeding; the users then exist already.
    let reuse = std::env::var("DMR_BENCH_REUSE").is_ok_and(|v| v == "1");
    let seeded: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM merchants")
        .fetch_one(&app.state.db.pool)
        .await
        .unwrap();
    let fresh = !(reuse && seeded > 0);
    if fresh {
        let t0 = Instant::now();
        seed(&app.state.db).await;
        eprintln!(
            "seeded {} locks in {:?}",
            MERCHANTS * LOCKS_PER_MERCHANT,
            t0.elapsed()
        );
        let t0 = Instant::now();
        let n = seed_orders(&app.state.db).await;
        // The seed writes ledger rows directly, around `money::book`, so the dashboard's
        // roll-ups are computed afterwards the way migration 0007 backfills them.
        let mut tx = app.state.db.pool.begin().await.unwrap();
        money::rebuild_rollups(&mut tx).await.unwrap();
        tx.commit().await.unwrap();
        sqlx::query("ANALYZE")
            .execute(&app.state.db.pool)
            .await
            .unwrap();
        eprintln!(
            "seeded {n} orders (with transitions, payments, refunds, ledger, settlements) in {:?}",
            t0.elapsed()
        );
    } else {
        eprintln!("reusing the seeded database");
    }
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
        .map(|_| ())
        .or_else(|e| if fresh { Err(e) } else { Ok(()) })
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

    let runs: usize = std::env::var("DMR_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let backend = if url.starts_with("sqlite") {
        "sqlite"
    } else {
        "postgres"
    };
    let mut all_runs = Vec::new();
    for run in 1..=runs {
        let s = load(&client, addr, bearer.clone(), rps, secs).await;
        print_stats(backend, run, rps, &s);
        all_runs.push(s);
    }
    if runs > 1 {
        println!("median of {runs} runs (each figure the median over the runs):");
        for (k, name) in CLASSES.iter().enumerate() {
            println!(
                "  {name:>18}: p50={:?} p95={:?} p99={:?} max={:?}",
                median(&all_runs, |s| s.classes[k][0]),
                median(&all_runs, |s| s.classes[k][1]),
                median(&all_runs, |s| s.classes[k][2]),
                median(&all_runs, |s| s.classes[k][3]),
            );
        }
        println!(
            "api_load median: backend={backend} runs={runs} p50={:?} p95={:?} p99={:?} max={:?} errors={:?}",
            median(&all_runs, |s| s.overall[0]),
            median(&all_runs, |s| s.overall[1]),
            median(&all_runs, |s| s.overall[2]),
            median(&all_runs, |s| s.overall[3]),
            all_runs.iter().map(|s| s.errors).collect::<Vec<_>>(),
        );
    }
    let _ = stop_tx.send(());
    let _ = server.await;
}

/// Endpoint classes of the mix, in `class_of` order.
const CLASSES: [&str; 9] = [
    "locks page",
    "lock get",
    "locks by gateway",
    "gateways",
    "me",
    "orders list",
    "order detail",
    "dashboard summary",
    "settlements",
];

/// Slot `i % 20` of the mix: 5 lock pages, 3 lock details, 1 gateway's locks, 1 gateway
/// list, 1 `me`, 3 order lists (filtered, paged), 3 order details, 1 dashboard summary,
/// 2 settlement lists.
fn class_of(slot: u64) -> usize {
    match slot {
        0..=4 => 0,
        5..=7 => 1,
        8 => 2,
        9 => 3,
        10 => 4,
        11..=13 => 5,
        14..=16 => 6,
        17 => 7,
        _ => 8,
    }
}

fn path_for(i: u64, m: usize) -> String {
    let n = (i as usize * 7919) % LOCKS_PER_MERCHANT;
    let o = (i as usize * 104_729) % ORDERS_PER_MERCHANT;
    match class_of(i % 20) {
        0 => format!("/api/v1/locks?page={}&per_page=20", (n % 50) + 1),
        1 => format!("/api/v1/locks/{}", id("4", m, n)),
        2 => format!(
            "/api/v1/locks?gateway_id={}&sort=-bus_address",
            id("3", m, n / LOCKS_PER_GATEWAY)
        ),
        3 => "/api/v1/gateways?per_page=50".to_string(),
        4 => "/api/v1/me".to_string(),
        // The console's order page: newest first, one filter, a few pages deep.
        5 => match i % 3 {
            0 => format!(
                "/api/v1/orders?status=completed&sort=-created_at&page={}&per_page=20",
                (n % 5) + 1
            ),
            1 => format!(
                "/api/v1/orders?lock_id={}&sort=-created_at&per_page=20",
                id("4", m, n)
            ),
            _ => format!(
                "/api/v1/orders?status=refunded&sort=-created_at&page={}&per_page=20",
                (n % 3) + 1
            ),
        },
        6 => format!("/api/v1/orders/{}", id("6", m, o)),
        7 => "/api/v1/dashboard/summary".to_string(),
        _ => format!("/api/v1/settlements?per_page=20&page={}", (n % 2) + 1),
    }
}

#[derive(Debug)]
struct Stats {
    /// p50, p95, p99, max per class.
    classes: Vec<[Duration; 4]>,
    counts: Vec<usize>,
    class_errors: Vec<usize>,
    overall: [Duration; 4],
    errors: usize,
    achieved_rps: f64,
}

fn quantiles(l: &mut [Duration]) -> [Duration; 4] {
    l.sort();
    [
        percentile(l, 0.50),
        percentile(l, 0.95),
        percentile(l, 0.99),
        l.last().copied().unwrap_or_default(),
    ]
}

async fn load(
    client: &reqwest::Client,
    addr: std::net::SocketAddr,
    bearer: Arc<Vec<(usize, String)>>,
    rps: u64,
    secs: u64,
) -> Stats {
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
            let path = path_for(i, *m);
            let ok = client
                .get(format!("http://{addr}{path}"))
                .bearer_auth(token)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            (scheduled.elapsed(), ok, class_of(i % 20))
        }));
    }
    let mut lat = Vec::with_capacity(handles.len());
    let mut by_kind: Vec<Vec<Duration>> = vec![Vec::new(); CLASSES.len()];
    let mut class_errors = vec![0; CLASSES.len()];
    let mut errors = 0;
    for h in handles {
        let (d, ok, k) = h.await.unwrap();
        if !ok {
            errors += 1;
            class_errors[k] += 1;
        }
        lat.push(d);
        by_kind[k].push(d);
    }
    let achieved_rps = total as f64 / start.elapsed().as_secs_f64();
    Stats {
        counts: by_kind.iter().map(Vec::len).collect(),
        classes: by_kind.iter_mut().map(|l| quantiles(l)).collect(),
        class_errors,
        overall: quantiles(&mut lat),
        errors,
        achieved_rps,
    }
}

fn print_stats(backend: &str, run: usize, rps: u64, s: &Stats) {
    println!("run {run}:");
    for (k, name) in CLASSES.iter().enumerate() {
        let [p50, p95, p99, max] = s.classes[k];
        println!(
            "  {name:>18}: n={} errors={} p50={p50:?} p95={p95:?} p99={p99:?} max={max:?}",
            s.counts[k], s.class_errors[k]
        );
    }
    let [p50, p95, p99, max] = s.overall;
    println!(
        "api_load: backend={backend} run={run} requests={} target_rps={rps} achieved_rps={:.0} errors={} p50={p50:?} p95={p95:?} p99={p99:?} max={max:?}",
        s.counts.iter().sum::<usize>(),
        s.achieved_rps,
        s.errors,
    );
}

fn median(runs: &[Stats], f: impl Fn(&Stats) -> Duration) -> Duration {
    let mut v: Vec<Duration> = runs.iter().map(f).collect();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}
