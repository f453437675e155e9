//! Queries on `users`, all tenant-scoped through [`Scope`] except the two the login path
//! needs before anyone is known (`find_live`, `find_for_login`).

use sqlx::Acquire as _;

use crate::db::{Db, now_ms};
use crate::error::ApiError;
use crate::http::list::{Page, Paging, Sql, fetch_page, like_pattern};
use crate::rbac::Scope;
use crate::users::types::UserRow;

const COLUMNS: &str = "id, merchant_id, username, phone, display_name, role, password_hash, \
                       session_epoch, created_at, updated_at";

pub async fn find_live(db: &Db, id: &str) -> Result<Option<UserRow>, ApiError> {
    let mut q = Sql::new(&format!("SELECT {COLUMNS} FROM users WHERE id = "));
    q.bind_text(id).push(" AND deleted_at IS NULL");
    Ok(q.query_as::<UserRow>().fetch_optional(&db.pool).await?)
}

/// A login name is a username (stored lower-case) or a phone number.
pub async fn find_for_login(db: &Db, login: &str) -> Result<Option<UserRow>, ApiError> {
    // A phone may be typed with spaces or dashes; compare its stored, normalised form.
    let phone =
        crate::users::types::normalize_phone(login).unwrap_or_else(|_| login.trim().to_string());
    let mut q = Sql::new(&format!("SELECT {COLUMNS} FROM users WHERE (username = "));
    q.bind_text(login.trim().to_ascii_lowercase())
        .push(" OR phone = ")
        .bind_text(phone)
        .push(") AND deleted_at IS NULL");
    Ok(q.query_as::<UserRow>().fetch_optional(&db.pool).await?)
}

pub async fn insert(db: &Db, u: &UserRow) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO users (id, merchant_id, username, phone, display_name, role, password_hash, \
         session_epoch, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(u.id.clone())
    .bind(u.merchant_id.clone())
    .bind(u.username.clone())
    .bind(u.phone.clone())
    .bind(u.display_name.clone())
    .bind(u.role.clone())
    .bind(u.password_hash.clone())
    .bind(u.session_epoch)
    .bind(u.created_at)
    .bind(u.updated_at)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Filters for the user list.
#[derive(Debug, Default)]
pub struct UserFilter {
    pub merchant_id: Option<String>,
    pub role: Option<String>,
    pub q: Option<String>,
}

fn scoped(sql: &mut Sql, scope: &Scope) {
    if let Some(m) = scope.merchant() {
        sql.push(" AND merchant_id = ").bind_text(m);
    }
}

pub async fn list(
    db: &Db,
    scope: &Scope,
    filter: &UserFilter,
    paging: Paging,
    order: &str,
) -> Result<Page<UserRow>, ApiError> {
    let mut where_ = Sql::new(" WHERE deleted_at IS NULL");
    scoped(&mut where_, scope);
    if let Some(m) = &filter.merchant_id {
        where_.push(" AND merchant_id = ").bind_text(m.clone());
    }
    if let Some(r) = &filter.role {
        where_.push(" AND role = ").bind_text(r.clone());
    }
    if let Some(q) = &filter.q {
        let pat = like_pattern(&q.to_ascii_lowercase());
        where_
            .push(" AND (username LIKE ")
            .bind_text(pat.clone())
            .push(" ESCAPE '\\' OR LOWER(display_name) LIKE ")
            .bind_text(pat)
            .push(" ESCAPE '\\')");
    }
    fetch_page::<UserRow>(db, "users", COLUMNS, &where_, order, paging).await
}

pub async fn get(db: &Db, scope: &Scope, id: &str) -> Result<Option<UserRow>, ApiError> {
    let mut q = Sql::new(&format!("SELECT {COLUMNS} FROM users WHERE id = "));
    q.bind_text(id).push(" AND deleted_at IS NULL");
    scoped(&mut q, scope);
    Ok(q.query_as::<UserRow>().fetch_optional(&db.pool).await?)
}

/// Applies a profile change; None fields stay as they are. Returns whether a row changed.
pub async fn update_profile(
    db: &Db,
    scope: &Scope,
    id: &str,
    display_name: Option<String>,
    phone: Option<String>,
) -> Result<bool, ApiError> {
    let mut q = Sql::new("UPDATE users SET updated_at = ");
    q.bind_int(now_ms());
    if let Some(d) = display_name {
        q.push(", display_name = ").bind_text(d);
    }
    if let Some(p) = phone {
        q.push(", phone = ").bind_text(p);
    }
    q.push(" WHERE id = ")
        .bind_text(id)
        .push(" AND deleted_at IS NULL");
    scoped(&mut q, scope);
    Ok(q.query().execute(&db.pool).await?.rows_affected() == 1)
}

/// Sets a new password hash, ends every session of the user (epoch bump + refresh token
/// revocation) in one transaction.
pub async fn set_password(
    db: &Db,
    scope: &Scope,
    id: &str,
    hash: String,
) -> Result<bool, ApiError> {
    let now = now_ms();
    let mut conn = db.pool.acquire().await?;
    let mut tx = conn.begin().await?;
    let mut q = Sql::new("UPDATE users SET password_hash = ");
    q.bind_text(hash)
        .push(", session_epoch = session_epoch + 1, updated_at = ")
        .bind_int(now)
        .push(" WHERE id = ")
        .bind_text(id)
        .push(" AND deleted_at IS NULL");
    scoped(&mut q, scope);
    let changed = q.query().execute(&mut *tx).await?.rows_affected() == 1;
    if changed {
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(changed)
}

/// Soft-deletes a user and ends their sessions.
pub async fn soft_delete(db: &Db, scope: &Scope, id: &str) -> Result<bool, ApiError> {
    let now = now_ms();
    let mut conn = db.pool.acquire().await?;
    let mut tx = conn.begin().await?;
    let mut q = Sql::new("UPDATE users SET deleted_at = ");
    q.bind_int(now)
        .push(", session_epoch = session_epoch + 1, updated_at = ")
        .bind_int(now)
        .push(" WHERE id = ")
        .bind_text(id)
        .push(" AND deleted_at IS NULL");
    scoped(&mut q, scope);
    let changed = q.query().execute(&mut *tx).await?.rows_affected() == 1;
    if changed {
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(changed)
}
