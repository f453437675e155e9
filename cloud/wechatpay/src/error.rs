//! The crate's single error type.

use std::time::Duration;

/// Everything that can go wrong talking to WeChat Pay or checking what it sent.
///
/// Variants name what is wrong (which header, which field, which operation) and, where there
/// is one, what to do about it. Use [`Error::is_retryable`] and [`Error::is_not_found`] rather
/// than matching on message text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration was rejected; every problem found is listed.
    #[error("invalid WeChat Pay configuration: {}", .0.join("; "))]
    Config(Vec<String>),

    /// An argument passed by the caller was rejected before anything was sent.
    #[error("invalid argument {field}: {reason}")]
    InvalidArgument {
        /// Which argument.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },

    /// The merchant API private key could not be used.
    #[error("merchant API private key: {0} (expected the PKCS#8 PEM apiclient_key.pem)")]
    InvalidPrivateKey(String),

    /// A platform certificate could not be used.
    #[error("platform certificate: {0}")]
    InvalidCertificate(String),

    /// A WeChat Pay public key could not be used.
    #[error("WeChat Pay public key {id}: {reason}")]
    InvalidPublicKey {
        /// The configured public key id (`PUB_KEY_ID_…`).
        id: String,
        /// Why it was refused.
        reason: String,
    },

    /// Signing a request failed inside the RSA implementation.
    #[error("signing the request failed: {0}")]
    Sign(String),

    /// A response or notification lacked a header needed to verify it.
    #[error(
        "missing header {0}: WeChat Pay signs every response and notification with it; refuse the message"
    )]
    MissingHeader(&'static str),

    /// A header was present but unusable.
    #[error("header {name} is invalid: {reason}")]
    InvalidHeader {
        /// Which header.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// WeChat Pay's signature-test probe (`Wechatpay-Signature: WECHATPAY/SIGNTEST/…`): it checks
    /// that the merchant refuses bad signatures, so answer it with a 4xx status.
    #[error(
        "signature test probe (Wechatpay-Signature starts with WECHATPAY/SIGNTEST/): answer with a 4xx status"
    )]
    SignatureProbe,

    /// The signed timestamp is too far from our clock: a replay or a badly skewed clock.
    #[error(
        "Wechatpay-Timestamp {timestamp} is {skew_secs}s away from local time {now}; at most {max_skew_secs}s allowed (replay, or check the clock)"
    )]
    StaleTimestamp {
        /// The timestamp in the header.
        timestamp: i64,
        /// Local time used for the comparison.
        now: i64,
        /// Absolute difference in seconds.
        skew_secs: i64,
        /// The configured bound.
        max_skew_secs: i64,
    },

    /// `Wechatpay-Serial` names no configured certificate or public key.
    #[error(
        "Wechatpay-Serial {0} matches no configured platform certificate serial or WeChat Pay public key id; download the current platform certificate or configure the public key"
    )]
    UnknownSerial(String),

    /// The platform certificate named by `Wechatpay-Serial` is outside its validity period.
    #[error(
        "platform certificate {serial} is not valid at {now} (valid {not_before}..{not_after}); download the current one"
    )]
    CertificateNotValid {
        /// Certificate serial.
        serial: String,
        /// Local time (Unix seconds).
        now: i64,
        /// Start of validity (Unix seconds).
        not_before: i64,
        /// End of validity (Unix seconds).
        not_after: i64,
    },

    /// The signature does not match the raw body under the key named by `Wechatpay-Serial`.
    #[error(
        "signature does not verify with {serial}: the message was altered or was not signed by WeChat Pay"
    )]
    BadSignature {
        /// Serial or public key id that was used.
        serial: String,
    },

    /// AEAD_AES_256_GCM decryption failed.
    #[error(
        "AEAD_AES_256_GCM decryption failed: ciphertext, tag, nonce or associated data were altered, or the API v3 key is wrong"
    )]
    Decrypt,

    /// An encrypted resource uses an algorithm we do not implement.
    #[error("unsupported resource algorithm {0}; only AEAD_AES_256_GCM is implemented")]
    UnsupportedAlgorithm(String),

    /// A body could not be parsed as the JSON we expect.
    #[error("{context}: invalid JSON: {source}")]
    Json {
        /// What was being parsed.
        context: &'static str,
        /// The parser's error, naming the field.
        #[source]
        source: serde_json::Error,
    },

    /// A field held bytes that are not valid base64 or not valid UTF-8.
    #[error("field {field}: {reason}")]
    Encoding {
        /// Which field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },

    /// A call did not finish within the configured timeout.
    #[error("{operation}: no answer from WeChat Pay within {after:?}")]
    Timeout {
        /// Which operation.
        operation: &'static str,
        /// The configured timeout.
        after: Duration,
    },

    /// A call failed below HTTP (connection refused, reset, TLS).
    #[error("{operation}: could not reach WeChat Pay: {source}")]
    Transport {
        /// Which operation.
        operation: &'static str,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },

    /// WeChat Pay answered with an error status (after signature verification for 4xx).
    #[error(
        "{operation}: WeChat Pay answered HTTP {status} {code}: {message} (Request-ID {request_id})"
    )]
    Api {
        /// Which operation.
        operation: &'static str,
        /// HTTP status.
        status: u16,
        /// WeChat Pay error code (`ORDER_NOT_EXIST`, `SYSTEM_ERROR`, …) or `HTTP_<status>`.
        code: String,
        /// Its message.
        message: String,
        /// `Request-ID` header, for WeChat Pay support.
        request_id: String,
    },

    /// A successful answer did not have the shape the API documents.
    #[error("{operation}: unexpected response: {reason}")]
    UnexpectedResponse {
        /// Which operation.
        operation: &'static str,
        /// What was wrong.
        reason: String,
    },

    /// The circuit breaker is open: recent calls failed, so this one was not sent.
    #[error(
        "WeChat Pay is unavailable: {failures} consecutive failures opened the circuit breaker; calls resume in {retry_after:?}"
    )]
    CircuitOpen {
        /// Failures that opened the breaker.
        failures: u32,
        /// Time until a trial call is allowed.
        retry_after: Duration,
    },

    /// The downloaded bill does not hash to the value WeChat Pay announced.
    #[error(
        "bill file SHA1 is {actual}, WeChat Pay announced {expected}: the download is corrupt, request the bill again"
    )]
    BillHashMismatch {
        /// Announced hash.
        expected: String,
        /// Hash of what we received.
        actual: String,
    },

    /// The bill file does not have the documented layout.
    #[error("bill line {line}: {reason}")]
    BillFormat {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    /// Whether sending the same request again (same idempotency key) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Timeout { .. } | Error::Transport { .. } => true,
            Error::Api { status, code, .. } => {
                *status >= 500
                    || *status == 429
                    || code == "SYSTEM_ERROR"
                    || code == "FREQUENCY_LIMITED"
            }
            _ => false,
        }
    }

    /// Whether WeChat Pay said the order or refund does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Api { status: 404, .. })
            || matches!(self, Error::Api { code, .. } if code == "ORDER_NOT_EXIST" || code == "RESOURCE_NOT_EXISTS")
    }

    /// Whether the error means the message was not authentic (bad or missing signature, stale,
    /// unknown key, probe): a notification endpoint answers these with a 4xx status.
    pub fn is_authentication_failure(&self) -> bool {
        matches!(
            self,
            Error::MissingHeader(_)
                | Error::InvalidHeader { .. }
                | Error::SignatureProbe
                | Error::StaleTimestamp { .. }
                | Error::UnknownSerial(_)
                | Error::CertificateNotValid { .. }
                | Error::BadSignature { .. }
        )
    }
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
