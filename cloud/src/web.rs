//! Serves the built front end (`cloud/web/dist`) from the same process as the API, so one
//! `dmr-cloud` is the whole cloud: the console at `/`, the phone pages at `/h5/`.
//!
//! It is the router's fallback: a request no API route matched comes here. API paths
//! (`/api/...`) still get the JSON 404 of [`ApiError`]; everything else is a file from the
//! web directory, or the single-page app's `index.html` (its router handles the path). The
//! QR codes printed on locks point at `/q/{code}`, which redirects to the phone page, so the
//! printed link stays valid if the page moves.
//!
//! Caching: Vite names every asset by its content hash, so `/assets/*` is immutable for a
//! year; HTML is `no-cache`, so a deploy is seen on the next load.
//!
//! Compression: the build (`scripts/compress.mjs`) writes `name.br` and `name.gz` next to
//! every text file worth compressing. A client that accepts Brotli or gzip gets that
//! file with `Content-Encoding`, anyone else the plain one; `Vary: Accept-Encoding` keeps
//! shared caches from mixing them up. Compressing once at build time costs nothing per
//! request and lets the build use the slowest, smallest settings.

use std::path::{Component, Path, PathBuf};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};

use crate::AppState;
use crate::error::ApiError;

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const NO_CACHE: &str = "no-cache";

/// The fallback handler: the front end, or the API's 404/405.
pub async fn fallback(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri.path();
    if path == "/api" || path.starts_with("/api/") {
        return ApiError::NotFound.into_response();
    }
    let Some(dir) = state.config.server.web_dir.as_deref() else {
        return ApiError::NotFound.into_response();
    };
    if method != Method::GET && method != Method::HEAD {
        return ApiError::MethodNotAllowed.into_response();
    }
    if let Some(code) = path.strip_prefix("/q/").filter(|c| is_lock_code(c)) {
        return Redirect::to(&format!("/h5/l/{code}")).into_response();
    }
    let accept = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match resolve(dir, path).await {
        Some((file, cache)) => {
            let (body_file, encoding) = precompressed(&file, accept).await;
            let mut resp = file_response(&body_file, cache, method == Method::HEAD).await;
            if resp.status() == StatusCode::OK {
                let h = resp.headers_mut();
                // The type is the original file's, whichever variant carries the bytes.
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(content_type(&file)),
                );
                h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
                if let Some(e) = encoding {
                    h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(e));
                }
            }
            resp
        }
        None => ApiError::NotFound.into_response(),
    }
}

/// Encodings we keep precompressed variants for, best first, with their file suffix.
const ENCODINGS: [(&str, &str); 2] = [("br", "br"), ("gzip", "gz")];

/// Whether an `Accept-Encoding` value accepts `coding` (by name or `*`, with q > 0).
fn accepts(accept: &str, coding: &str) -> bool {
    let mut named = None;
    let mut star = None;
    for part in accept.split(',') {
        let mut fields = part.split(';');
        let name = fields.next().unwrap_or("").trim();
        let q = fields
            .filter_map(|f| f.trim().strip_prefix("q="))
            .filter_map(|q| q.trim().parse::<f32>().ok())
            .next()
            .unwrap_or(1.0);
        if name.eq_ignore_ascii_case(coding) {
            named = Some(q > 0.0);
        } else if name == "*" {
            star = Some(q > 0.0);
        }
    }
    named.or(star).unwrap_or(false)
}

/// The precompressed variant of `file` the client accepts, if the build made one.
async fn precompressed(file: &Path, accept: &str) -> (PathBuf, Option<&'static str>) {
    for (coding, suffix) in ENCODINGS {
        if !accepts(accept, coding) {
            continue;
        }
        let mut name = file.as_os_str().to_owned();
        name.push(".");
        name.push(suffix);
        let candidate = PathBuf::from(name);
        if is_file(&candidate).await {
            return (candidate, Some(coding));
        }
    }
    (file.to_path_buf(), None)
}

/// Lock codes are URL-safe tokens; anything else is not redirected.
fn is_lock_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Maps a request path to a file under `dir`: the file itself when it exists, otherwise
/// the entry page of the app the path belongs to. Paths with `..` or other non-normal
/// components never leave `dir`.
async fn resolve(dir: &Path, path: &str) -> Option<(PathBuf, &'static str)> {
    let rel = Path::new(path.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let candidate = dir.join(rel);
    if !path.ends_with('/') && is_file(&candidate).await {
        let cache = if path.starts_with("/assets/") {
            IMMUTABLE
        } else {
            NO_CACHE
        };
        return Some((candidate, cache));
    }
    // A missing asset is a real 404: answering it with HTML would hide a broken deploy.
    if path.starts_with("/assets/") || Path::new(path).extension().is_some() {
        return None;
    }
    let entry = if path == "/h5" || path.starts_with("/h5/") {
        dir.join("h5").join("index.html")
    } else {
        dir.join("index.html")
    };
    is_file(&entry).await.then_some((entry, NO_CACHE))
}

async fn is_file(p: &Path) -> bool {
    tokio::fs::metadata(p)
        .await
        .map(|m| m.is_file())
        .unwrap_or(false)
}

async fn file_response(path: &Path, cache: &'static str, head: bool) -> Response {
    let bytes = match tokio::fs::read(path).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read web file");
            return ApiError::NotFound.into_response();
        }
    };
    let len = bytes.len();
    let mut resp = Response::new(if head {
        Body::empty()
    } else {
        Body::from(bytes)
    });
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    // A HEAD answer says how long the GET body would be.
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "ttf" => "font/ttf",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_files_entries_and_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("assets")).unwrap();
        std::fs::create_dir_all(d.join("h5")).unwrap();
        std::fs::write(d.join("index.html"), "console").unwrap();
        std::fs::write(d.join("h5/index.html"), "phone").unwrap();
        std::fs::write(d.join("assets/app-1234.js"), "js").unwrap();
        std::fs::write(d.join("favicon.svg"), "svg").unwrap();

        let r = |p: &'static str| resolve(d, p);
        assert_eq!(r("/").await, Some((d.join("index.html"), NO_CACHE)));
        assert_eq!(
            r("/venues/42").await,
            Some((d.join("index.html"), NO_CACHE))
        );
        assert_eq!(
            r("/h5/l/ABC").await,
            Some((d.join("h5/index.html"), NO_CACHE))
        );
        assert_eq!(r("/h5/").await, Some((d.join("h5/index.html"), NO_CACHE)));
        assert_eq!(
            r("/assets/app-1234.js").await,
            Some((d.join("assets/app-1234.js"), IMMUTABLE))
        );
        assert_eq!(
            r("/favicon.svg").await,
            Some((d.join("favicon.svg"), NO_CACHE))
        );
        assert_eq!(r("/assets/gone-9.js").await, None);
        assert_eq!(r("/missing.png").await, None);
        assert_eq!(r("/../etc/passwd").await, None);
        assert_eq!(r("/assets/../../secret").await, None);
    }

    #[test]
    fn accept_encoding() {
        assert!(accepts("gzip, deflate, br, zstd", "br"));
        assert!(accepts("gzip, deflate, br, zstd", "gzip"));
        assert!(accepts("GZIP", "gzip"));
        assert!(!accepts("", "gzip"));
        assert!(!accepts("identity", "gzip"));
        assert!(!accepts("gzip;q=0, br", "gzip"));
        assert!(accepts("gzip;q=0.5", "gzip"));
        assert!(accepts("*", "br"));
        assert!(!accepts("*, br;q=0", "br"));
        assert!(!accepts("gzip;q=0.0", "gzip"));
    }

    #[test]
    fn lock_codes() {
        assert!(is_lock_code("L-0001_ab"));
        assert!(!is_lock_code(""));
        assert!(!is_lock_code("a/b"));
        assert!(!is_lock_code("<script>"));
    }
}
