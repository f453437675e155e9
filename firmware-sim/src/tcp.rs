//! The Modbus TCP transport: the same bus behind an MBAP listener, as an RTU-to-TCP
//! gateway would present it. Unit ids select the lock; a unit that is not on the bus gets
//! no answer, like on the serial line.

use std::sync::Arc;

use anyhow::Context as _;
use dmr_protocol::modbus::tcp;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::debug;

use crate::bus::Shared;

/// Accepts connections until shutdown; each connection runs until its peer leaves.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            // Reap finished connections so the set does not grow without bound.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = accepted.context("accept a Modbus TCP connection")?;
                debug!(%peer, "Modbus TCP client connected");
                let shared = shared.clone();
                let sd = shutdown.clone();
                conns.spawn(async move {
                    if let Err(e) = connection(stream, shared, sd).await {
                        debug!(%peer, error = format!("{e:#}"), "Modbus TCP connection ended");
                    }
                });
            }
        }
    }
    conns.shutdown().await;
    Ok(())
}

async fn connection(
    mut stream: TcpStream,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        let mut header = [0u8; tcp::HEADER_LEN];
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            r = stream.read_exact(&mut header) => { r.context("read MBAP header")?; }
        }
        let h = tcp::decode_header(&header).context("bad MBAP header")?;
        let mut pdu = vec![0u8; h.pdu_len()];
        stream.read_exact(&mut pdu).await.context("read PDU")?;
        if let Some(reply) = shared.exchange(h.unit, &pdu, None).await {
            stream
                .write_all(&tcp::encode(h.transaction, reply.unit, &reply.pdu))
                .await
                .context("write reply")?;
        }
    }
}
