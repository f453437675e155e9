//! Queries on `venues`, tenant-scoped.

use crate::db::{Db, now_ms};
use crate::error::ApiError;
use crate::http::list::{Page, Paging, Sql, fetch_page, like_pattern};
use crate::rbac::Scope;
use crate::venues::types::Venue;

const COLUMNS: &str = "id, merchant_id, name, address, created_at, updated_at";

fn scoped(sql: &mut Sql, scope: &Scope) {
    if let Some(m) = scope.merchant() {
        sql.push(" AND merchant_id = ").bind_text(m);
    }
}

pub async fn get(db: &Db, scope: &Scope, id: &str) -> Result<Option<Venue>, ApiError> {
    let mut q = Sql::new(&format!("SELECT {COLUMNS} FROM venues WHERE id = "));
    q.bind_text(id).push(" AND deleted_at IS NULL");
    scoped(&mut q, scope);
    Ok(q.query_as::<Venue>().fetch_optional(&db.pool).await?)
}

pub async fn insert(db: &Db, v: &Venue) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO venues (id, merchant_id, name, address, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(v.id.clone())
    .bind(v.merchant_id.clone())
    .bind(v.name.clone())
    .bind(v.address.clone())
    .bind(v.created_at)
    .bind(v.updated_at)
    .execute(&db.pool)
    .await?;
    Ok(())
}

#[derive(Debug, Default)]
pub struct VenueFilter {
    pub merchant_id: Option<String>,
    pub q: Option<String>,
}

pub async fn list(
    db: &Db,
    scope: &Scope,
    filter: &VenueFilter,
    paging: Paging,
    order: &str,
) -> Result<Page<Venue>, ApiError> {
    let mut w = Sql::new(" WHERE deleted_at IS NULL");
    scoped(&mut w, scope);
    if let Some(m) = &filter.merchant_id {
        w.push(" AND merchant_id = ").bind_text(m.clone());
    }
    if let Some(q) = &filter.q {
        w.push(" AND LOWER(name) LIKE ")
            .bind_text(like_pattern(&q.to_lowercase()))
            .push(" ESCAPE '\\'");
    }
    fetch_page::<Venue>(db, "venues", COLUMNS, &w, order, paging).await
}

pub async fn update(
    db: &Db,
    scope: &Scope,
    id: &str,
    name: Option<String>,
    address: Option<String>,
) -> Result<bool, ApiError> {
    let mut q = Sql::new("UPDATE venues SET updated_at = ");
    q.bind_int(now_ms());
    if let Some(v) = name {
        q.push(", name = ").bind_text(v);
    }
    if let Some(v) = address {
        q.push(", address = ").bind_text(v);
    }
    q.push(" WHERE id = ")
        .bind_text(id)
        .push(" AND deleted_at IS NULL");
    scoped(&mut q, scope);
    Ok(q.query().execute(&db.pool).await?.rows_affected() == 1)
}

/// Soft-deletes a venue without live gateways (one statement: check and change).
pub async fn soft_delete(db: &Db, scope: &Scope, id: &str) -> Result<bool, ApiError> {
    let mut q = Sql::new("UPDATE venues SET deleted_at = ");
    let now = now_ms();
    q.bind_int(now)
        .push(", updated_at = ")
        .bind_int(now)
        .push(" WHERE id = ")
        .bind_text(id)
        .push(
            " AND deleted_at IS NULL AND NOT EXISTS (SELECT 1 FROM gateways g WHERE g.venue_id = ",
        )
        .bind_text(id)
        .push(" AND g.deleted_at IS NULL)");
    scoped(&mut q, scope);
    Ok(q.query().execute(&db.pool).await?.rows_affected() == 1)
}
