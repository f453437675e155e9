//! Lock and price-plan shapes and validation.

use serde::{Deserialize, Serialize};

use crate::error::ApiError;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct LockRow {
    pub id: String,
    pub merchant_id: String,
    pub venue_id: String,
    pub gateway_id: String,
    pub name: String,
    pub device_code: String,
    pub bus_address: i64,
    pub qr_code: String,
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// Live state the gateway link writes (BIGINT 0/1 flags; NULL until first reported).
    pub door_closed: Option<i64>,
    pub locked: Option<i64>,
    pub fw_version: Option<String>,
    pub last_heartbeat_at: Option<i64>,
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct PricePlan {
    pub id: String,
    #[serde(skip)]
    pub lock_id: String,
    pub name: String,
    pub duration_minutes: i64,
    pub price_fen: i64,
}

/// A lock as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Lock {
    pub id: String,
    pub merchant_id: String,
    pub venue_id: String,
    pub gateway_id: String,
    pub name: String,
    pub device_code: String,
    pub bus_address: i64,
    pub qr_code: String,
    /// What the printed QR code encodes: the H5 page for this lock.
    pub qr_payload: String,
    pub status: String,
    pub price_plans: Vec<PricePlan>,
    /// Live state from the lock's heartbeats and door events, so the console shows it on
    /// first load without waiting for the live stream; null until the lock has reported it.
    pub door_closed: Option<bool>,
    pub locked: Option<bool>,
    pub fw_version: Option<String>,
    pub last_heartbeat_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Lock {
    pub fn from_row(r: LockRow, plans: Vec<PricePlan>, public_base_url: &str) -> Lock {
        Lock {
            qr_payload: format!("{public_base_url}/q/{}", r.qr_code),
            id: r.id,
            merchant_id: r.merchant_id,
            venue_id: r.venue_id,
            gateway_id: r.gateway_id,
            name: r.name,
            device_code: r.device_code,
            bus_address: r.bus_address,
            qr_code: r.qr_code,
            status: r.status,
            price_plans: plans,
            door_closed: r.door_closed.map(|v| v != 0),
            locked: r.locked.map(|v| v != 0),
            fw_version: r.fw_version,
            last_heartbeat_at: r.last_heartbeat_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricePlanInput {
    pub name: String,
    pub duration_minutes: i64,
    pub price_fen: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateLock {
    pub gateway_id: String,
    pub device_code: String,
    pub bus_address: i64,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub price_plans: Vec<PricePlanInput>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateLock {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub gateway_id: Option<String>,
    #[serde(default)]
    pub bus_address: Option<i64>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub price_plans: Option<Vec<PricePlanInput>>,
}

/// Set by the cloud, never by a client.
pub const PROTECTED: &[&str] = &[
    "id",
    "merchant_id",
    "venue_id",
    "qr_code",
    "qr_payload",
    "door_closed",
    "locked",
    "fw_version",
    "last_heartbeat_at",
];

pub const MAX_PLANS: usize = 20;

pub fn check_bus_address(a: i64) -> Result<i64, ApiError> {
    if (1..=247).contains(&a) {
        Ok(a)
    } else {
        Err(ApiError::validation(
            "bus_address",
            "Modbus address in 1..=247",
        ))
    }
}

pub fn check_device_code(raw: &str) -> Result<String, ApiError> {
    let c = raw.trim();
    let ok = (1..=64).contains(&c.len())
        && c.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_'));
    if ok {
        Ok(c.to_string())
    } else {
        Err(ApiError::validation(
            "device_code",
            "1-64 characters A-Z a-z 0-9 - _",
        ))
    }
}

pub fn check_lock_name(raw: &str) -> Result<String, ApiError> {
    let n = raw.trim();
    if n.chars().count() > 100 {
        return Err(ApiError::validation("name", "at most 100 characters"));
    }
    Ok(n.to_string())
}

pub fn check_status(raw: &str) -> Result<String, ApiError> {
    // online/offline come from heartbeats; a client may only take a lock out of service or
    // put it back.
    match raw {
        "disabled" | "unknown" => Ok(raw.to_string()),
        _ => Err(ApiError::validation("status", "disabled or unknown")),
    }
}

pub fn check_plans(plans: &[PricePlanInput]) -> Result<(), ApiError> {
    if plans.len() > MAX_PLANS {
        return Err(ApiError::validation(
            "price_plans",
            format!("at most {MAX_PLANS} plans"),
        ));
    }
    for (i, p) in plans.iter().enumerate() {
        let n = p.name.trim();
        if n.is_empty() || n.chars().count() > 50 {
            return Err(ApiError::validation(
                format!("price_plans[{i}].name"),
                "1-50 characters",
            ));
        }
        if !(1..=10_080).contains(&p.duration_minutes) {
            return Err(ApiError::validation(
                format!("price_plans[{i}].duration_minutes"),
                "1..=10080 minutes",
            ));
        }
        if !(1..=100_000_000).contains(&p.price_fen) {
            return Err(ApiError::validation(
                format!("price_plans[{i}].price_fen"),
                "must be > 0 fen (and at most 1,000,000 yuan)",
            ));
        }
    }
    Ok(())
}

/// A random QR code: 12 characters from an alphabet without look-alikes (no 0/O, 1/I).
pub fn new_qr_code() -> String {
    use rand_core::RngCore as _;
    const ALPHABET: &[u8] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZ";
    let mut bytes = [0u8; 12];
    rand_core::OsRng.fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}
