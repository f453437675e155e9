//! Queries on `enrollment_codes`, tenant-scoped.

use crate::auth::store::secret_hash;
use crate::db::{Db, now_ms};
use crate::enrollment::types::{CodeRow, normalize_code};
use crate::error::ApiError;
use crate::http::list::{Page, Paging, Sql, fetch_page};
use crate::rbac::Scope;

const COLUMNS: &str = "id, merchant_id, venue_id, expires_at, used_at, used_by_gateway, gateway_id, created_by, \
     created_at";

fn scoped(sql: &mut Sql, scope: &Scope) {
    if let Some(m) = scope.merchant() {
        sql.push(" AND merchant_id = ").bind_text(m);
    }
}

pub fn code_hash(code: &str) -> String {
    secret_hash(&normalize_code(code))
}

pub async fn insert(db: &Db, row: &CodeRow, code: &str) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO enrollment_codes (id, merchant_id, venue_id, code_hash, expires_at, created_by, \
         created_at, gateway_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(row.id.clone())
    .bind(row.merchant_id.clone())
    .bind(row.venue_id.clone())
    .bind(code_hash(code))
    .bind(row.expires_at)
    .bind(row.created_by.clone())
    .bind(row.created_at)
    .bind(row.gateway_id.clone())
    .execute(&db.pool)
    .await?;
    Ok(())
}

pub async fn get(db: &Db, scope: &Scope, id: &str) -> Result<Option<CodeRow>, ApiError> {
    let mut q = Sql::new(&format!(
        "SELECT {COLUMNS} FROM enrollment_codes WHERE id = "
    ));
    q.bind_text(id).push(" AND deleted_at IS NULL");
    scoped(&mut q, scope);
    Ok(q.query_as::<CodeRow>().fetch_optional(&db.pool).await?)
}

#[derive(Debug, Default)]
pub struct CodeFilter {
    pub merchant_id: Option<String>,
    pub venue_id: Option<String>,
}

pub async fn list(
    db: &Db,
    scope: &Scope,
    filter: &CodeFilter,
    paging: Paging,
    order: &str,
) -> Result<Page<CodeRow>, ApiError> {
    let mut w = Sql::new(" WHERE deleted_at IS NULL");
    scoped(&mut w, scope);
    if let Some(v) = &filter.merchant_id {
        w.push(" AND merchant_id = ").bind_text(v.clone());
    }
    if let Some(v) = &filter.venue_id {
        w.push(" AND venue_id = ").bind_text(v.clone());
    }
    fetch_page::<CodeRow>(db, "enrollment_codes", COLUMNS, &w, order, paging).await
}

/// Revokes a code (soft delete).
pub async fn revoke(db: &Db, scope: &Scope, id: &str) -> Result<bool, ApiError> {
    let mut q = Sql::new("UPDATE enrollment_codes SET deleted_at = ");
    q.bind_int(now_ms())
        .push(" WHERE id = ")
        .bind_text(id)
        .push(" AND deleted_at IS NULL");
    scoped(&mut q, scope);
    Ok(q.query().execute(&db.pool).await?.rows_affected() == 1)
}

/// Spends a code: succeeds for exactly one caller while the code is live and unexpired,
/// and returns the code's row. Used by enrollment (the gateway link).
pub async fn claim(db: &Db, code: &str) -> Result<Option<CodeRow>, ApiError> {
    let now = now_ms();
    let hash = code_hash(code);
    let won = sqlx::query(
        "UPDATE enrollment_codes SET used_at = $1 \
         WHERE code_hash = $2 AND used_at IS NULL AND deleted_at IS NULL AND expires_at > $1",
    )
    .bind(now)
    .bind(hash.clone())
    .execute(&db.pool)
    .await?
    .rows_affected()
        == 1;
    if !won {
        return Ok(None);
    }
    let mut q = Sql::new(&format!(
        "SELECT {COLUMNS} FROM enrollment_codes WHERE code_hash = "
    ));
    q.bind_text(hash);
    let row = q.query_as::<CodeRow>().fetch_optional(&db.pool).await?;
    Ok(row)
}
