//! Client configuration, validated into usable keys before any request is made.

use std::time::Duration;

use crate::aead::ApiV3Key;
use crate::error::{Error, Result};
use crate::resilience::{BreakerConfig, RetryPolicy};
use crate::secret::Secret;
use crate::sign::MerchantSigner;
use crate::verify::{DEFAULT_MAX_SKEW, PlatformKeys};

/// Production API endpoint.
pub const PRODUCTION_BASE_URL: &str = "https://api.mch.weixin.qq.com";

/// A WeChat Pay public key and its id, as downloaded from the merchant platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeyConfig {
    /// `PUB_KEY_ID_…`.
    pub id: String,
    /// SubjectPublicKeyInfo PEM (`BEGIN PUBLIC KEY`).
    pub pem: String,
}

/// Everything the client needs. Secrets print as `***`.
#[derive(Debug, Clone)]
pub struct WechatPayConfig {
    /// Merchant id (`mchid`).
    pub mchid: String,
    /// App id the JSAPI/Native orders are placed under.
    pub appid: String,
    /// Serial of the merchant API certificate (sent as `serial_no`).
    pub merchant_serial_no: String,
    /// Merchant API private key, PKCS#8 PEM (`apiclient_key.pem`).
    pub merchant_private_key_pem: Secret<String>,
    /// API v3 key (32 characters) used to decrypt notifications.
    pub api_v3_key: Secret<String>,
    /// Platform certificates (PEM) trusted for responses and notifications.
    pub platform_certificates_pem: Vec<String>,
    /// WeChat Pay public key trusted for responses and notifications.
    pub wechatpay_public_key: Option<PublicKeyConfig>,
    /// Where WeChat Pay posts payment notifications (https).
    pub notify_url: String,
    /// Where WeChat Pay posts refund notifications; `None` uses the merchant platform setting.
    pub refund_notify_url: Option<String>,
    /// API base URL, [`PRODUCTION_BASE_URL`] in production; tests point it at a local server.
    pub base_url: String,
    /// Upper bound on one HTTP exchange, body included.
    pub request_timeout: Duration,
    /// Upper bound on establishing a connection.
    pub connect_timeout: Duration,
    /// Retries of idempotent calls.
    pub retry: RetryPolicy,
    /// Circuit breaker.
    pub breaker: BreakerConfig,
    /// Accepted distance between `Wechatpay-Timestamp` and local time.
    pub max_clock_skew: Duration,
}

impl WechatPayConfig {
    /// A configuration with production defaults for everything but the credentials.
    pub fn new(
        mchid: impl Into<String>,
        appid: impl Into<String>,
        merchant_serial_no: impl Into<String>,
        merchant_private_key_pem: impl Into<String>,
        api_v3_key: impl Into<String>,
        notify_url: impl Into<String>,
    ) -> Self {
        Self {
            mchid: mchid.into(),
            appid: appid.into(),
            merchant_serial_no: merchant_serial_no.into(),
            merchant_private_key_pem: Secret::new(merchant_private_key_pem.into()),
            api_v3_key: Secret::new(api_v3_key.into()),
            platform_certificates_pem: Vec::new(),
            wechatpay_public_key: None,
            notify_url: notify_url.into(),
            refund_notify_url: None,
            base_url: PRODUCTION_BASE_URL.to_owned(),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            breaker: BreakerConfig::default(),
            max_clock_skew: DEFAULT_MAX_SKEW,
        }
    }

    /// Checks every field and builds the keys; reports all problems at once.
    pub fn validate(&self) -> Result<ValidatedKeys> {
        let mut problems = Vec::new();
        if self.mchid.is_empty() || !self.mchid.bytes().all(|b| b.is_ascii_digit()) {
            problems.push(format!(
                "mchid {:?}: must be the numeric merchant id",
                self.mchid
            ));
        }
        if self.appid.is_empty() {
            problems.push("appid: must not be empty".to_owned());
        }
        if self.merchant_serial_no.is_empty()
            || !self
                .merchant_serial_no
                .bytes()
                .all(|b| b.is_ascii_hexdigit())
        {
            problems.push(format!(
                "merchant_serial_no {:?}: must be the hex serial of the merchant API certificate",
                self.merchant_serial_no
            ));
        }
        let signer = MerchantSigner::from_pem(
            &self.mchid,
            &self.merchant_serial_no,
            self.merchant_private_key_pem.expose(),
        )
        .map_err(|e| problems.push(format!("merchant_private_key_pem: {e}")))
        .ok();
        let api_v3_key = ApiV3Key::new(self.api_v3_key.expose())
            .map_err(|e| problems.push(format!("api_v3_key: {e}")))
            .ok();
        let mut keys = PlatformKeys::new();
        for (i, pem) in self.platform_certificates_pem.iter().enumerate() {
            if let Err(e) = keys.add_certificate_pem(pem) {
                problems.push(format!("platform_certificates_pem[{i}]: {e}"));
            }
        }
        if let Some(pk) = &self.wechatpay_public_key
            && let Err(e) = keys.add_public_key_pem(&pk.id, &pk.pem)
        {
            problems.push(format!("wechatpay_public_key: {e}"));
        }
        if self.platform_certificates_pem.is_empty() && self.wechatpay_public_key.is_none() {
            problems.push(
                "platform_certificates_pem / wechatpay_public_key: configure at least one, or no response can be verified"
                    .to_owned(),
            );
        }
        if !self.notify_url.starts_with("https://") {
            problems.push(format!(
                "notify_url {:?}: WeChat Pay requires an https URL",
                self.notify_url
            ));
        }
        if let Some(url) = &self.refund_notify_url
            && !url.starts_with("https://")
        {
            problems.push(format!(
                "refund_notify_url {url:?}: WeChat Pay requires an https URL"
            ));
        }
        let base_url = reqwest::Url::parse(&self.base_url)
            .map_err(|e| problems.push(format!("base_url {:?}: {e}", self.base_url)))
            .ok();
        if self.request_timeout.is_zero() {
            problems.push("request_timeout: must be positive".to_owned());
        }
        if self.retry.max_attempts == 0 {
            problems.push("retry.max_attempts: must be at least 1".to_owned());
        }
        if self.breaker.failure_threshold == 0 {
            problems.push("breaker.failure_threshold: must be at least 1".to_owned());
        }
        match (signer, api_v3_key, base_url) {
            (Some(signer), Some(api_v3_key), Some(base_url)) if problems.is_empty() => {
                Ok(ValidatedKeys {
                    signer,
                    api_v3_key,
                    platform_keys: keys,
                    base_url,
                })
            }
            _ => Err(Error::Config(problems)),
        }
    }
}

/// The parsed, ready-to-use material from a [`WechatPayConfig`].
#[derive(Debug, Clone)]
pub struct ValidatedKeys {
    /// Request signer.
    pub signer: MerchantSigner,
    /// Notification decryption key.
    pub api_v3_key: ApiV3Key,
    /// Response and notification verification keys.
    pub platform_keys: PlatformKeys,
    /// Parsed base URL.
    pub base_url: reqwest::Url,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_at_once_and_secrets_do_not_print() {
        let mut c = WechatPayConfig::new(
            "abc",
            "",
            "zz",
            "secret-pem-text",
            "short-v3-key",
            "http://x",
        );
        c.base_url = "not a url".into();
        let printed = format!("{c:?}");
        assert!(!printed.contains("secret-pem-text") && !printed.contains("short-v3-key"));
        let Err(Error::Config(problems)) = c.validate() else {
            panic!("expected a config error");
        };
        let joined = problems.join("\n");
        for field in [
            "mchid",
            "appid",
            "merchant_serial_no",
            "merchant_private_key_pem",
            "api_v3_key",
            "wechatpay_public_key",
            "notify_url",
            "base_url",
        ] {
            assert!(joined.contains(field), "{field} missing from {joined}");
        }
    }
}
