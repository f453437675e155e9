//! Merchant shapes and validation.

use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// A merchant as stored and shown.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Merchant {
    pub id: String,
    pub name: String,
    pub contact_phone: Option<String>,
    /// Platform commission in basis points (1/100 of a percent), 0..=10000.
    pub commission_bp: i64,
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateMerchant {
    pub name: String,
    #[serde(default)]
    pub contact_phone: Option<String>,
    pub commission_bp: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateMerchant {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub contact_phone: Option<String>,
    #[serde(default)]
    pub commission_bp: Option<i64>,
    #[serde(default)]
    pub status: Option<String>,
}

pub fn check_name(field: &str, raw: &str) -> Result<String, ApiError> {
    let n = raw.trim();
    if n.is_empty() || n.chars().count() > 100 {
        return Err(ApiError::validation(field, "1-100 characters"));
    }
    Ok(n.to_string())
}

pub fn check_commission(bp: i64) -> Result<i64, ApiError> {
    if (0..=10_000).contains(&bp) {
        Ok(bp)
    } else {
        Err(ApiError::validation(
            "commission_bp",
            "basis points in 0..=10000",
        ))
    }
}

pub fn check_status(raw: &str) -> Result<String, ApiError> {
    match raw {
        "active" | "suspended" => Ok(raw.to_string()),
        _ => Err(ApiError::validation("status", "active or suspended")),
    }
}
