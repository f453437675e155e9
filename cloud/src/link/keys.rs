//! The cloud's Ed25519 signing keys: the keys that sign unlock tokens, commands and sync
//! responses, and whose public halves every gateway trusts.
//!
//! Keys are numbered (`key_id`, the token's key id and the JWS kid `cloud:<key_id>`) and
//! kept in `cloud_keys`. The private seed never sits in the database in clear: it is sealed
//! with AES-256-GCM under the master key from `DMR_MASTER_KEY` (random 96-bit nonce, AAD
//! `dmr-cloud-key/<key_id>` so a ciphertext cannot be swapped onto another key id). The
//! first start creates key 1. `dmr-cloud keys rotate` makes a new active key and leaves the
//! previous one *retiring*: still trusted until `retire_after`, so gateways that have not
//! synced yet keep accepting tokens it signed; after that it is retired.
//!
//! [`KeyRing`] caches the decrypted active key and the trusted list for at most 30 s, so a
//! rotation done by another instance (or the CLI) is picked up without shared memory.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::{Context as _, anyhow, bail};
use dmr_protocol::b64;
use dmr_protocol::jws::Kid;
use dmr_protocol::keys::{SigningKey, VerifyingKey, public_b64u};
use dmr_protocol::message::Envelope;
use dmr_protocol::token::{FormatError, TokenClaims, UnlockToken};
use serde::Serialize;

use crate::config::Secret;
use crate::db::{Db, now_ms};
use crate::error::ApiError;

/// How long a cached key set is used before it is read again.
pub const REFRESH: Duration = Duration::from_secs(30);
/// Default overlap during which a rotated-out key stays trusted.
pub const DEFAULT_OVERLAP_HOURS: u64 = 48;

/// A cloud public key a gateway should trust, with when that trust ends (None: while active).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TrustedKey {
    pub key_id: u32,
    pub public_key: String,
    pub not_after_ms: Option<i64>,
}

/// The active key, ready to sign.
#[derive(Clone, Debug)]
pub struct CloudSigner {
    pub key_id: u32,
    pub key: SigningKey,
}

impl CloudSigner {
    /// Signs unlock-token claims with this key; `claims.key_id` is set to this key's id.
    /// Fails only for claims that are not a well-formed token (max_uses 0, empty window).
    pub fn sign_token(&self, claims: TokenClaims) -> Result<UnlockToken, FormatError> {
        TokenClaims {
            key_id: self.key_id,
            ..claims
        }
        .sign(&self.key)
    }

    /// Signs a message (a command) as a compact JWS with kid `cloud:<key_id>`.
    pub fn sign_message(&self, envelope: &Envelope) -> String {
        envelope.sign(Kid::Cloud(self.key_id), &self.key)
    }

    /// Signs arbitrary JSON bytes (sync responses) with kid `cloud:<key_id>`.
    pub fn sign_payload(&self, payload: &[u8]) -> String {
        dmr_protocol::jws::sign(payload, Kid::Cloud(self.key_id), &self.key)
    }

    pub fn kid(&self) -> Kid {
        Kid::Cloud(self.key_id)
    }
}

/// One row of `cloud_keys` as `keys list` shows it (never the private key).
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct KeyInfo {
    pub key_id: i64,
    pub public_key: String,
    pub status: String,
    pub created_at: i64,
    pub activated_at: Option<i64>,
    pub retire_after: Option<i64>,
}

#[derive(Debug)]
struct Cached {
    at: Instant,
    signer: CloudSigner,
    trusted: Vec<TrustedKey>,
}

/// The cloud's keys, shared by everything that signs or publishes trust.
pub struct KeyRing {
    db: Db,
    master: Secret<[u8; 32]>,
    cache: Mutex<Option<Cached>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").finish_non_exhaustive()
    }
}

fn aad(key_id: u32) -> String {
    format!("dmr-cloud-key/{key_id}")
}

/// Seals a 32-byte seed: base64url(nonce || ciphertext+tag).
pub fn seal(master: &[u8; 32], key_id: u32, seed: &[u8; 32]) -> anyhow::Result<String> {
    use rand_core::RngCore as _;
    let cipher = Aes256Gcm::new(master.into());
    let mut nonce = [0u8; 12];
    rand_core::OsRng.fill_bytes(&mut nonce);
    let aad = aad(key_id);
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: seed,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| anyhow!("encrypting cloud key {key_id}"))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    Ok(b64::encode(out))
}

/// Opens what [`seal`] made. A wrong master key (or a row moved to another key id) fails
/// with a message that says which.
pub fn open(master: &[u8; 32], key_id: u32, sealed: &str) -> anyhow::Result<SigningKey> {
    let raw = b64::decode(sealed).with_context(|| format!("cloud key {key_id} is corrupt"))?;
    if raw.len() != 12 + 32 + 16 {
        bail!("cloud key {key_id} is corrupt ({} bytes sealed)", raw.len());
    }
    let cipher = Aes256Gcm::new(master.into());
    let aad = aad(key_id);
    let seed = cipher
        .decrypt(
            Nonce::from_slice(&raw[..12]),
            Payload {
                msg: &raw[12..],
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| {
            anyhow!(
                "cannot decrypt cloud signing key {key_id}: DMR_MASTER_KEY is not the master key \
                 these keys were encrypted with (restore the original DMR_MASTER_KEY)"
            )
        })?;
    let seed: [u8; 32] = seed
        .as_slice()
        .try_into()
        .map_err(|_| anyhow!("cloud key {key_id} decrypts to a wrong length"))?;
    Ok(SigningKey::from_bytes(&seed))
}

fn key_id_of(v: i64) -> anyhow::Result<u32> {
    u32::try_from(v).map_err(|_| anyhow!("cloud key id {v} is out of range"))
}

impl KeyRing {
    /// A key ring over `db`; nothing is read until first use (see [`KeyRing::ensure`]).
    pub fn new(db: Db, master: Secret<[u8; 32]>) -> KeyRing {
        KeyRing {
            db,
            master,
            cache: Mutex::new(None),
        }
    }

    /// Creates key 1 when the table is empty (first start; several instances racing agree
    /// through the primary key) and checks the active key decrypts, so a wrong master key
    /// stops the start-up instead of the first signature.
    pub async fn ensure(&self) -> anyhow::Result<()> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM cloud_keys")
            .fetch_one(&self.db.pool)
            .await
            .context("reading cloud_keys")?;
        if count == 0 {
            let key = dmr_protocol::keys::generate();
            let now = now_ms();
            sqlx::query(
                "INSERT INTO cloud_keys (key_id, public_key, private_key_enc, status, created_at, \
                 activated_at) VALUES ($1, $2, $3, 'active', $4, $4) ON CONFLICT (key_id) DO NOTHING",
            )
            .bind(1_i64)
            .bind(public_b64u(&key.verifying_key()))
            .bind(seal(self.master.expose(), 1, &key.to_bytes())?)
            .bind(now)
            .execute(&self.db.pool)
            .await
            .context("creating cloud key 1")?;
        }
        self.load().await.map(|_| ())
    }

    async fn load(&self) -> anyhow::Result<Cached> {
        let now = now_ms();
        let rows: Vec<(i64, String, String, String, Option<i64>)> = sqlx::query_as(
            "SELECT key_id, public_key, private_key_enc, status, retire_after FROM cloud_keys \
             WHERE status IN ('active', 'retiring') ORDER BY key_id",
        )
        .fetch_all(&self.db.read)
        .await
        .context("reading cloud_keys")?;
        let mut signer = None;
        let mut trusted = Vec::new();
        for (id, public, sealed, status, retire_after) in rows {
            let key_id = key_id_of(id)?;
            if status == "active" {
                let key = open(self.master.expose(), key_id, &sealed)?;
                if public_b64u(&key.verifying_key()) != public {
                    bail!("cloud key {key_id}: private and public halves do not match");
                }
                // The newest active key signs (two can only coexist mid-rotation).
                signer = Some(CloudSigner { key_id, key });
                trusted.push(TrustedKey {
                    key_id,
                    public_key: public,
                    not_after_ms: None,
                });
            } else if retire_after.is_none_or(|t| t > now) {
                trusted.push(TrustedKey {
                    key_id,
                    public_key: public,
                    not_after_ms: retire_after,
                });
            }
        }
        let signer = signer.ok_or_else(|| {
            anyhow!("no active cloud signing key (run `dmr-cloud keys rotate` to make one)")
        })?;
        Ok(Cached {
            at: Instant::now(),
            signer,
            trusted,
        })
    }

    async fn current<T>(&self, pick: impl Fn(&Cached) -> T) -> Result<T, ApiError> {
        {
            let guard = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = guard.as_ref()
                && c.at.elapsed() < REFRESH
            {
                return Ok(pick(c));
            }
        }
        let fresh = self.load().await.map_err(ApiError::internal)?;
        let out = pick(&fresh);
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = Some(fresh);
        Ok(out)
    }

    /// The active key (cached, refreshed from the database at most every 30 s).
    pub async fn signer(&self) -> Result<CloudSigner, ApiError> {
        self.current(|c| c.signer.clone()).await
    }

    /// Every key a gateway should trust now: the active one and those still in overlap.
    pub async fn trusted(&self) -> Result<Vec<TrustedKey>, ApiError> {
        self.current(|c| c.trusted.clone()).await
    }

    /// Trusted public keys by id, for verifying what the cloud signed (tests, tools).
    pub async fn trusted_verifying_keys(&self) -> Result<Vec<(u32, VerifyingKey)>, ApiError> {
        let list = self.trusted().await?;
        Ok(list
            .iter()
            .filter_map(|t| {
                dmr_protocol::keys::parse_public_b64u(&t.public_key)
                    .ok()
                    .map(|k| (t.key_id, k))
            })
            .collect())
    }

    /// Forgets the cache (after a rotation in this process).
    pub fn invalidate(&self) {
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Makes a new active key; the previous active key becomes retiring and stays trusted
    /// for `overlap`. Keys whose overlap has ended are marked retired. Returns the new id.
    pub async fn rotate(&self, overlap: Duration) -> anyhow::Result<u32> {
        let now = now_ms();
        let overlap_ms = i64::try_from(overlap.as_millis()).unwrap_or(i64::MAX / 4);
        let mut tx = self.db.pool.begin().await.context("starting rotation")?;
        let max: Option<i64> = sqlx::query_scalar("SELECT MAX(key_id) FROM cloud_keys")
            .fetch_one(&mut *tx)
            .await
            .context("reading cloud_keys")?;
        let next = key_id_of(max.unwrap_or(0).saturating_add(1))?;
        let key = dmr_protocol::keys::generate();
        sqlx::query(
            "UPDATE cloud_keys SET status = 'retired' WHERE status = 'retiring' AND retire_after <= $1",
        )
        .bind(now)
        .execute(&mut *tx)
        .await
        .context("retiring expired keys")?;
        sqlx::query(
            "UPDATE cloud_keys SET status = 'retiring', retire_after = $1 WHERE status = 'active'",
        )
        .bind(now.saturating_add(overlap_ms))
        .execute(&mut *tx)
        .await
        .context("retiring the active key")?;
        sqlx::query(
            "INSERT INTO cloud_keys (key_id, public_key, private_key_enc, status, created_at, \
             activated_at) VALUES ($1, $2, $3, 'active', $4, $4)",
        )
        .bind(i64::from(next))
        .bind(public_b64u(&key.verifying_key()))
        .bind(seal(self.master.expose(), next, &key.to_bytes())?)
        .bind(now)
        .execute(&mut *tx)
        .await
        .context("storing the new key (another rotation at the same moment? retry)")?;
        tx.commit().await.context("committing the rotation")?;
        self.invalidate();
        Ok(next)
    }

    /// Marks keys whose overlap has ended as retired (the link prune job calls this).
    pub async fn retire_expired(&self) -> anyhow::Result<u64> {
        let n = sqlx::query(
            "UPDATE cloud_keys SET status = 'retired' WHERE status = 'retiring' AND retire_after <= $1",
        )
        .bind(now_ms())
        .execute(&self.db.pool)
        .await
        .context("retiring expired keys")?
        .rows_affected();
        Ok(n)
    }

    /// Every key, newest first, for `keys list`.
    pub async fn list(&self) -> anyhow::Result<Vec<KeyInfo>> {
        sqlx::query_as::<_, KeyInfo>(
            "SELECT key_id, public_key, status, created_at, activated_at, retire_after \
             FROM cloud_keys ORDER BY key_id DESC",
        )
        .fetch_all(&self.db.read)
        .await
        .context("reading cloud_keys")
    }
}

/// A fresh master key in standard base64, for `dmr-cloud keys new-master`.
pub fn new_master_key() -> String {
    use base64::Engine as _;
    use rand_core::RngCore as _;
    let mut bytes = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trips_and_binds_key_id_and_master() {
        let master = [7u8; 32];
        let seed = [9u8; 32];
        let sealed = seal(&master, 3, &seed).unwrap();
        assert_eq!(open(&master, 3, &sealed).unwrap().to_bytes(), seed);
        assert!(open(&master, 4, &sealed).is_err(), "AAD binds the key id");
        let err = open(&[8u8; 32], 3, &sealed).unwrap_err().to_string();
        assert!(err.contains("DMR_MASTER_KEY"), "{err}");
        assert_ne!(seal(&master, 3, &seed).unwrap(), sealed, "random nonce");
        assert!(!sealed.contains(&b64::encode(seed)));
    }

    #[test]
    fn new_master_keys_parse() {
        let k = new_master_key();
        assert!(crate::config::parse_master_key(&k).is_ok());
        assert_ne!(k, new_master_key());
    }
}
