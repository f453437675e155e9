//! Firmware releases: platform admins upload vendor-signed lock controller images
//! (`dmr_protocol::firmware`, built by `dmr-tech fw sign`), the cloud checks them the way a
//! controller's VERIFY step would and keeps them, and technicians download them to flash
//! with `dmr-tech flash --file`.
//!
//! Why the cloud verifies at all when the controller verifies again: an image that a
//! controller would refuse must never be offered to a technician on site, where the only
//! symptom would be a failed flash. So an upload is refused (422, naming what is wrong)
//! unless its header is well formed, it is for a hardware type the cloud knows, its length
//! matches the header, its vendor signature verifies with a key from `firmware.vendor_keys`
//! and its payload hash matches. A (hardware, version) pair is published once, ever: a
//! withdrawn release stays (soft), so a version number can never come back with other
//! bytes (409). Routes: `firmware:manage` lists, uploads and withdraws; `firmware:download`
//! (platform admins and technicians) lists and downloads.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dmr_protocol::firmware::{self, FirmwareError, FirmwareHeader};
use dmr_protocol::registers::{FwVersion, HARDWARE_LOCK};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::AppState;
use crate::db::{new_id, now_ms};
use crate::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, ApiQuery, IdPath};
use crate::http::guard::Caller;
use crate::http::list::{Page, Paging, Sql, fetch_page, parse_int};

/// Hardware types the cloud accepts images for, with a name for messages.
pub const KNOWN_HARDWARE: &[(u8, &str)] = &[(HARDWARE_LOCK, "lock controller")];

const NOTES_MAX: usize = 2000;
const REASON_MAX: usize = 500;

const TABLE: &str = "firmware_releases f LEFT JOIN users u ON u.id = f.created_by \
                     LEFT JOIN users w ON w.id = f.withdrawn_by";
const COLUMNS: &str = "f.id AS id, f.hardware AS hardware, f.version AS version, \
    f.size_bytes AS size_bytes, f.payload_len AS payload_len, f.payload_sha256 AS payload_sha256, \
    f.image_sha256 AS image_sha256, f.key_id AS key_id, f.notes AS notes, f.status AS status, \
    f.created_by AS created_by, u.username AS created_by_name, f.created_at AS created_at, \
    f.withdrawn_by AS withdrawn_by, w.username AS withdrawn_by_name, \
    f.withdrawn_at AS withdrawn_at, f.withdrawn_reason AS withdrawn_reason";

/// A release as the API shows it (never the image bytes).
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Release {
    pub id: String,
    pub hardware: i64,
    pub version: String,
    /// The whole file, header included.
    pub size_bytes: i64,
    pub payload_len: i64,
    /// Hex SHA-256 of the payload (what the signed header carries).
    pub payload_sha256: String,
    /// Hex SHA-256 of the whole file (to check a download against).
    pub image_sha256: String,
    pub key_id: i64,
    pub notes: String,
    /// `published` or `withdrawn`.
    pub status: String,
    pub created_by: String,
    pub created_by_name: Option<String>,
    pub created_at: i64,
    pub withdrawn_by: Option<String>,
    pub withdrawn_by_name: Option<String>,
    pub withdrawn_at: Option<i64>,
    pub withdrawn_reason: Option<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn v0() -> FwVersion {
    FwVersion {
        major: 0,
        minor: 0,
        patch: 0,
    }
}

fn version_order(v: FwVersion) -> i64 {
    (i64::from(v.major) << 24) | (i64::from(v.minor) << 16) | i64::from(v.patch)
}

/// What the checks found in an accepted image.
#[derive(Debug)]
pub struct Checked {
    pub header: FirmwareHeader,
    pub image_sha256: String,
}

/// The whole check of an uploaded image (CPU work on up to 16 MiB: run it off the async
/// workers). Every refusal is a 422 on `image` saying what is wrong and what to do.
pub fn check_image(
    image: &[u8],
    keys: &std::collections::BTreeMap<u32, ed25519_dalek::VerifyingKey>,
) -> Result<Checked, ApiError> {
    let bad = |m: String| ApiError::validation("image", m);
    let header = firmware::parse_header(image).map_err(|e| bad(e.to_string()))?;
    if !KNOWN_HARDWARE.iter().any(|(h, _)| *h == header.hardware) {
        let known: Vec<String> = KNOWN_HARDWARE
            .iter()
            .map(|(h, n)| format!("{h} ({n})"))
            .collect();
        return Err(bad(format!(
            "image is for hardware type {}, which this cloud does not know (known: {})",
            header.hardware,
            known.join(", ")
        )));
    }
    if header.version == v0() {
        return Err(bad(
            "image claims version 0.0.0, which is not a release version; sign it with --version"
                .into(),
        ));
    }
    if keys.is_empty() {
        return Err(bad(format!(
            "image is signed with vendor key {}, but no vendor key is configured; set \
             firmware.vendor_keys on the cloud",
            header.key_id
        )));
    }
    firmware::verify(image, keys, header.hardware).map_err(|e| match e {
        FirmwareError::UnknownKey { key_id } => bad(format!(
            "image is signed with vendor key {key_id}, which is not trusted (trusted: {:?}); \
             sign it with a vendor key or add the key to firmware.vendor_keys",
            keys.keys().collect::<Vec<_>>()
        )),
        FirmwareError::BadSignature { key_id } => bad(format!(
            "image signature does not verify with vendor key {key_id}: the header was altered \
             after signing, or it was signed with another key under the same id"
        )),
        other => bad(other.to_string()),
    })?;
    Ok(Checked {
        header,
        image_sha256: hex(&Sha256::digest(image)),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    page: Option<String>,
    per_page: Option<String>,
    hardware: Option<String>,
    status: Option<String>,
}

/// `GET /api/v1/firmware-releases`: newest version first.
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<Release>>> {
    let paging = Paging::parse(q.page.as_deref(), q.per_page.as_deref())?;
    let mut w = Sql::new(" WHERE 1 = 1");
    if let Some(h) = q.hardware.as_deref() {
        let h = parse_int("hardware", Some(h), 0, 0, 255)?;
        w.push(" AND f.hardware = ").bind_int(h);
    }
    if let Some(s) = q.status {
        if s != "published" && s != "withdrawn" {
            return Err(ApiError::validation(
                "status",
                "must be published or withdrawn",
            ));
        }
        w.push(" AND f.status = ").bind_text(s);
    }
    Ok(Json(
        fetch_page(
            &state.db,
            TABLE,
            COLUMNS,
            &w,
            "f.hardware ASC, f.version_order DESC, f.created_at DESC, f.id DESC",
            paging,
        )
        .await?,
    ))
}

async fn fetch(state: &AppState, id: &str) -> ApiResult<Release> {
    let mut q = Sql::new(&format!("SELECT {COLUMNS} FROM {TABLE} WHERE f.id = "));
    q.bind_text(id);
    q.query_as::<Release>()
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or(ApiError::NotFound)
}

/// `GET /api/v1/firmware-releases/{id}`
pub async fn get(State(state): State<AppState>, IdPath(id): IdPath) -> ApiResult<Json<Release>> {
    Ok(Json(fetch(&state, &id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// What the release is for, shown to technicians.
    notes: Option<String>,
    /// The version the uploader expects the image to carry; refused if it differs.
    version: Option<String>,
}

fn too_large(limit: usize) -> ApiError {
    ApiError::TooLarge(format!(
        "firmware image is larger than the {limit} bytes this cloud accepts \
         (firmware.max_image_bytes)"
    ))
}

/// Reads the raw body up to `limit` bytes, refusing early on a larger Content-Length.
async fn read_limited(headers: &HeaderMap, body: Body, limit: usize) -> ApiResult<Vec<u8>> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let mut out = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::BadRequest {
            code: "unreadable_body",
            message: "the request body could not be read".into(),
        })?;
        if out.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// `POST /api/v1/firmware-releases?notes=..&version=..` with the image file as the body
/// (any content type; `application/octet-stream` is usual).
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Release>)> {
    let notes = q.notes.unwrap_or_default().trim().to_string();
    if notes.chars().count() > NOTES_MAX {
        return Err(ApiError::validation(
            "notes",
            format!("at most {NOTES_MAX} characters"),
        ));
    }
    let expected: Option<FwVersion> = match q.version.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(v) => Some(v.parse().map_err(|_| {
            ApiError::validation("version", "must be major.minor.patch, e.g. 1.3.0")
        })?),
    };
    let limit = state.config.firmware.max_image_bytes;
    let image = read_limited(&headers, body, limit).await?;
    if image.is_empty() {
        return Err(ApiError::validation(
            "image",
            "the body is empty; send the signed image file as the request body",
        ));
    }
    let keys = state.config.firmware.vendor_keys.clone();
    let (image, checked) = tokio::task::spawn_blocking(move || {
        let checked = check_image(&image, &keys);
        (image, checked)
    })
    .await
    .map_err(ApiError::internal)?;
    let checked = checked?;
    let h = &checked.header;
    if let Some(v) = expected
        && v != h.version
    {
        return Err(ApiError::validation(
            "version",
            format!(
                "the image carries version {}, not {v}; pick the right file or correct the version",
                h.version
            ),
        ));
    }
    let version = h.version.to_string();
    let existing: Option<String> = sqlx::query_scalar(
        "SELECT status FROM firmware_releases WHERE hardware = $1 AND version = $2",
    )
    .bind(i64::from(h.hardware))
    .bind(version.clone())
    .fetch_optional(&state.db.pool)
    .await?;
    if let Some(status) = existing {
        return Err(ApiError::Conflict(format!(
            "version {version} for hardware type {} is already {status}; a version is published \
             once: sign the image with a higher version",
            h.hardware
        )));
    }
    let id = new_id();
    sqlx::query(
        "INSERT INTO firmware_releases (id, hardware, version, version_order, size_bytes, \
         payload_len, payload_sha256, image_sha256, key_id, notes, status, created_by, created_at, \
         image) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'published', $11, $12, $13)",
    )
    .bind(id.clone())
    .bind(i64::from(h.hardware))
    .bind(version.clone())
    .bind(version_order(h.version))
    .bind(i64::try_from(image.len()).unwrap_or(i64::MAX))
    .bind(i64::from(h.payload_len))
    .bind(hex(&h.payload_sha256))
    .bind(checked.image_sha256.clone())
    .bind(i64::from(h.key_id))
    .bind(notes)
    .bind(caller.user_id.clone())
    .bind(now_ms())
    .bind(image)
    .execute(&state.db.pool)
    .await?;
    tracing::info!(%id, hardware = h.hardware, %version, key_id = h.key_id, by = %caller.user_id, "firmware release published");
    Ok((StatusCode::CREATED, Json(fetch(&state, &id).await?)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WithdrawBody {
    reason: String,
}

/// `POST /api/v1/firmware-releases/{id}/withdraw` with `{"reason"}`: no longer offered
/// for download; the row (and its version number) stays.
pub async fn withdraw(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    ApiJson(body): ApiJson<WithdrawBody>,
) -> ApiResult<Json<Release>> {
    let reason = body.reason.trim().to_string();
    if reason.is_empty() || reason.chars().count() > REASON_MAX {
        return Err(ApiError::validation(
            "reason",
            format!("say why, in 1..={REASON_MAX} characters"),
        ));
    }
    let current = fetch(&state, &id).await?;
    // Conditional, so two admins withdrawing at once cannot both win.
    let done = sqlx::query(
        "UPDATE firmware_releases SET status = 'withdrawn', withdrawn_by = $1, withdrawn_at = $2, \
         withdrawn_reason = $3 WHERE id = $4 AND status = 'published'",
    )
    .bind(caller.user_id.clone())
    .bind(now_ms())
    .bind(reason)
    .bind(id.clone())
    .execute(&state.db.pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::Conflict(format!(
            "version {} is already withdrawn",
            current.version
        )));
    }
    tracing::info!(%id, version = %current.version, by = %caller.user_id, "firmware release withdrawn");
    Ok(Json(fetch(&state, &id).await?))
}

/// `GET /api/v1/firmware-releases/{id}/image`: the signed file, to flash with
/// `dmr-tech flash --file`. A withdrawn release is refused (409) so nobody flashes it.
pub async fn image(State(state): State<AppState>, IdPath(id): IdPath) -> ApiResult<Response> {
    let release = fetch(&state, &id).await?;
    if release.status != "published" {
        return Err(ApiError::Conflict(format!(
            "version {} was withdrawn ({}); do not flash it, pick a published release",
            release.version,
            release
                .withdrawn_reason
                .as_deref()
                .unwrap_or("no reason given")
        )));
    }
    let bytes: Vec<u8> = sqlx::query_scalar("SELECT image FROM firmware_releases WHERE id = $1")
        .bind(id)
        .fetch_one(&state.db.pool)
        .await?;
    let name = format!(
        "dmr-fw-hw{}-{}.bin",
        release.hardware,
        release.version.replace('.', "_")
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
            (header::CACHE_CONTROL, "no-store".to_string()),
            (
                header::HeaderName::from_static("x-content-sha256"),
                release.image_sha256,
            ),
        ],
        bytes,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn v(major: u8, minor: u8, patch: u16) -> FwVersion {
        FwVersion {
            major,
            minor,
            patch,
        }
    }

    #[test]
    fn checks_refuse_what_a_controller_would() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let keys = std::collections::BTreeMap::from([(3u32, key.verifying_key())]);
        let good = firmware::build(HARDWARE_LOCK, v(1, 2, 3), &[9u8; 100], 3, &key).unwrap();
        let c = check_image(&good, &keys).unwrap();
        assert_eq!(c.header.version, v(1, 2, 3));
        assert_eq!(c.image_sha256, hex(&Sha256::digest(&good)));

        let msg = |r: Result<Checked, ApiError>| r.unwrap_err().to_string();
        let other_hw = firmware::build(7, v(1, 0, 0), &[1u8; 10], 3, &key).unwrap();
        assert!(msg(check_image(&other_hw, &keys)).contains("hardware type 7"));
        let zero = firmware::build(HARDWARE_LOCK, v(0, 0, 0), &[1u8; 10], 3, &key).unwrap();
        assert!(msg(check_image(&zero, &keys)).contains("0.0.0"));
        let other_key = firmware::build(HARDWARE_LOCK, v(1, 0, 0), &[1u8; 10], 4, &key).unwrap();
        assert!(msg(check_image(&other_key, &keys)).contains("vendor key 4"));
        assert!(msg(check_image(&good, &Default::default())).contains("firmware.vendor_keys"));
        let mut tampered = good.clone();
        tampered[firmware::HEADER_LEN + 1] ^= 1;
        assert!(msg(check_image(&tampered, &keys)).contains("SHA-256"));
        assert!(msg(check_image(&good[..good.len() - 1], &keys)).contains("header says"));
        assert!(msg(check_image(b"{}", &keys)).contains("not a firmware image"));
        assert!(version_order(v(1, 10, 0)) > version_order(v(1, 9, 65535)));
    }
}
