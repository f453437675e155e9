//! Verification of responses and notifications signed by WeChat Pay.
//!
//! WeChat Pay signs `TIMESTAMP\nNONCE\nBODY\n` with either its platform certificate key or, for
//! merchants migrated to it, the "WeChat Pay public key". `Wechatpay-Serial` says which: a
//! `PUB_KEY_ID_…` id or a certificate serial. Both kinds can be configured at once, which is
//! what a merchant needs during the migration when notifications arrive signed either way.
//! Verification runs over the raw body bytes, before any JSON parsing.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use rsa::RsaPublicKey;
use rsa::pkcs1::DecodeRsaPublicKey as _;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey as _;
use rsa::signature::Verifier as _;
use sha2::Sha256;
use std::fmt;
use std::time::Duration;
use x509_cert::Certificate;
use x509_cert::der::{DecodePem as _, Encode as _};

use crate::error::{Error, Result};

/// Header carrying the serial or public key id of the signing key.
pub const HEADER_SERIAL: &str = "Wechatpay-Serial";
/// Header carrying the signed Unix timestamp.
pub const HEADER_TIMESTAMP: &str = "Wechatpay-Timestamp";
/// Header carrying the signed nonce.
pub const HEADER_NONCE: &str = "Wechatpay-Nonce";
/// Header carrying the base64 signature.
pub const HEADER_SIGNATURE: &str = "Wechatpay-Signature";
/// Prefix WeChat Pay uses for deliberately invalid signatures that probe the merchant.
pub const SIGNTEST_PREFIX: &str = "WECHATPAY/SIGNTEST/";
/// Prefix of WeChat Pay public key ids.
pub const PUBLIC_KEY_ID_PREFIX: &str = "PUB_KEY_ID_";
/// Clock skew WeChat Pay documents as acceptable.
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(300);

/// The four signature headers of a response or notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeaders {
    /// `Wechatpay-Serial`.
    pub serial: String,
    /// `Wechatpay-Timestamp`, as sent (it is part of the signed string).
    pub timestamp: String,
    /// `Wechatpay-Nonce`.
    pub nonce: String,
    /// `Wechatpay-Signature` (base64).
    pub signature: String,
}

impl SignatureHeaders {
    /// Reads the headers (names are case-insensitive). A signature-test probe is recognised
    /// before anything else so that it is never mistaken for a merely malformed message.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self> {
        let signature = header(headers, HEADER_SIGNATURE)?;
        if signature.starts_with(SIGNTEST_PREFIX) {
            return Err(Error::SignatureProbe);
        }
        Ok(Self {
            serial: header(headers, HEADER_SERIAL)?,
            timestamp: header(headers, HEADER_TIMESTAMP)?,
            nonce: header(headers, HEADER_NONCE)?,
            signature,
        })
    }
}

fn header(headers: &HeaderMap, name: &'static str) -> Result<String> {
    let value = headers.get(name).ok_or(Error::MissingHeader(name))?;
    let text = value.to_str().map_err(|_| Error::InvalidHeader {
        name,
        reason: "not visible ASCII".to_owned(),
    })?;
    let text = text.trim();
    if text.is_empty() {
        return Err(Error::MissingHeader(name));
    }
    Ok(text.to_owned())
}

/// Normalises a certificate serial for comparison: hex digits, upper case, no leading zeros.
fn normalise_serial(serial: &str) -> String {
    let upper = serial.trim().to_ascii_uppercase();
    let trimmed = upper.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

#[derive(Clone)]
struct PlatformCertificate {
    serial: String,
    not_before: i64,
    not_after: i64,
    key: VerifyingKey<Sha256>,
}

#[derive(Clone)]
struct PublicKeyEntry {
    id: String,
    key: VerifyingKey<Sha256>,
}

/// The WeChat Pay verification keys a merchant trusts: platform certificates and/or WeChat Pay
/// public keys.
#[derive(Clone, Default)]
pub struct PlatformKeys {
    certificates: Vec<PlatformCertificate>,
    public_keys: Vec<PublicKeyEntry>,
}

impl fmt::Debug for PlatformKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlatformKeys")
            .field(
                "certificates",
                &self
                    .certificates
                    .iter()
                    .map(|c| &c.serial)
                    .collect::<Vec<_>>(),
            )
            .field(
                "public_keys",
                &self.public_keys.iter().map(|k| &k.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl PlatformKeys {
    /// No keys yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether no key at all is configured (then nothing can be verified).
    pub fn is_empty(&self) -> bool {
        self.certificates.is_empty() && self.public_keys.is_empty()
    }

    /// Adds a platform certificate (PEM) and returns its serial (upper-case hex).
    pub fn add_certificate_pem(&mut self, pem: &str) -> Result<String> {
        let cert = Certificate::from_pem(pem.as_bytes())
            .map_err(|e| Error::InvalidCertificate(format!("not an X.509 PEM certificate: {e}")))?;
        let tbs = &cert.tbs_certificate;
        let serial = normalise_serial(&hex::encode_upper(tbs.serial_number.as_bytes()));
        let spki = tbs
            .subject_public_key_info
            .to_der()
            .map_err(|e| Error::InvalidCertificate(format!("certificate {serial}: {e}")))?;
        let key = RsaPublicKey::from_public_key_der(&spki).map_err(|e| {
            Error::InvalidCertificate(format!("certificate {serial} has no RSA public key: {e}"))
        })?;
        let unix = |t: x509_cert::time::Time| {
            i64::try_from(t.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
        };
        self.certificates.push(PlatformCertificate {
            not_before: unix(tbs.validity.not_before),
            not_after: unix(tbs.validity.not_after),
            key: VerifyingKey::new(key),
            serial: serial.clone(),
        });
        Ok(serial)
    }

    /// Adds a WeChat Pay public key (SubjectPublicKeyInfo PEM as downloaded from the merchant
    /// platform, or PKCS#1) under its id `PUB_KEY_ID_…`.
    pub fn add_public_key_pem(&mut self, id: &str, pem: &str) -> Result<()> {
        if !id.starts_with(PUBLIC_KEY_ID_PREFIX) {
            return Err(Error::InvalidPublicKey {
                id: id.to_owned(),
                reason: format!("the id must start with {PUBLIC_KEY_ID_PREFIX}"),
            });
        }
        let key = RsaPublicKey::from_public_key_pem(pem)
            .or_else(|_| RsaPublicKey::from_pkcs1_pem(pem))
            .map_err(|e| Error::InvalidPublicKey {
                id: id.to_owned(),
                reason: format!("not an RSA public key in PEM: {e}"),
            })?;
        self.public_keys.push(PublicKeyEntry {
            id: id.to_owned(),
            key: VerifyingKey::new(key),
        });
        Ok(())
    }

    /// Verifies a signed message: timestamp within `max_skew` of `now_unix`, key chosen by
    /// `Wechatpay-Serial`, RSA PKCS#1 v1.5 SHA-256 over `timestamp\nnonce\nbody\n`.
    pub fn verify(
        &self,
        headers: &SignatureHeaders,
        body: &[u8],
        now_unix: i64,
        max_skew: Duration,
    ) -> Result<()> {
        if headers.signature.starts_with(SIGNTEST_PREFIX) {
            return Err(Error::SignatureProbe);
        }
        let timestamp: i64 = headers
            .timestamp
            .parse()
            .map_err(|_| Error::InvalidHeader {
                name: HEADER_TIMESTAMP,
                reason: format!("{:?} is not Unix seconds", headers.timestamp),
            })?;
        let skew = timestamp.saturating_sub(now_unix).saturating_abs();
        let max_skew_secs = i64::try_from(max_skew.as_secs()).unwrap_or(i64::MAX);
        if skew > max_skew_secs {
            return Err(Error::StaleTimestamp {
                timestamp,
                now: now_unix,
                skew_secs: skew,
                max_skew_secs,
            });
        }
        let key = self.key_for(&headers.serial, now_unix)?;
        let raw =
            STANDARD
                .decode(headers.signature.as_bytes())
                .map_err(|e| Error::InvalidHeader {
                    name: HEADER_SIGNATURE,
                    reason: format!("not base64: {e}"),
                })?;
        let signature = Signature::try_from(raw.as_slice()).map_err(|_| Error::BadSignature {
            serial: headers.serial.clone(),
        })?;
        let mut message =
            Vec::with_capacity(headers.timestamp.len() + headers.nonce.len() + body.len() + 3);
        message.extend_from_slice(headers.timestamp.as_bytes());
        message.push(b'\n');
        message.extend_from_slice(headers.nonce.as_bytes());
        message.push(b'\n');
        message.extend_from_slice(body);
        message.push(b'\n');
        key.verify(&message, &signature)
            .map_err(|_| Error::BadSignature {
                serial: headers.serial.clone(),
            })
    }

    /// Reads the headers and verifies in one step.
    pub fn verify_headers(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_unix: i64,
        max_skew: Duration,
    ) -> Result<()> {
        let signature_headers = SignatureHeaders::from_headers(headers)?;
        self.verify(&signature_headers, body, now_unix, max_skew)
    }

    fn key_for(&self, serial: &str, now_unix: i64) -> Result<&VerifyingKey<Sha256>> {
        if serial.starts_with(PUBLIC_KEY_ID_PREFIX) {
            return self
                .public_keys
                .iter()
                .find(|k| k.id == serial)
                .map(|k| &k.key)
                .ok_or_else(|| Error::UnknownSerial(serial.to_owned()));
        }
        let wanted = normalise_serial(serial);
        let cert = self
            .certificates
            .iter()
            .find(|c| c.serial == wanted)
            .ok_or_else(|| Error::UnknownSerial(serial.to_owned()))?;
        if now_unix < cert.not_before || now_unix > cert.not_after {
            return Err(Error::CertificateNotValid {
                serial: cert.serial.clone(),
                now: now_unix,
                not_before: cert.not_before,
                not_after: cert.not_after,
            });
        }
        Ok(&cert.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn serials_compare_without_case_or_leading_zeros() {
        assert_eq!(normalise_serial("00ab12"), "AB12");
        assert_eq!(normalise_serial("AB12"), "AB12");
        assert_eq!(normalise_serial("000"), "0");
    }

    #[test]
    fn probe_is_recognised_even_without_other_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            HEADER_SIGNATURE,
            HeaderValue::from_static("WECHATPAY/SIGNTEST/abc"),
        );
        assert!(matches!(
            SignatureHeaders::from_headers(&h),
            Err(Error::SignatureProbe)
        ));
    }

    #[test]
    fn missing_header_is_named() {
        let mut h = HeaderMap::new();
        h.insert(HEADER_SIGNATURE, HeaderValue::from_static("c2ln"));
        h.insert(HEADER_SERIAL, HeaderValue::from_static("PUB_KEY_ID_1"));
        h.insert(HEADER_TIMESTAMP, HeaderValue::from_static("1"));
        let err = SignatureHeaders::from_headers(&h).err();
        assert!(matches!(err, Some(Error::MissingHeader("Wechatpay-Nonce"))));
    }

    #[test]
    fn public_key_id_must_have_prefix() {
        let mut keys = PlatformKeys::new();
        let err = keys.add_public_key_pem("12345", "x").err();
        assert!(matches!(err, Some(Error::InvalidPublicKey { .. })));
    }
}
