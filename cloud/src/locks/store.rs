//! Queries on `locks` and `price_plans`, tenant-scoped.

use sqlx::Acquire as _;

use crate::db::{Db, new_id, now_ms};
use crate::error::ApiError;
use crate::http::list::{Page, Paging, Sql, fetch_page, like_pattern};
use crate::locks::types::{LockRow, PricePlan, PricePlanInput};
use crate::rbac::Scope;

const COLUMNS: &str = "id, merchant_id, venue_id, gateway_id, name, device_code, bus_address, \
                       qr_code, status, created_at, updated_at, door_closed, locked, fw_version, \
                       last_heartbeat_at";

fn scoped(sql: &mut Sql, scope: &Scope) {
    if let Some(m) = scope.merchant() {
        sql.push(" AND merchant_id = ").bind_text(m);
    }
}

pub async fn get(db: &Db, scope: &Scope, id: &str) -> Result<Option<LockRow>, ApiError> {
    let mut q = Sql::new(&format!("SELECT {COLUMNS} FROM locks WHERE id = "));
    q.bind_text(id).push(" AND deleted_at IS NULL");
    scoped(&mut q, scope);
    Ok(q.query_as::<LockRow>().fetch_optional(&db.pool).await?)
}

/// Live plans of the given locks, in display order.
pub async fn plans_of(db: &Db, lock_ids: &[String]) -> Result<Vec<PricePlan>, ApiError> {
    if lock_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = Sql::new(
        "SELECT id, lock_id, name, duration_minutes, price_fen FROM price_plans \
         WHERE deleted_at IS NULL AND lock_id IN (",
    );
    for (i, id) in lock_ids.iter().enumerate() {
        if i > 0 {
            q.push(", ");
        }
        q.bind_text(id.clone());
    }
    q.push(") ORDER BY lock_id, position");
    Ok(q.query_as::<PricePlan>().fetch_all(&db.pool).await?)
}

async fn insert_plans(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    merchant_id: &str,
    lock_id: &str,
    plans: &[PricePlanInput],
    now: i64,
) -> Result<(), ApiError> {
    for (i, p) in plans.iter().enumerate() {
        sqlx::query(
            "INSERT INTO price_plans (id, merchant_id, lock_id, name, duration_minutes, price_fen, \
             position, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(new_id())
        .bind(merchant_id.to_string())
        .bind(lock_id.to_string())
        .bind(p.name.trim().to_string())
        .bind(p.duration_minutes)
        .bind(p.price_fen)
        .bind(i64::try_from(i).unwrap_or(i64::MAX))
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Inserts a lock and its plans in one transaction.
pub async fn insert(db: &Db, l: &LockRow, plans: &[PricePlanInput]) -> Result<(), ApiError> {
    let mut conn = db.pool.acquire().await?;
    let mut tx = conn.begin().await?;
    sqlx::query(
        "INSERT INTO locks (id, merchant_id, venue_id, gateway_id, name, device_code, bus_address, \
         qr_code, status, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(l.id.clone())
    .bind(l.merchant_id.clone())
    .bind(l.venue_id.clone())
    .bind(l.gateway_id.clone())
    .bind(l.name.clone())
    .bind(l.device_code.clone())
    .bind(l.bus_address)
    .bind(l.qr_code.clone())
    .bind(l.status.clone())
    .bind(l.created_at)
    .bind(l.updated_at)
    .execute(&mut *tx)
    .await?;
    insert_plans(&mut tx, &l.merchant_id, &l.id, plans, l.created_at).await?;
    tx.commit().await?;
    Ok(())
}

#[derive(Debug, Default)]
pub struct LockFilter {
    pub merchant_id: Option<String>,
    pub venue_id: Option<String>,
    pub gateway_id: Option<String>,
    pub status: Option<String>,
    pub q: Option<String>,
}

pub async fn list(
    db: &Db,
    scope: &Scope,
    filter: &LockFilter,
    paging: Paging,
    order: &str,
) -> Result<Page<LockRow>, ApiError> {
    let mut w = Sql::new(" WHERE deleted_at IS NULL");
    scoped(&mut w, scope);
    if let Some(v) = &filter.merchant_id {
        w.push(" AND merchant_id = ").bind_text(v.clone());
    }
    if let Some(v) = &filter.venue_id {
        w.push(" AND venue_id = ").bind_text(v.clone());
    }
    if let Some(v) = &filter.gateway_id {
        w.push(" AND gateway_id = ").bind_text(v.clone());
    }
    if let Some(v) = &filter.status {
        w.push(" AND status = ").bind_text(v.clone());
    }
    if let Some(q) = &filter.q {
        let pat = like_pattern(&q.to_lowercase());
        w.push(" AND (LOWER(name) LIKE ")
            .bind_text(pat.clone())
            .push(" ESCAPE '\\' OR LOWER(device_code) LIKE ")
            .bind_text(pat)
            .push(" ESCAPE '\\')");
    }
    fetch_page::<LockRow>(db, "locks", COLUMNS, &w, order, paging).await
}

/// A validated change to a lock.
#[derive(Debug, Default)]
pub struct LockChange {
    pub name: Option<String>,
    /// New gateway and the venue that comes with it.
    pub gateway: Option<(String, String)>,
    pub bus_address: Option<i64>,
    pub status: Option<String>,
    pub plans: Option<Vec<PricePlanInput>>,
}

/// Applies a change; plans are replaced in the same transaction.
pub async fn update(
    db: &Db,
    scope: &Scope,
    id: &str,
    change: LockChange,
) -> Result<bool, ApiError> {
    let now = now_ms();
    let mut conn = db.pool.acquire().await?;
    let mut tx = conn.begin().await?;
    let mut q = Sql::new("UPDATE locks SET updated_at = ");
    q.bind_int(now);
    if let Some(v) = change.name {
        q.push(", name = ").bind_text(v);
    }
    if let Some((gw, venue)) = change.gateway {
        q.push(", gateway_id = ")
            .bind_text(gw)
            .push(", venue_id = ")
            .bind_text(venue);
    }
    if let Some(v) = change.bus_address {
        q.push(", bus_address = ").bind_int(v);
    }
    if let Some(v) = change.status {
        q.push(", status = ").bind_text(v);
    }
    q.push(" WHERE id = ")
        .bind_text(id)
        .push(" AND deleted_at IS NULL");
    scoped(&mut q, scope);
    if q.query().execute(&mut *tx).await?.rows_affected() != 1 {
        tx.rollback().await?;
        return Ok(false);
    }
    if let Some(plans) = change.plans {
        let merchant_id: String = sqlx::query_scalar("SELECT merchant_id FROM locks WHERE id = $1")
            .bind(id.to_string())
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE price_plans SET deleted_at = $1 WHERE lock_id = $2 AND deleted_at IS NULL",
        )
        .bind(now)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        insert_plans(&mut tx, &merchant_id, id, &plans, now).await?;
    }
    tx.commit().await?;
    Ok(true)
}

pub async fn soft_delete(db: &Db, scope: &Scope, id: &str) -> Result<bool, ApiError> {
    let now = now_ms();
    let mut q = Sql::new("UPDATE locks SET deleted_at = ");
    q.bind_int(now)
        .push(", updated_at = ")
        .bind_int(now)
        .push(" WHERE id = ")
        .bind_text(id)
        .push(" AND deleted_at IS NULL");
    scoped(&mut q, scope);
    Ok(q.query().execute(&db.pool).await?.rows_affected() == 1)
}
