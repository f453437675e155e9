//! User shapes: the stored row, what the API shows, and validated input.

use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::rbac::Role;

/// A row of `users`.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct UserRow {
    pub id: String,
    pub merchant_id: Option<String>,
    pub username: String,
    pub phone: Option<String>,
    pub display_name: String,
    pub role: String,
    pub password_hash: String,
    pub session_epoch: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A user as the API shows it: never the hash.
#[derive(Clone, Debug, Serialize)]
pub struct User {
    pub id: String,
    pub merchant_id: Option<String>,
    pub username: String,
    pub phone: Option<String>,
    pub display_name: String,
    pub role: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> User {
        User {
            id: r.id,
            merchant_id: r.merchant_id,
            username: r.username,
            phone: r.phone,
            display_name: r.display_name,
            role: r.role,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Body of `POST /api/v1/users`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub username: String,
    pub password: String,
    pub display_name: String,
    pub role: String,
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub merchant_id: Option<String>,
}

/// Body of `PATCH /api/v1/users/{id}`; role and merchant are not changeable here.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

/// Body of `PATCH /api/v1/me`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateMe {
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
}

/// Usernames are lower-case, start with a letter (so they never look like a phone number,
/// the other login form) and use a small alphabet.
pub fn normalize_username(raw: &str) -> Result<String, ApiError> {
    let u = raw.trim().to_ascii_lowercase();
    let ok_len = (3..=64).contains(&u.len());
    let ok_first = u.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    let ok_chars = u
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if ok_len && ok_first && ok_chars {
        Ok(u)
    } else {
        Err(ApiError::validation(
            "username",
            "3-64 characters a-z 0-9 . _ -, starting with a letter",
        ))
    }
}

/// Phones: digits with an optional leading `+`, 6 to 20 digits.
pub fn normalize_phone(raw: &str) -> Result<String, ApiError> {
    let p: String = raw.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    let digits = p.strip_prefix('+').unwrap_or(&p);
    if (6..=20).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit()) {
        Ok(p)
    } else {
        Err(ApiError::validation(
            "phone",
            "6-20 digits, optionally starting with +",
        ))
    }
}

pub fn check_display_name(raw: &str) -> Result<String, ApiError> {
    let d = raw.trim();
    if d.is_empty() || d.chars().count() > 100 {
        return Err(ApiError::validation("display_name", "1-100 characters"));
    }
    Ok(d.to_string())
}

pub fn parse_role(raw: &str) -> Result<Role, ApiError> {
    Role::parse(raw).ok_or_else(|| {
        ApiError::validation(
            "role",
            "one of platform_admin, merchant_owner, merchant_staff, technician",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_and_phones() {
        assert_eq!(normalize_username(" Alice.W ").unwrap(), "alice.w");
        assert!(normalize_username("13800138000").is_err());
        assert!(normalize_username("ab").is_err());
        assert!(normalize_username("a b c").is_err());
        assert_eq!(
            normalize_phone("+86 138-0013-8000").unwrap(),
            "+8613800138000"
        );
        assert!(normalize_phone("12ab56").is_err());
    }
}
