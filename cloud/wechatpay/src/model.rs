//! Typed request and response bodies. Money is integer fen (`i64`) everywhere.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(from = "String", into = "String")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
            /// A value this crate does not know yet, kept verbatim.
            Other(String),
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                match s.as_str() {
                    $($text => Self::$variant,)*
                    _ => Self::Other(s),
                }
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.as_str().to_owned()
            }
        }

        impl $name {
            /// The wire value.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)*
                    Self::Other(s) => s,
                }
            }
        }
    };
}

string_enum! {
    /// `trade_state` of a payment.
    TradeState {
        /// Paid.
        Success = "SUCCESS",
        /// Paid, then (partly) refunded.
        Refund = "REFUND",
        /// Not paid yet.
        NotPay = "NOTPAY",
        /// Closed by the merchant or expired.
        Closed = "CLOSED",
        /// Revoked (payment-code payments).
        Revoked = "REVOKED",
        /// The user is entering the password.
        UserPaying = "USERPAYING",
        /// Payment failed.
        PayError = "PAYERROR",
    }
}

string_enum! {
    /// Status of a refund. `Processing` until a notification or a query says otherwise.
    RefundStatus {
        /// Money returned.
        Success = "SUCCESS",
        /// Refund closed.
        Closed = "CLOSED",
        /// Accepted, not finished: wait for the notification or query again.
        Processing = "PROCESSING",
        /// Failed (e.g. the user's card was cancelled); needs manual handling.
        Abnormal = "ABNORMAL",
    }
}

/// The payer of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payer {
    /// The user's openid under the appid.
    pub openid: String,
}

/// Amounts of a transaction, in fen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionAmount {
    /// Order total in fen.
    pub total: i64,
    /// What the user actually paid in fen (absent until paid).
    #[serde(default)]
    pub payer_total: Option<i64>,
    /// Order currency (`CNY`).
    #[serde(default)]
    pub currency: Option<String>,
    /// Payer currency.
    #[serde(default)]
    pub payer_currency: Option<String>,
}

/// A payment as WeChat Pay reports it (query answer and `TRANSACTION.SUCCESS` notification).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// App id the order was placed under.
    pub appid: String,
    /// Merchant id.
    pub mchid: String,
    /// Our order number.
    pub out_trade_no: String,
    /// WeChat Pay's order number (absent until paid).
    #[serde(default)]
    pub transaction_id: Option<String>,
    /// `JSAPI`, `NATIVE`, …
    #[serde(default)]
    pub trade_type: Option<String>,
    /// Payment state.
    pub trade_state: TradeState,
    /// Human-readable state.
    #[serde(default)]
    pub trade_state_desc: Option<String>,
    /// Paying bank.
    #[serde(default)]
    pub bank_type: Option<String>,
    /// Our attach data, echoed.
    #[serde(default)]
    pub attach: Option<String>,
    /// RFC 3339 time of payment (see [`Transaction::success_time_unix_ms`]).
    #[serde(default)]
    pub success_time: Option<String>,
    /// Payer.
    #[serde(default)]
    pub payer: Option<Payer>,
    /// Amounts in fen.
    #[serde(default)]
    pub amount: Option<TransactionAmount>,
}

impl Transaction {
    /// `success_time` as Unix milliseconds, if present.
    pub fn success_time_unix_ms(&self) -> Result<Option<i64>> {
        self.success_time
            .as_deref()
            .map(|t| parse_rfc3339_unix_ms("success_time", t))
            .transpose()
    }
}

/// Amounts of a refund, in fen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundAmount {
    /// Original order total.
    pub total: i64,
    /// Amount refunded.
    pub refund: i64,
    /// What the user paid.
    #[serde(default)]
    pub payer_total: Option<i64>,
    /// What the user gets back.
    #[serde(default)]
    pub payer_refund: Option<i64>,
    /// Refund minus non-settled coupons.
    #[serde(default)]
    pub settlement_refund: Option<i64>,
    /// Settled order amount.
    #[serde(default)]
    pub settlement_total: Option<i64>,
    /// Coupon part of the refund.
    #[serde(default)]
    pub discount_refund: Option<i64>,
    /// Currency.
    #[serde(default)]
    pub currency: Option<String>,
}

/// A refund as WeChat Pay reports it (refund answer, refund query).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    /// WeChat Pay's refund number.
    pub refund_id: String,
    /// Our refund number (the idempotency key).
    pub out_refund_no: String,
    /// WeChat Pay order number.
    #[serde(default)]
    pub transaction_id: Option<String>,
    /// Our order number.
    #[serde(default)]
    pub out_trade_no: Option<String>,
    /// Refund channel (`ORIGINAL`, `BALANCE`, …).
    #[serde(default)]
    pub channel: Option<String>,
    /// Where the money went.
    #[serde(default)]
    pub user_received_account: Option<String>,
    /// RFC 3339 time the refund succeeded.
    #[serde(default)]
    pub success_time: Option<String>,
    /// RFC 3339 time the refund was created.
    #[serde(default)]
    pub create_time: Option<String>,
    /// Status.
    pub status: RefundStatus,
    /// Funds account.
    #[serde(default)]
    pub funds_account: Option<String>,
    /// Amounts in fen.
    pub amount: RefundAmount,
}

/// Amounts in a refund notification, in fen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundNotificationAmount {
    /// Original order total.
    pub total: i64,
    /// Amount refunded.
    pub refund: i64,
    /// What the user paid.
    #[serde(default)]
    pub payer_total: Option<i64>,
    /// What the user got back.
    #[serde(default)]
    pub payer_refund: Option<i64>,
}

/// The decrypted resource of a `REFUND.*` notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundNotification {
    /// Merchant id.
    pub mchid: String,
    /// Our order number.
    pub out_trade_no: String,
    /// WeChat Pay order number.
    pub transaction_id: String,
    /// Our refund number.
    pub out_refund_no: String,
    /// WeChat Pay refund number.
    pub refund_id: String,
    /// Status.
    pub refund_status: RefundStatus,
    /// RFC 3339 time the refund succeeded.
    #[serde(default)]
    pub success_time: Option<String>,
    /// Where the money went.
    #[serde(default)]
    pub user_received_account: Option<String>,
    /// Amounts in fen.
    pub amount: RefundNotificationAmount,
}

/// A payment to create (JSAPI or Native).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepayRequest {
    /// Our order number: 6–32 characters of `[0-9A-Za-z_-|*]`; the idempotency key.
    pub out_trade_no: String,
    /// What the user sees on the bill (at most 127 characters).
    pub description: String,
    /// Amount in fen, positive.
    pub amount_fen: i64,
    /// Optional RFC 3339 expiry (`2026-11-26T12:00:00+08:00`).
    pub time_expire: Option<String>,
    /// Optional data echoed back in queries and notifications.
    pub attach: Option<String>,
}

impl PrepayRequest {
    pub(crate) fn validate(&self) -> Result<()> {
        validate_out_no("out_trade_no", &self.out_trade_no)?;
        if self.description.is_empty() || self.description.chars().count() > 127 {
            return Err(Error::InvalidArgument {
                field: "description",
                reason: "must be 1 to 127 characters".to_owned(),
            });
        }
        if self.amount_fen <= 0 {
            return Err(Error::InvalidArgument {
                field: "amount_fen",
                reason: format!("must be a positive number of fen, got {}", self.amount_fen),
            });
        }
        Ok(())
    }
}

/// A refund to request. Reuse the same `out_refund_no` on every retry: WeChat Pay then
/// answers with the refund it already has instead of refunding twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    /// Our order number of the paid order.
    pub out_trade_no: String,
    /// Our refund number: the idempotency key.
    pub out_refund_no: String,
    /// Reason shown to the user.
    pub reason: Option<String>,
    /// Amount to refund in fen, positive, at most `total_fen`.
    pub refund_fen: i64,
    /// Original order total in fen.
    pub total_fen: i64,
}

impl RefundRequest {
    pub(crate) fn validate(&self) -> Result<()> {
        validate_out_no("out_trade_no", &self.out_trade_no)?;
        validate_out_no("out_refund_no", &self.out_refund_no)?;
        if self.total_fen <= 0 {
            return Err(Error::InvalidArgument {
                field: "total_fen",
                reason: format!("must be positive, got {}", self.total_fen),
            });
        }
        if self.refund_fen <= 0 || self.refund_fen > self.total_fen {
            return Err(Error::InvalidArgument {
                field: "refund_fen",
                reason: format!(
                    "must be between 1 and total_fen {}, got {}",
                    self.total_fen, self.refund_fen
                ),
            });
        }
        Ok(())
    }
}

/// Checks an order/refund number: it becomes part of a URL path, so only the documented
/// characters are allowed.
pub(crate) fn validate_out_no(field: &'static str, value: &str) -> Result<()> {
    let ok_len = (1..=64).contains(&value.len());
    let ok_chars = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '|' | '*' | '@'));
    if ok_len && ok_chars {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            field,
            reason: format!("{value:?} must be 1-64 characters of 0-9 A-Z a-z _ - | * @"),
        })
    }
}

/// Parses an RFC 3339 time as WeChat Pay writes it (`2026-11-26T10:34:56+08:00`, optionally
/// with fractional seconds or `Z`) into Unix milliseconds.
pub fn parse_rfc3339_unix_ms(field: &'static str, text: &str) -> Result<i64> {
    let bad = || Error::Encoding {
        field,
        reason: format!("{text:?} is not an RFC 3339 time like 2026-11-26T10:34:56+08:00"),
    };
    let b = text.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| -> Result<i64> {
        text.get(range)
            .filter(|s| s.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(bad)
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    let mut rest = text.get(19..).ok_or_else(bad)?;
    let mut millis = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let ms_text: String = frac[..digits]
            .chars()
            .chain("000".chars())
            .take(3)
            .collect();
        millis = ms_text.parse().map_err(|_| bad())?;
        rest = &frac[digits..];
    }
    let offset_secs = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return Err(bad()),
            };
            let h: i64 = rest
                .get(1..3)
                .and_then(|t| t.parse().ok())
                .ok_or_else(bad)?;
            let m: i64 = rest
                .get(4..6)
                .and_then(|t| t.parse().ok())
                .ok_or_else(bad)?;
            sign * (h * 3600 + m * 60)
        }
        _ => return Err(bad()),
    };
    // Days from civil (proleptic Gregorian), after Howard Hinnant's algorithm.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Ok(secs * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_states_are_kept() {
        let s: TradeState = serde_json::from_str("\"NEWSTATE\"").unwrap_or(TradeState::Success);
        assert_eq!(s, TradeState::Other("NEWSTATE".into()));
        let s: TradeState = serde_json::from_str("\"NOTPAY\"").unwrap_or(TradeState::Success);
        assert_eq!(s, TradeState::NotPay);
        assert_eq!(
            serde_json::to_string(&RefundStatus::Processing)
                .ok()
                .as_deref(),
            Some("\"PROCESSING\"")
        );
    }

    #[test]
    fn rfc3339_with_offset() {
        // 2026-11-26T02:34:56Z
        assert_eq!(
            parse_rfc3339_unix_ms("t", "2026-11-26T10:34:56+08:00").ok(),
            Some(1_795_660_496_000)
        );
        assert_eq!(
            parse_rfc3339_unix_ms("t", "1970-01-01T00:00:00Z").ok(),
            Some(0)
        );
        assert_eq!(
            parse_rfc3339_unix_ms("t", "1970-01-01T00:00:01.5Z").ok(),
            Some(1500)
        );
        assert!(parse_rfc3339_unix_ms("t", "2026-13-26T10:34:56+08:00").is_err());
        assert!(parse_rfc3339_unix_ms("t", "yesterday").is_err());
    }

    #[test]
    fn out_numbers_are_checked() {
        assert!(validate_out_no("f", "DMR-2026_01").is_ok());
        assert!(validate_out_no("f", "../../x").is_err());
        assert!(validate_out_no("f", "").is_err());
    }

    #[test]
    fn refund_bounds() {
        let mut r = RefundRequest {
            out_trade_no: "A1".into(),
            out_refund_no: "R1".into(),
            reason: None,
            refund_fen: 101,
            total_fen: 100,
        };
        assert!(r.validate().is_err());
        r.refund_fen = 100;
        assert!(r.validate().is_ok());
    }
}
