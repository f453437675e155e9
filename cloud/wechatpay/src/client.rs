//! The async API client: signs each request, verifies each answer, and wraps every call in a
//! timeout, bounded retries and the circuit breaker.

use http::HeaderMap;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{Instrument as _, debug, info_span, warn};

use crate::aead::ApiV3Key;
use crate::bill::{self, BillLocation, BillType, TradeBill};
use crate::config::WechatPayConfig;
use crate::error::{Error, Result};
use crate::model::{PrepayRequest, Refund, RefundRequest, Transaction, validate_out_no};
use crate::notify::{EncryptedResource, Notification, NotificationVerifier, decrypt_resource};
use crate::resilience::{BreakerState, CircuitBreaker, RetryPolicy};
use crate::sign::{JsapiPayParams, MerchantSigner, new_nonce};
use crate::verify::{HEADER_SERIAL, PlatformKeys};

/// Result of a JSAPI prepay: the id and the signed parameters the phone needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsapiPrepay {
    /// `prepay_id`, valid for two hours.
    pub prepay_id: String,
    /// Parameters for `wx.requestPayment` / `WeixinJSBridge.invoke('getBrandWCPayRequest')`.
    pub params: JsapiPayParams,
}

/// Result of a Native prepay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NativePrepay {
    /// `weixin://…` URL to render as a QR code.
    pub code_url: String,
}

#[derive(Deserialize)]
struct PrepayIdBody {
    prepay_id: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
    #[serde(default)]
    message: String,
}

struct Exchange {
    headers: HeaderMap,
    body: Vec<u8>,
}

#[derive(Deserialize)]
struct CertificatesBody {
    data: Vec<CertificateEntry>,
}

#[derive(Deserialize)]
struct CertificateEntry {
    serial_no: String,
    #[serde(default)]
    effective_time: Option<String>,
    #[serde(default)]
    expire_time: Option<String>,
    encrypt_certificate: EncryptedResource,
}

/// A platform certificate from `GET /v3/certificates`, decrypted and checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadedCertificate {
    /// Serial (upper-case hex), as used in `Wechatpay-Serial`.
    pub serial_no: String,
    /// RFC 3339 start of validity.
    pub effective_time: Option<String>,
    /// RFC 3339 end of validity.
    pub expire_time: Option<String>,
    /// The certificate PEM, ready for [`WechatPayConfig::platform_certificates_pem`].
    pub pem: String,
}

struct Inner {
    http: reqwest::Client,
    signer: MerchantSigner,
    platform_keys: PlatformKeys,
    api_v3_key: ApiV3Key,
    notifications: NotificationVerifier,
    base_url: Url,
    appid: String,
    notify_url: String,
    refund_notify_url: Option<String>,
    public_key_id: Option<String>,
    retry: RetryPolicy,
    breaker: CircuitBreaker,
    request_timeout: Duration,
    max_skew: Duration,
}

/// WeChat Pay API v3 client. Cheap to clone; clones share the connection pool and breaker.
#[derive(Clone)]
pub struct WechatPayClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WechatPayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WechatPayClient")
            .field("mchid", &self.inner.signer.mchid())
            .field("base_url", &self.inner.base_url.as_str())
            .field("breaker", &self.inner.breaker.state())
            .finish_non_exhaustive()
    }
}

/// Local time in Unix seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl WechatPayClient {
    /// Validates the configuration (all problems reported at once) and builds the client.
    pub fn new(config: &WechatPayConfig) -> Result<Self> {
        let keys = config.validate()?;
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|e| Error::Config(vec![format!("HTTP client: {e}")]))?;
        let notifications = NotificationVerifier::new(
            keys.platform_keys.clone(),
            keys.api_v3_key.clone(),
            config.max_clock_skew,
        );
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                signer: keys.signer,
                platform_keys: keys.platform_keys,
                api_v3_key: keys.api_v3_key,
                notifications,
                base_url: keys.base_url,
                appid: config.appid.clone(),
                notify_url: config.notify_url.clone(),
                refund_notify_url: config.refund_notify_url.clone(),
                public_key_id: config.wechatpay_public_key.as_ref().map(|k| k.id.clone()),
                retry: config.retry,
                breaker: CircuitBreaker::new(config.breaker),
                request_timeout: config.request_timeout,
                max_skew: config.max_clock_skew,
            }),
        })
    }

    /// Circuit breaker state, for health endpoints.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.state()
    }

    /// The notification verifier (same keys as the client).
    pub fn notification_verifier(&self) -> &NotificationVerifier {
        &self.inner.notifications
    }

    /// Verifies (signature over the raw body, timestamp, probe) and decrypts a notification.
    /// On [`Error::is_authentication_failure`] answer 4xx; on success answer 2xx.
    pub fn parse_notification(&self, headers: &HeaderMap, body: &[u8]) -> Result<Notification> {
        self.inner.notifications.parse(headers, body, unix_now())
    }

    /// JSAPI prepay (`POST /v3/pay/transactions/jsapi`) and the signed phone parameters.
    pub async fn jsapi_prepay(
        &self,
        req: &PrepayRequest,
        payer_openid: &str,
    ) -> Result<JsapiPrepay> {
        req.validate()?;
        if payer_openid.is_empty() {
            return Err(Error::InvalidArgument {
                field: "payer_openid",
                reason: "must not be empty".to_owned(),
            });
        }
        let mut body = self.prepay_body(req);
        body["payer"] = json!({ "openid": payer_openid });
        let ex = self
            .execute(
                "jsapi_prepay",
                Method::POST,
                "/v3/pay/transactions/jsapi",
                Some(body.to_string()),
                true,
            )
            .await?;
        let PrepayIdBody { prepay_id } = parse_json("jsapi_prepay response", &ex.body)?;
        let params = self.inner.signer.jsapi_params(
            &self.inner.appid,
            &prepay_id,
            unix_now(),
            &new_nonce(),
        )?;
        Ok(JsapiPrepay { prepay_id, params })
    }

    /// Native prepay (`POST /v3/pay/transactions/native`): a `code_url` for a QR code.
    pub async fn native_prepay(&self, req: &PrepayRequest) -> Result<NativePrepay> {
        req.validate()?;
        let body = self.prepay_body(req);
        let ex = self
            .execute(
                "native_prepay",
                Method::POST,
                "/v3/pay/transactions/native",
                Some(body.to_string()),
                true,
            )
            .await?;
        parse_json("native_prepay response", &ex.body)
    }

    /// Queries an order by our order number. Not-found is an [`Error::Api`] for which
    /// [`Error::is_not_found`] is true.
    pub async fn query_order(&self, out_trade_no: &str) -> Result<Transaction> {
        validate_out_no("out_trade_no", out_trade_no)?;
        let path = format!(
            "/v3/pay/transactions/out-trade-no/{out_trade_no}?mchid={}",
            self.inner.signer.mchid()
        );
        let ex = self
            .execute("query_order", Method::GET, &path, None, true)
            .await?;
        parse_json("query_order response", &ex.body)
    }

    /// Closes an unpaid order (`204 No Content` on success; closing twice is harmless).
    pub async fn close_order(&self, out_trade_no: &str) -> Result<()> {
        validate_out_no("out_trade_no", out_trade_no)?;
        let path = format!("/v3/pay/transactions/out-trade-no/{out_trade_no}/close");
        let body = json!({ "mchid": self.inner.signer.mchid() }).to_string();
        self.execute("close_order", Method::POST, &path, Some(body), true)
            .await
            .map(|_| ())
    }

    /// Requests a refund. Retries and later calls must reuse `out_refund_no`; the answer is
    /// usually [`crate::RefundStatus::Processing`] until the notification or a query.
    pub async fn refund(&self, req: &RefundRequest) -> Result<Refund> {
        req.validate()?;
        let mut body = json!({
            "out_trade_no": req.out_trade_no,
            "out_refund_no": req.out_refund_no,
            "amount": { "refund": req.refund_fen, "total": req.total_fen, "currency": "CNY" },
        });
        if let Some(reason) = &req.reason {
            body["reason"] = json!(reason);
        }
        if let Some(url) = &self.inner.refund_notify_url {
            body["notify_url"] = json!(url);
        }
        let ex = self
            .execute(
                "refund",
                Method::POST,
                "/v3/refund/domestic/refunds",
                Some(body.to_string()),
                true,
            )
            .await?;
        parse_json("refund response", &ex.body)
    }

    /// Queries a refund by our refund number.
    pub async fn query_refund(&self, out_refund_no: &str) -> Result<Refund> {
        validate_out_no("out_refund_no", out_refund_no)?;
        let path = format!("/v3/refund/domestic/refunds/{out_refund_no}");
        let ex = self
            .execute("query_refund", Method::GET, &path, None, true)
            .await?;
        parse_json("query_refund response", &ex.body)
    }

    /// Applies for a trade bill (`GET /v3/bill/tradebill`); `bill_date` is `YYYY-MM-DD`.
    pub async fn request_trade_bill(
        &self,
        bill_date: &str,
        bill_type: BillType,
    ) -> Result<BillLocation> {
        let b = bill_date.as_bytes();
        let well_formed = b.len() == 10
            && b[4] == b'-'
            && b[7] == b'-'
            && b.iter()
                .enumerate()
                .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
        if !well_formed {
            return Err(Error::InvalidArgument {
                field: "bill_date",
                reason: format!("{bill_date:?} must be YYYY-MM-DD"),
            });
        }
        let path = format!(
            "/v3/bill/tradebill?bill_date={bill_date}&bill_type={}",
            bill_type.as_str()
        );
        let ex = self
            .execute("request_trade_bill", Method::GET, &path, None, true)
            .await?;
        parse_json("request_trade_bill response", &ex.body)
    }

    /// Fetches a bill file and checks its SHA1 against the announced hash. The download
    /// answer is not signed by WeChat Pay (documented); the hash is what protects it. The URL
    /// must be on the configured base URL, so the signed request never goes elsewhere.
    pub async fn download_bill(&self, location: &BillLocation) -> Result<Vec<u8>> {
        let url =
            Url::parse(location.download_url.trim()).map_err(|e| Error::UnexpectedResponse {
                operation: "download_bill",
                reason: format!("download_url {:?}: {e}", location.download_url),
            })?;
        let base = &self.inner.base_url;
        if url.scheme() != base.scheme()
            || url.host_str() != base.host_str()
            || url.port_or_known_default() != base.port_or_known_default()
        {
            return Err(Error::UnexpectedResponse {
                operation: "download_bill",
                reason: format!(
                    "download_url host {:?} is not the configured API host {:?}; refusing to send a signed request there",
                    url.host_str(),
                    base.host_str()
                ),
            });
        }
        let ex = self
            .execute_url("download_bill", Method::GET, url, None, false)
            .await?;
        bill::verify_hash(location, &ex.body)?;
        Ok(ex.body)
    }

    /// Apply, download, check the hash and parse: the whole trade-bill flow.
    pub async fn trade_bill(&self, bill_date: &str, bill_type: BillType) -> Result<TradeBill> {
        let location = self.request_trade_bill(bill_date, bill_type).await?;
        let data = self.download_bill(&location).await?;
        let text = String::from_utf8(data).map_err(|_| Error::BillFormat {
            line: 0,
            reason: "the bill file is not UTF-8".to_owned(),
        })?;
        bill::parse_trade_bill(&text)
    }

    /// Downloads the platform certificates (`GET /v3/certificates`) for merchants that verify
    /// with certificates rather than the WeChat Pay public key; put the PEMs into
    /// [`WechatPayConfig::platform_certificates_pem`] and rebuild the client. The answer is
    /// verified with the configured keys or, on first use, with a certificate it contains:
    /// that is sound because each certificate is AEAD-encrypted under the API v3 key, which
    /// only WeChat Pay and the merchant know.
    pub async fn download_platform_certificates(&self) -> Result<Vec<DownloadedCertificate>> {
        const OPERATION: &str = "download_platform_certificates";
        let ex = self
            .execute(OPERATION, Method::GET, "/v3/certificates", None, false)
            .await?;
        // Verify before parsing whenever a configured key can; only an answer signed by a
        // certificate we do not hold yet takes the bootstrap path below.
        let now = unix_now();
        let verified = match self.inner.platform_keys.verify_headers(
            &ex.headers,
            &ex.body,
            now,
            self.inner.max_skew,
        ) {
            Ok(()) => true,
            Err(Error::UnknownSerial(_)) => false,
            Err(e) => return Err(e),
        };
        let body: CertificatesBody =
            parse_json("download_platform_certificates response", &ex.body)?;
        let mut keys = self.inner.platform_keys.clone();
        let mut out = Vec::with_capacity(body.data.len());
        for entry in body.data {
            let plain = decrypt_resource(&self.inner.api_v3_key, &entry.encrypt_certificate)?;
            let pem = String::from_utf8(plain).map_err(|_| Error::Encoding {
                field: "encrypt_certificate.ciphertext",
                reason: "decrypted certificate is not UTF-8 PEM".to_owned(),
            })?;
            let serial = keys.add_certificate_pem(&pem)?;
            if !serial.eq_ignore_ascii_case(entry.serial_no.trim_start_matches('0')) {
                return Err(Error::UnexpectedResponse {
                    operation: OPERATION,
                    reason: format!(
                        "serial_no {} does not match the serial {serial} inside the certificate",
                        entry.serial_no
                    ),
                });
            }
            out.push(DownloadedCertificate {
                serial_no: serial,
                effective_time: entry.effective_time,
                expire_time: entry.expire_time,
                pem,
            });
        }
        if !verified {
            keys.verify_headers(&ex.headers, &ex.body, now, self.inner.max_skew)?;
        }
        Ok(out)
    }

    fn prepay_body(&self, req: &PrepayRequest) -> serde_json::Value {
        let mut body = json!({
            "appid": self.inner.appid,
            "mchid": self.inner.signer.mchid(),
            "description": req.description,
            "out_trade_no": req.out_trade_no,
            "notify_url": self.inner.notify_url,
            "amount": { "total": req.amount_fen, "currency": "CNY" },
        });
        if let Some(t) = &req.time_expire {
            body["time_expire"] = json!(t);
        }
        if let Some(a) = &req.attach {
            body["attach"] = json!(a);
        }
        body
    }

    async fn execute(
        &self,
        operation: &'static str,
        method: Method,
        path_and_query: &str,
        body: Option<String>,
        verify: bool,
    ) -> Result<Exchange> {
        let joined = format!(
            "{}{path_and_query}",
            self.inner.base_url.as_str().trim_end_matches('/')
        );
        let url = Url::parse(&joined).map_err(|e| Error::InvalidArgument {
            field: "url",
            reason: format!("{joined:?}: {e}"),
        })?;
        self.execute_url(operation, method, url, body, verify).await
    }

    /// One logical call: bounded attempts, each through the breaker, same body every time.
    async fn execute_url(
        &self,
        operation: &'static str,
        method: Method,
        url: Url,
        body: Option<String>,
        verify: bool,
    ) -> Result<Exchange> {
        let span = info_span!("wechatpay", operation, %method, path = url.path());
        async move {
            let policy = self.inner.retry;
            let mut last_error: Option<Error> = None;
            for attempt in 1..=policy.max_attempts {
                if attempt > 1 {
                    tokio::time::sleep(policy.backoff(attempt)).await;
                }
                let permit = match self.inner.breaker.acquire() {
                    Ok(permit) => permit,
                    Err(open) => return Err(last_error.unwrap_or(open)),
                };
                match self.attempt(operation, &method, &url, body.as_deref(), verify).await {
                    Ok(exchange) => {
                        permit.success();
                        return Ok(exchange);
                    }
                    Err(error) if error.is_retryable() => {
                        permit.failure();
                        warn!(attempt, max_attempts = policy.max_attempts, error = %error, "WeChat Pay call failed");
                        last_error = Some(error);
                    }
                    Err(error @ Error::Api { .. }) => {
                        // A definite answer: WeChat Pay is up.
                        permit.success();
                        return Err(error);
                    }
                    Err(error) => {
                        // Says nothing about availability (bad signature, bad JSON).
                        drop(permit);
                        return Err(error);
                    }
                }
            }
            Err(last_error.unwrap_or(Error::UnexpectedResponse {
                operation,
                reason: "no attempt was made (retry.max_attempts is 0)".to_owned(),
            }))
        }
        .instrument(span)
        .await
    }

    async fn attempt(
        &self,
        operation: &'static str,
        method: &Method,
        url: &Url,
        body: Option<&str>,
        verify: bool,
    ) -> Result<Exchange> {
        let inner = &*self.inner;
        let signed_url = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let authorization = inner.signer.authorization(
            method.as_str(),
            &signed_url,
            unix_now(),
            &new_nonce(),
            body.unwrap_or(""),
        )?;
        let mut request = inner
            .http
            .request(method.clone(), url.clone())
            .header(AUTHORIZATION, authorization)
            .header(ACCEPT, "application/json")
            .header(
                USER_AGENT,
                concat!("dmr-wechatpay/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(id) = &inner.public_key_id {
            // Asks WeChat Pay to sign the answer with the public key we hold.
            request = request.header(HEADER_SERIAL, id);
        }
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_owned());
        }
        let transport = |source: reqwest::Error| {
            if source.is_timeout() {
                Error::Timeout {
                    operation,
                    after: inner.request_timeout,
                }
            } else {
                Error::Transport { operation, source }
            }
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(transport)?;
        let request_id = headers
            .get("Request-ID")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        debug!(status = status.as_u16(), request_id, "WeChat Pay answered");
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            // Not verified: nothing from it is trusted, it only triggers a retry.
            return Err(api_error(operation, status, &bytes, request_id));
        }
        if verify {
            inner
                .platform_keys
                .verify_headers(&headers, &bytes, unix_now(), inner.max_skew)?;
        }
        if status.is_success() {
            Ok(Exchange {
                headers,
                body: bytes.to_vec(),
            })
        } else {
            Err(api_error(operation, status, &bytes, request_id))
        }
    }
}

fn api_error(
    operation: &'static str,
    status: StatusCode,
    body: &[u8],
    request_id: String,
) -> Error {
    let (code, message) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => (e.code, e.message),
        Err(_) => (
            format!("HTTP_{}", status.as_u16()),
            String::from_utf8_lossy(body).chars().take(200).collect(),
        ),
    };
    Error::Api {
        operation,
        status: status.as_u16(),
        code,
        message,
        request_id,
    }
}

fn parse_json<T: DeserializeOwned>(context: &'static str, body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|source| Error::Json { context, source })
}
