//! Unlock tokens (PROTOCOL.md §1): the 135-byte signed credential that opens one lock.
//!
//! A token is built from [`TokenClaims`], signed by a cloud key, and carried as bytes, as
//! the `DMR1.` text form (QR codes, JSON) or, once cached on a gateway, looked up by its
//! 8-digit [`ShortCode`]. The gateway's decision is [`verify`]: a pure function over the
//! token, the trusted keys and the gateway's own state (its locks, revocations and recorded
//! uses, behind [`GatewayView`]), answering the first failing reason in the order the
//! contract fixes. Recording the use and driving the lock are the caller's job.

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::b64;
use crate::keys::TrustedKeys;

/// Length of a token in bytes.
pub const TOKEN_LEN: usize = 135;
/// Length of the signed part (bytes 0..71).
pub const SIGNED_LEN: usize = 71;
/// Text-form prefix.
pub const TEXT_PREFIX: &str = "DMR1.";
/// Length of the text form: the prefix plus 180 base64url characters.
pub const TEXT_LEN: usize = 185;
/// Token format version.
pub const TOKEN_VERSION: u8 = 1;
/// Default tolerated clock difference between the cloud and a gateway, in seconds.
pub const DEFAULT_SKEW_S: u64 = 120;

const SIGNING_DOMAIN: &[u8; 19] = b"DMR-UNLOCK-TOKEN/1\0";
const SHORT_DOMAIN: &[u8; 12] = b"DMR-SHORT/1\0";

/// What a token is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// Opens a lock for a paid order.
    Order,
    /// Opens a lock for a technician or staff member; `order_id` is all zero.
    Maintenance,
}

impl TokenKind {
    /// The byte on the wire.
    pub fn to_byte(self) -> u8 {
        match self {
            TokenKind::Order => 0x01,
            TokenKind::Maintenance => 0x02,
        }
    }

    /// Parses the kind byte; other values are not a token.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0x01 => Some(TokenKind::Order),
            0x02 => Some(TokenKind::Maintenance),
            _ => None,
        }
    }
}

/// The signed fields of a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TokenClaims {
    pub kind: TokenKind,
    /// Which cloud signing key signs the token.
    pub key_id: u32,
    /// Unique per token: the replay and revocation key.
    pub token_id: Uuid,
    /// The one lock this token opens.
    pub lock_id: Uuid,
    /// The paid order; all zero ([`Uuid::nil`]) for maintenance tokens.
    pub order_id: Uuid,
    /// Unix seconds.
    pub not_before: u64,
    /// Unix seconds, strictly after `not_before`.
    pub not_after: u64,
    /// Unlocks allowed in total, 1..=255.
    pub max_uses: u8,
}

/// Why bytes or text are not a well-formed token (reason code `bad_format`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("token text must start with \"{TEXT_PREFIX}\"")]
    Prefix,
    #[error("token text must be {TEXT_LEN} characters, found {found}")]
    TextLength { found: usize },
    #[error("token text is not base64url without padding after \"{TEXT_PREFIX}\"")]
    Base64,
    #[error("token must be {TOKEN_LEN} bytes, found {found}")]
    Length { found: usize },
    #[error("token version must be {TOKEN_VERSION}, found {found}")]
    Version { found: u8 },
    #[error("token kind must be 1 (order) or 2 (maintenance), found {found}")]
    Kind { found: u8 },
    #[error("token max_uses must be 1..=255, found 0")]
    MaxUsesZero,
    #[error("token not_after ({not_after}) must be after not_before ({not_before})")]
    Window { not_before: u64, not_after: u64 },
}

/// Why a gateway refuses a token. [`Reject::code`] is the reason code on the wire.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("malformed token: {0}")]
    BadFormat(#[from] FormatError),
    #[error("token signed with key {key_id}, which this gateway does not trust")]
    UnknownKey { key_id: u32 },
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token is for lock {lock_id}, which is not on this gateway")]
    WrongLock { lock_id: Uuid },
    #[error("token is valid from {not_before}, it is now {now} (skew {skew_s} s)")]
    NotYetValid {
        not_before: u64,
        now: u64,
        skew_s: u64,
    },
    #[error("token expired at {not_after}, it is now {now} (skew {skew_s} s)")]
    Expired {
        not_after: u64,
        now: u64,
        skew_s: u64,
    },
    #[error("token has been revoked")]
    Revoked,
    #[error("token has been used {uses} of {max_uses} times")]
    UsedUp { uses: u32, max_uses: u8 },
}

impl Reject {
    /// The reason code of PROTOCOL.md §1.
    pub fn code(&self) -> &'static str {
        match self {
            Reject::BadFormat(_) => "bad_format",
            Reject::UnknownKey { .. } => "unknown_key",
            Reject::BadSignature => "bad_signature",
            Reject::WrongLock { .. } => "wrong_lock",
            Reject::NotYetValid { .. } => "not_yet_valid",
            Reject::Expired { .. } => "expired",
            Reject::Revoked => "revoked",
            Reject::UsedUp { .. } => "used_up",
        }
    }
}

impl TokenClaims {
    /// Checks the rules a well-formed token obeys (the `bad_format` part of §1).
    pub fn validate(&self) -> Result<(), FormatError> {
        if self.max_uses == 0 {
            return Err(FormatError::MaxUsesZero);
        }
        if self.not_after <= self.not_before {
            return Err(FormatError::Window {
                not_before: self.not_before,
                not_after: self.not_after,
            });
        }
        Ok(())
    }

    fn signed_bytes(&self) -> [u8; SIGNED_LEN] {
        let mut b = [0u8; SIGNED_LEN];
        b[0] = TOKEN_VERSION;
        b[1] = self.kind.to_byte();
        b[2..6].copy_from_slice(&self.key_id.to_be_bytes());
        b[6..22].copy_from_slice(self.token_id.as_bytes());
        b[22..38].copy_from_slice(self.lock_id.as_bytes());
        b[38..54].copy_from_slice(self.order_id.as_bytes());
        b[54..62].copy_from_slice(&self.not_before.to_be_bytes());
        b[62..70].copy_from_slice(&self.not_after.to_be_bytes());
        b[70] = self.max_uses;
        b
    }

    /// Signs the claims. `key` must be the cloud key numbered `self.key_id`.
    pub fn sign(&self, key: &SigningKey) -> Result<UnlockToken, FormatError> {
        self.validate()?;
        let signed = self.signed_bytes();
        let signature = key.sign(&signing_input(&signed));
        let mut bytes = [0u8; TOKEN_LEN];
        bytes[..SIGNED_LEN].copy_from_slice(&signed);
        bytes[SIGNED_LEN..].copy_from_slice(&signature.to_bytes());
        Ok(UnlockToken {
            claims: *self,
            bytes,
        })
    }
}

fn signing_input(signed: &[u8; SIGNED_LEN]) -> [u8; 19 + SIGNED_LEN] {
    let mut msg = [0u8; 19 + SIGNED_LEN];
    msg[..19].copy_from_slice(SIGNING_DOMAIN);
    msg[19..].copy_from_slice(signed);
    msg
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_be_bytes(a)
}

fn uuid_at(b: &[u8]) -> Uuid {
    let mut a = [0u8; 16];
    a.copy_from_slice(b);
    Uuid::from_bytes(a)
}

/// A well-formed token: its claims and its exact bytes. Being well formed says nothing
/// about the signature; see [`verify`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UnlockToken {
    claims: TokenClaims,
    bytes: [u8; TOKEN_LEN],
}

impl UnlockToken {
    /// Parses the binary form, checking only structure (`bad_format`).
    pub fn from_bytes(raw: &[u8]) -> Result<Self, FormatError> {
        let bytes: [u8; TOKEN_LEN] = raw
            .try_into()
            .map_err(|_| FormatError::Length { found: raw.len() })?;
        if bytes[0] != TOKEN_VERSION {
            return Err(FormatError::Version { found: bytes[0] });
        }
        let kind = TokenKind::from_byte(bytes[1]).ok_or(FormatError::Kind { found: bytes[1] })?;
        let claims = TokenClaims {
            kind,
            key_id: u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]),
            token_id: uuid_at(&bytes[6..22]),
            lock_id: uuid_at(&bytes[22..38]),
            order_id: uuid_at(&bytes[38..54]),
            not_before: be_u64(&bytes[54..62]),
            not_after: be_u64(&bytes[62..70]),
            max_uses: bytes[70],
        };
        claims.validate()?;
        Ok(UnlockToken { claims, bytes })
    }

    /// Parses the `DMR1.` text form. Leading and trailing whitespace (a scanner's line end)
    /// is ignored; nothing else is forgiven.
    pub fn from_text(text: &str) -> Result<Self, FormatError> {
        let text = text.trim();
        let body = text.strip_prefix(TEXT_PREFIX).ok_or(FormatError::Prefix)?;
        if text.len() != TEXT_LEN {
            return Err(FormatError::TextLength { found: text.len() });
        }
        let mut bytes = [0u8; TOKEN_LEN];
        match b64::decode_into(body, &mut bytes) {
            Ok(TOKEN_LEN) => Self::from_bytes(&bytes),
            Ok(n) => Err(FormatError::Length { found: n }),
            Err(_) => Err(FormatError::Base64),
        }
    }

    /// The signed claims.
    pub fn claims(&self) -> &TokenClaims {
        &self.claims
    }

    /// The exact 135 bytes.
    pub fn as_bytes(&self) -> &[u8; TOKEN_LEN] {
        &self.bytes
    }

    /// The `DMR1.` text form.
    pub fn to_text(&self) -> String {
        let mut s = String::with_capacity(TEXT_LEN);
        s.push_str(TEXT_PREFIX);
        s.push_str(&b64::encode(self.bytes));
        s
    }

    /// The 8-digit short code a cached token can also be presented by.
    pub fn short_code(&self) -> ShortCode {
        let mut h = Sha256::new();
        h.update(SHORT_DOMAIN);
        h.update(self.bytes);
        let d = h.finalize();
        ShortCode(u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % 100_000_000)
    }

    /// Checks the signature alone (`unknown_key`, then `bad_signature`).
    pub fn verify_signature(&self, keys: &(impl TrustedKeys + ?Sized)) -> Result<(), Reject> {
        let key = keys.key(self.claims.key_id).ok_or(Reject::UnknownKey {
            key_id: self.claims.key_id,
        })?;
        self.verify_with(key)
    }

    fn verify_with(&self, key: &VerifyingKey) -> Result<(), Reject> {
        let mut signed = [0u8; SIGNED_LEN];
        signed.copy_from_slice(&self.bytes[..SIGNED_LEN]);
        let mut sig = [0u8; 64];
        sig.copy_from_slice(&self.bytes[SIGNED_LEN..]);
        key.verify_strict(&signing_input(&signed), &Signature::from_bytes(&sig))
            .map_err(|_| Reject::BadSignature)
    }
}

/// An 8-digit decimal short code: a lookup key for a token cached on a gateway, never a
/// credential by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShortCode(u32);

impl ShortCode {
    /// The numeric value, below 100,000,000.
    pub fn value(self) -> u32 {
        self.0
    }

    /// Parses exactly eight ASCII digits (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Option<Self> {
        let t = text.trim();
        if t.len() != 8 || !t.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        t.parse().ok().map(ShortCode)
    }
}

impl std::fmt::Display for ShortCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08}", self.0)
    }
}

/// What the gateway knows that the decision needs. The gateway owns this state (its
/// SQLite store); tests implement it over plain collections.
pub trait GatewayView {
    /// The cloud key with this id, if trusted.
    fn trusted_key(&self, key_id: u32) -> Option<&VerifyingKey>;
    /// Whether this lock is one of this gateway's.
    fn owns_lock(&self, lock_id: &Uuid) -> bool;
    /// Whether this token id is on the revocation list.
    fn is_revoked(&self, token_id: &Uuid) -> bool;
    /// How many uses have been recorded for this token id.
    fn uses(&self, token_id: &Uuid) -> u32;
}

/// Trusted time for the validity check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckTime {
    /// Unix seconds the gateway believes it is.
    pub now_s: u64,
    /// Tolerated clock difference in seconds.
    pub skew_s: u64,
}

/// The whole accept/reject decision of PROTOCOL.md §1 for an already parsed token,
/// checked in the contract's order.
pub fn verify(token: &UnlockToken, view: &impl GatewayView, time: CheckTime) -> Result<(), Reject> {
    let c = &token.claims;
    let key = view
        .trusted_key(c.key_id)
        .ok_or(Reject::UnknownKey { key_id: c.key_id })?;
    token.verify_with(key)?;
    if !view.owns_lock(&c.lock_id) {
        return Err(Reject::WrongLock { lock_id: c.lock_id });
    }
    if time.now_s < c.not_before.saturating_sub(time.skew_s) {
        return Err(Reject::NotYetValid {
            not_before: c.not_before,
            now: time.now_s,
            skew_s: time.skew_s,
        });
    }
    if time.now_s > c.not_after.saturating_add(time.skew_s) {
        return Err(Reject::Expired {
            not_after: c.not_after,
            now: time.now_s,
            skew_s: time.skew_s,
        });
    }
    if view.is_revoked(&c.token_id) {
        return Err(Reject::Revoked);
    }
    let uses = view.uses(&c.token_id);
    if uses >= u32::from(c.max_uses) {
        return Err(Reject::UsedUp {
            uses,
            max_uses: c.max_uses,
        });
    }
    Ok(())
}

/// [`verify`] from the text form: parse, then decide. Returns the token so the caller can
/// record its use.
pub fn verify_text(
    text: &str,
    view: &impl GatewayView,
    time: CheckTime,
) -> Result<UnlockToken, Reject> {
    let token = UnlockToken::from_text(text)?;
    verify(&token, view, time)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    struct View {
        keys: HashMap<u32, VerifyingKey>,
        locks: HashSet<Uuid>,
        revoked: HashSet<Uuid>,
        uses: HashMap<Uuid, u32>,
    }

    impl GatewayView for View {
        fn trusted_key(&self, key_id: u32) -> Option<&VerifyingKey> {
            self.keys.get(&key_id)
        }
        fn owns_lock(&self, lock_id: &Uuid) -> bool {
            self.locks.contains(lock_id)
        }
        fn is_revoked(&self, token_id: &Uuid) -> bool {
            self.revoked.contains(token_id)
        }
        fn uses(&self, token_id: &Uuid) -> u32 {
            self.uses.get(token_id).copied().unwrap_or(0)
        }
    }

    fn claims() -> TokenClaims {
        TokenClaims {
            kind: TokenKind::Order,
            key_id: 7,
            token_id: Uuid::from_u128(1),
            lock_id: Uuid::from_u128(2),
            order_id: Uuid::from_u128(3),
            not_before: 1_000,
            not_after: 2_000,
            max_uses: 2,
        }
    }

    fn setup() -> (SigningKey, View) {
        let key = SigningKey::from_bytes(&[9u8; 32]);
        let view = View {
            keys: HashMap::from([(7, key.verifying_key())]),
            locks: HashSet::from([Uuid::from_u128(2)]),
            revoked: HashSet::new(),
            uses: HashMap::new(),
        };
        (key, view)
    }

    const T: CheckTime = CheckTime {
        now_s: 1_500,
        skew_s: 120,
    };

    #[test]
    fn each_reason_in_order() {
        let (key, mut view) = setup();
        let token = claims().sign(&key).unwrap();
        assert_eq!(verify(&token, &view, T), Ok(()));
        let at = |now_s| CheckTime { now_s, skew_s: 120 };
        assert_eq!(verify(&token, &view, at(880)), Ok(()));
        assert_eq!(
            verify(&token, &view, at(879)).unwrap_err().code(),
            "not_yet_valid"
        );
        assert_eq!(verify(&token, &view, at(2_120)), Ok(()));
        assert_eq!(
            verify(&token, &view, at(2_121)).unwrap_err().code(),
            "expired"
        );
        view.uses.insert(Uuid::from_u128(1), 2);
        assert_eq!(verify(&token, &view, T).unwrap_err().code(), "used_up");
        view.revoked.insert(Uuid::from_u128(1));
        // Revocation is checked before uses.
        assert_eq!(verify(&token, &view, T).unwrap_err().code(), "revoked");
        // Time before revocation.
        assert_eq!(
            verify(&token, &view, at(5_000)).unwrap_err().code(),
            "expired"
        );
        view.locks.clear();
        assert_eq!(
            verify(&token, &view, at(5_000)).unwrap_err().code(),
            "wrong_lock"
        );
        let other = SigningKey::from_bytes(&[8u8; 32]);
        view.keys.insert(7, other.verifying_key());
        assert_eq!(
            verify(&token, &view, T).unwrap_err().code(),
            "bad_signature"
        );
        view.keys.clear();
        assert_eq!(verify(&token, &view, T).unwrap_err().code(), "unknown_key");
    }

    #[test]
    fn format_errors_name_the_field() {
        let (key, _) = setup();
        let mut c = claims();
        c.max_uses = 0;
        assert_eq!(c.sign(&key).unwrap_err(), FormatError::MaxUsesZero);
        c = claims();
        c.not_after = c.not_before;
        assert!(matches!(c.sign(&key), Err(FormatError::Window { .. })));
        let good = claims().sign(&key).unwrap();
        let mut b = *good.as_bytes();
        b[0] = 2;
        assert_eq!(
            UnlockToken::from_bytes(&b),
            Err(FormatError::Version { found: 2 })
        );
        b[0] = 1;
        b[1] = 3;
        assert_eq!(
            UnlockToken::from_bytes(&b),
            Err(FormatError::Kind { found: 3 })
        );
        assert_eq!(
            UnlockToken::from_bytes(&b[..10]),
            Err(FormatError::Length { found: 10 })
        );
        assert_eq!(UnlockToken::from_text("XYZ"), Err(FormatError::Prefix));
        assert_eq!(
            UnlockToken::from_text("DMR1.abc"),
            Err(FormatError::TextLength { found: 8 })
        );
        let mut text = good.to_text();
        text.replace_range(10..11, "*");
        assert_eq!(UnlockToken::from_text(&text), Err(FormatError::Base64));
    }

    #[test]
    fn text_round_trip_and_whitespace() {
        let (key, view) = setup();
        let token = claims().sign(&key).unwrap();
        let text = token.to_text();
        assert_eq!(text.len(), TEXT_LEN);
        let parsed = verify_text(&format!("{text}\r\n"), &view, T).unwrap();
        assert_eq!(parsed, token);
    }

    #[test]
    fn short_code_parse() {
        assert_eq!(ShortCode::parse("00000042").map(|c| c.value()), Some(42));
        assert_eq!(ShortCode(42).to_string(), "00000042");
        assert!(ShortCode::parse("1234567").is_none());
        assert!(ShortCode::parse("1234567a").is_none());
        assert!(ShortCode::parse("+1234567").is_none());
    }
}
