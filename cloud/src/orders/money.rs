//! Money: the immutable ledger, the daily settlement per merchant, the dashboard figures
//! and the three-way reconciliation.
//!
//! **Ledger.** Entries are only ever inserted. Signs: a payment is `+amount` (money the
//! platform holds for the order); a refund, the commission and the merchant's share are
//! negative (the money moving on). So once an order's days are settled its entries sum to
//! exactly zero; before that, they sum to what is still unallocated. `payout` entries
//! belong to a settlement (no order) and carry the statement's net payable, positive.
//! `(kind, ref_id)` is unique, so replaying an apply can never book twice.
//!
//! **Days.** Settlement and the dashboard use the Asia/Shanghai calendar day, computed as
//! UTC+8 with a fixed offset. That is exact, not an approximation: China has used one
//! time zone (UTC+8) without daylight saving time since 1991, and every instant we store
//! is later than that, so the offset never changes and no tz database is needed.
//!
//! **Commission rounding.** For each order, the commission owed on its cumulative net
//! amount (payments minus refunds, through the settled day) is
//! `round_half_up(net × commission_bp / 10000)` in fen, i.e. `(net × bp + 5000) / 10000`
//! in integer arithmetic, computed per order (never on a day's total). Each day's
//! settlement books the difference between that and the commission already booked for the
//! order, so a fully refunded order ends with exactly zero commission even when the
//! payment and the refund fall on different days, and an order's total commission is always
//! the rounding of its own final net — never the accumulation of per-day rounding errors.
//! The merchant's share is the order's net of the day minus that day's commission, so the
//! day's amounts add up without a fen lost: gross − refunds = commission + net payable.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::AnyConnection;

use crate::db::new_id;
use crate::error::ApiError;

/// Milliseconds in an hour.
const HOUR_MS: i64 = 3_600_000;
/// China Standard Time, UTC+8, no DST since 1991.
pub const SHANGHAI_OFFSET_MS: i64 = 8 * HOUR_MS;
const DAY_MS: i64 = 24 * HOUR_MS;

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The Asia/Shanghai calendar day of an instant, `YYYY-MM-DD`.
pub fn shanghai_day(ms: i64) -> String {
    let (y, m, d) = civil_from_days((ms + SHANGHAI_OFFSET_MS).div_euclid(DAY_MS));
    format!("{y:04}-{m:02}-{d:02}")
}

/// The instant an Asia/Shanghai day starts, or None for text that is not `YYYY-MM-DD`.
pub fn shanghai_day_start(day: &str) -> Option<i64> {
    let mut parts = day.split('-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let d: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || day.len() != 10 || !(1..=12).contains(&m) || !(1..=31).contains(&d)
    {
        return None;
    }
    let start = days_from_civil(y, m, d) * DAY_MS - SHANGHAI_OFFSET_MS;
    // 2026-02-31 would silently become March 3rd; refuse it instead.
    (shanghai_day(start) == day).then_some(start)
}

/// The commission on a net amount at `bp` basis points: round half up, in fen.
pub fn commission(net_fen: i64, bp: i64) -> i64 {
    let x = i128::from(net_fen) * i128::from(bp);
    let r = if x >= 0 {
        (x + 5000) / 10000
    } else {
        -((-x + 5000) / 10000)
    };
    i64::try_from(r).unwrap_or(0)
}

/// One order's settlement for one day: given its cumulative net through the day, the
/// commission already booked on earlier days (positive) and the day's net, the commission
/// and merchant share to book now. They always add up to the day's net.
pub fn allocate(cum_net: i64, commission_before: i64, day_net: i64, bp: i64) -> (i64, i64) {
    let c = commission(cum_net, bp) - commission_before;
    (c, day_net - c)
}

/// Ledger entry kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Payment,
    Refund,
    Commission,
    MerchantShare,
    Payout,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Payment => "payment",
            Kind::Refund => "refund",
            Kind::Commission => "commission",
            Kind::MerchantShare => "merchant_share",
            Kind::Payout => "payout",
        }
    }
}

/// Books one entry (insert only; a second booking of the same `(kind, ref_id)` is a no-op),
/// with its share of the daily roll-ups. Returns whether it was booked.
pub async fn book(
    conn: &mut AnyConnection,
    merchant_id: &str,
    order_id: Option<&str>,
    kind: Kind,
    amount_fen: i64,
    ref_id: &str,
    at: i64,
) -> Result<bool, ApiError> {
    let roll_up = book_deferred(conn, merchant_id, order_id, kind, amount_fen, ref_id, at).await?;
    let booked = roll_up.is_some();
    if let Some(r) = roll_up {
        r.apply(conn).await?;
    }
    Ok(booked)
}

/// [`book`] without touching the roll-ups yet: a payment or refund that was booked returns
/// its [`RollUp`], which the caller applies as the last write of its transaction. The
/// merchant's day row is one row that every payment of that merchant updates, so on
/// PostgreSQL whoever updates it holds its lock until commit; taken last, it is held for one
/// round trip instead of the whole transaction and the merchant's payments stop queueing
/// behind each other (the order_flow bench measured a 1 ms wait per upsert before).
/// Returns `None` for a duplicate booking.
pub async fn book_deferred(
    conn: &mut AnyConnection,
    merchant_id: &str,
    order_id: Option<&str>,
    kind: Kind,
    amount_fen: i64,
    ref_id: &str,
    at: i64,
) -> Result<Option<RollUp>, ApiError> {
    let n = sqlx::query(
        "INSERT INTO ledger_entries (id, merchant_id, order_id, kind, amount_fen, ref_id, day, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (kind, ref_id) DO NOTHING",
    )
    .bind(new_id())
    .bind(merchant_id.to_string())
    .bind(order_id.map(String::from))
    .bind(kind.as_str().to_string())
    .bind(amount_fen)
    .bind(ref_id.to_string())
    .bind(shanghai_day(at))
    .bind(at)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok((n == 1).then(|| RollUp {
        merchant_id: merchant_id.to_string(),
        order_id: order_id.map(String::from),
        kind,
        amount_fen,
        at,
    }))
}

/// One booked payment or refund's share of the daily roll-ups the dashboard reads
/// (migration 0007). It must be applied on the same connection, inside the transaction that
/// booked the entry, so the roll-ups commit or roll back with it. The compiler cannot enforce
/// that here (`#[must_use]` does not reach through the `Option` that [`book_deferred`]
/// returns): a caller with no reason to defer it calls [`book`], and the roll-up tests
/// compare every roll-up with the ledger on both databases.
#[must_use = "a booked entry's roll-up must be applied before the transaction commits"]
#[derive(Debug)]
pub struct RollUp {
    merchant_id: String,
    order_id: Option<String>,
    kind: Kind,
    amount_fen: i64,
    at: i64,
}

impl RollUp {
    /// Adds the entry to the lock's and then the merchant's day. The merchant's row goes
    /// last: it is the contended one (see [`book_deferred`]).
    /// Commission, merchant share and payout entries are not in the roll-ups: nothing to do.
    pub async fn apply(self, conn: &mut AnyConnection) -> Result<(), ApiError> {
        if !matches!(self.kind, Kind::Payment | Kind::Refund) {
            return Ok(());
        }
        let orders = i64::from(self.kind == Kind::Payment);
        let refunds = if self.kind == Kind::Refund {
            -self.amount_fen
        } else {
            0
        };
        let day = shanghai_day(self.at);
        // The lock comes from the order (an entry without one goes under ''); upserts, so the
        // first entry of a day creates the row and later ones add to it.
        sqlx::query(
            "INSERT INTO ledger_lock_days (merchant_id, day, lock_id, orders, revenue_fen, refunds_fen) \
             VALUES ($1, $2, COALESCE((SELECT lock_id FROM orders WHERE id = $3), ''), $4, $5, $6) \
             ON CONFLICT (merchant_id, day, lock_id) DO UPDATE SET \
             orders = ledger_lock_days.orders + excluded.orders, \
             revenue_fen = ledger_lock_days.revenue_fen + excluded.revenue_fen, \
             refunds_fen = ledger_lock_days.refunds_fen + excluded.refunds_fen",
        )
        .bind(self.merchant_id.clone())
        .bind(day.clone())
        .bind(self.order_id)
        .bind(orders)
        .bind(self.amount_fen)
        .bind(refunds)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO ledger_merchant_days (merchant_id, day, orders, revenue_fen, refunds_fen) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (merchant_id, day) DO UPDATE SET \
             orders = ledger_merchant_days.orders + excluded.orders, \
             revenue_fen = ledger_merchant_days.revenue_fen + excluded.revenue_fen, \
             refunds_fen = ledger_merchant_days.refunds_fen + excluded.refunds_fen",
        )
        .bind(self.merchant_id)
        .bind(day)
        .bind(orders)
        .bind(self.amount_fen)
        .bind(refunds)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// Recomputes both roll-ups from the ledger (the same statements as migration 0007's
/// backfill). For data loaded around `book` (the load bench seeds rows directly) and as a
/// repair; run it in a transaction so readers never see the tables half rebuilt.
pub async fn rebuild_rollups(conn: &mut AnyConnection) -> Result<(), ApiError> {
    for sql in [
        "DELETE FROM ledger_lock_days",
        "DELETE FROM ledger_merchant_days",
        "INSERT INTO ledger_lock_days (merchant_id, day, lock_id, orders, revenue_fen, refunds_fen) \
         SELECT e.merchant_id, e.day, COALESCE(o.lock_id, ''), \
         CAST(SUM(CASE WHEN e.kind = 'payment' THEN 1 ELSE 0 END) AS BIGINT), \
         CAST(SUM(e.amount_fen) AS BIGINT), \
         CAST(SUM(CASE WHEN e.kind = 'refund' THEN 0 - e.amount_fen ELSE 0 END) AS BIGINT) \
         FROM ledger_entries e LEFT JOIN orders o ON o.id = e.order_id \
         WHERE e.kind IN ('payment', 'refund') \
         GROUP BY e.merchant_id, e.day, COALESCE(o.lock_id, '')",
        "INSERT INTO ledger_merchant_days (merchant_id, day, orders, revenue_fen, refunds_fen) \
         SELECT merchant_id, day, CAST(SUM(orders) AS BIGINT), CAST(SUM(revenue_fen) AS BIGINT), \
         CAST(SUM(refunds_fen) AS BIGINT) FROM ledger_lock_days GROUP BY merchant_id, day",
    ] {
        sqlx::query(sql).execute(&mut *conn).await?;
    }
    Ok(())
}

/// A settlement statement.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct SettlementRow {
    pub id: String,
    pub merchant_id: String,
    pub day: String,
    pub commission_bp: i64,
    pub orders_count: i64,
    pub gross_fen: i64,
    pub refunds_fen: i64,
    pub commission_fen: i64,
    pub net_fen: i64,
    pub status: String,
    pub created_at: i64,
}

pub const SETTLEMENT_COLUMNS: &str = "id, merchant_id, day, commission_bp, orders_count, gross_fen, \
    refunds_fen, commission_fen, net_fen, status, created_at";

/// Takes SQLite's write lock at the start of a transaction that reads before it writes,
/// so a concurrent writer makes it wait (busy_timeout) instead of failing its upgrade.
/// A no-op on PostgreSQL.
pub async fn write_lock(conn: &mut AnyConnection) -> Result<(), ApiError> {
    sqlx::query("UPDATE leases SET holder = holder WHERE name = ''")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[derive(Debug, sqlx::FromRow)]
struct DayEntry {
    order_id: Option<String>,
    kind: String,
    amount_fen: i64,
}

/// Issues the statement of `merchant_id` for `day` (inside the caller's transaction).
/// Returns None if it was already issued (statements are immutable: never recomputed).
pub async fn settle_day(
    conn: &mut AnyConnection,
    merchant_id: &str,
    day: &str,
    now: i64,
) -> Result<Option<SettlementRow>, ApiError> {
    write_lock(conn).await?;
    let exists: Option<String> =
        sqlx::query_scalar("SELECT id FROM settlements WHERE merchant_id = $1 AND day = $2")
            .bind(merchant_id.to_string())
            .bind(day.to_string())
            .fetch_optional(&mut *conn)
            .await?;
    if exists.is_some() {
        return Ok(None);
    }
    let bp: i64 = sqlx::query_scalar("SELECT commission_bp FROM merchants WHERE id = $1")
        .bind(merchant_id.to_string())
        .fetch_one(&mut *conn)
        .await?;
    let entries = sqlx::query_as::<_, DayEntry>(
        "SELECT order_id, kind, amount_fen FROM ledger_entries \
         WHERE merchant_id = $1 AND day = $2 AND kind IN ('payment', 'refund')",
    )
    .bind(merchant_id.to_string())
    .bind(day.to_string())
    .fetch_all(&mut *conn)
    .await?;
    let (mut gross, mut refunds) = (0i64, 0i64);
    let mut day_net: BTreeMap<String, i64> = BTreeMap::new();
    for e in &entries {
        match e.kind.as_str() {
            "payment" => gross += e.amount_fen,
            _ => refunds -= e.amount_fen,
        }
        if let Some(o) = &e.order_id {
            *day_net.entry(o.clone()).or_default() += e.amount_fen;
        }
    }
    let id = new_id();
    let mut commission_total = 0i64;
    let mut net_total = 0i64;
    let mut booked: Vec<(String, i64, i64)> = Vec::new();
    for (order_id, net) in &day_net {
        let cum: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(amount_fen), 0) AS BIGINT) FROM ledger_entries \
             WHERE order_id = $1 AND kind IN ('payment', 'refund') AND day <= $2",
        )
        .bind(order_id.clone())
        .bind(day.to_string())
        .fetch_one(&mut *conn)
        .await?;
        let already: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(amount_fen), 0) AS BIGINT) FROM ledger_entries \
             WHERE order_id = $1 AND kind = 'commission'",
        )
        .bind(order_id.clone())
        .fetch_one(&mut *conn)
        .await?;
        let (c, share) = allocate(cum, -already, *net, bp);
        commission_total += c;
        net_total += share;
        booked.push((order_id.clone(), c, share));
    }
    let row = SettlementRow {
        id: id.clone(),
        merchant_id: merchant_id.to_string(),
        day: day.to_string(),
        commission_bp: bp,
        orders_count: i64::try_from(day_net.len()).unwrap_or(i64::MAX),
        gross_fen: gross,
        refunds_fen: refunds,
        commission_fen: commission_total,
        net_fen: net_total,
        status: "issued".into(),
        created_at: now,
    };
    sqlx::query(
        "INSERT INTO settlements (id, merchant_id, day, commission_bp, orders_count, gross_fen, \
         refunds_fen, commission_fen, net_fen, status, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(row.id.clone())
    .bind(row.merchant_id.clone())
    .bind(row.day.clone())
    .bind(row.commission_bp)
    .bind(row.orders_count)
    .bind(row.gross_fen)
    .bind(row.refunds_fen)
    .bind(row.commission_fen)
    .bind(row.net_fen)
    .bind(row.status.clone())
    .bind(row.created_at)
    .execute(&mut *conn)
    .await?;
    for (order_id, c, share) in booked {
        let r = format!("{id}:{order_id}");
        if c != 0 {
            book(
                conn,
                merchant_id,
                Some(&order_id),
                Kind::Commission,
                -c,
                &r,
                now,
            )
            .await?;
        }
        if share != 0 {
            book(
                conn,
                merchant_id,
                Some(&order_id),
                Kind::MerchantShare,
                -share,
                &r,
                now,
            )
            .await?;
        }
    }
    sqlx::query(
        "INSERT INTO ledger_entries (id, merchant_id, order_id, settlement_id, kind, amount_fen, ref_id, day, at) \
         VALUES ($1, $2, NULL, $3, 'payout', $4, $3, $5, $6)",
    )
    .bind(new_id())
    .bind(merchant_id.to_string())
    .bind(id)
    .bind(net_total)
    .bind(day.to_string())
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(Some(row))
}

/// Every (merchant, day) before `today` that has payments or refunds but no statement.
pub async fn unsettled_days(
    conn: &mut AnyConnection,
    today: &str,
) -> Result<Vec<(String, String)>, ApiError> {
    Ok(sqlx::query_as::<_, (String, String)>(
        "SELECT DISTINCT l.merchant_id, l.day FROM ledger_entries l \
         WHERE l.kind IN ('payment', 'refund') AND l.day < $1 AND NOT EXISTS \
         (SELECT 1 FROM settlements s WHERE s.merchant_id = l.merchant_id AND s.day = l.day) \
         ORDER BY l.day, l.merchant_id",
    )
    .bind(today.to_string())
    .fetch_all(&mut *conn)
    .await?)
}

/// A statement as CSV: a header line with the totals, then one line per order.
pub async fn settlement_csv(
    conn: &mut AnyConnection,
    s: &SettlementRow,
) -> Result<String, ApiError> {
    let rows = sqlx::query_as::<_, (Option<String>, String, i64)>(
        "SELECT order_id, kind, amount_fen FROM ledger_entries \
         WHERE merchant_id = $1 AND ((day = $2 AND kind IN ('payment', 'refund')) OR ref_id LIKE $3) \
         ORDER BY order_id, kind",
    )
    .bind(s.merchant_id.clone())
    .bind(s.day.clone())
    .bind(format!("{}:%", s.id))
    .fetch_all(&mut *conn)
    .await?;
    let mut per: BTreeMap<String, [i64; 4]> = BTreeMap::new();
    for (order, kind, amount) in rows {
        let Some(order) = order else { continue };
        let e = per.entry(order).or_default();
        match kind.as_str() {
            "payment" => e[0] += amount,
            "refund" => e[1] -= amount,
            "commission" => e[2] -= amount,
            "merchant_share" => e[3] -= amount,
            _ => {}
        }
    }
    let mut out = String::from(
        "settlement_id,merchant_id,day,commission_bp,gross_fen,refunds_fen,commission_fen,net_fen,status\n",
    );
    out.push_str(&format!(
        "{},{},{},{},{},{},{},{},{}\n\norder_id,paid_fen,refunded_fen,commission_fen,merchant_share_fen\n",
        s.id,
        s.merchant_id,
        s.day,
        s.commission_bp,
        s.gross_fen,
        s.refunds_fen,
        s.commission_fen,
        s.net_fen,
        s.status
    ));
    for (order, [paid, refunded, comm, share]) in per {
        out.push_str(&format!("{order},{paid},{refunded},{comm},{share}\n"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shanghai_days() {
        // 2026-01-01T00:00:00+08:00 = 2025-12-31T16:00:00Z
        let start = 1_767_196_800_000;
        assert_eq!(shanghai_day(start), "2026-01-01");
        assert_eq!(shanghai_day(start - 1), "2025-12-31");
        assert_eq!(shanghai_day_start("2026-01-01"), Some(start));
        assert_eq!(shanghai_day_start("2026-02-31"), None);
        assert_eq!(shanghai_day_start("2026-1-01"), None);
        assert_eq!(shanghai_day_start("x"), None);
        for ms in [0, 951_782_400_000, 1_709_164_800_000, 4_102_444_800_000] {
            let d = shanghai_day(ms);
            let s = shanghai_day_start(&d).unwrap();
            assert!(s <= ms && ms < s + DAY_MS, "{d}");
        }
    }

    use proptest::prelude::*;

    proptest! {
        /// Random orders with a payment and partial refunds spread over days, settled
        /// day by day as `settle_day` does: every order's entries sum to exactly zero,
        /// its commission is the rounding of its own final net, and every day's statement
        /// adds up (gross − refunds = commission + net).
        #[test]
        fn ledger_sums_exactly(
            bp in 0i64..=10_000,
            orders in proptest::collection::vec(
                (1i64..=100_000, 0usize..4, proptest::collection::vec((0usize..4, 1i64..=100_000), 0..4)),
                1..12,
            ),
        ) {
            // Entries: (order, day, kind, amount) with the ledger's signs.
            let mut entries: Vec<(usize, usize, &str, i64)> = Vec::new();
            for (o, (price, pay_day, refunds)) in orders.iter().enumerate() {
                entries.push((o, *pay_day, "payment", *price));
                let mut left = *price;
                for (later, amount) in refunds {
                    let amount = (*amount).min(left);
                    if amount == 0 { continue; }
                    left -= amount;
                    entries.push((o, pay_day + later, "refund", -amount));
                }
            }
            let last_day = entries.iter().map(|e| e.1).max().unwrap_or(0);
            let mut booked: Vec<(usize, usize, &str, i64)> = Vec::new();
            for day in 0..=last_day {
                let (mut gross, mut refunds, mut comm_total, mut net_total) = (0, 0, 0, 0);
                for o in 0..orders.len() {
                    let today: Vec<_> = entries.iter().filter(|e| e.0 == o && e.1 == day).collect();
                    if today.is_empty() { continue; }
                    for e in &today {
                        if e.2 == "payment" { gross += e.3 } else { refunds -= e.3 }
                    }
                    let day_net: i64 = today.iter().map(|e| e.3).sum();
                    let cum: i64 = entries.iter().filter(|e| e.0 == o && e.1 <= day).map(|e| e.3).sum();
                    let before: i64 = -booked.iter().filter(|b| b.0 == o && b.2 == "commission").map(|b| b.3).sum::<i64>();
                    let (c, share) = allocate(cum, before, day_net, bp);
                    booked.push((o, day, "commission", -c));
                    booked.push((o, day, "merchant_share", -share));
                    comm_total += c;
                    net_total += share;
                }
                prop_assert_eq!(gross - refunds, comm_total + net_total);
            }
            for o in 0..orders.len() {
                let sum: i64 = entries.iter().chain(booked.iter()).filter(|e| e.0 == o).map(|e| e.3).sum();
                prop_assert_eq!(sum, 0, "order {} entries sum to zero", o);
                let final_net: i64 = entries.iter().filter(|e| e.0 == o).map(|e| e.3).sum();
                let comm: i64 = -booked.iter().filter(|b| b.0 == o && b.2 == "commission").map(|b| b.3).sum::<i64>();
                prop_assert_eq!(comm, commission(final_net, bp));
            }
        }
    }

    #[test]
    fn commission_rounds_half_up() {
        assert_eq!(commission(300, 500), 15);
        assert_eq!(commission(10, 500), 1, "0.5 fen rounds up");
        assert_eq!(commission(9, 500), 0, "0.45 fen rounds down");
        assert_eq!(commission(333, 500), 17, "16.65");
        assert_eq!(commission(1, 10000), 1);
        assert_eq!(commission(0, 500), 0);
        assert_eq!(commission(-10, 500), -1, "symmetric for negatives");
        assert_eq!(commission(i64::MAX / 2, 10000), i64::MAX / 2);
    }
}

/// A reconciliation report (one per merchant, provider and day; merchant None = platform).
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct ReportRow {
    pub id: String,
    pub merchant_id: Option<String>,
    pub provider: String,
    pub day: String,
    pub items_count: i64,
    pub summary: String,
    pub created_at: i64,
}

pub const REPORT_COLUMNS: &str = "id, merchant_id, provider, day, items_count, summary, created_at";

#[derive(Debug, sqlx::FromRow)]
struct OurPayment {
    merchant_id: String,
    order_id: String,
    out_trade_no: String,
    amount_fen: i64,
    status: String,
    notified_at: Option<i64>,
}

struct Item {
    merchant_id: Option<String>,
    kind: &'static str,
    order_id: Option<String>,
    out_trade_no: Option<String>,
    detail: String,
}

/// Three-way reconciliation of one Asia/Shanghai day: the provider's bill × our payments ×
/// the gateways' unlock evidence. Writes the reports; returns the number of items found.
pub async fn reconcile(
    state: &crate::AppState,
    provider_name: &str,
    day: &str,
    now: i64,
) -> Result<usize, ApiError> {
    let Some(provider) = state.orders.providers.get(provider_name) else {
        return Err(ApiError::NotFound);
    };
    let Some(start) = shanghai_day_start(day) else {
        return Err(ApiError::validation("day", "must be YYYY-MM-DD"));
    };
    let end = start + DAY_MS;
    let bill = match provider.daily_bill(day).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(provider = provider_name, day, error = %e, "cannot download the bill; reconciliation waits");
            return Ok(0);
        }
    };
    let pool = &state.db.pool;
    let cols = "merchant_id, order_id, out_trade_no, amount_fen, status, notified_at";
    let ours = sqlx::query_as::<_, OurPayment>(sqlx::AssertSqlSafe(format!(
        "SELECT {cols} FROM payments WHERE provider = $1 AND status = 'succeeded' AND paid_at >= $2 AND paid_at < $3"
    )))
    .bind(provider_name.to_string())
    .bind(start)
    .bind(end)
    .fetch_all(pool)
    .await?;
    let mut items: Vec<Item> = Vec::new();
    let mut merchants: std::collections::BTreeSet<String> =
        ours.iter().map(|p| p.merchant_id.clone()).collect();
    let billed: std::collections::BTreeSet<&str> =
        bill.iter().map(|b| b.out_trade_no.as_str()).collect();
    for b in &bill {
        let p = sqlx::query_as::<_, OurPayment>(sqlx::AssertSqlSafe(format!(
            "SELECT {cols} FROM payments WHERE out_trade_no = $1 AND provider = $2"
        )))
        .bind(b.out_trade_no.clone())
        .bind(provider_name.to_string())
        .fetch_optional(pool)
        .await?;
        match p {
            None => items.push(Item {
                merchant_id: None,
                kind: "unknown_payment",
                order_id: None,
                out_trade_no: Some(b.out_trade_no.clone()),
                detail: format!(
                    "billed {} fen (transaction {}) but we have no such payment",
                    b.amount_fen, b.transaction_id
                ),
            }),
            Some(p) => {
                merchants.insert(p.merchant_id.clone());
                if p.amount_fen != b.amount_fen {
                    items.push(Item {
                        merchant_id: Some(p.merchant_id.clone()),
                        kind: "amount_mismatch",
                        order_id: Some(p.order_id.clone()),
                        out_trade_no: Some(p.out_trade_no.clone()),
                        detail: format!("billed {} fen, ours {} fen", b.amount_fen, p.amount_fen),
                    });
                }
                if p.status != "succeeded" || p.notified_at.is_none() {
                    items.push(Item {
                        merchant_id: Some(p.merchant_id.clone()),
                        kind: "missing_notification",
                        order_id: Some(p.order_id.clone()),
                        out_trade_no: Some(p.out_trade_no.clone()),
                        detail: format!(
                            "billed, but our payment is {} without a notification",
                            p.status
                        ),
                    });
                }
            }
        }
    }
    for p in &ours {
        if !billed.contains(p.out_trade_no.as_str()) {
            items.push(Item {
                merchant_id: Some(p.merchant_id.clone()),
                kind: "amount_mismatch",
                order_id: Some(p.order_id.clone()),
                out_trade_no: Some(p.out_trade_no.clone()),
                detail: format!("ours {} fen, not in the provider's bill", p.amount_fen),
            });
        }
        let opened: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM order_unlock_events WHERE order_id = $1 AND result = 'ok'",
        )
        .bind(p.order_id.clone())
        .fetch_one(pool)
        .await?;
        let refunded: i64 = sqlx::query_scalar("SELECT refunded_fen FROM orders WHERE id = $1")
            .bind(p.order_id.clone())
            .fetch_one(pool)
            .await?;
        if opened == 0 && refunded < p.amount_fen {
            items.push(Item {
                merchant_id: Some(p.merchant_id.clone()),
                kind: "paid_never_opened",
                order_id: Some(p.order_id.clone()),
                out_trade_no: Some(p.out_trade_no.clone()),
                detail: format!(
                    "paid {} fen, refunded {refunded} fen, no unlock",
                    p.amount_fen
                ),
            });
        }
    }
    let opened = sqlx::query_as::<_, (String, String)>(
        "SELECT e.order_id, e.lock_id FROM order_unlock_events e WHERE e.result = 'ok' \
         AND e.order_id IS NOT NULL AND e.at >= $1 AND e.at < $2",
    )
    .bind(start)
    .bind(end)
    .fetch_all(pool)
    .await?;
    for (order_id, lock_id) in opened {
        let paid: Option<(String, i64)> = sqlx::query_as(
            "SELECT o.merchant_id, (SELECT COUNT(*) FROM payments p WHERE p.order_id = o.id \
             AND p.status = 'succeeded') FROM orders o WHERE o.id = $1",
        )
        .bind(order_id.clone())
        .fetch_optional(pool)
        .await?;
        match paid {
            Some((_, n)) if n > 0 => {}
            other => {
                let merchant = other.map(|(m, _)| m);
                if let Some(m) = &merchant {
                    merchants.insert(m.clone());
                }
                items.push(Item {
                    merchant_id: merchant,
                    kind: "opened_without_payment",
                    order_id: Some(order_id.clone()),
                    out_trade_no: None,
                    detail: format!("lock {lock_id} opened for an order with no payment"),
                });
            }
        }
    }
    let found = items.len();
    let mut groups: BTreeMap<Option<String>, Vec<Item>> = BTreeMap::new();
    for m in merchants {
        groups.entry(Some(m)).or_default();
    }
    for it in items {
        groups.entry(it.merchant_id.clone()).or_default().push(it);
    }
    if groups.is_empty() {
        groups.insert(None, Vec::new());
    }
    let mut conn = pool.acquire().await?;
    let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
    for (merchant, its) in groups {
        let id = new_id();
        let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
        for it in &its {
            *counts.entry(it.kind).or_default() += 1;
        }
        sqlx::query(
            "INSERT INTO reconciliation_reports (id, merchant_id, provider, day, items_count, summary, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id.clone())
        .bind(merchant.clone())
        .bind(provider_name.to_string())
        .bind(day.to_string())
        .bind(i64::try_from(its.len()).unwrap_or(i64::MAX))
        .bind(serde_json::to_string(&counts).unwrap_or_default())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        for it in its {
            sqlx::query(
                "INSERT INTO reconciliation_items (id, report_id, kind, order_id, out_trade_no, detail) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(new_id())
            .bind(id.clone())
            .bind(it.kind.to_string())
            .bind(it.order_id)
            .bind(it.out_trade_no)
            .bind(it.detail)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(found)
}
