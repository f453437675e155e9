//! JWS compact serialization with EdDSA (RFC 7515 + RFC 8037), the envelope of every MQTT
//! payload and gateway sync body (PROTOCOL.md §2).
//!
//! Only one header shape is accepted: `{"alg":"EdDSA","kid":KID,"typ":"dmr+jws"}`. Any other
//! algorithm, type or extra header field (notably `crit`) is refused before a key is looked
//! up, so an attacker cannot pick the verification algorithm. The payload bytes are verified
//! exactly as received and only then parsed.

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::Deserialize;
use uuid::Uuid;

use crate::b64;

/// Largest compact JWS accepted, in bytes. A `tokens.put` of 4,000 tokens fits; anything
/// larger is refused before decoding so a broker cannot make a receiver allocate freely.
pub const MAX_COMPACT_LEN: usize = 1 << 20;

/// The `alg` every message uses.
pub const ALG: &str = "EdDSA";
/// The `typ` every message uses.
pub const TYP: &str = "dmr+jws";

/// Who signed a message: a gateway's own key or a numbered cloud key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kid {
    /// `gw:<gateway uuid>`
    Gateway(Uuid),
    /// `cloud:<key_id>`
    Cloud(u32),
}

impl std::fmt::Display for Kid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kid::Gateway(id) => write!(f, "gw:{id}"),
            Kid::Cloud(n) => write!(f, "cloud:{n}"),
        }
    }
}

impl std::str::FromStr for Kid {
    type Err = JwsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || JwsError::BadKid {
            found: s.chars().take(64).collect(),
        };
        if let Some(id) = s.strip_prefix("gw:") {
            // Only the canonical lowercase hyphenated form: one gateway, one spelling.
            let uuid = Uuid::try_parse(id).map_err(|_| bad())?;
            if uuid.hyphenated().to_string() != id {
                return Err(bad());
            }
            Ok(Kid::Gateway(uuid))
        } else if let Some(n) = s.strip_prefix("cloud:") {
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || n.starts_with('0') {
                return Err(bad());
            }
            n.parse().map(Kid::Cloud).map_err(|_| bad())
        } else {
            Err(bad())
        }
    }
}

/// Why a compact JWS was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwsError {
    #[error("signed message is {found} bytes, more than the {MAX_COMPACT_LEN} allowed")]
    TooLarge { found: usize },
    #[error("signed message must be three base64url parts separated by '.', found {found} parts")]
    Segments { found: usize },
    #[error("signed message {part} is not base64url without padding")]
    Encoding { part: &'static str },
    #[error("signed message header is not the expected JSON object: {reason}")]
    Header { reason: String },
    #[error("signed message algorithm must be \"{ALG}\", found \"{found}\"")]
    Alg { found: String },
    #[error("signed message type must be \"{TYP}\", found \"{found}\"")]
    Typ { found: String },
    #[error("signed message kid must be gw:<uuid> or cloud:<n>, found \"{found}\"")]
    BadKid { found: String },
    #[error("no trusted key for kid {kid}")]
    UnknownKid { kid: Kid },
    #[error("signature must be 64 bytes, found {found}")]
    SignatureLength { found: usize },
    #[error("signature does not verify for kid {kid}")]
    BadSignature { kid: Kid },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    kid: String,
    typ: String,
}

/// Signs `payload` (already serialized JSON) and returns the compact serialization.
pub fn sign(payload: &[u8], kid: Kid, key: &SigningKey) -> String {
    let header = format!(r#"{{"alg":"{ALG}","kid":"{kid}","typ":"{TYP}"}}"#);
    let mut out = b64::encode(header.as_bytes());
    out.push('.');
    out.push_str(&b64::encode(payload));
    let signature = key.sign(out.as_bytes());
    out.push('.');
    out.push_str(&b64::encode(signature.to_bytes()));
    out
}

/// A compact JWS whose header is acceptable, not yet verified.
#[derive(Debug)]
pub struct Unverified<'a> {
    kid: Kid,
    signing_input: &'a str,
    payload_b64: &'a str,
    signature: [u8; 64],
}

/// Parses the structure and header of a compact JWS without verifying it.
pub fn parse(compact: &str) -> Result<Unverified<'_>, JwsError> {
    if compact.len() > MAX_COMPACT_LEN {
        return Err(JwsError::TooLarge {
            found: compact.len(),
        });
    }
    let compact = compact.trim_ascii();
    let mut parts = compact.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwsError::Segments {
            found: compact.split('.').count(),
        });
    };
    let header_raw = b64::decode(h).map_err(|_| JwsError::Encoding { part: "header" })?;
    let header: Header = serde_json::from_slice(&header_raw).map_err(|e| JwsError::Header {
        reason: e.to_string(),
    })?;
    if header.alg != ALG {
        return Err(JwsError::Alg { found: header.alg });
    }
    if header.typ != TYP {
        return Err(JwsError::Typ { found: header.typ });
    }
    let kid: Kid = header.kid.parse()?;
    let sig = b64::decode(s).map_err(|_| JwsError::Encoding { part: "signature" })?;
    let signature: [u8; 64] = sig
        .as_slice()
        .try_into()
        .map_err(|_| JwsError::SignatureLength { found: sig.len() })?;
    Ok(Unverified {
        kid,
        signing_input: &compact[..h.len() + 1 + p.len()],
        payload_b64: p,
        signature,
    })
}

impl Unverified<'_> {
    /// Who claims to have signed it.
    pub fn kid(&self) -> Kid {
        self.kid
    }

    /// Verifies strictly with `key` and returns the payload bytes.
    pub fn verify(&self, key: &VerifyingKey) -> Result<Vec<u8>, JwsError> {
        key.verify_strict(
            self.signing_input.as_bytes(),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| JwsError::BadSignature { kid: self.kid })?;
        b64::decode(self.payload_b64).map_err(|_| JwsError::Encoding { part: "payload" })
    }
}

/// Below this many signatures a batch is checked one by one: batch verification pays a
/// fixed cost (random coefficients, one multiscalar multiplication) that small batches do
/// not earn back.
const BATCH_MIN: usize = 4;

/// Verifies many parsed messages, each with its own key, and returns each payload or why it
/// was refused, in input order. The result for every item is what [`Unverified::verify`]
/// would answer, but the signatures are checked together with Ed25519 batch verification
/// (about twice as fast per signature for large batches). When a batch fails it is split in
/// halves until the bad signatures are isolated and checked singly, so one forged message
/// among hundreds costs a few extra batch checks, not hundreds of single ones.
///
/// Batch verification is cofactorless like `verify_strict` but does not itself refuse weak
/// (small-order) public keys; those are refused here explicitly, so a weak key never
/// verifies. A signature accepted by the batch but not by `verify_strict` (a non-canonical
/// or small-order `R`) can only be made by the key's owner and changes nothing the message
/// says: receivers deduplicate by the signed message id, never by the signature bytes.
pub fn verify_many(items: &[(&Unverified<'_>, &VerifyingKey)]) -> Vec<Result<Vec<u8>, JwsError>> {
    let mut ok = vec![false; items.len()];
    let idx: Vec<usize> = (0..items.len())
        .filter(|&i| !items[i].1.is_weak())
        .collect();
    batch_check(items, &idx, &mut ok);
    items
        .iter()
        .zip(ok)
        .map(|((u, key), good)| {
            if good {
                b64::decode(u.payload_b64).map_err(|_| JwsError::Encoding { part: "payload" })
            } else {
                // The single strict check gives the exact error (and catches weak keys).
                u.verify(key)
            }
        })
        .collect()
}

/// Marks `ok[i]` for the items of `idx` whose signature verifies, bisecting failed batches.
fn batch_check(items: &[(&Unverified<'_>, &VerifyingKey)], idx: &[usize], ok: &mut [bool]) {
    if idx.len() < BATCH_MIN {
        for &i in idx {
            let (u, key) = items[i];
            ok[i] = key
                .verify_strict(
                    u.signing_input.as_bytes(),
                    &Signature::from_bytes(&u.signature),
                )
                .is_ok();
        }
        return;
    }
    let messages: Vec<&[u8]> = idx
        .iter()
        .map(|&i| items[i].0.signing_input.as_bytes())
        .collect();
    let signatures: Vec<Signature> = idx
        .iter()
        .map(|&i| Signature::from_bytes(&items[i].0.signature))
        .collect();
    let keys: Vec<VerifyingKey> = idx.iter().map(|&i| *items[i].1).collect();
    if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
        for &i in idx {
            ok[i] = true;
        }
        return;
    }
    let (a, b) = idx.split_at(idx.len() / 2);
    batch_check(items, a, ok);
    batch_check(items, b, ok);
}

/// Parses and verifies a compact JWS, asking `resolve` for the key its `kid` names.
pub fn verify<'k>(
    compact: &str,
    resolve: impl FnOnce(&Kid) -> Option<&'k VerifyingKey>,
) -> Result<(Kid, Vec<u8>), JwsError> {
    let unverified = parse(compact)?;
    let kid = unverified.kid;
    let key = resolve(&kid).ok_or(JwsError::UnknownKid { kid })?;
    Ok((kid, unverified.verify(key)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kid_forms() {
        let id = Uuid::from_u128(0xab);
        assert_eq!(
            format!("gw:{}", id.hyphenated()).parse::<Kid>(),
            Ok(Kid::Gateway(id))
        );
        assert_eq!("cloud:12".parse::<Kid>(), Ok(Kid::Cloud(12)));
        for bad in ["cloud:", "cloud:01", "cloud:x", "gw:nope", "user:1", ""] {
            assert!(bad.parse::<Kid>().is_err(), "{bad}");
        }
        let upper = format!("gw:{}", id.hyphenated())
            .to_uppercase()
            .replace("GW:", "gw:");
        assert!(upper.parse::<Kid>().is_err());
    }

    #[test]
    fn sign_verify_and_refusals() {
        let key = SigningKey::from_bytes(&[1u8; 32]);
        let vk = key.verifying_key();
        let jws = sign(br#"{"a":1}"#, Kid::Cloud(1), &key);
        let (kid, payload) = verify(&jws, |_| Some(&vk)).unwrap();
        assert_eq!(kid, Kid::Cloud(1));
        assert_eq!(payload, br#"{"a":1}"#);

        assert_eq!(
            verify(&jws, |_| None).unwrap_err(),
            JwsError::UnknownKid { kid: Kid::Cloud(1) }
        );
        let other = SigningKey::from_bytes(&[2u8; 32]).verifying_key();
        assert!(matches!(
            verify(&jws, |_| Some(&other)),
            Err(JwsError::BadSignature { .. })
        ));

        let (_, rest) = jws.split_once('.').unwrap();
        let none = b64::encode(br#"{"alg":"none","kid":"cloud:1","typ":"dmr+jws"}"#);
        assert_eq!(
            verify(&format!("{none}.{rest}"), |_| Some(&vk)).unwrap_err(),
            JwsError::Alg {
                found: "none".into()
            }
        );
        let crit = b64::encode(br#"{"alg":"EdDSA","kid":"cloud:1","typ":"dmr+jws","crit":["x"]}"#);
        assert!(matches!(
            verify(&format!("{crit}.{rest}"), |_| Some(&vk)),
            Err(JwsError::Header { .. })
        ));
        let typ = b64::encode(br#"{"alg":"EdDSA","kid":"cloud:1","typ":"JWT"}"#);
        assert!(matches!(
            verify(&format!("{typ}.{rest}"), |_| Some(&vk)),
            Err(JwsError::Typ { .. })
        ));
        assert_eq!(
            verify("a.b", |_| Some(&vk)).unwrap_err(),
            JwsError::Segments { found: 2 }
        );
        assert!(matches!(
            verify(&"x".repeat(MAX_COMPACT_LEN + 1), |_| Some(&vk)),
            Err(JwsError::TooLarge { .. })
        ));
    }
}
