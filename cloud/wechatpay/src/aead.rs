//! AEAD_AES_256_GCM decryption of notification resources (and anything else WeChat Pay
//! encrypts with the API v3 key).

use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use std::fmt;

use crate::error::{Error, Result};

/// Length of the GCM nonce WeChat Pay uses.
pub const NONCE_LEN: usize = 12;
/// Length of the GCM tag appended to the ciphertext.
pub const TAG_LEN: usize = 16;

/// The 32-byte API v3 key. `Debug` prints `***`.
#[derive(Clone)]
pub struct ApiV3Key([u8; 32]);

impl fmt::Debug for ApiV3Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiV3Key(***)")
    }
}

impl ApiV3Key {
    /// The key as set in the merchant platform: 32 ASCII characters, used as raw bytes.
    pub fn new(key: &str) -> Result<Self> {
        let bytes: [u8; 32] = key
            .as_bytes()
            .try_into()
            .map_err(|_| Error::InvalidArgument {
                field: "api_v3_key",
                reason: format!(
                    "must be exactly 32 bytes (the APIv3 key set in the merchant platform), got {}",
                    key.len()
                ),
            })?;
        Ok(Self(bytes))
    }

    /// Decrypts base64 `ciphertext` (which ends with the 16-byte tag) under `nonce` and
    /// `associated_data`. Any alteration of the four inputs fails with [`Error::Decrypt`].
    pub fn decrypt(
        &self,
        nonce: &[u8],
        associated_data: &[u8],
        ciphertext_b64: &str,
    ) -> Result<Vec<u8>> {
        if nonce.len() != NONCE_LEN {
            return Err(Error::Encoding {
                field: "resource.nonce",
                reason: format!("must be {NONCE_LEN} bytes, got {}", nonce.len()),
            });
        }
        let ciphertext = STANDARD
            .decode(ciphertext_b64.trim().as_bytes())
            .map_err(|e| Error::Encoding {
                field: "resource.ciphertext",
                reason: format!("not base64: {e}"),
            })?;
        if ciphertext.len() < TAG_LEN {
            return Err(Error::Encoding {
                field: "resource.ciphertext",
                reason: format!(
                    "{} bytes is shorter than the {TAG_LEN}-byte tag",
                    ciphertext.len()
                ),
            });
        }
        let cipher = Aes256Gcm::new_from_slice(&self.0).map_err(|_| Error::Decrypt)?;
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: &ciphertext,
                    aad: associated_data,
                },
            )
            .map_err(|_| Error::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_length_is_checked() {
        assert!(ApiV3Key::new("short").is_err());
        assert!(ApiV3Key::new("0123456789abcdef0123456789abcdef").is_ok());
    }

    #[test]
    fn debug_hides_the_key() {
        let k = ApiV3Key::new("0123456789abcdef0123456789abcdef");
        assert_eq!(format!("{k:?}"), "Ok(ApiV3Key(***))");
    }

    #[test]
    fn wrong_nonce_length_is_an_error_not_a_panic() {
        let k = ApiV3Key::new("0123456789abcdef0123456789abcdef");
        let r = k.map(|k| k.decrypt(b"short", b"", "AAAAAAAAAAAAAAAAAAAAAA=="));
        assert!(matches!(
            r,
            Ok(Err(Error::Encoding {
                field: "resource.nonce",
                ..
            }))
        ));
    }
}
