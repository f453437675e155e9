//! `dmr-tech fw ...`: firmware image files, no bus. `inspect` reads a header (and verifies the
//! whole image when given the vendor's public key), `sign` is the vendor tool that builds and
//! signs an image around a payload, `keygen` makes a vendor key file.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use dmr_protocol::firmware::{self, HEADER_LEN};
use dmr_protocol::keys;
use dmr_protocol::registers::{FwVersion, HARDWARE_LOCK};
use serde_json::json;

use super::output::Out;
use super::{EXIT_FAILED, EXIT_OK, UsageError};

/// Firmware file subcommands.
#[derive(Debug, Subcommand)]
pub enum FwCommand {
    /// Show an image's header; with --vendor-key, verify signature, length and hash too.
    Inspect {
        file: PathBuf,
        /// Trusted vendor key as ID:BASE64URL (repeatable).
        #[arg(long = "vendor-key", value_name = "ID:KEY")]
        vendor_keys: Vec<String>,
    },
    /// Build and sign an image from a payload (vendor tool).
    Sign {
        /// The firmware payload (raw binary).
        #[arg(long)]
        payload: PathBuf,
        /// The vendor's private key file (PKCS#8 PEM, mode 0600).
        #[arg(long)]
        key: PathBuf,
        /// The vendor key id the controllers know this key by.
        #[arg(long)]
        key_id: u32,
        /// Version, major.minor.patch.
        #[arg(long)]
        version: String,
        /// Hardware type (1 = lock controller).
        #[arg(long, default_value_t = HARDWARE_LOCK)]
        hardware: u8,
        /// Where to write the image.
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a new vendor signing key file and print its public key.
    Keygen {
        /// Where to write the private key (created with mode 0600, never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
}

fn parse_vendor_key(s: &str) -> anyhow::Result<(u32, ed25519_dalek::VerifyingKey)> {
    let (id, key) = s
        .split_once(':')
        .ok_or_else(|| UsageError(format!("--vendor-key {s:?} must be ID:BASE64URL")))?;
    let id: u32 = id
        .parse()
        .map_err(|_| UsageError(format!("--vendor-key id {id:?} is not a number")))?;
    let key =
        keys::parse_public_b64u(key).map_err(|e| UsageError(format!("--vendor-key {id}: {e}")))?;
    Ok((id, key))
}

pub(super) fn run(cmd: FwCommand, out: &Out) -> anyhow::Result<u8> {
    match cmd {
        FwCommand::Inspect { file, vendor_keys } => {
            let trusted = vendor_keys
                .iter()
                .map(|s| parse_vendor_key(s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let header = super::flash::inspect(&file.display().to_string(), &bytes)?;
            let expected = HEADER_LEN as u64 + u64::from(header.payload_len);
            let problem = if trusted.is_empty() {
                (bytes.len() as u64 != expected).then(|| {
                    format!(
                        "the file is {} bytes, its header says {expected}: truncated or padded",
                        bytes.len()
                    )
                })
            } else {
                firmware::verify(&bytes, trusted.as_slice(), HARDWARE_LOCK)
                    .err()
                    .map(|e| e.to_string())
            };
            let failed = problem.is_some();
            out.inspect(&file.display().to_string(), &header, bytes.len(), problem);
            Ok(if failed { EXIT_FAILED } else { EXIT_OK })
        }
        FwCommand::Sign {
            payload,
            key,
            key_id,
            version,
            hardware,
            out: dest,
        } => {
            let version: FwVersion = version
                .parse()
                .map_err(|e| UsageError(format!("--version {version:?}: {e}")))?;
            let signing = keys::load_signing_key(&key)
                .with_context(|| format!("loading the vendor key {}", key.display()))?;
            let data = std::fs::read(&payload)
                .with_context(|| format!("reading the payload {}", payload.display()))?;
            let image = firmware::build(hardware, version, &data, key_id, &signing)
                .context("building the image")?;
            std::fs::write(&dest, &image).with_context(|| format!("writing {}", dest.display()))?;
            out.done(
                &format!(
                    "{}: firmware {version} for hardware {hardware}, {} bytes, signed with key {key_id}",
                    dest.display(),
                    image.len()
                ),
                json!({"file": dest, "version": version.to_string(), "hardware": hardware,
                    "bytes": image.len(), "key_id": key_id}),
            );
            Ok(EXIT_OK)
        }
        FwCommand::Keygen { out: dest } => {
            let key = keys::generate();
            keys::save_signing_key(&dest, &key)
                .with_context(|| format!("saving the key to {}", dest.display()))?;
            let public = keys::public_b64u(&key.verifying_key());
            out.done(
                &format!(
                    "wrote {} (keep it secret)\npublic key: {public}",
                    dest.display()
                ),
                json!({"file": dest, "public_key": public}),
            );
            Ok(EXIT_OK)
        }
    }
}
