//! Venue shapes.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Venue {
    pub id: String,
    pub merchant_id: String,
    pub name: String,
    pub address: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVenue {
    pub name: String,
    #[serde(default)]
    pub address: Option<String>,
    /// Platform admins say which merchant; merchant users may not (it is theirs).
    #[serde(default)]
    pub merchant_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateVenue {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub address: Option<String>,
}
