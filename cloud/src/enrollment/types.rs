//! Enrollment code shapes.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct CodeRow {
    pub id: String,
    pub merchant_id: String,
    pub venue_id: String,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub used_by_gateway: Option<String>,
    /// The gateway this code (re-)enrolls; None: enrollment creates a new gateway.
    pub gateway_id: Option<String>,
    pub created_by: String,
    pub created_at: i64,
}

/// A code as listed: never the code itself.
#[derive(Clone, Debug, Serialize)]
pub struct EnrollmentCode {
    pub id: String,
    pub merchant_id: String,
    pub venue_id: String,
    /// `active`, `used` or `expired`.
    pub status: &'static str,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub used_by_gateway: Option<String>,
    pub gateway_id: Option<String>,
    pub created_by: String,
    pub created_at: i64,
}

impl EnrollmentCode {
    pub fn from_row(r: CodeRow, now: i64) -> EnrollmentCode {
        let status = if r.used_at.is_some() {
            "used"
        } else if r.expires_at <= now {
            "expired"
        } else {
            "active"
        };
        EnrollmentCode {
            id: r.id,
            merchant_id: r.merchant_id,
            venue_id: r.venue_id,
            status,
            expires_at: r.expires_at,
            used_at: r.used_at,
            used_by_gateway: r.used_by_gateway,
            gateway_id: r.gateway_id,
            created_by: r.created_by,
            created_at: r.created_at,
        }
    }
}

/// The create response: the only time the code is shown.
#[derive(Clone, Debug, Serialize)]
pub struct CreatedCode {
    #[serde(flatten)]
    pub code_info: EnrollmentCode,
    pub code: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCode {
    pub venue_id: String,
    /// Minutes until the code expires; 60 when absent, at most 7 days.
    #[serde(default)]
    pub ttl_minutes: Option<i64>,
    /// Re-enroll this (pending or enrolled) gateway of the venue instead of creating one.
    #[serde(default)]
    pub gateway_id: Option<String>,
}

/// Codes are 10 characters from an alphabet without look-alikes, shown as `XXXXX-XXXXX`
/// (50 bits; they are also one-time and expire).
pub fn new_code() -> String {
    use rand_core::RngCore as _;
    const ALPHABET: &[u8] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZ";
    let mut bytes = [0u8; 10];
    rand_core::OsRng.fill_bytes(&mut bytes);
    let chars: String = bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect();
    format!("{}-{}", &chars[..5], &chars[5..])
}

/// The form that is hashed: upper-case, without separators, so `abcde-fghjk` typed by a
/// technician matches.
pub fn normalize_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_the_documented_shape() {
        let c = new_code();
        assert_eq!(c.len(), 11);
        assert_eq!(&c[5..6], "-");
        assert_eq!(normalize_code(&c.to_lowercase()), normalize_code(&c));
        assert_ne!(new_code(), new_code());
    }
}
