//! The sandbox payment provider (the default): demos and tests pay without real money, yet
//! every notification goes through the same verify-then-apply path a real provider's does.
//!
//! `GET /pay/sandbox/{payment_id}` is a small zh-CN page showing what is being paid;
//! `POST /pay/sandbox/{payment_id}` plays the payer: the sandbox records the payment as paid
//! (what `query` reports from then on) and delivers a notification signed with
//! HMAC-SHA256 under the sandbox key to the notification handler. Query parameters ask for
//! trouble: `duplicates=N` delivers N extra copies, `delay_ms=N` waits first, `fail=` is
//! `bad_signature` (only a forged copy is delivered: nothing may change), `drop` (nothing is
//! delivered: the reconciler must find the payment by query) or `crash` (applied, then the
//! answer is "lost" and the notification redelivered, as after a crash between applying and
//! answering).
//!
//! Signature: headers `X-Sandbox-Timestamp` (Unix seconds), `X-Sandbox-Nonce`,
//! `X-Sandbox-Signature` = base64(HMAC-SHA256(key, "{timestamp}\n{nonce}\n{body}\n")), the
//! same message layout as WeChat Pay's; timestamps more than 5 minutes off are refused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Html;
use base64::Engine as _;
use hmac::Mac as _;
use serde::Deserialize;

use super::{
    BillRow, BoxFut, CreatePayment, NotifyError, PaymentQuery, PaymentStep, ProviderError,
    ProviderNotification, RefundRequest, RefundState,
};
use crate::AppState;
use crate::db::{new_id, now_ms};
use crate::error::ApiError;
use crate::http::extract::ApiQuery;

pub const MCHID: &str = "sandbox-mch";
pub const APPID: &str = "sandbox-app";
/// Accepted clock difference for notification timestamps.
pub const MAX_SKEW_MS: i64 = 5 * 60_000;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

#[derive(Clone, Debug)]
struct Paid {
    transaction_id: String,
    amount_fen: i64,
    paid_at_ms: i64,
}

/// The sandbox "provider side": what it was paid and refunded (in memory; a sandbox).
#[derive(Debug)]
pub struct Sandbox {
    key: Vec<u8>,
    base_url: String,
    paid: Mutex<HashMap<String, Paid>>,
    refunds: Mutex<HashMap<String, String>>,
}

impl Sandbox {
    pub fn new(key: Vec<u8>, base_url: &str) -> Sandbox {
        Sandbox {
            key,
            base_url: base_url.to_string(),
            paid: Mutex::new(HashMap::new()),
            refunds: Mutex::new(HashMap::new()),
        }
    }

    /// Signs a notification body as the sandbox does; public so tests can forge and tamper.
    pub fn sign(&self, timestamp_s: i64, nonce: &str, body: &[u8]) -> String {
        sign_with(&self.key, timestamp_s, nonce, body)
    }

    /// The headers of a correctly signed notification.
    pub fn signed_headers(&self, body: &[u8], now_ms: i64) -> HeaderMap {
        let ts = now_ms / 1000;
        let nonce = new_id();
        let sig = self.sign(ts, &nonce, body);
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-sandbox-timestamp", ts.to_string()),
            ("x-sandbox-nonce", nonce),
            ("x-sandbox-signature", sig),
            ("content-type", "application/json".to_string()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(k, v);
            }
        }
        h
    }

    /// Plays the payer: the sandbox now considers `out_trade_no` paid. Returns the
    /// notification body it sends about it.
    pub fn pay(&self, out_trade_no: &str, amount_fen: i64, now_ms: i64) -> Vec<u8> {
        let paid = {
            let mut map = match self.paid.lock() {
                Ok(m) => m,
                Err(p) => p.into_inner(),
            };
            map.entry(out_trade_no.to_string())
                .or_insert_with(|| Paid {
                    transaction_id: format!("SBX{}", uuid::Uuid::new_v4().simple()),
                    amount_fen,
                    paid_at_ms: now_ms,
                })
                .clone()
        };
        let body = serde_json::json!({
            // One id per payment: every redelivery of it carries the same id.
            "id": format!("N-{}", paid.transaction_id),
            "event_type": "TRANSACTION.SUCCESS",
            "out_trade_no": out_trade_no,
            "transaction_id": paid.transaction_id,
            "amount_fen": paid.amount_fen,
            "mchid": MCHID,
            "appid": APPID,
            "success_time_ms": paid.paid_at_ms,
        });
        body.to_string().into_bytes()
    }
}

fn sign_with(key: &[u8], timestamp_s: i64, nonce: &str, body: &[u8]) -> String {
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(format!("{timestamp_s}\n{nonce}\n").as_bytes());
    mac.update(body);
    mac.update(b"\n");
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, NotifyError> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| NotifyError::Authentication(format!("missing header {name}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    id: String,
    event_type: String,
    #[serde(default)]
    out_trade_no: Option<String>,
    #[serde(default)]
    transaction_id: Option<String>,
    #[serde(default)]
    amount_fen: Option<i64>,
    #[serde(default)]
    mchid: Option<String>,
    #[serde(default)]
    appid: Option<String>,
    #[serde(default)]
    success_time_ms: Option<i64>,
    #[serde(default)]
    out_refund_no: Option<String>,
    #[serde(default)]
    refund_id: Option<String>,
}

fn need<T>(v: Option<T>, field: &str) -> Result<T, NotifyError> {
    v.ok_or_else(|| NotifyError::Malformed(format!("missing {field}")))
}

impl super::PaymentProvider for Sandbox {
    fn name(&self) -> &'static str {
        "sandbox"
    }

    fn expected_ids(&self) -> (String, String) {
        (MCHID.into(), APPID.into())
    }

    fn create_payment<'a>(&'a self, req: &'a CreatePayment) -> BoxFut<'a, PaymentStep> {
        Box::pin(async move {
            Ok(PaymentStep {
                provider: "sandbox".into(),
                redirect_url: Some(format!("{}/pay/sandbox/{}", self.base_url, req.payment_id)),
                jsapi: None,
                code_url: None,
            })
        })
    }

    fn parse_notification(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_ms: i64,
    ) -> Result<ProviderNotification, NotifyError> {
        let ts_text = header(headers, "x-sandbox-timestamp")?;
        let nonce = header(headers, "x-sandbox-nonce")?;
        let sig = header(headers, "x-sandbox-signature")?;
        let ts: i64 = ts_text
            .parse()
            .map_err(|_| NotifyError::Authentication("timestamp is not a number".into()))?;
        if (now_ms - ts.saturating_mul(1000)).abs() > MAX_SKEW_MS {
            return Err(NotifyError::Authentication(
                "timestamp more than 5 minutes off".into(),
            ));
        }
        let sig = base64::engine::general_purpose::STANDARD
            .decode(sig)
            .map_err(|_| NotifyError::Authentication("signature is not base64".into()))?;
        let mut mac = HmacSha256::new_from_slice(&self.key)
            .map_err(|_| NotifyError::Authentication("no sandbox key".into()))?;
        mac.update(format!("{ts}\n{nonce}\n").as_bytes());
        mac.update(body);
        mac.update(b"\n");
        mac.verify_slice(&sig)
            .map_err(|_| NotifyError::Authentication("bad signature".into()))?;
        // Only now, with the body proven authentic, is it parsed.
        let b: Body = serde_json::from_slice(body)
            .map_err(|e| NotifyError::Malformed(format!("body: {e}")))?;
        match b.event_type.as_str() {
            "TRANSACTION.SUCCESS" => Ok(ProviderNotification::Payment {
                notification_id: b.id,
                out_trade_no: need(b.out_trade_no, "out_trade_no")?,
                transaction_id: need(b.transaction_id, "transaction_id")?,
                amount_fen: need(b.amount_fen, "amount_fen")?,
                mchid: need(b.mchid, "mchid")?,
                appid: need(b.appid, "appid")?,
                paid_at_ms: need(b.success_time_ms, "success_time_ms")?,
            }),
            "REFUND.SUCCESS" | "REFUND.ABNORMAL" | "REFUND.CLOSED" => {
                Ok(ProviderNotification::Refund {
                    notification_id: b.id,
                    out_refund_no: need(b.out_refund_no, "out_refund_no")?,
                    refund_id: need(b.refund_id, "refund_id")?,
                    succeeded: b.event_type == "REFUND.SUCCESS",
                })
            }
            other => Err(NotifyError::Malformed(format!(
                "unknown event_type {other}"
            ))),
        }
    }

    fn query_payment<'a>(&'a self, out_trade_no: &'a str) -> BoxFut<'a, PaymentQuery> {
        Box::pin(async move {
            let map = match self.paid.lock() {
                Ok(m) => m,
                Err(p) => p.into_inner(),
            };
            Ok(match map.get(out_trade_no) {
                Some(p) => PaymentQuery::Paid {
                    transaction_id: p.transaction_id.clone(),
                    amount_fen: p.amount_fen,
                    paid_at_ms: p.paid_at_ms,
                },
                None => PaymentQuery::NotPaid,
            })
        })
    }

    fn close_payment<'a>(&'a self, _out_trade_no: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move { Ok(()) })
    }

    fn refund<'a>(&'a self, req: &'a RefundRequest) -> BoxFut<'a, RefundState> {
        Box::pin(async move {
            if req.refund_fen <= 0 || req.refund_fen > req.total_fen {
                return Err(ProviderError::Refused("refund amount out of range".into()));
            }
            let mut map = match self.refunds.lock() {
                Ok(m) => m,
                Err(p) => p.into_inner(),
            };
            // Same out_refund_no, same refund: retries never refund twice.
            let id = map
                .entry(req.out_refund_no.clone())
                .or_insert_with(|| format!("SBR{}", uuid::Uuid::new_v4().simple()))
                .clone();
            Ok(RefundState::Succeeded { refund_id: id })
        })
    }

    fn query_refund<'a>(&'a self, out_refund_no: &'a str) -> BoxFut<'a, RefundState> {
        Box::pin(async move {
            let map = match self.refunds.lock() {
                Ok(m) => m,
                Err(p) => p.into_inner(),
            };
            map.get(out_refund_no)
                .map(|id| RefundState::Succeeded {
                    refund_id: id.clone(),
                })
                .ok_or(ProviderError::NotFound)
        })
    }

    fn daily_bill<'a>(&'a self, day: &'a str) -> BoxFut<'a, Vec<BillRow>> {
        Box::pin(async move {
            let map = match self.paid.lock() {
                Ok(m) => m,
                Err(p) => p.into_inner(),
            };
            let mut rows: Vec<BillRow> = map
                .iter()
                .filter(|(_, p)| crate::orders::money::shanghai_day(p.paid_at_ms) == day)
                .map(|(no, p)| BillRow {
                    out_trade_no: no.clone(),
                    transaction_id: p.transaction_id.clone(),
                    amount_fen: p.amount_fen,
                    paid_at_ms: p.paid_at_ms,
                })
                .collect();
            rows.sort_by(|a, b| a.out_trade_no.cmp(&b.out_trade_no));
            Ok(rows)
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
struct PagePayment {
    order_id: String,
    out_trade_no: String,
    amount_fen: i64,
    status: String,
    plan_name: String,
    lock_name: String,
}

async fn page_payment(state: &AppState, id: &str) -> Result<PagePayment, ApiError> {
    if uuid::Uuid::try_parse(id).is_err() {
        return Err(ApiError::NotFound);
    }
    sqlx::query_as::<_, PagePayment>(
        "SELECT o.id AS order_id, p.out_trade_no, p.amount_fen, p.status, o.plan_name, l.name AS lock_name \
         FROM payments p JOIN orders o ON o.id = p.order_id JOIN locks l ON l.id = o.lock_id \
         WHERE p.id = $1 AND p.provider = 'sandbox'",
    )
    .bind(id.to_string())
    .fetch_optional(&state.db.read)
    .await?
    .ok_or(ApiError::NotFound)
}

fn yuan(fen: i64) -> String {
    format!("{}.{:02}", fen / 100, fen % 100)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `GET /pay/sandbox/{payment_id}`: the payer's page.
pub async fn page(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: axum::http::Uri,
) -> Result<Html<String>, ApiError> {
    let p = page_payment(&state, &id).await?;
    let query = uri
        .query()
        .map(|q| format!("?{}", escape(q)))
        .unwrap_or_default();
    let body = if p.status == "pending" {
        // With JavaScript the payment is confirmed in place and the payer goes back to the
        // order's live page without this page (or a form-result page) staying in the
        // history: one "back" from the order page then leaves the order, as it should.
        // Without JavaScript the form still works and its result page links back.
        format!(
            "<form method=\"post\" action=\"/pay/sandbox/{id}{query}\">\
             <button type=\"submit\" style=\"font-size:1.2em;padding:.6em 2em\">确认支付</button></form>\
             <p id=\"pay-error\" style=\"color:#c00\"></p>\
             <script>{script}</script>",
            script = return_script(&p.order_id),
        )
    } else {
        "<p>该订单已支付或已关闭。</p>".to_string()
    };
    Ok(Html(format!(
        "<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>沙箱支付</title></head><body style=\"font-family:sans-serif;text-align:center\">\
         <h1>沙箱支付（测试环境，不扣真实款项）</h1>\
         <p>{lock} · {plan}</p><p style=\"font-size:2em\">¥{amount}</p>\
         <p>商户订单号 {no}</p>{body}</body></html>",
        lock = escape(&p.lock_name),
        plan = escape(&p.plan_name),
        amount = yuan(p.amount_fen),
        no = escape(&p.out_trade_no),
    )))
}

/// The H5 order page the payer came from.
fn order_page(order_id: &str) -> String {
    format!("/h5/o/{order_id}")
}

/// Confirms with `fetch`, then returns to the order page: `history.back()` when the payer
/// came from it (the H5 page pushes the order page before leaving for the sandbox), else
/// `location.replace`, so the sandbox never stays in the history either way.
fn return_script(order_id: &str) -> String {
    // The order id is a UUID read from the database: nothing to escape in a JS string.
    format!(
        "(function(){{var f=document.querySelector('form');if(!f||!window.fetch)return;\
         var back={back:?};f.addEventListener('submit',function(e){{e.preventDefault();\
         var b=f.querySelector('button');b.disabled=true;\
         fetch(f.action,{{method:'POST'}}).then(function(r){{\
         if(!r.ok)throw new Error('HTTP '+r.status);var from='';\
         try{{from=new URL(document.referrer).pathname}}catch(x){{}}\
         if(from===back&&history.length>1)history.back();else location.replace(back);}})\
         .catch(function(x){{b.disabled=false;\
         document.getElementById('pay-error').textContent='支付失败：'+x.message;}});}});}})();",
        back = order_page(order_id),
    )
}

/// What the payer asks the sandbox to do wrong.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayQuery {
    duplicates: Option<String>,
    delay_ms: Option<String>,
    fail: Option<String>,
}

/// `POST /pay/sandbox/{payment_id}`: plays the payer and notifies.
pub async fn confirm(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PayQuery>,
) -> Result<Html<String>, ApiError> {
    let duplicates = crate::http::list::parse_int("duplicates", q.duplicates.as_deref(), 0, 0, 20)?;
    let delay_ms = crate::http::list::parse_int("delay_ms", q.delay_ms.as_deref(), 0, 0, 60_000)?;
    let fail = q.fail.unwrap_or_default();
    if !matches!(fail.as_str(), "" | "bad_signature" | "drop" | "crash") {
        return Err(ApiError::validation(
            "fail",
            "one of bad_signature, drop, crash",
        ));
    }
    let p = page_payment(&state, &id).await?;
    let Some(sb) = state.orders.sandbox.clone() else {
        return Err(ApiError::validation(
            "provider",
            "the sandbox is not configured",
        ));
    };
    let body = sb.pay(&p.out_trade_no, p.amount_fen, now_ms());
    let deliver = async move {
        if delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(u64::try_from(delay_ms).unwrap_or(0))).await;
        }
        let copies = 1 + duplicates;
        for i in 0..copies {
            let mut headers = sb.signed_headers(&body, now_ms());
            if fail == "bad_signature" {
                headers.insert(
                    "x-sandbox-signature",
                    HeaderValue::from_static("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
                );
            }
            if fail == "drop" {
                return;
            }
            let r = super::notify::handle(&state, "sandbox", &headers, &body).await;
            if let Err(e) = &r {
                tracing::info!(error = %e, copy = i, "sandbox notification refused");
            }
            if fail == "crash" && i == 0 {
                // The answer to the first delivery is "lost": deliver again.
                let headers = sb.signed_headers(&body, now_ms());
                let _ = super::notify::handle(&state, "sandbox", &headers, &body).await;
            }
        }
    };
    if delay_ms > 0 {
        tokio::spawn(deliver);
    } else {
        deliver.await;
    }
    Ok(Html(format!(
        "<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\"><title>支付完成</title></head>\
         <body style=\"font-family:sans-serif;text-align:center\"><h1>支付完成</h1>\
         <p><a href=\"{back}\">返回订单页面</a>查看开锁进度。</p></body></html>",
        back = order_page(&p.order_id),
    )))
}

#[cfg(test)]
mod tests {
    use super::super::PaymentProvider as _;
    use super::*;

    #[test]
    fn signed_notifications_verify_and_tampering_is_refused() {
        let sb = Sandbox::new(b"k".repeat(32), "http://x");
        let now = 1_700_000_000_000;
        let body = sb.pay("abc", 300, now);
        let h = sb.signed_headers(&body, now);
        let n = sb.parse_notification(&h, &body, now).unwrap();
        assert!(matches!(
            n,
            ProviderNotification::Payment {
                amount_fen: 300,
                ..
            }
        ));
        let mut tampered = body.clone();
        tampered[10] ^= 1;
        assert!(sb.parse_notification(&h, &tampered, now).is_err());
        assert!(
            sb.parse_notification(&h, &body, now + MAX_SKEW_MS + 1000)
                .is_err()
        );
        let mut missing = h.clone();
        missing.remove("x-sandbox-nonce");
        assert!(sb.parse_notification(&missing, &body, now).is_err());
    }
}
