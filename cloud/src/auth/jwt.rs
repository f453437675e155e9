//! Access tokens: compact JWTs signed with HMAC-SHA256. Verification accepts exactly one
//! header (`{"alg":"HS256","typ":"JWT"}`), so a token cannot choose `none` or another
//! algorithm, and checks signature, issuer, audience, not-before and expiry.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::config::Secret;

type HmacSha256 = Hmac<Sha256>;

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;
/// Clock skew tolerated between instances, in seconds.
const LEEWAY_SECS: i64 = 5;

/// What an access token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub role: String,
    pub mid: Option<String>,
    /// The user's session epoch when the token was made; a later password change bumps it.
    pub ep: i64,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
}

/// Why a token was refused. Callers only see "invalid token"; this is for logs and tests.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("not a compact JWT")]
    Format,
    #[error("header is not the one this service issues")]
    Header,
    #[error("bad signature")]
    Signature,
    #[error("claims are not valid JSON of the expected shape")]
    Claims,
    #[error("wrong issuer or audience")]
    Audience,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
}

/// Signs and verifies access tokens.
#[derive(Clone)]
pub struct JwtKeys {
    /// The keyed MAC state, cloned per use; it holds the key, so it is never printed.
    mac: HmacSha256,
    pub issuer: String,
    pub audience: String,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("key", &"[redacted]")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl JwtKeys {
    pub fn new(key: &Secret<Vec<u8>>, issuer: &str, audience: &str) -> anyhow::Result<JwtKeys> {
        let mac = HmacSha256::new_from_slice(key.expose())
            .map_err(|e| anyhow::anyhow!("HMAC key: {e}"))?;
        Ok(JwtKeys {
            mac,
            issuer: issuer.into(),
            audience: audience.into(),
        })
    }

    fn mac(&self) -> HmacSha256 {
        self.mac.clone()
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(HEADER),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let sig = mac.finalize().into_bytes();
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    pub fn verify(&self, token: &str, now_secs: i64) -> Result<Claims, JwtError> {
        if token.len() > 4096 {
            return Err(JwtError::Format);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Format);
        };
        let header = URL_SAFE_NO_PAD.decode(h).map_err(|_| JwtError::Format)?;
        let header: serde_json::Value =
            serde_json::from_slice(&header).map_err(|_| JwtError::Header)?;
        let expected: serde_json::Value =
            serde_json::from_str(HEADER).map_err(|_| JwtError::Header)?;
        if header != expected {
            return Err(JwtError::Header);
        }
        let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| JwtError::Format)?;
        let mut mac = self.mac();
        mac.update(h.as_bytes());
        mac.update(b".");
        mac.update(p.as_bytes());
        mac.verify_slice(&sig).map_err(|_| JwtError::Signature)?;
        let payload = URL_SAFE_NO_PAD.decode(p).map_err(|_| JwtError::Format)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| JwtError::Claims)?;
        if claims.iss != self.issuer || claims.aud != self.audience {
            return Err(JwtError::Audience);
        }
        if now_secs >= claims.exp.saturating_add(LEEWAY_SECS) {
            return Err(JwtError::Expired);
        }
        if now_secs.saturating_add(LEEWAY_SECS) < claims.nbf {
            return Err(JwtError::NotYetValid);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &[u8]) -> Secret<Vec<u8>> {
        Secret::new(k.to_vec())
    }

    fn claims(now: i64) -> Claims {
        Claims {
            iss: "iss".into(),
            aud: "aud".into(),
            sub: "u1".into(),
            role: "merchant_owner".into(),
            mid: Some("m1".into()),
            ep: 0,
            iat: now,
            nbf: now,
            exp: now + 60,
            jti: "j".into(),
        }
    }

    #[test]
    fn round_trip_and_every_check() {
        let k = JwtKeys::new(&key(b"0123456789abcdef0123456789abcdef"), "iss", "aud").unwrap();
        let t = k.sign(&claims(1000));
        assert_eq!(k.verify(&t, 1001).unwrap(), claims(1000));
        assert_eq!(
            k.verify(&t, 1000 + 60 + LEEWAY_SECS),
            Err(JwtError::Expired)
        );
        assert_eq!(k.verify(&t, 1000 - 100), Err(JwtError::NotYetValid));
        let other = JwtKeys::new(&key(b"another key another key another!"), "iss", "aud").unwrap();
        assert_eq!(other.verify(&t, 1001), Err(JwtError::Signature));
        let wrong_aud =
            JwtKeys::new(&key(b"0123456789abcdef0123456789abcdef"), "iss", "other").unwrap();
        assert_eq!(wrong_aud.verify(&t, 1001), Err(JwtError::Audience));
        // alg=none with the same payload and no signature is refused on the header.
        let parts: Vec<&str> = t.split('.').collect();
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            parts[1]
        );
        assert_eq!(k.verify(&none, 1001), Err(JwtError::Header));
        // A tampered payload fails the signature.
        let mut c = claims(1000);
        c.role = "platform_admin".into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap()),
            parts[2]
        );
        assert_eq!(k.verify(&forged, 1001), Err(JwtError::Signature));
        assert_eq!(k.verify("a.b", 1001), Err(JwtError::Format));
    }
}
