//! Payment and refund notifications: verify the signature over the raw body, then decrypt
//! the resource and parse it into a typed value.

use http::HeaderMap;
use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::aead::ApiV3Key;
use crate::error::{Error, Result};
use crate::model::{RefundNotification, Transaction};
use crate::verify::{PlatformKeys, SignatureHeaders};

/// The algorithm every v3 encrypted resource uses.
pub const AEAD_AES_256_GCM: &str = "AEAD_AES_256_GCM";

/// The encrypted `resource` of a notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedResource {
    /// Must be `AEAD_AES_256_GCM`.
    pub algorithm: String,
    /// Base64 ciphertext followed by the 16-byte tag.
    pub ciphertext: String,
    /// Associated data (may be absent or empty).
    #[serde(default)]
    pub associated_data: Option<String>,
    /// 12-character nonce.
    pub nonce: String,
    /// `transaction`, `refund`, …
    #[serde(default)]
    pub original_type: Option<String>,
}

/// The notification envelope as POSTed by WeChat Pay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationEnvelope {
    /// Notification id (stable across redeliveries: use it to deduplicate).
    pub id: String,
    /// RFC 3339 creation time.
    #[serde(default)]
    pub create_time: Option<String>,
    /// `TRANSACTION.SUCCESS`, `REFUND.SUCCESS`, `REFUND.ABNORMAL`, `REFUND.CLOSED`, …
    pub event_type: String,
    /// `encrypt-resource`.
    #[serde(default)]
    pub resource_type: Option<String>,
    /// Human-readable summary.
    #[serde(default)]
    pub summary: Option<String>,
    /// The encrypted payload.
    pub resource: EncryptedResource,
}

/// A verified, decrypted notification.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notification {
    /// `TRANSACTION.*`: a payment result.
    Transaction {
        /// Notification id.
        id: String,
        /// Event type.
        event_type: String,
        /// The payment.
        transaction: Transaction,
    },
    /// `REFUND.*`: a refund result.
    Refund {
        /// Notification id.
        id: String,
        /// Event type.
        event_type: String,
        /// The refund.
        refund: RefundNotification,
    },
    /// An event type this crate does not model; the decrypted JSON is kept.
    Other {
        /// Notification id.
        id: String,
        /// Event type.
        event_type: String,
        /// Decrypted resource (JSON text).
        plaintext: String,
    },
}

impl Notification {
    /// Notification id, for deduplication.
    pub fn id(&self) -> &str {
        match self {
            Notification::Transaction { id, .. }
            | Notification::Refund { id, .. }
            | Notification::Other { id, .. } => id,
        }
    }
}

/// Decrypts an encrypted resource to its plaintext bytes.
pub fn decrypt_resource(key: &ApiV3Key, resource: &EncryptedResource) -> Result<Vec<u8>> {
    if resource.algorithm != AEAD_AES_256_GCM {
        return Err(Error::UnsupportedAlgorithm(resource.algorithm.clone()));
    }
    key.decrypt(
        resource.nonce.as_bytes(),
        resource.associated_data.as_deref().unwrap_or("").as_bytes(),
        &resource.ciphertext,
    )
}

/// Checks and opens notifications. Cheap to clone via `Arc` inside the client.
#[derive(Debug, Clone)]
pub struct NotificationVerifier {
    keys: PlatformKeys,
    api_v3_key: ApiV3Key,
    max_skew: Duration,
}

impl NotificationVerifier {
    /// A verifier over the given keys.
    pub fn new(keys: PlatformKeys, api_v3_key: ApiV3Key, max_skew: Duration) -> Self {
        Self {
            keys,
            api_v3_key,
            max_skew,
        }
    }

    /// Verifies the signature over the raw `body` (as received, before any parsing), then
    /// decrypts and parses. `now_unix` is the local time in Unix seconds.
    pub fn parse(&self, headers: &HeaderMap, body: &[u8], now_unix: i64) -> Result<Notification> {
        let signature_headers = SignatureHeaders::from_headers(headers)?;
        self.keys
            .verify(&signature_headers, body, now_unix, self.max_skew)?;
        let envelope: NotificationEnvelope =
            serde_json::from_slice(body).map_err(|source| Error::Json {
                context: "notification envelope",
                source,
            })?;
        let plaintext = decrypt_resource(&self.api_v3_key, &envelope.resource)?;
        let NotificationEnvelope { id, event_type, .. } = envelope;
        if event_type.starts_with("TRANSACTION.") {
            let transaction = serde_json::from_slice(&plaintext).map_err(|source| Error::Json {
                context: "notification transaction resource",
                source,
            })?;
            Ok(Notification::Transaction {
                id,
                event_type,
                transaction,
            })
        } else if event_type.starts_with("REFUND.") {
            let refund = serde_json::from_slice(&plaintext).map_err(|source| Error::Json {
                context: "notification refund resource",
                source,
            })?;
            Ok(Notification::Refund {
                id,
                event_type,
                refund,
            })
        } else {
            let plaintext = String::from_utf8(plaintext).map_err(|_| Error::Encoding {
                field: "resource.ciphertext",
                reason: "decrypted resource is not UTF-8".to_owned(),
            })?;
            Ok(Notification::Other {
                id,
                event_type,
                plaintext,
            })
        }
    }
}
