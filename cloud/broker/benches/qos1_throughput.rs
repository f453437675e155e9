//! QoS 1 throughput, dmr-broker next to Mosquitto on the same machine with the same load
//! generator: P rumqttc publishers send M messages each (QoS 1, 200-byte payloads, like a
//! heartbeat) to `bench/<p>`, one rumqttc subscriber on `bench/+` (QoS 1) counts them. The
//! figure is messages delivered per second, from the first publish to the last delivery;
//! median of three runs per broker. The broker runs on its own two-thread runtime (dmr-broker)
//! or as its own process (Mosquitto); the generator shares the machine with it, so both are
//! measured under the same handicap. dmr-broker is also measured with `ack_after_delivery`
//! on for every topic ("held"), as `dmr-cloud serve` runs it for gateways' events: each
//! publisher's PUBACK then waits for the subscriber's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../tests/support/ports.rs"]
mod ports;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dmr_broker::{
    Acl, AllowAll, AuthDecision, Authenticator, BoxFuture, Broker, BrokerConfig, ConnectInfo,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use ports::free_port;

const PUBLISHERS: usize = 4;
const PER_PUBLISHER: usize = 25_000;
const PAYLOAD: usize = 200;
const RUNS: usize = 3;

#[derive(Debug)]
struct Open;

impl Authenticator for Open {
    fn authenticate<'a>(&'a self, _info: &'a ConnectInfo) -> BoxFuture<'a, AuthDecision> {
        Box::pin(async { AuthDecision::Allow(Arc::new(AllowAll)) })
    }
}

/// Everything allowed, and every publish must reach a subscriber (with `ack_after_delivery`).
#[derive(Debug)]
struct MustReach;

impl Acl for MustReach {
    fn may_publish(&self, _topic: &str) -> bool {
        true
    }
    fn may_subscribe(&self, _filter: &str) -> bool {
        true
    }
    fn needs_consumer(&self, _topic: &str) -> bool {
        true
    }
}

#[derive(Debug)]
struct Held;

impl Authenticator for Held {
    fn authenticate<'a>(&'a self, _info: &'a ConnectInfo) -> BoxFuture<'a, AuthDecision> {
        Box::pin(async { AuthDecision::Allow(Arc::new(MustReach)) })
    }
}

fn opts(addr: SocketAddr, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(100);
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

/// One run against a broker at `addr`: messages per second.
async fn run_once(addr: SocketAddr, run: usize) -> f64 {
    let total = PUBLISHERS * PER_PUBLISHER;
    let (sub, mut sub_el) = AsyncClient::new(opts(addr, &format!("sub-{run}")), 1000);
    sub.subscribe("bench/+", QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = sub_el.poll().await.unwrap() {
            break;
        }
    }
    let counter = tokio::spawn(async move {
        let mut n = 0;
        while n < total {
            match sub_el.poll().await {
                Ok(Event::Incoming(Packet::Publish(_))) => n += 1,
                Ok(_) => {}
                Err(e) => panic!("subscriber lost its connection after {n}: {e}"),
            }
        }
        Instant::now()
    });
    let mut pubs = Vec::new();
    let mut loops = Vec::new();
    for p in 0..PUBLISHERS {
        let (c, mut el) = AsyncClient::new(opts(addr, &format!("pub-{run}-{p}")), 1000);
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) = el.poll().await.unwrap() {
                break;
            }
        }
        loops.push(tokio::spawn(async move {
            let mut acked = 0;
            while acked < PER_PUBLISHER {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(e) => panic!("publisher lost its connection: {e}"),
                }
            }
        }));
        pubs.push(c);
    }
    let start = Instant::now();
    let mut senders = Vec::new();
    for (p, c) in pubs.into_iter().enumerate() {
        senders.push(tokio::spawn(async move {
            let payload = vec![b'x'; PAYLOAD];
            for _ in 0..PER_PUBLISHER {
                c.publish(
                    format!("bench/{p}"),
                    QoS::AtLeastOnce,
                    false,
                    payload.clone(),
                )
                .await
                .unwrap();
            }
            c
        }));
    }
    let end = tokio::time::timeout(Duration::from_secs(300), counter)
        .await
        .expect("all messages within 300 s")
        .unwrap();
    let mut clients = Vec::new();
    for s in senders {
        clients.push(s.await.unwrap());
    }
    // Every PUBACK before the publishers go: with `ack_after_delivery` the last ones come
    // only after the subscriber's, and a DISCONNECT first would leave them unanswered.
    for l in loops {
        l.await.unwrap();
    }
    for c in clients {
        let _ = c.disconnect().await;
    }
    let _ = sub.disconnect().await;
    total as f64 / end.duration_since(start).as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn measure(rt: &tokio::runtime::Runtime, name: &str, addr: SocketAddr) -> f64 {
    let mut rates = Vec::new();
    for run in 0..RUNS {
        let r = rt.block_on(run_once(addr, run));
        println!("{name:<12} run {run}: {r:>9.0} msg/s");
        rates.push(r);
    }
    let m = median(rates);
    println!("{name:<12} median: {m:>9.0} msg/s");
    m
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let load = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // dmr-broker on its own runtime, as `dmr-cloud serve` would run it beside the API: with
    // two worker threads, and with one (Mosquitto is single-threaded; on a loaded machine the
    // thread count alone changes the CPU share a broker gets).
    let mut ours = Vec::new();
    for (threads, held) in [(2, false), (1, false), (2, true)] {
        let broker_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("dmr-broker")
            .enable_all()
            .build()
            .unwrap();
        let config = BrokerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ack_after_delivery: held,
            ..BrokerConfig::default()
        };
        let auth: Arc<dyn Authenticator> = if held { Arc::new(Held) } else { Arc::new(Open) };
        let broker: Broker = broker_rt.block_on(Broker::start(config, auth)).unwrap();
        let name = format!("dmr-broker/{threads}t{}", if held { " held" } else { "" });
        ours.push(measure(&load, &name, broker.local_addr()));
        broker_rt.block_on(broker.shutdown());
    }

    // Mosquitto, same generator. Its queue limits are raised so it does not drop QoS 1
    // messages for a subscriber that is briefly behind (its defaults: 1000 queued, 20 in
    // flight), and Nagle is off as on dmr-broker's sockets (its default leaves it on).
    let dir = std::env::temp_dir().join(format!("dmr-bench-mosq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 0\nmax_inflight_messages 1000\nset_tcp_nodelay true\n\
             user root\nlog_dest none\n"
        ),
    )
    .unwrap();
    let mut mosq = std::process::Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .spawn()
        .expect("mosquitto (apt install mosquitto)");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let theirs = measure(&load, "mosquitto", addr);
    let _ = mosq.kill();
    let _ = mosq.wait();
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "QoS 1, {PUBLISHERS} publishers x {PER_PUBLISHER} msgs, {PAYLOAD} B: dmr-broker 2 threads \
         {:.0} msg/s ({:.2} x mosquitto), 1 thread {:.0} msg/s ({:.2} x), 2 threads held {:.0} \
         msg/s ({:.2} x; {:.2} x unheld), mosquitto {theirs:.0} msg/s",
        ours[0],
        ours[0] / theirs,
        ours[1],
        ours[1] / theirs,
        ours[2],
        ours[2] / theirs,
        ours[2] / ours[0]
    );
}
