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
    /// What the gateway's last `state`/heartbeat said (the gateway link keeps it).
    #[serde(serialize_with = "int_as_bool")]
    pub online: i64,
    pub agent_version: Option<String>,
    /// Events waiting in the gateway's outbox, from its newest heartbeat.
    pub outbox_pending: Option<i64>,
    pub outbox_oldest_age_s: Option<i64>,
}

/// Flags are BIGINT 0/1 in the database (portable SQL) and booleans in JSON.
fn int_as_bool<S: serde::Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bool(*v != 0)
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
    "online",
    "agent_version",
    "outbox_pending",
    "outbox_oldest_age_s",
];
