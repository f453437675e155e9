//! The broker against real MQTT clients over TCP: rumqttc for the ordinary flows, and raw
//! sockets speaking encoded packets where a well-behaved client library cannot misbehave
//! on purpose (a killed connection, an oversize packet, a subscriber that never reads).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use dmr_broker::{
    Acl, AllowAll, AuthDecision, Authenticator, BoxFuture, Broker, BrokerConfig, ConnectInfo,
};
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, LastWill, Packet, PubAck, Publish, SubAck, Subscribe,
    SubscribeReasonCode,
};
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Users `dev<N>` may publish under `dev/<N>/` and subscribe only to `dev/<N>/cmd`;
/// `admin` may do anything. Mirrors the shape of the cloud's gateway ACL.
#[derive(Debug)]
struct TestAuth {
    passwords: HashMap<String, String>,
}

#[derive(Debug)]
struct DevAcl {
    prefix: String,
}

impl Acl for DevAcl {
    fn may_publish(&self, topic: &str) -> bool {
        topic.starts_with(&self.prefix)
    }
    fn may_subscribe(&self, filter: &str) -> bool {
        filter == format!("{}cmd", self.prefix)
    }
    /// Like a gateway's outbox messages: an `event` must reach somebody.
    fn needs_consumer(&self, topic: &str) -> bool {
        topic.ends_with("/event")
    }
}

impl Authenticator for TestAuth {
    fn authenticate<'a>(&'a self, info: &'a ConnectInfo) -> BoxFuture<'a, AuthDecision> {
        Box::pin(async move {
            let (Some(user), Some(pass)) = (&info.username, &info.password) else {
                return AuthDecision::NotAuthorized;
            };
            if self.passwords.get(user) != Some(pass) {
                return AuthDecision::BadCredentials;
            }
            if user == "admin" {
                return AuthDecision::Allow(Arc::new(AllowAll));
            }
            let n = user.trim_start_matches("dev");
            AuthDecision::Allow(Arc::new(DevAcl {
                prefix: format!("dev/{n}/"),
            }))
        })
    }
}

async fn start(tweak: impl FnOnce(&mut BrokerConfig)) -> Broker {
    let mut config = BrokerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..BrokerConfig::default()
    };
    tweak(&mut config);
    let passwords = [("admin", "root"), ("dev1", "p1"), ("dev2", "p2")]
        .into_iter()
        .map(|(u, p)| (u.to_string(), p.to_string()))
        .collect();
    Broker::start(config, Arc::new(TestAuth { passwords }))
        .await
        .unwrap()
}

struct Client {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, String>>,
}

fn options(addr: SocketAddr, id: &str, user: &str, pass: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_credentials(user, pass);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// Connects and waits for the CONNACK; the event loop then runs in its own task.
async fn connect_with(o: MqttOptions) -> Result<Client, ConnectionError> {
    let (client, mut el) = AsyncClient::new(o, 1000);
    loop {
        match timeout(Duration::from_secs(5), el.poll()).await.unwrap() {
            Ok(Event::Incoming(rumqttc::Packet::ConnAck(_))) => break,
            Ok(_) => {}
            Err(e) => return Err(e),
        }
    }
    let (tx, events) = mpsc::unbounded_channel();
    tokio::spawn(drive(el, tx));
    Ok(Client { client, events })
}

async fn drive(mut el: EventLoop, tx: mpsc::UnboundedSender<Result<Event, String>>) {
    loop {
        let ev = el.poll().await;
        let stop = ev.is_err();
        if tx.send(ev.map_err(|e| e.to_string())).is_err() || stop {
            return;
        }
    }
}

async fn connect(addr: SocketAddr, id: &str, user: &str, pass: &str) -> Client {
    connect_with(options(addr, id, user, pass)).await.unwrap()
}

impl Client {
    async fn subscribe(&mut self, filter: &str) -> Vec<SubscribeReasonCode> {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        loop {
            if let Event::Incoming(rumqttc::Packet::SubAck(ack)) = self.next_event().await {
                return ack.return_codes;
            }
        }
    }

    async fn next_event(&mut self) -> Event {
        timeout(Duration::from_secs(5), self.events.recv())
            .await
            .expect("an event within 5 s")
            .expect("event loop alive")
            .expect("no connection error")
    }

    /// The next PUBLISH received, or None if none comes within `wait`.
    async fn next_publish(&mut self, wait: Duration) -> Option<rumqttc::Publish> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .ok()??;
            if let Ok(Event::Incoming(rumqttc::Packet::Publish(p))) = ev {
                return Some(p);
            }
        }
    }

    /// Waits for the event loop to report the connection lost.
    async fn wait_error(&mut self) -> String {
        loop {
            match timeout(Duration::from_secs(5), self.events.recv())
                .await
                .expect("connection error within 5 s")
            {
                Some(Err(e)) => return e,
                Some(Ok(_)) => {}
                None => return "event loop ended".into(),
            }
        }
    }
}

const LONG: Duration = Duration::from_secs(5);
const SHORT: Duration = Duration::from_millis(300);

#[tokio::test]
async fn auth_accepts_good_and_refuses_bad_credentials() {
    let broker = start(|_| {}).await;
    let addr = broker.local_addr();
    connect(addr, "ok", "dev1", "p1").await;
    let bad = connect_with(options(addr, "x", "dev1", "wrong")).await;
    assert!(
        matches!(
            bad,
            Err(ConnectionError::ConnectionRefused(
                ConnectReturnCode::BadUserNamePassword
            ))
        ),
        "{:?}",
        bad.err()
    );
    let anon = connect_with(MqttOptions::new("anon", "127.0.0.1", addr.port())).await;
    assert!(matches!(
        anon,
        Err(ConnectionError::ConnectionRefused(
            ConnectReturnCode::NotAuthorized
        ))
    ));
    assert_eq!(broker.stats().snapshot().connect_denied, 2);
    assert_eq!(broker.clients(), 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn publish_subscribe_qos1_with_wildcards() {
    let broker = start(|_| {}).await;
    let addr = broker.local_addr();
    let mut sub = connect(addr, "sub", "admin", "root").await;
    assert_eq!(
        sub.subscribe("dev/+/state").await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let mut all = connect(addr, "all", "admin", "root").await;
    all.subscribe("dev/#").await;
    let dev = connect(addr, "d1", "dev1", "p1").await;
    dev.client
        .publish("dev/1/state", QoS::AtLeastOnce, false, "online")
        .await
        .unwrap();
    dev.client
        .publish("dev/1/event", QoS::AtLeastOnce, false, "e1")
        .await
        .unwrap();
    let p = sub.next_publish(LONG).await.unwrap();
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("dev/1/state", &b"online"[..])
    );
    assert_eq!(p.qos, QoS::AtLeastOnce);
    assert!(
        sub.next_publish(SHORT).await.is_none(),
        "event is not state"
    );
    let a = all.next_publish(LONG).await.unwrap();
    let b = all.next_publish(LONG).await.unwrap();
    assert_eq!(
        (a.topic.as_str(), b.topic.as_str()),
        ("dev/1/state", "dev/1/event")
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn shared_subscription_splits_the_load() {
    let broker = start(|_| {}).await;
    let addr = broker.local_addr();
    let mut s1 = connect(addr, "s1", "admin", "root").await;
    let mut s2 = connect(addr, "s2", "admin", "root").await;
    let mut plain = connect(addr, "plain", "admin", "root").await;
    s1.subscribe("$share/cloud/dev/+/event").await;
    s2.subscribe("$share/cloud/dev/+/event").await;
    plain.subscribe("dev/+/event").await;
    let dev = connect(addr, "d1", "dev1", "p1").await;
    for i in 0..20 {
        dev.client
            .publish("dev/1/event", QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    let mut n1 = 0;
    while let Some(p) = s1.next_publish(SHORT * 3).await {
        got.push(p.payload);
        n1 += 1;
    }
    let mut n2 = 0;
    while let Some(p) = s2.next_publish(SHORT).await {
        got.push(p.payload);
        n2 += 1;
    }
    let mut np = 0;
    while plain.next_publish(SHORT).await.is_some() {
        np += 1;
    }
    assert_eq!(n1 + n2, 20, "every message to exactly one group member");
    assert_eq!((n1, n2), (10, 10), "round robin");
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 20);
    assert_eq!(np, 20, "a plain subscriber still gets everything");
    broker.shutdown().await;
}

#[tokio::test]
async fn retained_message_reaches_later_subscribers_and_can_be_cleared() {
    let broker = start(|_| {}).await;
    let addr = broker.local_addr();
    let dev = connect(addr, "d1", "dev1", "p1").await;
    dev.client
        .publish("dev/1/state", QoS::AtLeastOnce, true, "online")
        .await
        .unwrap();
    // Wait until the broker holds it.
    for _ in 0..50 {
        if broker.retained_topics() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut sub = connect(addr, "late", "admin", "root").await;
    sub.subscribe("dev/+/state").await;
    let p = sub.next_publish(LONG).await.unwrap();
    assert!(p.retain);
    assert_eq!(&p.payload[..], b"online");
    dev.client
        .publish("dev/1/state", QoS::AtLeastOnce, true, "")
        .await
        .unwrap();
    let live = sub.next_publish(LONG).await.unwrap();
    assert!(!live.retain, "live delivery carries retain = false");
    let mut later = connect(addr, "later", "admin", "root").await;
    later.subscribe("dev/+/state").await;
    assert!(later.next_publish(SHORT).await.is_none(), "cleared");
    assert_eq!(broker.retained_topics(), 0);
    broker.shutdown().await;
}

/// Encodes one packet.
fn bytes_of(p: &Packet) -> Vec<u8> {
    let mut b = BytesMut::new();
    p.write(&mut b, usize::MAX).unwrap();
    b.to_vec()
}

/// A raw CONNECT on a plain socket; returns the socket after a successful CONNACK.
async fn raw_connect(
    addr: SocketAddr,
    id: &str,
    user: &str,
    pass: &str,
    keep_alive: u16,
    will: Option<LastWill>,
) -> (TcpStream, ConnAck) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut c = Connect::new(id);
    c.keep_alive = keep_alive;
    c.set_login(user, pass);
    c.last_will = will;
    s.write_all(&bytes_of(&Packet::Connect(c))).await.unwrap();
    let p = read_one(&mut s).await.expect("CONNACK");
    let Packet::ConnAck(ack) = p else {
        panic!("expected CONNACK, got {p:?}")
    };
    (s, ack)
}

/// Reads one packet, or None when the peer closes.
async fn read_one(s: &mut TcpStream) -> Option<Packet> {
    let mut buf = BytesMut::new();
    loop {
        match Packet::read(&mut buf, 1 << 20) {
            Ok(p) => return Some(p),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => panic!("{e}"),
        }
        let n = timeout(LONG, s.read_buf(&mut buf)).await.unwrap().ok()?;
        if n == 0 {
            return None;
        }
    }
}

/// A raw connection that keeps what it read past one packet (two PUBACKs may come in one
/// read).
struct Raw {
    s: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn connect(addr: SocketAddr, id: &str, user: &str, pass: &str) -> Raw {
        let (s, ack) = raw_connect(addr, id, user, pass, 30, None).await;
        assert_eq!(ack.code, ConnectReturnCode::Success);
        Raw {
            s,
            buf: BytesMut::new(),
        }
    }

    /// One packet within `d`: `Ok(None)` when the peer closes, `Err(())` when nothing came
    /// in time.
    async fn read_for(&mut self, d: Duration) -> Result<Option<Packet>, ()> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match Packet::read(&mut self.buf, 1 << 20) {
                Ok(p) => return Ok(Some(p)),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("{e}"),
            }
            match tokio::time::timeout_at(deadline, self.s.read_buf(&mut self.buf)).await {
                Err(_) => return Err(()),
                Ok(Ok(0) | Err(_)) => return Ok(None),
                Ok(Ok(_)) => {}
            }
        }
    }

    async fn send(&mut self, p: Packet) {
        self.s.write_all(&bytes_of(&p)).await.unwrap();
    }

    /// The packet id the broker gave the next PUBLISH.
    async fn next_publish_pkid(&mut self) -> u16 {
        match self.read_for(LONG).await {
            Ok(Some(Packet::Publish(p))) => p.pkid,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    async fn expect_puback(&mut self, pkid: u16) {
        match self.read_for(LONG).await {
            Ok(Some(Packet::PubAck(a))) => assert_eq!(a.pkid, pkid),
            other => panic!("expected PUBACK {pkid}, got {other:?}"),
        }
    }

    /// A subscriber (admin) to `filter` at QoS 1, its SUBACK read.
    async fn subscriber(addr: SocketAddr, id: &str, filter: &str) -> Raw {
        let mut r = Raw::connect(addr, id, "admin", "root").await;
        let mut sub = Subscribe::new(filter, rumqttc::mqttbytes::QoS::AtLeastOnce);
        sub.pkid = 1;
        r.send(Packet::Subscribe(sub)).await;
        assert!(matches!(
            r.read_for(LONG).await,
            Ok(Some(Packet::SubAck(_)))
        ));
        r
    }
}

fn publish_qos1(topic: &str, pkid: u16, payload: &str) -> Packet {
    let mut p = Publish::new(topic, rumqttc::mqttbytes::QoS::AtLeastOnce, payload);
    p.pkid = pkid;
    Packet::Publish(p)
}

#[tokio::test]
async fn ack_after_delivery_acks_the_publisher_once_the_subscriber_did_in_order() {
    let broker = start(|c| c.ack_after_delivery = true).await;
    let addr = broker.local_addr();
    let mut sub = Raw::subscriber(addr, "cloud", "dev/+/event").await;
    let mut dev = Raw::connect(addr, "d1", "dev1", "p1").await;
    dev.send(publish_qos1("dev/1/event", 11, "a")).await;
    dev.send(publish_qos1("dev/1/event", 12, "b")).await;
    let first = sub.next_publish_pkid().await;
    let second = sub.next_publish_pkid().await;
    assert!(
        dev.read_for(SHORT).await.is_err(),
        "no PUBACK while the subscriber holds both"
    );
    // A publish nobody must take, behind them: acknowledged, but not before them.
    dev.send(publish_qos1("dev/1/state", 14, "up")).await;
    // The second acknowledged first: its PUBACK still waits for the first's.
    sub.send(Packet::PubAck(PubAck::new(second))).await;
    assert!(dev.read_for(SHORT).await.is_err(), "PUBACKs go in order");
    sub.send(Packet::PubAck(PubAck::new(first))).await;
    dev.expect_puback(11).await;
    dev.expect_puback(12).await;
    dev.expect_puback(14).await;
    // A topic nobody must take (no needs_consumer) and nobody subscribed: acked at once.
    dev.send(publish_qos1("dev/1/state", 13, "up")).await;
    dev.expect_puback(13).await;
    assert_eq!(broker.stats().snapshot().undelivered_disconnects, 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn ack_after_delivery_closes_the_publisher_when_its_copy_is_lost() {
    let broker = start(|c| c.ack_after_delivery = true).await;
    let addr = broker.local_addr();
    let mut sub = Raw::subscriber(addr, "cloud", "dev/+/event").await;
    let mut dev = Raw::connect(addr, "d1", "dev1", "p1").await;
    dev.send(publish_qos1("dev/1/event", 21, "a")).await;
    sub.next_publish_pkid().await;
    // The subscriber dies holding the copy, as a crashed consumer would.
    drop(sub);
    assert_eq!(
        dev.read_for(LONG).await,
        Ok(None),
        "closed without a PUBACK: the publisher keeps its message"
    );
    assert_eq!(broker.stats().snapshot().undelivered_disconnects, 1);

    // Nobody subscribed to a topic that needs a consumer: the same.
    let mut dev = Raw::connect(addr, "d1", "dev1", "p1").await;
    dev.send(publish_qos1("dev/1/event", 22, "b")).await;
    assert_eq!(dev.read_for(LONG).await, Ok(None));
    assert_eq!(broker.stats().snapshot().undelivered_disconnects, 2);
    broker.shutdown().await;
}

#[tokio::test]
async fn without_ack_after_delivery_the_broker_acks_at_once() {
    let broker = start(|_| {}).await;
    let addr = broker.local_addr();
    let mut sub = Raw::subscriber(addr, "cloud", "dev/+/event").await;
    let mut dev = Raw::connect(addr, "d1", "dev1", "p1").await;
    dev.send(publish_qos1("dev/1/event", 31, "a")).await;
    dev.expect_puback(31).await;
    sub.next_publish_pkid().await;
    broker.shutdown().await;
}

fn will(topic: &str) -> LastWill {
    LastWill::new(topic, "offline", QoS::AtLeastOnce, true)
}

#[tokio::test]
async fn last_will_on_killed_connection_but_not_on_disconnect() {
    let broker = start(|_| {}).await;
    let addr = broker.local_addr();
    let mut sub = connect(addr, "sub", "admin", "root").await;
    sub.subscribe("dev/+/state").await;

    let (s, ack) = raw_connect(addr, "d1", "dev1", "p1", 30, Some(will("dev/1/state"))).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    drop(s); // the TCP connection dies without DISCONNECT
    let p = sub.next_publish(LONG).await.expect("the will");
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("dev/1/state", &b"offline"[..])
    );
    assert_eq!(broker.retained_topics(), 1, "will was retained");

    let (mut s, _) = raw_connect(addr, "d1", "dev1", "p1", 30, Some(will("dev/1/state"))).await;
    s.write_all(&bytes_of(&Packet::Disconnect)).await.unwrap();
    assert!(
        read_one(&mut s).await.is_none(),
        "broker closes after DISCONNECT"
    );
    assert!(
        sub.next_publish(SHORT).await.is_none(),
        "no will after DISCONNECT"
    );
    assert_eq!(broker.stats().snapshot().wills_published, 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn keep_alive_timeout_closes_and_publishes_the_will() {
    let broker = start(|_| {}).await;
    let addr = broker.local_addr();
    let mut sub = connect(addr, "sub", "admin", "root").await;
    sub.subscribe("dev/1/state").await;
    let started = std::time::Instant::now();
    let (mut s, _) = raw_connect(addr, "d1", "dev1", "p1", 1, Some(will("dev/1/state"))).await;
    assert!(read_one(&mut s).await.is_none(), "closed for silence");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(4),
        "1.5 x keep-alive, took {waited:?}"
    );
    assert!(sub.next_publish(LONG).await.is_some());
    assert_eq!(broker.stats().snapshot().keepalive_timeouts, 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn will_on_a_foreign_topic_is_refused_at_connect() {
    let broker = start(|_| {}).await;
    let addr = broker.local_addr();
    let (_s, ack) = raw_connect(addr, "d1", "dev1", "p1", 30, Some(will("dev/2/state"))).await;
    assert_eq!(ack.code, ConnectReturnCode::NotAuthorized);
    broker.shutdown().await;
}

#[tokio::test]
async fn acl_denies_foreign_publish_and_foreign_subscription() {
    let broker = start(|_| {}).await;
    let addr = broker.local_addr();
    let mut watcher = connect(addr, "w", "admin", "root").await;
    watcher.subscribe("dev/#").await;

    let mut dev1 = connect(addr, "d1", "dev1", "p1").await;
    assert_eq!(
        dev1.subscribe("dev/2/cmd").await,
        vec![SubscribeReasonCode::Failure],
        "another device's commands"
    );
    assert_eq!(
        dev1.subscribe("dev/+/cmd").await,
        vec![SubscribeReasonCode::Failure],
        "a wildcard over everyone's commands"
    );
    assert_eq!(
        dev1.subscribe("dev/1/cmd").await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    assert_eq!(broker.stats().snapshot().subscriptions_denied, 2);

    dev1.client
        .publish("dev/2/state", QoS::AtLeastOnce, false, "forged")
        .await
        .unwrap();
    let err = dev1.wait_error().await;
    assert!(!err.is_empty(), "the broker closed the connection");
    assert!(
        watcher.next_publish(SHORT).await.is_none(),
        "forged message dropped"
    );
    let st = broker.stats().snapshot();
    assert_eq!(st.publishes_denied, 1);

    // The command topic reaches its own device only.
    let mut dev2 = connect(addr, "d2", "dev2", "p2").await;
    dev2.subscribe("dev/2/cmd").await;
    watcher
        .client
        .publish("dev/2/cmd", QoS::AtLeastOnce, false, "open")
        .await
        .unwrap();
    let p = dev2.next_publish(LONG).await.unwrap();
    assert_eq!(&p.payload[..], b"open");
    broker.shutdown().await;
}

#[tokio::test]
async fn oversize_packet_closes_the_connection() {
    let broker = start(|c| c.max_packet_bytes = 1024).await;
    let addr = broker.local_addr();
    let mut watcher = connect(addr, "w", "admin", "root").await;
    watcher.subscribe("dev/#").await;
    let (mut s, _) = raw_connect(addr, "d1", "dev1", "p1", 30, None).await;
    let mut big = Publish::new(
        "dev/1/event",
        rumqttc::mqttbytes::QoS::AtLeastOnce,
        vec![7u8; 2000],
    );
    big.pkid = 1;
    s.write_all(&bytes_of(&Packet::Publish(big))).await.unwrap();
    assert!(read_one(&mut s).await.is_none(), "closed, no PUBACK");
    assert!(watcher.next_publish(SHORT).await.is_none());
    // Just under the limit is fine.
    let (mut s, _) = raw_connect(addr, "d1", "dev1", "p1", 30, None).await;
    let mut ok = Publish::new(
        "dev/1/event",
        rumqttc::mqttbytes::QoS::AtLeastOnce,
        vec![7u8; 1000],
    );
    ok.pkid = 1;
    s.write_all(&bytes_of(&Packet::Publish(ok))).await.unwrap();
    assert!(matches!(read_one(&mut s).await, Some(Packet::PubAck(_))));
    assert!(watcher.next_publish(LONG).await.is_some());
    assert_eq!(broker.stats().snapshot().oversize_disconnects, 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn session_takeover_closes_the_old_connection_without_its_will() {
    let broker = start(|_| {}).await;
    let addr = broker.local_addr();
    let mut sub = connect(addr, "sub", "admin", "root").await;
    sub.subscribe("dev/1/state").await;
    let (mut old, _) = raw_connect(addr, "same", "dev1", "p1", 30, Some(will("dev/1/state"))).await;
    let (_new, ack) = raw_connect(addr, "same", "dev1", "p1", 30, None).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    assert!(read_one(&mut old).await.is_none(), "old connection closed");
    assert!(
        sub.next_publish(SHORT).await.is_none(),
        "no will on takeover"
    );
    assert_eq!(broker.stats().snapshot().takeovers, 1);
    assert_eq!(broker.clients(), 2);
    // Another user may not borrow the id to knock the owner off.
    let (_s, ack) = raw_connect(addr, "same", "dev2", "p2", 30, None).await;
    assert_eq!(ack.code, ConnectReturnCode::BadClientId);
    assert_eq!(broker.stats().snapshot().takeovers, 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn slow_subscriber_is_disconnected_not_buffered() {
    let broker = start(|c| {
        c.queue_capacity = 8;
        c.inflight_window = 4;
    })
    .await;
    let addr = broker.local_addr();
    // Subscribes, then never acknowledges anything: four QoS 1 messages fill its window,
    // eight its queue, and the publisher waits for room that never comes.
    let (mut lazy, _) = raw_connect(addr, "lazy", "admin", "root", 30, None).await;
    let mut sub = Subscribe::new("t", rumqttc::mqttbytes::QoS::AtLeastOnce);
    sub.pkid = 1;
    lazy.write_all(&bytes_of(&Packet::Subscribe(sub)))
        .await
        .unwrap();
    assert!(matches!(
        read_one(&mut lazy).await,
        Some(Packet::SubAck(SubAck { .. }))
    ));
    let publisher = connect(addr, "p", "admin", "root").await;
    for _ in 0..50 {
        publisher
            .client
            .publish("t", QoS::AtLeastOnce, false, "x")
            .await
            .unwrap();
    }
    // The publisher is throttled for up to five seconds, then the subscriber goes.
    for _ in 0..500 {
        if broker.stats().snapshot().slow_disconnects > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(broker.stats().snapshot().slow_disconnects, 1);
    // The lazy client's socket gets closed after what was already written.
    let mut rest = Vec::new();
    timeout(LONG, lazy.read_to_end(&mut rest))
        .await
        .expect("closed within 5 s")
        .ok();
    broker.shutdown().await;
}

#[tokio::test]
async fn a_burst_larger_than_the_queue_throttles_the_publisher_and_loses_nothing() {
    let broker = start(|c| {
        c.queue_capacity = 8;
        c.inflight_window = 4;
    })
    .await;
    let addr = broker.local_addr();
    let mut sub = connect(addr, "sub", "admin", "root").await;
    sub.subscribe("dev/1/event").await;
    let dev = connect(addr, "d1", "dev1", "p1").await;
    for i in 0..500 {
        dev.client
            .publish("dev/1/event", QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .unwrap();
    }
    for i in 0..500 {
        let p = sub.next_publish(LONG).await.expect("every message arrives");
        assert_eq!(p.payload, format!("{i}").as_bytes(), "in order");
    }
    let st = broker.stats().snapshot();
    assert_eq!((st.slow_disconnects, st.messages_dropped), (0, 0));
    broker.shutdown().await;
}

#[tokio::test]
async fn max_connections_is_enforced_and_shutdown_closes_clients() {
    let broker = start(|c| c.max_connections = 1).await;
    let addr = broker.local_addr();
    let mut first = connect(addr, "a", "admin", "root").await;
    let second = connect_with(options(addr, "b", "admin", "root")).await;
    assert!(second.is_err());
    assert_eq!(broker.stats().snapshot().connections_refused_limit, 1);
    broker.shutdown().await;
    first.wait_error().await;
}

/// Interop with another implementation's clients (Debian mosquitto-clients, installed by
/// scripts/setup.sh): subscribe, QoS 1 and QoS 2 publish, a refused password, a refused
/// subscription.
#[tokio::test]
async fn mosquitto_clients_interoperate() {
    use tokio::process::Command;
    let broker = start(|_| {}).await;
    let port = broker.local_addr().port().to_string();
    let sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-u", "admin", "-P", "root"])
        .args(["-t", "dev/+/state", "-q", "1", "-C", "2", "-W", "10", "-v"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (apt install mosquitto-clients; scripts/setup.sh does)");
    for _ in 0..250 {
        if broker.clients() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The SUBSCRIBE follows the CONNACK closely; give it a moment to land.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (qos, msg) in [("1", "online"), ("2", "again")] {
        let st = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-u", "dev1", "-P", "p1"])
            .args(["-t", "dev/1/state", "-q", qos, "-m", msg])
            .status()
            .await
            .unwrap();
        assert!(st.success(), "publish QoS {qos}");
    }
    let out = timeout(Duration::from_secs(15), sub.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text, "dev/1/state online\ndev/1/state again\n");

    let bad = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port, "-u", "dev1", "-P", "wrong"])
        .args(["-t", "dev/1/state", "-m", "x"])
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success(), "wrong password refused");

    let denied = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-u", "dev1", "-P", "p1"])
        .args(["-t", "dev/2/cmd", "-W", "3"])
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(
        err.contains("denied"),
        "mosquitto_sub reports the SUBACK failure: {err}"
    );
    broker.shutdown().await;
}
