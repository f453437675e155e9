//! Queries on `gateways`, tenant-scoped.

use crate::db::{Db, now_ms};
use crate::error::ApiError;
use crate::gateways::types::Gateway;
use crate::http::list::{Page, Paging, Sql, fetch_page, like_pattern};
use crate::rbac::Scope;

const COLUMNS: &str = "id, merchant_id, venue_id, name, status, public_key, enrolled_at, \
                       last_seen_at, created_at, updated_at, online, agent_version, \
                       outbox_pending, outbox_oldest_age_s";

fn scoped(sql: &mut Sql, scope: &Scope) {
    if let Some(m) = scope.merchant() {
        sql.push(" AND merchant_id = ").bind_text(m);
    }
}

pub async fn get(db: &Db, scope: &Scope, id: &str) -> Result<Option<Gateway>, ApiError> {
    let mut q = Sql::new(&format!("SELECT {COLUMNS} FROM gateways WHERE id = "));
    q.bind_text(id).push(" AND deleted_at IS NULL");
    scoped(&mut q, scope);
    Ok(q.query_as::<Gateway>().fetch_optional(&db.pool).await?)
}

pub async fn insert(db: &Db, g: &Gateway) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO gateways (id, merchant_id, venue_id, name, status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(g.id.clone())
    .bind(g.merchant_id.clone())
    .bind(g.venue_id.clone())
    .bind(g.name.clone())
    .bind(g.status.clone())
    .bind(g.created_at)
    .bind(g.updated_at)
    .execute(&db.pool)
    .await?;
    Ok(())
}

#[derive(Debug, Default)]
pub struct GatewayFilter {
    pub merchant_id: Option<String>,
    pub venue_id: Option<String>,
    pub status: Option<String>,
    pub q: Option<String>,
}

pub async fn list(
    db: &Db,
    scope: &Scope,
    filter: &GatewayFilter,
    paging: Paging,
    order: &str,
) -> Result<Page<Gateway>, ApiError> {
    let mut w = Sql::new(" WHERE deleted_at IS NULL");
    scoped(&mut w, scope);
    if let Some(v) = &filter.merchant_id {
        w.push(" AND merchant_id = ").bind_text(v.clone());
    }
    if let Some(v) = &filter.venue_id {
        w.push(" AND venue_id = ").bind_text(v.clone());
    }
    if let Some(v) = &filter.status {
        w.push(" AND status = ").bind_text(v.clone());
    }
    if let Some(q) = &filter.q {
        w.push(" AND LOWER(name) LIKE ")
            .bind_text(like_pattern(&q.to_lowercase()))
            .push(" ESCAPE '\\'");
    }
    fetch_page::<Gateway>(db, "gateways", COLUMNS, &w, order, paging).await
}

/// Renames and/or moves a gateway; moving also moves its locks' venue, in one transaction.
pub async fn update(
    db: &Db,
    scope: &Scope,
    id: &str,
    name: Option<String>,
    venue_id: Option<String>,
) -> Result<bool, ApiError> {
    use sqlx::Acquire as _;
    let now = now_ms();
    let mut conn = db.pool.acquire().await?;
    let mut tx = conn.begin().await?;
    let mut q = Sql::new("UPDATE gateways SET updated_at = ");
    q.bind_int(now);
    if let Some(v) = name {
        q.push(", name = ").bind_text(v);
    }
    if let Some(v) = &venue_id {
        q.push(", venue_id = ").bind_text(v.clone());
    }
    q.push(" WHERE id = ")
        .bind_text(id)
        .push(" AND deleted_at IS NULL");
    scoped(&mut q, scope);
    let changed = q.query().execute(&mut *tx).await?.rows_affected() == 1;
    if changed && let Some(v) = venue_id {
        sqlx::query("UPDATE locks SET venue_id = $1, updated_at = $2 WHERE gateway_id = $3")
            .bind(v)
            .bind(now)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(changed)
}

/// Soft-deletes a gateway without live locks.
pub async fn soft_delete(db: &Db, scope: &Scope, id: &str) -> Result<bool, ApiError> {
    let now = now_ms();
    let mut q = Sql::new("UPDATE gateways SET deleted_at = ");
    q.bind_int(now)
        .push(", updated_at = ")
        .bind_int(now)
        .push(" WHERE id = ")
        .bind_text(id)
        .push(" AND deleted_at IS NULL AND NOT EXISTS (SELECT 1 FROM locks l WHERE l.gateway_id = ")
        .bind_text(id)
        .push(" AND l.deleted_at IS NULL)");
    scoped(&mut q, scope);
    Ok(q.query().execute(&db.pool).await?.rows_affected() == 1)
}
