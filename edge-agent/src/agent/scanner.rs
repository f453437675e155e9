//! The serial QR scanner (or keypad): every line it sends is a token text or a short code,
//! presented to the one unlock path.
//!
//! [`scan_lines`] works over any async reader so tests feed it an in-memory pipe; [`run`]
//! opens the UART and reopens it (every 5 s) when it fails. Lines longer than
//! [`MAX_LINE`] bytes are discarded whole: a token text is 185 characters, so a longer line
//! is noise or an attack on memory. Lines are handled one at a time: a scanner cannot
//! present faster than the lock is driven.

use std::time::Duration;

use dmr_protocol::message::Presenter;
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio_util::sync::CancellationToken;

use super::config::ScannerConfig;
use super::unlock::Unlocker;

/// Longest line accepted, in bytes.
pub const MAX_LINE: usize = 512;

/// Reads lines until EOF or `shutdown`, presenting each; returns how many were presented.
pub async fn scan_lines<R: AsyncRead + Unpin>(
    reader: R,
    unlocker: &Unlocker,
    shutdown: &CancellationToken,
) -> std::io::Result<u64> {
    let mut r = BufReader::new(reader);
    let mut buf = Vec::with_capacity(MAX_LINE);
    let mut presented = 0;
    let mut overlong = false;
    loop {
        buf.clear();
        let (n, complete) = tokio::select! {
            () = shutdown.cancelled() => return Ok(presented),
            n = read_line_bounded(&mut r, &mut buf) => n?,
        };
        if n == 0 {
            return Ok(presented);
        }
        if buf.len() > MAX_LINE || overlong {
            // Skip to the end of this line.
            overlong = !complete;
            tracing::warn!("scanner line longer than {MAX_LINE} bytes discarded");
            continue;
        }
        let Ok(text) = std::str::from_utf8(&buf) else {
            tracing::warn!("scanner line is not UTF-8; discarded");
            continue;
        };
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let reply = unlocker.present(text, Presenter::Scanner).await;
        tracing::info!(result = reply.result.as_str(), "scanner presentation");
        presented += 1;
    }
}

/// Reads up to a newline, keeping at most `MAX_LINE + 1` bytes. Returns the bytes consumed
/// and whether the line's end was reached.
async fn read_line_bounded<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<(usize, bool)> {
    let mut total = 0;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok((total, true));
        }
        let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let room = (MAX_LINE + 1).saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..take.min(room)]);
        r.consume(take);
        total += take;
        if done || buf.len() > MAX_LINE {
            return Ok((total, done));
        }
    }
}

/// Opens the scanner UART and reads it until `shutdown`.
pub async fn run(
    cfg: ScannerConfig,
    unlocker: Unlocker,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use tokio_serial::SerialPortBuilderExt as _;
    loop {
        match tokio_serial::new(&cfg.port, cfg.baud).open_native_async() {
            Ok(port) => {
                tracing::info!(port = %cfg.port, "scanner open");
                match scan_lines(port, &unlocker, &shutdown).await {
                    Ok(_) if shutdown.is_cancelled() => return Ok(()),
                    Ok(_) => tracing::warn!(port = %cfg.port, "scanner port closed"),
                    Err(e) => tracing::warn!(port = %cfg.port, error = %e, "scanner read failed"),
                }
            }
            Err(e) => tracing::warn!(port = %cfg.port, error = %e, "cannot open scanner port"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
