//! Gateway shapes.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Gateway {
    pub id: String,
    pub merchant_id: String,
    pub venue_id: String,
    pub name: String,
    /// `pending` until enrolled, then `enrolled`; `retired` when replaced.
    pub status: String,
    pub public_key: Option<String>,
    pub enrolled_at: Option<i64>,
    pub last_seen_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGateway {
    pub venue_id: String,
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateGateway {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub venue_id: Option<String>,
}

/// Fields only the cloud itself sets (enrollment, heartbeats).
pub const PROTECTED: &[&str] = &[
    "id",
    "merchant_id",
    "status",
    "public_key",
    "enrolled_at",
    "last_seen_at",
];
