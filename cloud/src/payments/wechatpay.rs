//! The `wechatpay` payment provider: the cloud's [`PaymentProvider`] over the WeChat Pay API
//! v3 client of `dmr-wechatpay`.
//!
//! The client does the cryptography and the resilience (signing, verifying answers and
//! notifications against the platform certificate or the WeChat Pay public key, AES-256-GCM,
//! timeouts, bounded retries with the same idempotency key, the circuit breaker); this module
//! only translates between the two vocabularies. Creating a payment is JSAPI when the payer's
//! openid is known (the H5 page inside WeChat, after its OAuth step) and Native otherwise (a
//! `code_url` to show as a QR code). Errors are sorted for the callers: outages and an open
//! breaker become [`ProviderError::Unavailable`] (the H5 endpoints answer 503, the jobs try
//! again later with the same `out_trade_no` / `out_refund_no`), a definite "no" from WeChat
//! Pay becomes [`ProviderError::Refused`]. A notification is verified over the raw body before
//! anything is parsed; every way it can fail to be authentic (missing headers, stale
//! timestamp, bad signature, unknown key, undecryptable resource) is
//! [`NotifyError::Authentication`], and the signature-test probe is
//! [`NotifyError::SignatureProbe`], so the route answers all of them 4xx.

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use dmr_wechatpay::{
    BillType, Error as WxError, Notification, PrepayRequest, RefundStatus, TradeState,
    WechatPayClient, WechatPayConfig,
};

use super::{
    BillRow, BoxFut, CreatePayment, NotifyError, PaymentQuery, PaymentStep, ProviderError,
    ProviderNotification, RefundRequest, RefundState,
};
use crate::orders::money::{shanghai_day, shanghai_day_start};

/// The provider. Cheap to share: the client is reference counted.
#[derive(Debug)]
pub struct WechatPay {
    client: WechatPayClient,
    mchid: String,
    appid: String,
}

impl WechatPay {
    /// Builds the client from a validated configuration (see `config::wechatpay_section`).
    pub fn new(config: &WechatPayConfig) -> Result<WechatPay, WxError> {
        Ok(WechatPay {
            client: WechatPayClient::new(config)?,
            mchid: config.mchid.clone(),
            appid: config.appid.clone(),
        })
    }

    /// The underlying client (health endpoints read its breaker).
    pub fn client(&self) -> &WechatPayClient {
        &self.client
    }
}

/// Sorts a client error for the callers of the trait.
fn provider_error(e: WxError) -> ProviderError {
    if e.is_not_found() {
        return ProviderError::NotFound;
    }
    match e {
        WxError::Api { .. } if !e.is_retryable() => ProviderError::Refused(e.to_string()),
        WxError::InvalidArgument { .. } => ProviderError::Refused(e.to_string()),
        // Timeouts, transport, 5xx/429, an open breaker, and answers that failed
        // verification or parsing: nothing trustworthy came back, so it is an outage to us.
        other => ProviderError::Unavailable(other.to_string()),
    }
}

/// `2026-11-26T12:00:00+08:00` for a Unix millisecond time (WeChat Pay wants China time).
pub fn rfc3339_shanghai(ms: i64) -> String {
    const DAY: i64 = 86_400_000;
    let of_day = (ms + 8 * 3_600_000).rem_euclid(DAY) / 1000;
    format!(
        "{}T{:02}:{:02}:{:02}+08:00",
        shanghai_day(ms),
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// A bill's `yyyy-MM-dd HH:mm:ss` China time as Unix milliseconds.
fn bill_time_ms(text: &str) -> Option<i64> {
    let (day, time) = text.trim().split_once(' ')?;
    let start = shanghai_day_start(day)?;
    let mut parts = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    if parts.next().is_some()
        || !(0..24).contains(&h)
        || !(0..60).contains(&m)
        || !(0..61).contains(&s)
    {
        return None;
    }
    Some(start + ((h * 60 + m) * 60 + s) * 1000)
}

/// At most `max` characters (WeChat Pay counts characters, not bytes).
fn clip(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

fn refund_state(refund_id: String, status: &RefundStatus) -> RefundState {
    match status {
        RefundStatus::Success => RefundState::Succeeded { refund_id },
        RefundStatus::Processing => RefundState::Processing { refund_id },
        RefundStatus::Closed => RefundState::Failed {
            reason: "WeChat Pay closed the refund".into(),
        },
        RefundStatus::Abnormal => RefundState::Failed {
            reason: "WeChat Pay reports the refund abnormal (e.g. the payer's card is closed)"
                .into(),
        },
        // An unknown state is not final: keep asking with the same refund number.
        RefundStatus::Other(_) => RefundState::Processing { refund_id },
    }
}

impl super::PaymentProvider for WechatPay {
    fn name(&self) -> &'static str {
        "wechatpay"
    }

    fn expected_ids(&self) -> (String, String) {
        (self.mchid.clone(), self.appid.clone())
    }

    fn create_payment<'a>(&'a self, req: &'a CreatePayment) -> BoxFut<'a, PaymentStep> {
        Box::pin(async move {
            let description = if req.description.trim().is_empty() {
                "Dumeiren unlock".to_string()
            } else {
                clip(&req.description, 127)
            };
            let prepay = PrepayRequest {
                out_trade_no: req.out_trade_no.clone(),
                description,
                amount_fen: req.amount_fen,
                time_expire: Some(rfc3339_shanghai(req.expires_at_ms)),
                attach: None,
            };
            match req.payer_openid.as_deref().filter(|o| !o.is_empty()) {
                Some(openid) => {
                    let p = self
                        .client
                        .jsapi_prepay(&prepay, openid)
                        .await
                        .map_err(provider_error)?;
                    // The names `WeixinJSBridge.invoke('getBrandWCPayRequest')` expects.
                    let jsapi = BTreeMap::from([
                        ("appId".to_string(), p.params.app_id),
                        ("timeStamp".to_string(), p.params.time_stamp),
                        ("nonceStr".to_string(), p.params.nonce_str),
                        ("package".to_string(), p.params.package),
                        ("signType".to_string(), p.params.sign_type),
                        ("paySign".to_string(), p.params.pay_sign),
                    ]);
                    Ok(PaymentStep {
                        provider: "wechat".into(),
                        redirect_url: None,
                        jsapi: Some(jsapi),
                        code_url: None,
                    })
                }
                None => {
                    let p = self
                        .client
                        .native_prepay(&prepay)
                        .await
                        .map_err(provider_error)?;
                    Ok(PaymentStep {
                        provider: "wechat".into(),
                        redirect_url: None,
                        jsapi: None,
                        code_url: Some(p.code_url),
                    })
                }
            }
        })
    }

    fn parse_notification(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_ms: i64,
    ) -> Result<ProviderNotification, NotifyError> {
        let n = self
            .client
            .notification_verifier()
            .parse(headers, body, now_ms.div_euclid(1000))
            .map_err(|e| match e {
                WxError::SignatureProbe => NotifyError::SignatureProbe,
                // Verified but not JSON we understand (the envelope or the decrypted
                // resource): authentic yet unusable.
                WxError::Json { .. } => NotifyError::Malformed(e.to_string()),
                // Headers, timestamp, signature, unknown key, and a resource whose
                // ciphertext, tag, nonce or associated data was altered.
                other => NotifyError::Authentication(other.to_string()),
            })?;
        match n {
            Notification::Transaction {
                id,
                event_type,
                transaction: t,
            } => {
                if event_type != "TRANSACTION.SUCCESS" || t.trade_state != TradeState::Success {
                    return Err(NotifyError::Malformed(format!(
                        "{event_type} with trade_state {} is not a payment",
                        t.trade_state.as_str()
                    )));
                }
                let transaction_id = t
                    .transaction_id
                    .clone()
                    .ok_or_else(|| NotifyError::Malformed("missing transaction_id".into()))?;
                let amount_fen = t
                    .amount
                    .as_ref()
                    .map(|a| a.total)
                    .ok_or_else(|| NotifyError::Malformed("missing amount.total".into()))?;
                let paid_at_ms = t
                    .success_time_unix_ms()
                    .map_err(|e| NotifyError::Malformed(e.to_string()))?
                    .unwrap_or(now_ms);
                Ok(ProviderNotification::Payment {
                    notification_id: id,
                    out_trade_no: t.out_trade_no,
                    transaction_id,
                    amount_fen,
                    mchid: t.mchid,
                    appid: t.appid,
                    paid_at_ms,
                })
            }
            Notification::Refund {
                id,
                event_type,
                refund,
            } => {
                if refund.mchid != self.mchid {
                    return Err(NotifyError::Malformed(format!(
                        "refund notification for merchant id {} is not ours",
                        refund.mchid
                    )));
                }
                let succeeded = match refund.refund_status {
                    RefundStatus::Success => true,
                    RefundStatus::Abnormal | RefundStatus::Closed => false,
                    _ => {
                        return Err(NotifyError::Malformed(format!(
                            "{event_type} with refund_status {} is not final",
                            refund.refund_status.as_str()
                        )));
                    }
                };
                Ok(ProviderNotification::Refund {
                    notification_id: id,
                    out_refund_no: refund.out_refund_no,
                    refund_id: refund.refund_id,
                    succeeded,
                })
            }
            other => Err(NotifyError::Malformed(format!(
                "event {} ({}) is not handled",
                other.id(),
                match &other {
                    Notification::Other { event_type, .. } => event_type.as_str(),
                    _ => "?",
                }
            ))),
        }
    }

    fn query_payment<'a>(&'a self, out_trade_no: &'a str) -> BoxFut<'a, PaymentQuery> {
        Box::pin(async move {
            let t = self
                .client
                .query_order(out_trade_no)
                .await
                .map_err(provider_error)?;
            if t.mchid != self.mchid || t.appid != self.appid {
                return Err(ProviderError::Refused(format!(
                    "query answer is for merchant {} / app {}, not ours",
                    t.mchid, t.appid
                )));
            }
            Ok(match t.trade_state {
                // REFUND: paid, then (partly) refunded; still a payment we must know about.
                TradeState::Success | TradeState::Refund => {
                    let transaction_id = t.transaction_id.clone().ok_or_else(|| {
                        ProviderError::Unavailable("paid order without transaction_id".into())
                    })?;
                    let amount_fen = t.amount.as_ref().map(|a| a.total).ok_or_else(|| {
                        ProviderError::Unavailable("paid order without amount".into())
                    })?;
                    let paid_at_ms = t
                        .success_time_unix_ms()
                        .map_err(|e| ProviderError::Unavailable(e.to_string()))?
                        .unwrap_or_else(crate::db::now_ms);
                    PaymentQuery::Paid {
                        transaction_id,
                        amount_fen,
                        paid_at_ms,
                    }
                }
                TradeState::Closed | TradeState::Revoked => PaymentQuery::Closed,
                _ => PaymentQuery::NotPaid,
            })
        })
    }

    fn close_payment<'a>(&'a self, out_trade_no: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            match self.client.close_order(out_trade_no).await {
                Ok(()) => Ok(()),
                // Never created at WeChat Pay (the prepay failed): nothing to close.
                Err(e) if e.is_not_found() => Ok(()),
                Err(e) => Err(provider_error(e)),
            }
        })
    }

    fn refund<'a>(&'a self, req: &'a RefundRequest) -> BoxFut<'a, RefundState> {
        Box::pin(async move {
            let reason = clip(req.reason.trim(), 80);
            let r = self
                .client
                .refund(&dmr_wechatpay::RefundRequest {
                    out_trade_no: req.out_trade_no.clone(),
                    out_refund_no: req.out_refund_no.clone(),
                    reason: (!reason.is_empty()).then_some(reason),
                    refund_fen: req.refund_fen,
                    total_fen: req.total_fen,
                })
                .await
                .map_err(provider_error)?;
            Ok(refund_state(r.refund_id, &r.status))
        })
    }

    fn query_refund<'a>(&'a self, out_refund_no: &'a str) -> BoxFut<'a, RefundState> {
        Box::pin(async move {
            let r = self
                .client
                .query_refund(out_refund_no)
                .await
                .map_err(provider_error)?;
            Ok(refund_state(r.refund_id, &r.status))
        })
    }

    fn daily_bill<'a>(&'a self, day: &'a str) -> BoxFut<'a, Vec<BillRow>> {
        Box::pin(async move {
            let bill = match self.client.trade_bill(day, BillType::All).await {
                Ok(b) => b,
                // No bill for a day without trades.
                Err(e) if e.is_not_found() => return Ok(Vec::new()),
                Err(e) => return Err(provider_error(e)),
            };
            let mut rows = Vec::new();
            for r in bill.rows {
                // Payment lines only; refund lines repeat the payment with a refund part.
                if r.trade_state != "SUCCESS" {
                    continue;
                }
                let paid_at_ms = bill_time_ms(&r.trade_time).ok_or_else(|| {
                    ProviderError::Unavailable(format!("bill time {:?} unreadable", r.trade_time))
                })?;
                rows.push(BillRow {
                    out_trade_no: r.out_trade_no,
                    transaction_id: r.transaction_id,
                    amount_fen: r.order_total_fen,
                    paid_at_ms,
                });
            }
            rows.sort_by(|a, b| a.out_trade_no.cmp(&b.out_trade_no));
            Ok(rows)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_china_time() {
        // 2026-01-01T00:00:00+08:00
        let start = 1_767_196_800_000;
        assert_eq!(rfc3339_shanghai(start), "2026-01-01T00:00:00+08:00");
        assert_eq!(rfc3339_shanghai(start - 1000), "2025-12-31T23:59:59+08:00");
        assert_eq!(
            rfc3339_shanghai(start + 13 * 3_600_000 + 5 * 60_000 + 7_000),
            "2026-01-01T13:05:07+08:00"
        );
        assert_eq!(
            bill_time_ms("2026-01-01 13:05:07"),
            Some(start + 47_107_000)
        );
        assert_eq!(bill_time_ms("2026-01-01 24:00:00"), None);
        assert_eq!(bill_time_ms("2026-01-01"), None);
        assert_eq!(bill_time_ms("2026-01-01 1:2"), None);
    }

    #[test]
    fn errors_are_sorted() {
        let api = |status: u16, code: &str| WxError::Api {
            operation: "refund",
            status,
            code: code.into(),
            message: String::new(),
            request_id: "-".into(),
        };
        assert!(matches!(
            provider_error(api(400, "PARAM_ERROR")),
            ProviderError::Refused(_)
        ));
        assert!(matches!(
            provider_error(api(500, "SYSTEM_ERROR")),
            ProviderError::Unavailable(_)
        ));
        assert!(matches!(
            provider_error(api(404, "ORDER_NOT_EXIST")),
            ProviderError::NotFound
        ));
        assert!(matches!(
            provider_error(WxError::CircuitOpen {
                failures: 5,
                retry_after: std::time::Duration::from_secs(1)
            }),
            ProviderError::Unavailable(_)
        ));
    }
}
