//! One client connection, from TCP accept to close: read the CONNECT (within the connect
//! timeout) and ask the authenticator, then one task loops over three sources — bytes from
//! the socket, messages routed to this client, and a kick from the router (takeover, too
//! slow) or the broker (shutdown) — and writes whatever is due. Reading and writing in one
//! task keeps the per-connection state (packet ids in flight, QoS 2 receipts) free of locks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, LastWill, Packet, PubAck, PubComp, PubRec, Publish, SubAck,
    SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{Error as CodecError, Protocol, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::ack::{AckLink, Outcome, Receipt};
use crate::router::{Blocked, ClientId, Kick, Message, Outgoing};
use crate::topic::{parse_filter, validate_name};
use crate::{Acl, AuthDecision, ConnectInfo, Shared};

/// Longest client id accepted (3.1.1 only promises 23 bytes; gateways use `gw:<uuid>`-ish ids).
const MAX_CLIENT_ID: usize = 256;
/// Stop filling the write buffer beyond this; flush first.
const WRITE_BATCH: usize = 64 * 1024;
/// How long a publisher waits for room in a full subscriber queue before that subscriber is
/// disconnected as too slow. Short bursts are absorbed by throttling the publisher instead.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// How a connection ended; decides whether the Last Will goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// DISCONNECT received: no will.
    Clean,
    /// Broker shutting down: no will.
    Shutdown,
    /// Same client id connected again: no will (the new connection speaks for the client).
    TakenOver,
    /// Everything else is abnormal and publishes the will.
    PeerClosed,
    Io,
    KeepAlive,
    Protocol,
    Oversize,
    AclViolation,
    Slow,
    /// A copy of one of its QoS 1 publishes was lost before its subscriber acknowledged it,
    /// or nobody that must take it was subscribed (`ack_after_delivery`): closed unacknowledged
    /// so the client sends it again.
    Undelivered,
}

impl End {
    fn publishes_will(self) -> bool {
        !matches!(self, End::Clean | End::Shutdown | End::TakenOver)
    }
}

pub(crate) async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    conn_id: u64,
    shared: &Shared,
    stop: watch::Receiver<bool>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let mut rbuf = BytesMut::with_capacity(4096);
    let max = shared.config.max_packet_bytes;

    let first = tokio::time::timeout(
        shared.config.connect_timeout,
        read_packet(&mut rd, &mut rbuf, max),
    )
    .await;
    let connect = match first {
        Ok(Ok(Packet::Connect(c))) => c,
        Ok(Ok(other)) => {
            shared.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, packet = ?packet_name(&other), "first packet is not CONNECT");
            return;
        }
        Ok(Err(ReadError::Codec(CodecError::InvalidProtocolLevel(level)))) => {
            // 3.1.1 §3.1.2.2: answer code 1 to a level we do not speak.
            tracing::debug!(%peer, level, "unsupported MQTT protocol level");
            let _ = write_packet(
                &mut wr,
                &Packet::ConnAck(ConnAck::new(
                    ConnectReturnCode::RefusedProtocolVersion,
                    false,
                )),
            )
            .await;
            return;
        }
        Ok(Err(e)) => {
            note_read_error(shared, &e);
            tracing::debug!(%peer, error = %e, "bad CONNECT");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT within the connect timeout");
            return;
        }
    };
    if connect.protocol != Protocol::V4 {
        let _ = write_packet(
            &mut wr,
            &Packet::ConnAck(ConnAck::new(
                ConnectReturnCode::RefusedProtocolVersion,
                false,
            )),
        )
        .await;
        return;
    }
    let client_id = if connect.client_id.is_empty() {
        if !connect.clean_session {
            // §3.1.3.1: an empty id requires a clean session.
            let _ = refuse(&mut wr, ConnectReturnCode::BadClientId).await;
            return;
        }
        format!("auto-{conn_id}")
    } else if connect.client_id.len() > MAX_CLIENT_ID {
        let _ = refuse(&mut wr, ConnectReturnCode::BadClientId).await;
        return;
    } else {
        connect.client_id.clone()
    };
    let info = ConnectInfo {
        client_id: client_id.clone(),
        username: connect.login.as_ref().map(|l| l.username.clone()),
        password: connect.login.as_ref().map(|l| l.password.clone()),
        peer,
    };
    let decision = shared.auth.authenticate(&info).await;
    drop(info);
    let acl: Arc<dyn Acl> = match decision {
        AuthDecision::Allow(acl) => acl,
        other => {
            shared.stats.connect_denied.fetch_add(1, Ordering::Relaxed);
            let code = match other {
                AuthDecision::BadCredentials => ConnectReturnCode::BadUserNamePassword,
                AuthDecision::Unavailable => ConnectReturnCode::ServiceUnavailable,
                _ => ConnectReturnCode::NotAuthorized,
            };
            tracing::info!(%peer, client_id, ?code, "MQTT connection refused");
            let _ = refuse(&mut wr, code).await;
            return;
        }
    };
    if let Some(will) = &connect.last_will
        && (validate_name(&will.topic).is_err() || !acl.may_publish(&will.topic))
    {
        shared.stats.connect_denied.fetch_add(1, Ordering::Relaxed);
        shared
            .stats
            .publishes_denied
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%peer, client_id, topic = %will.topic, "Last Will topic not allowed");
        let _ = refuse(&mut wr, ConnectReturnCode::NotAuthorized).await;
        return;
    }

    let client: ClientId = Arc::from(client_id.as_str());
    let (tx, rx) = mpsc::channel(shared.config.queue_capacity.max(1));
    let (kick_tx, kick_rx) = oneshot::channel();
    let registered = lock(shared).register(
        &client,
        connect.login.as_ref().map(|l| l.username.as_str()),
        conn_id,
        tx,
        kick_tx,
    );
    let Ok(took_over) = registered else {
        shared.stats.connect_denied.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%peer, client_id, "MQTT client id in use by another user: refused");
        let _ = refuse(&mut wr, ConnectReturnCode::BadClientId).await;
        return;
    };
    if took_over {
        shared.stats.takeovers.fetch_add(1, Ordering::Relaxed);
        tracing::info!(client_id, "MQTT session taken over by a new connection");
    }
    if write_packet(
        &mut wr,
        &Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)),
    )
    .await
    .is_err()
    {
        lock(shared).unregister(&client, conn_id);
        return;
    }
    tracing::debug!(%peer, client_id, "MQTT client connected");

    let (acks_tx, acks_rx) = mpsc::unbounded_channel();
    let mut session = Session {
        shared,
        client: client.clone(),
        acl,
        rx,
        pending: VecDeque::new(),
        inflight: HashMap::new(),
        acks_tx,
        acks_rx,
        awaiting: VecDeque::new(),
        qos2_received: HashSet::new(),
        next_pkid: 0,
        wbuf: BytesMut::with_capacity(4096),
        blocked: Vec::new(),
    };
    let keep_alive = (connect.keep_alive > 0)
        .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));
    let end = session
        .serve(&mut rd, &mut wr, rbuf, keep_alive, kick_rx, stop)
        .await;
    lock(shared).unregister(&client, conn_id);
    let _ = wr.shutdown().await;
    tracing::debug!(%peer, client_id, ?end, "MQTT client gone");
    if end.publishes_will()
        && let Some(will) = connect.last_will
    {
        publish_will(shared, will).await;
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, crate::router::Router> {
    // A panic while holding the lock cannot leave the maps half-updated in a way that
    // matters more than stopping the broker would; keep serving.
    shared
        .router
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn publish_will(shared: &Shared, will: LastWill) {
    let msg = Arc::new(Message {
        topic: will.topic,
        payload: will.message,
    });
    let qos = cap_qos(will.qos);
    let (n, blocked) = {
        let mut router = lock(shared);
        if will.retain {
            router.retain(&msg, qos);
        }
        router.route(&msg, qos, None)
    };
    shared
        .stats
        .messages_delivered
        .fetch_add(n as u64, Ordering::Relaxed);
    deliver_blocked(shared, blocked).await;
    shared.stats.wills_published.fetch_add(1, Ordering::Relaxed);
}

/// Waits (bounded) for room in full subscriber queues; kicks whoever stays full.
async fn deliver_blocked(shared: &Shared, blocked: Vec<Blocked>) {
    for b in blocked {
        match tokio::time::timeout(BLOCK_TIMEOUT, b.tx.send(b.out)).await {
            Ok(Ok(())) => {
                shared
                    .stats
                    .messages_delivered
                    .fetch_add(1, Ordering::Relaxed);
            }
            // The subscriber left meanwhile.
            Ok(Err(_)) => {}
            Err(_) => {
                shared
                    .stats
                    .messages_dropped
                    .fetch_add(1, Ordering::Relaxed);
                lock(shared).kick_slow(&b.client, &shared.stats);
                tracing::warn!(client_id = %b.client, "MQTT subscriber too slow: disconnecting it");
            }
        }
    }
}

/// Subscribers get at most QoS 1 (see the crate docs).
fn cap_qos(q: QoS) -> QoS {
    if q == QoS::ExactlyOnce {
        QoS::AtLeastOnce
    } else {
        q
    }
}

async fn refuse(wr: &mut OwnedWriteHalf, code: ConnectReturnCode) -> std::io::Result<()> {
    write_packet(wr, &Packet::ConnAck(ConnAck::new(code, false))).await
}

async fn write_packet(wr: &mut OwnedWriteHalf, p: &Packet) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    p.write(&mut buf, usize::MAX)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    wr.write_all(&buf).await
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("connection closed")]
    Closed,
    #[error("{0}")]
    Io(std::io::Error),
    #[error("{0}")]
    Codec(CodecError),
}

fn note_read_error(shared: &Shared, e: &ReadError) {
    match e {
        ReadError::Codec(CodecError::PayloadSizeLimitExceeded(_)) => {
            shared
                .stats
                .oversize_disconnects
                .fetch_add(1, Ordering::Relaxed);
        }
        ReadError::Codec(_) => {
            shared.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
        }
        ReadError::Closed | ReadError::Io(_) => {}
    }
}

/// Takes one complete packet out of `buf`, if there is one.
fn parse(buf: &mut BytesMut, max: usize) -> Result<Option<Packet>, CodecError> {
    match Packet::read(buf, max) {
        Ok(p) => Ok(Some(p)),
        Err(CodecError::InsufficientBytes(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn read_packet(
    rd: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Packet, ReadError> {
    loop {
        if let Some(p) = parse(buf, max).map_err(ReadError::Codec)? {
            return Ok(p);
        }
        let n = rd.read_buf(buf).await.map_err(ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Closed);
        }
    }
}

fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}

struct Session<'s> {
    shared: &'s Shared,
    client: ClientId,
    acl: Arc<dyn Acl>,
    rx: mpsc::Receiver<Outgoing>,
    /// Retained messages for new subscriptions, sent before live traffic.
    pending: VecDeque<Outgoing>,
    /// Packet ids of our QoS 1 sends not yet acknowledged, with the publisher's receipt of
    /// each (`ack_after_delivery`).
    inflight: HashMap<u16, Option<Receipt>>,
    /// What became of this client's QoS 1 publishes held for their subscribers.
    acks_tx: mpsc::UnboundedSender<Outcome>,
    acks_rx: mpsc::UnboundedReceiver<Outcome>,
    /// Those publishes in arrival order, and whether each is acknowledged: PUBACKs go out
    /// in the order the PUBLISHes came (MQTT-4.6.0-2), so one waits for those before it.
    awaiting: VecDeque<(u16, bool)>,
    /// QoS 2 publishes routed but not yet released (routing a re-send twice is avoided).
    qos2_received: HashSet<u16>,
    next_pkid: u16,
    wbuf: BytesMut,
    /// Messages this client published that a full subscriber queue could not take yet.
    blocked: Vec<Blocked>,
}

impl Session<'_> {
    async fn serve(
        &mut self,
        rd: &mut OwnedReadHalf,
        wr: &mut OwnedWriteHalf,
        mut rbuf: BytesMut,
        keep_alive: Option<Duration>,
        mut kick: oneshot::Receiver<Kick>,
        mut stop: watch::Receiver<bool>,
    ) -> End {
        let max = self.shared.config.max_packet_bytes;
        let window = self.shared.config.inflight_window.clamp(1, 65_000);
        let write_timeout = self.shared.config.write_timeout;
        let mut last_heard = Instant::now();
        // Bytes that arrived with the CONNECT belong to the session.
        if let Err(end) = self.drain_packets(&mut rbuf, max) {
            return end;
        }
        loop {
            if !self.blocked.is_empty() {
                // Not reading from this publisher meanwhile is the point: TCP pushes back.
                deliver_blocked(self.shared, std::mem::take(&mut self.blocked)).await;
                last_heard = Instant::now();
            }
            self.fill_writes(window);
            if !self.wbuf.is_empty() {
                let out = self.wbuf.split();
                match tokio::time::timeout(write_timeout, wr.write_all(&out)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return End::Io,
                    Err(_) => return End::Slow,
                }
                // More may be due right away (the batch limit, new messages).
                if !self.pending.is_empty() || (self.inflight.len() < window && !self.rx.is_empty())
                {
                    continue;
                }
            }
            let deadline = keep_alive.map(|k| last_heard + k);
            let can_take = self.inflight.len() < window && self.pending.is_empty();
            tokio::select! {
                biased;
                _ = stop.changed() => return End::Shutdown,
                k = &mut kick => {
                    return match k {
                        Ok(Kick::TakenOver) => End::TakenOver,
                        Ok(Kick::Slow) => {
                            tracing::warn!(client_id = %self.client, "MQTT subscriber too slow: disconnected");
                            End::Slow
                        }
                        // The router dropped our entry without a kick: we were replaced.
                        Err(_) => End::TakenOver,
                    };
                }
                () = sleep_until(deadline) => {
                    self.shared.stats.keepalive_timeouts.fetch_add(1, Ordering::Relaxed);
                    return End::KeepAlive;
                }
                n = rd.read_buf(&mut rbuf) => {
                    match n {
                        Ok(0) => return End::PeerClosed,
                        Ok(_) => {
                            last_heard = Instant::now();
                            if let Err(end) = self.drain_packets(&mut rbuf, max) {
                                return end;
                            }
                        }
                        Err(_) => return End::Io,
                    }
                }
                out = self.rx.recv(), if can_take => {
                    if let Some(o) = out {
                        self.pending.push_back(o);
                    }
                }
                Some(first) = self.acks_rx.recv() => {
                    let mut next = Some(first);
                    while let Some((pkid, delivered)) = next {
                        if !delivered {
                            self.shared
                                .stats
                                .undelivered_disconnects
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::info!(client_id = %self.client, pkid, "a message from this client did not reach a subscriber that must take it; closing so the client sends it again");
                            return End::Undelivered;
                        }
                        self.acknowledged(pkid);
                        next = self.acks_rx.try_recv().ok();
                    }
                }
            }
        }
    }

    /// Handles every complete packet in the buffer.
    fn drain_packets(&mut self, rbuf: &mut BytesMut, max: usize) -> Result<(), End> {
        loop {
            match parse(rbuf, max) {
                Ok(Some(p)) => self.handle(p)?,
                Ok(None) => return Ok(()),
                Err(e) => {
                    let e = ReadError::Codec(e);
                    note_read_error(self.shared, &e);
                    tracing::info!(client_id = %self.client, error = %e, "MQTT packet refused; closing");
                    return Err(match e {
                        ReadError::Codec(CodecError::PayloadSizeLimitExceeded(_)) => End::Oversize,
                        _ => End::Protocol,
                    });
                }
            }
        }
    }

    /// Every subscriber took publish `pkid`: PUBACK it, and any after it that were only
    /// waiting for it to go first.
    fn acknowledged(&mut self, pkid: u16) {
        if let Some(entry) = self
            .awaiting
            .iter_mut()
            .find(|(id, done)| *id == pkid && !done)
        {
            entry.1 = true;
        }
        while let Some(&(id, true)) = self.awaiting.front() {
            self.awaiting.pop_front();
            self.queue(&Packet::PubAck(PubAck::new(id)));
        }
    }

    fn queue(&mut self, p: &Packet) {
        // Only our own well-formed packets get here; an encode error would be a bug in the
        // codec, and dropping that one packet is the least harmful answer.
        if let Err(e) = p.write(&mut self.wbuf, usize::MAX) {
            tracing::error!(error = %e, "cannot encode an MQTT packet");
        }
    }

    fn handle(&mut self, p: Packet) -> Result<(), End> {
        let stats = &self.shared.stats;
        match p {
            Packet::Publish(publish) => self.on_publish(publish)?,
            Packet::PubAck(ack) => {
                if let Some(Some(receipt)) = self.inflight.remove(&ack.pkid) {
                    receipt.settle();
                }
            }
            Packet::PubRel(rel) => {
                self.qos2_received.remove(&rel.pkid);
                self.queue(&Packet::PubComp(PubComp::new(rel.pkid)));
            }
            // We never send QoS 2, so these answer nothing of ours; tolerate them.
            Packet::PubRec(_) | Packet::PubComp(_) => {}
            Packet::Subscribe(sub) => {
                let mut codes = Vec::with_capacity(sub.filters.len());
                for f in &sub.filters {
                    let code = match parse_filter(&f.path) {
                        Err(e) => {
                            tracing::info!(client_id = %self.client, filter = %f.path, ?e, "invalid filter");
                            SubscribeReasonCode::Failure
                        }
                        Ok(_) if !self.acl.may_subscribe(&f.path) => {
                            stats.subscriptions_denied.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(client_id = %self.client, filter = %f.path, "MQTT subscription denied by ACL");
                            SubscribeReasonCode::Failure
                        }
                        Ok(parsed) => {
                            let qos = cap_qos(f.qos);
                            let retained = lock(self.shared).subscribe(
                                &self.client,
                                parsed.group,
                                parsed.filter,
                                qos,
                            );
                            self.pending.extend(retained);
                            SubscribeReasonCode::Success(qos)
                        }
                    };
                    codes.push(code);
                }
                self.queue(&Packet::SubAck(SubAck::new(sub.pkid, codes)));
            }
            Packet::Unsubscribe(unsub) => {
                for raw in &unsub.topics {
                    if let Ok(parsed) = parse_filter(raw) {
                        lock(self.shared).unsubscribe(&self.client, parsed.group, parsed.filter);
                    }
                }
                self.queue(&Packet::UnsubAck(UnsubAck::new(unsub.pkid)));
            }
            Packet::PingReq => self.queue(&Packet::PingResp),
            Packet::Disconnect => return Err(End::Clean),
            other => {
                stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                tracing::info!(client_id = %self.client, packet = packet_name(&other), "unexpected packet from a client; closing");
                return Err(End::Protocol);
            }
        }
        Ok(())
    }

    fn on_publish(&mut self, p: Publish) -> Result<(), End> {
        let stats = &self.shared.stats;
        stats.publishes_received.fetch_add(1, Ordering::Relaxed);
        if validate_name(&p.topic).is_err() {
            stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            tracing::info!(client_id = %self.client, topic = %p.topic, "invalid topic name; closing");
            return Err(End::Protocol);
        }
        if !self.acl.may_publish(&p.topic) {
            stats.publishes_denied.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(client_id = %self.client, topic = %p.topic, "MQTT publish denied by ACL; closing the connection");
            return Err(End::AclViolation);
        }
        let duplicate_qos2 = p.qos == QoS::ExactlyOnce && self.qos2_received.contains(&p.pkid);
        // With ack_after_delivery, a message that must reach a consumer is PUBACKed only
        // once its subscribers have acknowledged it (ack.rs).
        let held = (p.qos == QoS::AtLeastOnce
            && self.shared.config.ack_after_delivery
            && self.acl.needs_consumer(&p.topic))
        .then(|| AckLink::new(p.pkid, self.acks_tx.clone()));
        if !duplicate_qos2 {
            let msg = Arc::new(Message {
                topic: p.topic,
                payload: p.payload,
            });
            let qos = cap_qos(p.qos);
            let mut router = lock(self.shared);
            if p.retain {
                router.retain(&msg, qos);
            }
            let (n, blocked) = router.route(&msg, qos, held.as_ref());
            drop(router);
            stats
                .messages_delivered
                .fetch_add(n as u64, Ordering::Relaxed);
            self.blocked.extend(blocked);
            if let Some(link) = &held
                && link.copies() == 0
            {
                // No copy went out at QoS 1: nobody has taken responsibility for it.
                link.lose();
            }
        }
        if let Some(link) = held {
            // Its outcome arrives on acks_rx once the last copy is settled (at once if
            // there is none).
            self.awaiting.push_back((p.pkid, false));
            drop(link);
            return Ok(());
        }
        match p.qos {
            QoS::AtMostOnce => {}
            // Behind a held one, its PUBACK waits its turn (MQTT-4.6.0-2).
            QoS::AtLeastOnce if !self.awaiting.is_empty() => {
                self.awaiting.push_back((p.pkid, true))
            }
            QoS::AtLeastOnce => self.queue(&Packet::PubAck(PubAck::new(p.pkid))),
            QoS::ExactlyOnce => {
                self.qos2_received.insert(p.pkid);
                self.queue(&Packet::PubRec(PubRec::new(p.pkid)));
            }
        }
        Ok(())
    }

    /// Moves due messages into the write buffer: retained ones first, then live ones,
    /// while the QoS 1 window has room and the batch is not too large.
    fn fill_writes(&mut self, window: usize) {
        while self.wbuf.len() < WRITE_BATCH && self.inflight.len() < window {
            let next = match self.pending.pop_front() {
                Some(o) => o,
                None => match self.rx.try_recv() {
                    Ok(o) => o,
                    Err(_) => break,
                },
            };
            let pkid = if next.qos == QoS::AtMostOnce {
                0
            } else {
                let id = self.alloc_pkid();
                self.inflight.insert(id, next.receipt);
                id
            };
            let publish = Publish {
                dup: false,
                qos: next.qos,
                retain: next.retain,
                topic: next.msg.topic.clone(),
                pkid,
                payload: next.msg.payload.clone(),
            };
            self.queue(&Packet::Publish(publish));
        }
    }

    fn alloc_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            if self.next_pkid != 0 && !self.inflight.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
