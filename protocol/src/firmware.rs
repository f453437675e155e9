//! Signed firmware images (PROTOCOL.md §5): build and sign (the vendor tool), parse the
//! header (the technician CLI's `fw inspect`), and verify (the controller's VERIFY step),
//! with failures that map one-to-one onto the controller's `FW_ERROR` codes.

use ed25519_dalek::{Signature, Signer as _, SigningKey};
use sha2::{Digest as _, Sha256};

use crate::keys::TrustedKeys;
use crate::registers::{FwErrorCode, FwVersion};

/// `DMRF`
pub const MAGIC: [u8; 4] = *b"DMRF";
/// Image format version.
pub const FORMAT_VERSION: u8 = 1;
/// Header length; the payload starts here.
pub const HEADER_LEN: usize = 116;
/// Signed part of the header (bytes 0..52).
pub const SIGNED_LEN: usize = 52;
/// Largest payload accepted (16 MiB): far above any lock controller's flash, low enough
/// that a forged length cannot make a flasher allocate without bound.
pub const MAX_PAYLOAD: u32 = 16 << 20;

const SIGNING_DOMAIN: &[u8; 15] = b"DMR-FIRMWARE/1\0";

/// A parsed image header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirmwareHeader {
    pub hardware: u8,
    pub version: FwVersion,
    pub payload_len: u32,
    pub payload_sha256: [u8; 32],
    pub key_id: u32,
    pub signature: [u8; 64],
}

/// Why an image is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FirmwareError {
    #[error("not a firmware image: expected magic \"DMRF\" and format {FORMAT_VERSION}")]
    BadMagic,
    #[error("image is for hardware type {found}, this device is type {expected}")]
    WrongHardware { expected: u8, found: u8 },
    #[error("image is {found} bytes, its header says {expected} ({HEADER_LEN} header + payload)")]
    BadLength { expected: u64, found: u64 },
    #[error("payload is {found} bytes, more than the {MAX_PAYLOAD} allowed")]
    TooLarge { found: u64 },
    #[error("image is signed with vendor key {key_id}, which is not trusted")]
    UnknownKey { key_id: u32 },
    #[error("image signature does not verify with vendor key {key_id}")]
    BadSignature { key_id: u32 },
    #[error("payload SHA-256 does not match the header (corrupted image or transfer)")]
    BadHash,
}

impl FirmwareError {
    /// The `FW_ERROR` code a controller reports for this failure.
    pub fn fw_error_code(&self) -> FwErrorCode {
        match self {
            FirmwareError::BadMagic => FwErrorCode::BadMagic,
            FirmwareError::WrongHardware { .. } => FwErrorCode::WrongHardware,
            FirmwareError::BadLength { .. } | FirmwareError::TooLarge { .. } => {
                FwErrorCode::BadLength
            }
            FirmwareError::UnknownKey { .. } | FirmwareError::BadSignature { .. } => {
                FwErrorCode::BadSignature
            }
            FirmwareError::BadHash => FwErrorCode::BadHash,
        }
    }
}

fn signed_header(
    hardware: u8,
    version: FwVersion,
    len: u32,
    hash: &[u8; 32],
    key_id: u32,
) -> [u8; SIGNED_LEN] {
    let mut h = [0u8; SIGNED_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4] = FORMAT_VERSION;
    h[5] = hardware;
    h[8] = version.major;
    h[9] = version.minor;
    h[10..12].copy_from_slice(&version.patch.to_be_bytes());
    h[12..16].copy_from_slice(&len.to_be_bytes());
    h[16..48].copy_from_slice(hash);
    h[48..52].copy_from_slice(&key_id.to_be_bytes());
    h
}

fn signing_input(signed: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNING_DOMAIN.len() + SIGNED_LEN);
    msg.extend_from_slice(SIGNING_DOMAIN);
    msg.extend_from_slice(signed);
    msg
}

/// Builds and signs an image around `payload`.
pub fn build(
    hardware: u8,
    version: FwVersion,
    payload: &[u8],
    key_id: u32,
    key: &SigningKey,
) -> Result<Vec<u8>, FirmwareError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&n| n <= MAX_PAYLOAD)
        .ok_or(FirmwareError::TooLarge {
            found: payload.len() as u64,
        })?;
    let hash: [u8; 32] = Sha256::digest(payload).into();
    let signed = signed_header(hardware, version, len, &hash, key_id);
    let sig = key.sign(&signing_input(&signed));
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&signed);
    out.extend_from_slice(&sig.to_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Parses the header (the first [`HEADER_LEN`] bytes) without checking signature or hash.
pub fn parse_header(bytes: &[u8]) -> Result<FirmwareHeader, FirmwareError> {
    if bytes.len() < HEADER_LEN {
        // Too short to even hold a header: a controller reports it as a length problem
        // once it has magic, and as not-an-image otherwise.
        if bytes.len() >= 5 && bytes[0..4] == MAGIC && bytes[4] == FORMAT_VERSION {
            return Err(FirmwareError::BadLength {
                expected: HEADER_LEN as u64,
                found: bytes.len() as u64,
            });
        }
        return Err(FirmwareError::BadMagic);
    }
    if bytes[0..4] != MAGIC || bytes[4] != FORMAT_VERSION || bytes[6..8] != [0, 0] {
        return Err(FirmwareError::BadMagic);
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&bytes[16..48]);
    let mut signature = [0u8; 64];
    signature.copy_from_slice(&bytes[52..116]);
    Ok(FirmwareHeader {
        hardware: bytes[5],
        version: FwVersion {
            major: bytes[8],
            minor: bytes[9],
            patch: u16::from_be_bytes([bytes[10], bytes[11]]),
        },
        payload_len: u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]),
        payload_sha256: hash,
        key_id: u32::from_be_bytes([bytes[48], bytes[49], bytes[50], bytes[51]]),
        signature,
    })
}

/// Verifies a whole image as a controller's VERIFY does: magic and format, hardware type,
/// length, vendor signature over the header, then the payload hash.
pub fn verify(
    image: &[u8],
    keys: &(impl TrustedKeys + ?Sized),
    hardware: u8,
) -> Result<FirmwareHeader, FirmwareError> {
    let header = parse_header(image)?;
    if header.hardware != hardware {
        return Err(FirmwareError::WrongHardware {
            expected: hardware,
            found: header.hardware,
        });
    }
    if header.payload_len > MAX_PAYLOAD {
        return Err(FirmwareError::TooLarge {
            found: u64::from(header.payload_len),
        });
    }
    let expected = HEADER_LEN as u64 + u64::from(header.payload_len);
    if image.len() as u64 != expected {
        return Err(FirmwareError::BadLength {
            expected,
            found: image.len() as u64,
        });
    }
    let key = keys.key(header.key_id).ok_or(FirmwareError::UnknownKey {
        key_id: header.key_id,
    })?;
    key.verify_strict(
        &signing_input(&image[..SIGNED_LEN]),
        &Signature::from_bytes(&header.signature),
    )
    .map_err(|_| FirmwareError::BadSignature {
        key_id: header.key_id,
    })?;
    let hash: [u8; 32] = Sha256::digest(&image[HEADER_LEN..]).into();
    if hash != header.payload_sha256 {
        return Err(FirmwareError::BadHash);
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registers::HARDWARE_LOCK;

    fn v130() -> FwVersion {
        FwVersion {
            major: 1,
            minor: 3,
            patch: 0,
        }
    }

    #[test]
    fn build_verify_and_each_refusal() {
        let key = SigningKey::from_bytes(&[5u8; 32]);
        let keys = [(9u32, key.verifying_key())];
        let payload = vec![0xA5u8; 777];
        let image = build(HARDWARE_LOCK, v130(), &payload, 9, &key).unwrap();
        let h = verify(&image, &keys, HARDWARE_LOCK).unwrap();
        assert_eq!((h.version, h.payload_len), (v130(), 777));

        assert_eq!(
            verify(&image, &keys, 2),
            Err(FirmwareError::WrongHardware {
                expected: 2,
                found: 1
            })
        );
        assert!(matches!(
            verify(&image[..image.len() - 1], &keys, HARDWARE_LOCK),
            Err(FirmwareError::BadLength { .. })
        ));
        let mut corrupt = image.clone();
        corrupt[HEADER_LEN + 5] ^= 0x10;
        assert_eq!(
            verify(&corrupt, &keys, HARDWARE_LOCK),
            Err(FirmwareError::BadHash)
        );
        let mut forged = image.clone();
        forged[9] = 4; // claim 1.4.0
        assert_eq!(
            verify(&forged, &keys, HARDWARE_LOCK),
            Err(FirmwareError::BadSignature { key_id: 9 })
        );
        assert_eq!(
            verify(&image, &[(1u32, key.verifying_key())], HARDWARE_LOCK)
                .unwrap_err()
                .fw_error_code(),
            FwErrorCode::BadSignature
        );
        let mut magic = image.clone();
        magic[0] = b'X';
        assert_eq!(
            verify(&magic, &keys, HARDWARE_LOCK),
            Err(FirmwareError::BadMagic)
        );
        assert_eq!(
            verify(b"hello", &keys, HARDWARE_LOCK),
            Err(FirmwareError::BadMagic)
        );
        assert!(matches!(
            verify(&image[..60], &keys, HARDWARE_LOCK),
            Err(FirmwareError::BadLength { .. })
        ));
    }
}
