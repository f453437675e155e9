//! Request signing (`WECHATPAY2-SHA256-RSA2048`) and the JSAPI `paySign`.
//!
//! WeChat Pay authenticates the merchant by an RSA PKCS#1 v1.5 SHA-256 signature over
//! `METHOD\nPATH?QUERY\nTIMESTAMP\nNONCE\nBODY\n`, made with the merchant API private key and
//! sent in the `Authorization` header together with the merchant certificate serial.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand_core::{OsRng, RngCore};
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::DecodePrivateKey as _;
use rsa::signature::{SignatureEncoding as _, Signer as _};
use rsa::{RsaPrivateKey, traits::PublicKeyParts as _};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::fmt;

use crate::error::{Error, Result};

/// The authorization scheme name WeChat Pay API v3 expects.
pub const AUTH_SCHEME: &str = "WECHATPAY2-SHA256-RSA2048";

/// The string WeChat Pay expects a request signature over.
pub fn request_message(method: &str, url: &str, timestamp: i64, nonce: &str, body: &str) -> String {
    format!("{method}\n{url}\n{timestamp}\n{nonce}\n{body}\n")
}

/// A fresh 32-character nonce from the OS random source.
pub fn new_nonce() -> String {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    hex::encode_upper(bytes)
}

/// Signs with the merchant API private key. `Debug` shows the merchant and serial only.
#[derive(Clone)]
pub struct MerchantSigner {
    mchid: String,
    serial_no: String,
    key: SigningKey<Sha256>,
}

impl fmt::Debug for MerchantSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MerchantSigner")
            .field("mchid", &self.mchid)
            .field("serial_no", &self.serial_no)
            .field("key", &"***")
            .finish()
    }
}

impl MerchantSigner {
    /// Loads the merchant key from PEM: PKCS#8 (`BEGIN PRIVATE KEY`, what the merchant platform
    /// issues as `apiclient_key.pem`) or, as a courtesy, PKCS#1 (`BEGIN RSA PRIVATE KEY`).
    pub fn from_pem(mchid: &str, serial_no: &str, pem: &str) -> Result<Self> {
        let key = match RsaPrivateKey::from_pkcs8_pem(pem) {
            Ok(key) => key,
            Err(pkcs8_err) => RsaPrivateKey::from_pkcs1_pem(pem).map_err(|_| {
                Error::InvalidPrivateKey(format!("not an RSA private key in PEM: {pkcs8_err}"))
            })?,
        };
        if key.size() < 256 {
            return Err(Error::InvalidPrivateKey(format!(
                "RSA key is {} bits, WeChat Pay requires 2048",
                key.size() * 8
            )));
        }
        Ok(Self {
            mchid: mchid.to_owned(),
            serial_no: serial_no.to_owned(),
            key: SigningKey::<Sha256>::new(key),
        })
    }

    /// Merchant id this signer signs for.
    pub fn mchid(&self) -> &str {
        &self.mchid
    }

    /// Merchant API certificate serial sent in `serial_no`.
    pub fn serial_no(&self) -> &str {
        &self.serial_no
    }

    /// Base64 RSA PKCS#1 v1.5 SHA-256 signature of `message` (deterministic).
    pub fn sign(&self, message: &[u8]) -> Result<String> {
        let signature = self
            .key
            .try_sign(message)
            .map_err(|e| Error::Sign(e.to_string()))?;
        Ok(STANDARD.encode(signature.to_bytes()))
    }

    /// The `Authorization` header value for one request. `url` is the path with its query
    /// string exactly as sent (`/v3/pay/transactions/out-trade-no/X?mchid=1`).
    pub fn authorization(
        &self,
        method: &str,
        url: &str,
        timestamp: i64,
        nonce: &str,
        body: &str,
    ) -> Result<String> {
        let signature =
            self.sign(request_message(method, url, timestamp, nonce, body).as_bytes())?;
        Ok(format!(
            "{AUTH_SCHEME} mchid=\"{}\",nonce_str=\"{nonce}\",signature=\"{signature}\",timestamp=\"{timestamp}\",serial_no=\"{}\"",
            self.mchid, self.serial_no
        ))
    }

    /// The parameters the phone passes to `WeixinJSBridge`/`wx.requestPayment`, signed over
    /// `appId\ntimeStamp\nnonceStr\npackage\n`.
    pub fn jsapi_params(
        &self,
        app_id: &str,
        prepay_id: &str,
        timestamp: i64,
        nonce: &str,
    ) -> Result<JsapiPayParams> {
        let time_stamp = timestamp.to_string();
        let package = format!("prepay_id={prepay_id}");
        let message = format!("{app_id}\n{time_stamp}\n{nonce}\n{package}\n");
        let pay_sign = self.sign(message.as_bytes())?;
        Ok(JsapiPayParams {
            app_id: app_id.to_owned(),
            time_stamp,
            nonce_str: nonce.to_owned(),
            package,
            sign_type: "RSA".to_owned(),
            pay_sign,
        })
    }
}

/// Signed JSAPI payment parameters; serialises with the names the JS API expects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JsapiPayParams {
    /// `appId`.
    pub app_id: String,
    /// `timeStamp`: Unix seconds as a string.
    pub time_stamp: String,
    /// `nonceStr`.
    pub nonce_str: String,
    /// `package`: `prepay_id=…`.
    pub package: String,
    /// `signType`: always `RSA`.
    pub sign_type: String,
    /// `paySign`.
    pub pay_sign: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_has_five_newline_terminated_lines() {
        let m = request_message("GET", "/v3/certificates", 1554208460, "N", "");
        assert_eq!(m, "GET\n/v3/certificates\n1554208460\nN\n\n");
    }

    #[test]
    fn nonce_is_32_hex_and_fresh() {
        let a = new_nonce();
        let b = new_nonce();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn garbage_key_is_refused_with_a_hint() {
        let err = MerchantSigner::from_pem("1", "S", "not a pem").err();
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("apiclient_key.pem"), "{text}");
    }
}
