//! Trade bills: the daily statement WeChat Pay publishes for reconciliation.
//!
//! The file has four parts: a header line, detail lines whose every field starts with a
//! backtick (so spreadsheets keep long numbers as text), a summary header and a summary line.
//! Amounts are in yuan with two decimals; this module turns them into fen. Columns are found
//! by their header names, not positions, because the layout differs between bill types and
//! merchant kinds.

use serde::{Deserialize, Serialize};
use sha1::{Digest as _, Sha1};

use crate::error::{Error, Result};

/// Which rows a trade bill contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillType {
    /// Payments and refunds.
    All,
    /// Successful payments only.
    Success,
    /// Refunds only.
    Refund,
}

impl BillType {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            BillType::All => "ALL",
            BillType::Success => "SUCCESS",
            BillType::Refund => "REFUND",
        }
    }
}

/// The answer to "apply for a trade bill".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillLocation {
    /// `SHA1`.
    pub hash_type: String,
    /// Hex hash of the file.
    pub hash_value: String,
    /// Where to fetch the file (valid for a few minutes, needs a signed GET).
    pub download_url: String,
}

/// One detail line of a trade bill. Amounts in fen; identifiers verbatim (`0` where the
/// bill has no value, as WeChat Pay writes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeBillRow {
    /// `交易时间`, `yyyy-MM-dd HH:mm:ss` in China time.
    pub trade_time: String,
    /// `公众账号ID`.
    pub appid: String,
    /// `商户号`.
    pub mchid: String,
    /// `微信订单号`.
    pub transaction_id: String,
    /// `商户订单号`.
    pub out_trade_no: String,
    /// `用户标识` (openid).
    pub openid: String,
    /// `交易类型`.
    pub trade_type: String,
    /// `交易状态` (`SUCCESS`, `REFUND`, …).
    pub trade_state: String,
    /// `应结订单金额`.
    pub settlement_total_fen: i64,
    /// `微信退款单号`.
    pub refund_id: String,
    /// `商户退款单号`.
    pub out_refund_no: String,
    /// `退款金额`.
    pub refund_fen: i64,
    /// `退款状态`.
    pub refund_status: String,
    /// `手续费` (negative for fees returned on refunds).
    pub fee_fen: i64,
    /// `订单金额`.
    pub order_total_fen: i64,
    /// `申请退款金额`.
    pub requested_refund_fen: i64,
}

/// The summary line of a trade bill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeBillSummary {
    /// `总交易单数`.
    pub total_count: i64,
    /// `应结订单总金额`.
    pub settlement_total_fen: i64,
    /// `退款总金额`.
    pub refund_total_fen: i64,
    /// `手续费总金额`.
    pub fee_total_fen: i64,
    /// `订单总金额`.
    pub order_total_fen: i64,
    /// `申请退款总金额`.
    pub requested_refund_total_fen: i64,
}

/// A parsed trade bill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeBill {
    /// Detail lines.
    pub rows: Vec<TradeBillRow>,
    /// Summary line.
    pub summary: TradeBillSummary,
}

/// Checks `data` against the hash WeChat Pay announced.
pub fn verify_hash(location: &BillLocation, data: &[u8]) -> Result<()> {
    if !location.hash_type.eq_ignore_ascii_case("SHA1") {
        return Err(Error::UnexpectedResponse {
            operation: "trade_bill",
            reason: format!(
                "hash_type {:?}, only SHA1 is documented",
                location.hash_type
            ),
        });
    }
    let actual = hex::encode(Sha1::digest(data));
    if actual.eq_ignore_ascii_case(location.hash_value.trim()) {
        Ok(())
    } else {
        Err(Error::BillHashMismatch {
            expected: location.hash_value.clone(),
            actual,
        })
    }
}

/// Converts a yuan amount (`1234.56`, `-0.01`, `3`) to fen. More than two decimals are
/// accepted only when the extra digits are zero, so no money is silently rounded.
pub fn parse_yuan_to_fen(text: &str) -> Option<i64> {
    let text = text.trim();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    if frac.len() > 2 && !frac[2..].bytes().all(|b| b == b'0') {
        return None;
    }
    let mut cents = 0i64;
    for (i, b) in frac.bytes().take(2).enumerate() {
        let digit = i64::from(b - b'0');
        cents += if i == 0 { digit * 10 } else { digit };
    }
    let yuan: i64 = whole.parse().ok()?;
    let fen = yuan.checked_mul(100)?.checked_add(cents)?;
    Some(if negative { -fen } else { fen })
}

const SUMMARY_MARKER: &str = "总交易单数";

struct Columns<'h> {
    names: Vec<&'h str>,
}

impl<'h> Columns<'h> {
    fn index(&self, name: &str, line: usize) -> Result<usize> {
        self.names
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| Error::BillFormat {
                line,
                reason: format!("header has no column {name}"),
            })
    }
}

fn split_fields(line: &str) -> Vec<&str> {
    // Detail fields each start with a backtick; splitting on ",`" keeps commas that appear
    // inside a value (a product name, say) in that value.
    match line.strip_prefix('`') {
        Some(rest) => rest.split(",`").collect(),
        None => line.split(',').collect(),
    }
}

/// Parses a trade bill file.
pub fn parse_trade_bill(text: &str) -> Result<TradeBill> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty());
    let (header_no, header_line) = lines.next().ok_or(Error::BillFormat {
        line: 1,
        reason: "the bill is empty".to_owned(),
    })?;
    let header = Columns {
        names: header_line.split(',').map(str::trim).collect(),
    };
    let col = |name| header.index(name, header_no);
    let c = [
        col("交易时间")?,
        col("公众账号ID")?,
        col("商户号")?,
        col("微信订单号")?,
        col("商户订单号")?,
        col("用户标识")?,
        col("交易类型")?,
        col("交易状态")?,
        col("应结订单金额")?,
        col("微信退款单号")?,
        col("商户退款单号")?,
        col("退款金额")?,
        col("退款状态")?,
        col("手续费")?,
        col("订单金额")?,
        col("申请退款金额")?,
    ];
    let mut rows = Vec::new();
    let mut summary = None;
    while let Some((no, line)) = lines.next() {
        if line.starts_with(SUMMARY_MARKER) {
            let names: Vec<&str> = line.split(',').map(str::trim).collect();
            let (value_no, value_line) = lines.next().ok_or(Error::BillFormat {
                line: no,
                reason: "summary header is not followed by a summary line".to_owned(),
            })?;
            summary = Some(parse_summary(&Columns { names }, no, value_no, value_line)?);
            break;
        }
        let fields = split_fields(line);
        if fields.len() != header.names.len() {
            return Err(Error::BillFormat {
                line: no,
                reason: format!(
                    "{} fields, the header has {}",
                    fields.len(),
                    header.names.len()
                ),
            });
        }
        let text_at = |i: usize| {
            fields
                .get(i)
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        let fen_at = |i: usize| -> Result<i64> {
            let raw = fields.get(i).copied().unwrap_or("");
            parse_yuan_to_fen(raw).ok_or_else(|| Error::BillFormat {
                line: no,
                reason: format!(
                    "column {} holds {raw:?}, not a yuan amount",
                    header.names.get(i).copied().unwrap_or("?")
                ),
            })
        };
        rows.push(TradeBillRow {
            trade_time: text_at(c[0]),
            appid: text_at(c[1]),
            mchid: text_at(c[2]),
            transaction_id: text_at(c[3]),
            out_trade_no: text_at(c[4]),
            openid: text_at(c[5]),
            trade_type: text_at(c[6]),
            trade_state: text_at(c[7]),
            settlement_total_fen: fen_at(c[8])?,
            refund_id: text_at(c[9]),
            out_refund_no: text_at(c[10]),
            refund_fen: fen_at(c[11])?,
            refund_status: text_at(c[12]),
            fee_fen: fen_at(c[13])?,
            order_total_fen: fen_at(c[14])?,
            requested_refund_fen: fen_at(c[15])?,
        });
    }
    let summary = summary.ok_or(Error::BillFormat {
        line: text.lines().count(),
        reason: format!("no summary section ({SUMMARY_MARKER} …): the file is truncated"),
    })?;
    Ok(TradeBill { rows, summary })
}

fn parse_summary(
    names: &Columns<'_>,
    header_no: usize,
    no: usize,
    line: &str,
) -> Result<TradeBillSummary> {
    let fields = split_fields(line);
    if fields.len() != names.names.len() {
        return Err(Error::BillFormat {
            line: no,
            reason: format!(
                "{} summary fields, the summary header has {}",
                fields.len(),
                names.names.len()
            ),
        });
    }
    let fen = |name: &str| -> Result<i64> {
        let i = names.index(name, header_no)?;
        let raw = fields.get(i).copied().unwrap_or("");
        parse_yuan_to_fen(raw).ok_or_else(|| Error::BillFormat {
            line: no,
            reason: format!("summary column {name} holds {raw:?}, not a yuan amount"),
        })
    };
    let count_raw = fields
        .get(names.index(SUMMARY_MARKER, header_no)?)
        .copied()
        .unwrap_or("");
    let total_count = count_raw.trim().parse().map_err(|_| Error::BillFormat {
        line: no,
        reason: format!("summary column {SUMMARY_MARKER} holds {count_raw:?}, not a count"),
    })?;
    Ok(TradeBillSummary {
        total_count,
        settlement_total_fen: fen("应结订单总金额")?,
        refund_total_fen: fen("退款总金额")?,
        fee_total_fen: fen("手续费总金额")?,
        order_total_fen: fen("订单总金额")?,
        requested_refund_total_fen: fen("申请退款总金额")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuan_to_fen() {
        assert_eq!(parse_yuan_to_fen("1234.56"), Some(123_456));
        assert_eq!(parse_yuan_to_fen("0.01"), Some(1));
        assert_eq!(parse_yuan_to_fen("-0.01"), Some(-1));
        assert_eq!(parse_yuan_to_fen("3"), Some(300));
        assert_eq!(parse_yuan_to_fen("3.5"), Some(350));
        assert_eq!(parse_yuan_to_fen("0.00000"), Some(0));
        assert_eq!(parse_yuan_to_fen("0.005"), None);
        assert_eq!(parse_yuan_to_fen("abc"), None);
        assert_eq!(parse_yuan_to_fen(""), None);
        assert_eq!(parse_yuan_to_fen("99999999999999999999"), None);
    }

    #[test]
    fn truncated_bill_is_refused() {
        let text = "交易时间,公众账号ID,商户号,微信订单号,商户订单号,用户标识,交易类型,交易状态,应结订单金额,微信退款单号,商户退款单号,退款金额,退款状态,手续费,订单金额,申请退款金额\n";
        let err = parse_trade_bill(text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn missing_column_is_named() {
        let err = parse_trade_bill("交易时间,商户号\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("公众账号ID"), "{err}");
    }

    #[test]
    fn hash_mismatch_is_an_error() {
        let loc = BillLocation {
            hash_type: "SHA1".into(),
            hash_value: "0000000000000000000000000000000000000000".into(),
            download_url: String::new(),
        };
        assert!(matches!(
            verify_hash(&loc, b"x"),
            Err(Error::BillHashMismatch { .. })
        ));
        let loc = BillLocation {
            hash_value: "11f6ad8ec52a2984abaafd7c3b516503785c2072".into(),
            ..loc
        };
        assert!(verify_hash(&loc, b"x").is_ok());
    }
}
