//! WeChat Pay API v3 client for the Dumeiren cloud, which sells lock unlocks paid by WeChat Pay.
//!
//! The crate does the parts of WeChat Pay that are easy to get subtly wrong and keeps them
//! apart so each can be tested alone: [`sign`] makes the `WECHATPAY2-SHA256-RSA2048`
//! `Authorization` header and the JSAPI `paySign` with the merchant key; [`verify`] checks
//! answers and notifications against the platform certificate or the WeChat Pay public key
//! (picked by `Wechatpay-Serial`) over the raw body, refusing stale timestamps and the
//! signature-test probe; [`aead`] decrypts AEAD_AES_256_GCM resources with the API v3 key;
//! [`notify`] combines the two into typed payment and refund notifications. [`client`] is the
//! async HTTP client (JSAPI/Native prepay, query, close, refund, refund query, trade bill),
//! which wraps every call in a timeout, bounded retries that resend the same idempotency key
//! ([`resilience`]) and a circuit breaker; [`bill`] checks and parses trade bills. [`model`]
//! holds the typed bodies, with money in integer fen everywhere, and [`config`] validates the
//! configuration, whose secrets never print.
//!
//! The cloud's `PaymentProvider` adapter maps its calls one-to-one onto [`WechatPayClient`]:
//! create payment → [`WechatPayClient::jsapi_prepay`] / [`WechatPayClient::native_prepay`];
//! parse and verify a notification → [`WechatPayClient::parse_notification`] (answer 4xx when
//! [`Error::is_authentication_failure`]); query → [`WechatPayClient::query_order`]; close →
//! [`WechatPayClient::close_order`]; refund → [`WechatPayClient::refund`]; query refund →
//! [`WechatPayClient::query_refund`]; daily bill → [`WechatPayClient::trade_bill`]. Errors
//! carry [`Error::is_retryable`] and [`Error::is_not_found`] so the adapter need not read
//! WeChat Pay error codes itself.

pub mod aead;
pub mod bill;
pub mod client;
pub mod config;
pub mod error;
pub mod model;
pub mod notify;
pub mod resilience;
pub mod secret;
pub mod sign;
pub mod verify;

pub use aead::ApiV3Key;
pub use bill::{
    BillLocation, BillType, TradeBill, TradeBillRow, TradeBillSummary, parse_trade_bill,
};
pub use client::{DownloadedCertificate, JsapiPrepay, NativePrepay, WechatPayClient, unix_now};
pub use config::{PRODUCTION_BASE_URL, PublicKeyConfig, WechatPayConfig};
pub use error::{Error, Result};
pub use model::{
    Payer, PrepayRequest, Refund, RefundAmount, RefundNotification, RefundNotificationAmount,
    RefundRequest, RefundStatus, TradeState, Transaction, TransactionAmount,
};
pub use notify::{Notification, NotificationEnvelope, NotificationVerifier};
pub use resilience::{BreakerConfig, BreakerState, CircuitBreaker, RetryPolicy};
pub use secret::Secret;
pub use sign::{JsapiPayParams, MerchantSigner};
pub use verify::{PlatformKeys, SignatureHeaders};
