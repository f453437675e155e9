//! Enrollment: how a fresh gateway gets its identity, its trusted cloud keys, its MQTT
//! credentials and its lock map from a one-time code typed in by the installer.
//!
//! `dmr-agent enroll --cloud URL --code CODE` makes sure the gateway has an Ed25519 key (it
//! is generated on first use and never leaves the box), proves possession of it by signing
//! `"DMR-ENROLL/1\0" ‖ normalized code ‖ public key`, and POSTs both to
//! `{cloud}/api/v1/gateway/enroll` (docs/protocol.md §6). The answer is saved as
//! `enrollment.json` in the state directory (temp file + fsync + rename, mode 0600: it holds
//! the MQTT password, shown by the cloud only once). `dmr-agent run` reads it back through
//! [`super::config::load`], where the rules for merging it with the configuration file live.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use dmr_protocol::keys::{SigningKey, VerifyingKey};
use ed25519_dalek::Signer as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::cloud_http::{self, Answer, CloudRequest};

/// File name of the saved enrollment inside the state directory.
pub const ENROLLMENT_FILE: &str = "enrollment.json";

/// Domain separation prefix of the proof of possession.
pub const POP_CONTEXT: &[u8] = b"DMR-ENROLL/1\0";

/// A cloud signing key the gateway trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedKeyInfo {
    pub key_id: u32,
    /// base64url of the 32-byte Ed25519 public key.
    pub public_key: String,
    /// After this Unix ms the key signs nothing valid any more (rotation overlap end).
    #[serde(default)]
    pub not_after_ms: Option<u64>,
}

/// MQTT credentials issued at enrollment.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttCredentials {
    pub url: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for MqttCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttCredentials")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// A lock the cloud has registered on this gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolledLock {
    pub lock_id: Uuid,
    /// Modbus unit address.
    pub addr: u16,
    #[serde(default)]
    pub name: Option<String>,
}

/// Runtime settings the cloud starts the gateway with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolledConfig {
    pub version: u64,
    #[serde(default)]
    pub heartbeat_interval_s: Option<u32>,
    #[serde(default)]
    pub token_skew_s: Option<u32>,
}

/// The cloud's 201 answer, saved as `enrollment.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    pub gateway_id: Uuid,
    #[serde(default)]
    pub merchant_id: Option<Uuid>,
    #[serde(default)]
    pub venue_id: Option<Uuid>,
    pub trusted_keys: Vec<TrustedKeyInfo>,
    pub mqtt: MqttCredentials,
    /// Public base URL of the cloud API (`https://...`).
    pub sync_url: String,
    #[serde(default)]
    pub locks: Vec<EnrolledLock>,
    #[serde(default)]
    pub config: Option<EnrolledConfig>,
}

/// What went wrong while enrolling, each naming what to do.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(
        "cannot reach the cloud at {url}: {reason}; check the --cloud URL, DNS, proxy and firewall, then run enroll again (the code is not used up)"
    )]
    Unreachable { url: String, reason: String },
    #[error(
        "the cloud refused the enrollment code (unknown, already used, revoked or expired); create a new code in the console (venue → gateways → enrollment code) and run enroll again"
    )]
    CodeRefused,
    #[error(
        "the cloud refused the proof of possession of the gateway key ({message}); the key file may be corrupt: move it away and run enroll again with a new code"
    )]
    BadProof { message: String },
    #[error(
        "the cloud is rate limiting enrollment from this address; wait a minute and run enroll again"
    )]
    RateLimited,
    #[error("the cloud answered {status}: {message}")]
    Http { status: u16, message: String },
    #[error(
        "the cloud's answer is not a valid enrollment ({0}); is --cloud the Dumeiren cloud API?"
    )]
    BadAnswer(String),
    #[error(
        "the enrollment code is empty after removing separators; type it as shown, e.g. ABCDE-FGHJK"
    )]
    EmptyCode,
    #[error("gateway key {path}: {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: dmr_protocol::keys::KeyError,
    },
    #[error("cannot save {path}: {source}")]
    Save {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl EnrollError {
    /// sysexits.h status for the CLI: 69 unavailable, 77 permission refused, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            EnrollError::Unreachable { .. } | EnrollError::RateLimited => 69,
            EnrollError::CodeRefused => 77,
            _ => 1,
        }
    }
}

/// The form of a code that is signed and hashed: ASCII letters and digits, upper case,
/// without separators (the cloud normalizes the same way).
pub fn normalize_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// The bytes the proof of possession signs.
pub fn pop_message(normalized_code: &str, public: &VerifyingKey) -> Vec<u8> {
    let mut m = Vec::with_capacity(POP_CONTEXT.len() + normalized_code.len() + 32);
    m.extend_from_slice(POP_CONTEXT);
    m.extend_from_slice(normalized_code.as_bytes());
    m.extend_from_slice(public.as_bytes());
    m
}

/// The JSON body of the enroll request.
pub fn request_body(
    key: &SigningKey,
    code: &str,
    name: Option<&str>,
) -> Result<serde_json::Value, EnrollError> {
    let normalized = normalize_code(code);
    if normalized.is_empty() {
        return Err(EnrollError::EmptyCode);
    }
    let public = key.verifying_key();
    let pop = key.sign(&pop_message(&normalized, &public));
    let mut body = serde_json::json!({
        "code": code.trim(),
        "public_key": dmr_protocol::keys::public_b64u(&public),
        "pop": dmr_protocol::b64::encode(pop.to_bytes()),
        "agent_version": env!("CARGO_PKG_VERSION"),
    });
    if let Some(n) = name {
        body["name"] = serde_json::Value::String(n.to_string());
    }
    Ok(body)
}

/// Loads the gateway key, creating it (mode 0600) if the file does not exist yet.
/// Returns the key and whether it was created.
pub fn ensure_key(path: &Path) -> Result<(SigningKey, bool), EnrollError> {
    let err = |source| EnrollError::Key {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        return dmr_protocol::keys::load_signing_key(path)
            .map(|k| (k, false))
            .map_err(err);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| {
            err(dmr_protocol::keys::KeyError::Write {
                path: path.to_path_buf(),
                source,
            })
        })?;
    }
    let key = dmr_protocol::keys::generate();
    dmr_protocol::keys::save_signing_key(path, &key).map_err(err)?;
    Ok((key, true))
}

pub use super::cloud_http::http_client;

/// The message of the API error body `{"error":{"code","message"}}` as `code: message`, or
/// the raw text.
pub fn api_error_message(body: &str) -> String {
    let e = super::cloud_http::api_error(body);
    match e.code {
        Some(code) => format!("{code}: {}", e.message),
        None => e.message,
    }
}

/// Sends the enroll request and parses the answer (does not save it).
pub async fn enroll(
    client: &reqwest::Client,
    cloud: &str,
    key: &SigningKey,
    code: &str,
    name: Option<&str>,
) -> Result<Enrollment, EnrollError> {
    let body = request_body(key, code, name)?;
    let req = CloudRequest {
        method: reqwest::Method::POST,
        base: cloud,
        path: "/api/v1/gateway/enroll",
        json: Some(body.to_string().into_bytes()),
        // Not signed with the gateway key: the proof of possession inside the body is
        // what binds the key (the gateway is not known to the cloud yet).
        sign: None,
    };
    let url = req.url();
    let Answer { status, text } = cloud_http::send(client, req)
        .await
        .map_err(|reason| EnrollError::Unreachable { url, reason })?;
    match status {
        200 | 201 => {
            let e: Enrollment =
                serde_json::from_str(&text).map_err(|e| EnrollError::BadAnswer(e.to_string()))?;
            validate(&e).map_err(EnrollError::BadAnswer)?;
            Ok(e)
        }
        403 => Err(EnrollError::CodeRefused),
        422 => Err(EnrollError::BadProof {
            message: api_error_message(&text),
        }),
        429 => Err(EnrollError::RateLimited),
        _ => Err(EnrollError::Http {
            status,
            message: api_error_message(&text),
        }),
    }
}

/// Checks what `run` relies on, so a bad answer is refused at enrollment, not at start.
pub fn validate(e: &Enrollment) -> Result<(), String> {
    if e.gateway_id.is_nil() {
        return Err("gateway_id is nil".into());
    }
    for k in &e.trusted_keys {
        dmr_protocol::keys::parse_public_b64u(&k.public_key)
            .map_err(|err| format!("trusted key {}: {err}", k.key_id))?;
    }
    if !(e.mqtt.url.starts_with("mqtt://") || e.mqtt.url.starts_with("mqtts://")) {
        return Err(format!("mqtt.url \"{}\" is not mqtt(s)://", e.mqtt.url));
    }
    if !(e.sync_url.starts_with("http://") || e.sync_url.starts_with("https://")) {
        return Err(format!("sync_url \"{}\" is not http(s)://", e.sync_url));
    }
    for l in &e.locks {
        if !(1..=247).contains(&l.addr) {
            return Err(format!(
                "lock {} has Modbus address {}, outside 1..=247",
                l.lock_id, l.addr
            ));
        }
    }
    Ok(())
}

/// Path of the saved enrollment in `state_dir`.
pub fn path_in(state_dir: &Path) -> PathBuf {
    state_dir.join(ENROLLMENT_FILE)
}

/// Saves the enrollment atomically with mode 0600: written to a temp file, synced, renamed
/// over the old one, and the directory synced, so a power cut leaves the old or the new
/// file, never half of one.
pub fn save(state_dir: &Path, e: &Enrollment) -> Result<PathBuf, EnrollError> {
    let path = path_in(state_dir);
    let err = |source| EnrollError::Save {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(err)?;
    let tmp = state_dir.join(format!(".{ENROLLMENT_FILE}.{}.tmp", std::process::id()));
    let text = serde_json::to_vec_pretty(e).map_err(|e| err(std::io::Error::other(e)))?;
    let write = || -> std::io::Result<()> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        // A temp file left over by an earlier crash could have other bits; force 0600.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        f.write_all(&text)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        if let Ok(d) = std::fs::File::open(state_dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })?;
    Ok(path)
}

/// Reads `enrollment.json` from `state_dir`: `Ok(None)` when there is none.
pub fn load(state_dir: &Path) -> Result<Option<Enrollment>, String> {
    let path = path_in(state_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let e: Enrollment = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{} is not a valid enrollment ({e}); run `dmr-agent enroll` again",
            path.display()
        )
    })?;
    validate(&e).map_err(|m| format!("{}: {m}", path.display()))?;
    Ok(Some(e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn pop_verifies_over_the_documented_bytes() {
        let key = dmr_protocol::keys::signing_key_from_seed([3; 32]);
        let body = request_body(&key, " abcde-fghjk ", Some("front desk")).unwrap();
        let sig = dmr_protocol::b64::decode(body["pop"].as_str().unwrap()).unwrap();
        let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
        let mut msg = b"DMR-ENROLL/1\0ABCDEFGHJK".to_vec();
        msg.extend_from_slice(key.verifying_key().as_bytes());
        key.verifying_key().verify_strict(&msg, &sig).unwrap();
        assert_eq!(body["name"], "front desk");
        assert!(matches!(
            request_body(&key, "--", None),
            Err(EnrollError::EmptyCode)
        ));
    }
}
