//! Queries on `merchants`.

use crate::db::{Db, now_ms};
use crate::error::ApiError;
use crate::http::list::{Page, Paging, Sql, fetch_page, like_pattern};
use crate::merchants::types::Merchant;
use crate::rbac::Scope;

const COLUMNS: &str = "id, name, contact_phone, commission_bp, status, created_at, updated_at";

fn scoped(sql: &mut Sql, scope: &Scope) {
    if let Some(m) = scope.merchant() {
        sql.push(" AND id = ").bind_text(m);
    }
}

pub async fn get(db: &Db, scope: &Scope, id: &str) -> Result<Option<Merchant>, ApiError> {
    let mut q = Sql::new(&format!("SELECT {COLUMNS} FROM merchants WHERE id = "));
    q.bind_text(id).push(" AND deleted_at IS NULL");
    scoped(&mut q, scope);
    Ok(q.query_as::<Merchant>().fetch_optional(&db.pool).await?)
}

pub async fn insert(db: &Db, m: &Merchant) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO merchants (id, name, contact_phone, commission_bp, status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(m.id.clone())
    .bind(m.name.clone())
    .bind(m.contact_phone.clone())
    .bind(m.commission_bp)
    .bind(m.status.clone())
    .bind(m.created_at)
    .bind(m.updated_at)
    .execute(&db.pool)
    .await?;
    Ok(())
}

#[derive(Debug, Default)]
pub struct MerchantFilter {
    pub status: Option<String>,
    pub q: Option<String>,
}

pub async fn list(
    db: &Db,
    scope: &Scope,
    filter: &MerchantFilter,
    paging: Paging,
    order: &str,
) -> Result<Page<Merchant>, ApiError> {
    let mut w = Sql::new(" WHERE deleted_at IS NULL");
    scoped(&mut w, scope);
    if let Some(s) = &filter.status {
        w.push(" AND status = ").bind_text(s.clone());
    }
    if let Some(q) = &filter.q {
        w.push(" AND LOWER(name) LIKE ")
            .bind_text(like_pattern(&q.to_lowercase()))
            .push(" ESCAPE '\\'");
    }
    fetch_page::<Merchant>(db, "merchants", COLUMNS, &w, order, paging).await
}

/// Changes the given fields; returns whether the merchant exists (and so was updated).
pub async fn update(
    db: &Db,
    id: &str,
    name: Option<String>,
    contact_phone: Option<String>,
    commission_bp: Option<i64>,
    status: Option<String>,
) -> Result<bool, ApiError> {
    let mut q = Sql::new("UPDATE merchants SET updated_at = ");
    q.bind_int(now_ms());
    if let Some(v) = name {
        q.push(", name = ").bind_text(v);
    }
    if let Some(v) = contact_phone {
        q.push(", contact_phone = ").bind_text(v);
    }
    if let Some(v) = commission_bp {
        q.push(", commission_bp = ").bind_int(v);
    }
    if let Some(v) = status {
        q.push(", status = ").bind_text(v);
    }
    q.push(" WHERE id = ")
        .bind_text(id)
        .push(" AND deleted_at IS NULL");
    Ok(q.query().execute(&db.pool).await?.rows_affected() == 1)
}

/// Soft-deletes a merchant that has no live venues or users left; the check and the
/// change are one statement, so a venue created concurrently cannot be orphaned.
pub async fn soft_delete(db: &Db, id: &str) -> Result<bool, ApiError> {
    let now = now_ms();
    let r = sqlx::query(
        "UPDATE merchants SET deleted_at = $1, updated_at = $1 WHERE id = $2 AND deleted_at IS NULL \
         AND NOT EXISTS (SELECT 1 FROM venues WHERE merchant_id = $2 AND deleted_at IS NULL) \
         AND NOT EXISTS (SELECT 1 FROM users WHERE merchant_id = $2 AND deleted_at IS NULL)",
    )
    .bind(now)
    .bind(id.to_string())
    .execute(&db.pool)
    .await?;
    Ok(r.rows_affected() == 1)
}
