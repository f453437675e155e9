//! Payment providers behind one trait, and the notification endpoint they call.
//!
//! [`PaymentProvider`] is what the orders module needs from any provider: create a payment,
//! verify and parse a notification from the raw body and headers, query, close, refund,
//! query a refund, download the daily bill. [`sandbox`] is the default provider for demos
//! and tests: a payment page served by the cloud that plays the payer and sends
//! notifications signed with HMAC-SHA256, with duplicates, delays and failures on request.
//! [`wechatpay`] is WeChat Pay API v3 (JSAPI and Native) over the `dmr-wechatpay` client,
//! offered when configured. [`notify`] is `POST /api/v1/payments/notify/{provider}`: the raw body is verified before
//! anything is parsed, the effect is applied in one transaction keyed by the provider's
//! notification id (so ten deliveries apply once), and only then is it answered 2xx.

pub mod notify;
pub mod sandbox;
pub mod wechatpay;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::HeaderMap;
use serde::Serialize;

/// A provider call in flight.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = Result<T, ProviderError>> + Send + 'a>>;

/// Why a provider call failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Timeouts, 5xx, an open circuit breaker: try again later with the same idempotency key.
    #[error("payment provider unavailable: {0}")]
    Unavailable(String),
    /// The provider said no (bad request, insufficient balance for a refund, ...).
    #[error("payment provider refused: {0}")]
    Refused(String),
    #[error("not found at the payment provider")]
    NotFound,
}

/// Why a notification was not accepted. Nothing is changed in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// Missing headers, bad signature, stale timestamp, undecryptable resource.
    #[error("notification authentication failed: {0}")]
    Authentication(String),
    /// WeChat Pay's signature-test probe: must be answered 4xx.
    #[error("signature test probe refused")]
    SignatureProbe,
    /// Authentic but not understood.
    #[error("notification not understood: {0}")]
    Malformed(String),
}

/// What to charge.
#[derive(Clone, Debug)]
pub struct CreatePayment {
    pub payment_id: String,
    pub out_trade_no: String,
    pub order_id: String,
    pub amount_fen: i64,
    pub description: String,
    pub expires_at_ms: i64,
    /// WeChat JSAPI needs the payer's openid; the sandbox ignores it.
    pub payer_openid: Option<String>,
}

/// What the phone must do to pay (the H5 page's `PaymentStep`).
#[derive(Clone, Debug, Serialize)]
pub struct PaymentStep {
    pub provider: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jsapi: Option<BTreeMap<String, String>>,
    /// WeChat Native: the `weixin://` URL to show as a QR code (a payer outside WeChat).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code_url: Option<String>,
}

/// A verified notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderNotification {
    /// A payment succeeded.
    Payment {
        notification_id: String,
        out_trade_no: String,
        transaction_id: String,
        amount_fen: i64,
        mchid: String,
        appid: String,
        paid_at_ms: i64,
    },
    /// A refund reached a final state.
    Refund {
        notification_id: String,
        out_refund_no: String,
        refund_id: String,
        succeeded: bool,
    },
}

impl ProviderNotification {
    pub fn id(&self) -> &str {
        match self {
            ProviderNotification::Payment {
                notification_id, ..
            }
            | ProviderNotification::Refund {
                notification_id, ..
            } => notification_id,
        }
    }
}

/// A payment as the provider sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PaymentQuery {
    Paid {
        transaction_id: String,
        amount_fen: i64,
        paid_at_ms: i64,
    },
    NotPaid,
    Closed,
}

#[derive(Clone, Debug)]
pub struct RefundRequest {
    pub out_refund_no: String,
    pub out_trade_no: String,
    pub transaction_id: Option<String>,
    pub refund_fen: i64,
    pub total_fen: i64,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefundState {
    Processing { refund_id: String },
    Succeeded { refund_id: String },
    Failed { reason: String },
}

/// One line of a provider's daily bill.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BillRow {
    pub out_trade_no: String,
    pub transaction_id: String,
    pub amount_fen: i64,
    pub paid_at_ms: i64,
}

/// A payment provider.
pub trait PaymentProvider: Send + Sync + Debug {
    /// The name in URLs and rows (`sandbox`, `wechatpay`).
    fn name(&self) -> &'static str;
    /// The merchant id and app id a notification must carry.
    fn expected_ids(&self) -> (String, String);
    fn create_payment<'a>(&'a self, req: &'a CreatePayment) -> BoxFut<'a, PaymentStep>;
    /// Verifies the raw body against the headers, then parses. `now_ms` bounds the timestamp.
    fn parse_notification(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_ms: i64,
    ) -> Result<ProviderNotification, NotifyError>;
    fn query_payment<'a>(&'a self, out_trade_no: &'a str) -> BoxFut<'a, PaymentQuery>;
    fn close_payment<'a>(&'a self, out_trade_no: &'a str) -> BoxFut<'a, ()>;
    /// Must be idempotent by `out_refund_no`: retries send the same number.
    fn refund<'a>(&'a self, req: &'a RefundRequest) -> BoxFut<'a, RefundState>;
    fn query_refund<'a>(&'a self, out_refund_no: &'a str) -> BoxFut<'a, RefundState>;
    /// The bill of one Asia/Shanghai day (`YYYY-MM-DD`).
    fn daily_bill<'a>(&'a self, day: &'a str) -> BoxFut<'a, Vec<BillRow>>;
}

/// The configured providers by name.
#[derive(Clone, Debug, Default)]
pub struct Providers(BTreeMap<String, Arc<dyn PaymentProvider>>);

impl Providers {
    pub fn add(&mut self, p: Arc<dyn PaymentProvider>) {
        self.0.insert(p.name().to_string(), p);
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn PaymentProvider>> {
        self.0.get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }

    /// The sandbox, when configured (tests drive it directly).
    pub fn sandbox(&self) -> Option<Arc<dyn PaymentProvider>> {
        self.get("sandbox")
    }
}

/// The provider name a payer asks for (`wechat` on the H5 page) mapped to ours.
pub fn provider_for_request(name: &str) -> &str {
    match name {
        "wechat" => "wechatpay",
        other => other,
    }
}
