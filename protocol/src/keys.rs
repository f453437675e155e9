//! Ed25519 key handling shared by every crate: generation, the base64url public form used
//! in configuration and enrollment, key files, and the trusted-key lookup that token,
//! message and firmware verification consult.
//!
//! Private keys are stored as PKCS#8 PEM (`openssl pkey -in FILE` reads them) with mode
//! 0600. A key file that group or others can read is refused rather than silently used: a
//! gateway key that leaked lets anyone speak for that gateway.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
pub use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

use crate::b64;

/// Length of an Ed25519 public key in bytes.
pub const PUBLIC_KEY_LEN: usize = 32;

/// Errors from key parsing and key files.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("public key is not base64url without padding: {0}")]
    PublicKeyEncoding(#[source] base64::DecodeError),
    #[error("public key must be {PUBLIC_KEY_LEN} bytes, found {found}")]
    PublicKeyLength { found: usize },
    #[error("public key is not a valid Ed25519 point")]
    PublicKeyInvalid,
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "key file {path} is readable by group or others (mode {mode:04o}); \
         run `chmod 600 {path}` and check who else could have read it"
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },
    #[error("key file {path} is not a PKCS#8 PEM Ed25519 private key")]
    NotAKey { path: PathBuf },
    #[error("key file {path} already exists; refusing to overwrite a private key")]
    Exists { path: PathBuf },
}

/// Makes a new signing key from the operating system's random source.
pub fn generate() -> SigningKey {
    SigningKey::generate(&mut rand_core::OsRng)
}

/// Builds a signing key from its 32-byte seed (test vectors and key escrow use this).
pub fn signing_key_from_seed(seed: [u8; 32]) -> SigningKey {
    SigningKey::from_bytes(&seed)
}

/// The public key as unpadded base64url, the form used in config files and enrollment.
pub fn public_b64u(key: &VerifyingKey) -> String {
    b64::encode(key.as_bytes())
}

/// Parses an unpadded base64url Ed25519 public key.
pub fn parse_public_b64u(text: &str) -> Result<VerifyingKey, KeyError> {
    let raw = b64::decode(text.trim()).map_err(KeyError::PublicKeyEncoding)?;
    let bytes: [u8; PUBLIC_KEY_LEN] = raw
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::PublicKeyLength { found: raw.len() })?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::PublicKeyInvalid)
}

/// Encodes a private key as PKCS#8 PEM.
pub fn signing_key_to_pem(key: &SigningKey) -> String {
    // Encoding a 32-byte Ed25519 seed into PKCS#8 cannot fail; the fallback keeps the
    // signature total without an unwrap.
    key.to_pkcs8_pem(Default::default())
        .map(|pem| pem.to_string())
        .unwrap_or_default()
}

/// Parses a PKCS#8 PEM private key.
pub fn signing_key_from_pem(pem: &str) -> Option<SigningKey> {
    SigningKey::from_pkcs8_pem(pem).ok()
}

/// Loads a private key file, refusing one that group or others can read.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let read_err = |source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    check_private_mode(path, &meta)?;
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    signing_key_from_pem(&text).ok_or_else(|| KeyError::NotAKey {
        path: path.to_path_buf(),
    })
}

#[cfg(unix)]
fn check_private_mode(path: &Path, meta: &std::fs::Metadata) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private_mode(_path: &Path, _meta: &std::fs::Metadata) -> Result<(), KeyError> {
    Ok(())
}

/// Writes a new private key file with mode 0600. The file is written under a temporary
/// name and renamed into place, so a crash never leaves a half-written key; an existing
/// key is never overwritten.
pub fn save_signing_key(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    let write_err = |source| KeyError::Write {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        return Err(KeyError::Exists {
            path: path.to_path_buf(),
        });
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "key".to_owned());
    let tmp = dir
        .unwrap_or_else(|| Path::new("."))
        .join(format!(".{file_name}.tmp"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(write_err)?;
    file.write_all(signing_key_to_pem(key).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(write_err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(write_err)?;
    if let Some(dir) = dir {
        // Make the rename itself durable; a failure here only weakens crash safety.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// The set of keys a verifier trusts, looked up by numeric key id (cloud token keys and
/// vendor firmware keys are both numbered this way).
pub trait TrustedKeys {
    /// The key with this id, if it is trusted.
    fn key(&self, key_id: u32) -> Option<&VerifyingKey>;
}

impl TrustedKeys for BTreeMap<u32, VerifyingKey> {
    fn key(&self, key_id: u32) -> Option<&VerifyingKey> {
        self.get(&key_id)
    }
}

impl TrustedKeys for HashMap<u32, VerifyingKey> {
    fn key(&self, key_id: u32) -> Option<&VerifyingKey> {
        self.get(&key_id)
    }
}

impl TrustedKeys for [(u32, VerifyingKey)] {
    fn key(&self, key_id: u32) -> Option<&VerifyingKey> {
        self.iter().find(|(id, _)| *id == key_id).map(|(_, k)| k)
    }
}

impl<const N: usize> TrustedKeys for [(u32, VerifyingKey); N] {
    fn key(&self, key_id: u32) -> Option<&VerifyingKey> {
        self.as_slice().key(key_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_round_trips_through_base64url() {
        let key = generate();
        let text = public_b64u(&key.verifying_key());
        assert_eq!(text.len(), 43);
        assert_eq!(parse_public_b64u(&text).unwrap(), key.verifying_key());
    }

    #[test]
    fn public_key_errors_name_the_problem() {
        assert!(matches!(
            parse_public_b64u("abc"),
            Err(KeyError::PublicKeyLength { found: 2 })
        ));
        assert!(matches!(
            parse_public_b64u("***"),
            Err(KeyError::PublicKeyEncoding(_))
        ));
    }

    #[test]
    fn key_file_is_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.key");
        let key = generate();
        save_signing_key(&path, &key).unwrap();
        let loaded = load_signing_key(&path).unwrap();
        assert_eq!(loaded.to_bytes(), key.to_bytes());
        assert!(matches!(
            save_signing_key(&path, &key),
            Err(KeyError::Exists { .. })
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = load_signing_key(&path).unwrap_err();
            assert!(matches!(
                err,
                KeyError::InsecurePermissions { mode: 0o644, .. }
            ));
            assert!(err.to_string().contains("chmod 600"));
        }
    }

    #[test]
    fn garbage_key_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.key");
        std::fs::write(&path, "not a key").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert!(matches!(
            load_signing_key(&path),
            Err(KeyError::NotAKey { .. })
        ));
    }
}
