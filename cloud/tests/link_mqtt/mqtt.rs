//! Test pieces: a real Mosquitto on a free port, a fake gateway (a rumqttc client that signs
//! with its own key), and a gateway row enrolled directly in the database.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dmr_cloud::AppState;
use dmr_protocol::jws::Kid;
use dmr_protocol::keys::{SigningKey, public_b64u};
use dmr_protocol::message::{Envelope, GatewayState, Message};
use dmr_protocol::topic::{TopicKind, topic};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::ports::free_port;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Mosquitto on a free loopback port (anonymous), killed on drop.
pub struct Mosquitto {
    pub port: u16,
    _dir: tempfile::TempDir,
    child: Child,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence false\n\
                 max_inflight_messages 0\nmax_queued_messages 200000\nlog_dest stderr\nlog_type error\n"
            ),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto installed (apt-get install mosquitto; scripts/setup.sh does)");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "mosquitto did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto {
            port,
            _dir: dir,
            child,
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Marks a gateway enrolled with `key` directly in the database (enrollment has its own
/// tests; these are about the MQTT link).
pub async fn enroll_directly(state: &AppState, gw: Uuid, key: &SigningKey) {
    sqlx::query(
        "UPDATE gateways SET status = 'enrolled', public_key = $1, enrolled_at = $2 WHERE id = $3",
    )
    .bind(public_b64u(&key.verifying_key()))
    .bind(now_ms() as i64)
    .bind(gw.to_string())
    .execute(&state.db.pool)
    .await
    .unwrap();
}

pub fn sign(gw: Uuid, key: &SigningKey, message: Message) -> (Uuid, String) {
    let id = Uuid::now_v7();
    let jws = Envelope::new(id, gw, now_ms(), message).sign(Kid::Gateway(gw), key);
    (id, jws)
}

/// A fake gateway: publishes what the test asks, hands received `cmd` payloads back.
pub struct FakeGateway {
    pub gw: Uuid,
    pub client: AsyncClient,
    pub cmds: mpsc::UnboundedReceiver<String>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeGateway {
    /// Connects with a Last Will `state {"online":false}` signed now (as the agent does),
    /// subscribes to its cmd topic and waits for the SubAck.
    pub async fn connect(port: u16, gw: Uuid, key: &SigningKey) -> FakeGateway {
        let mut opts = MqttOptions::new(
            format!("fake-{}", Uuid::new_v4().simple()),
            "127.0.0.1",
            port,
        );
        opts.set_keep_alive(Duration::from_secs(5));
        let (_, will) = sign(gw, key, Message::State(GatewayState { online: false }));
        opts.set_last_will(LastWill::new(
            topic(gw, TopicKind::State),
            will,
            QoS::AtLeastOnce,
            true,
        ));
        let (client, mut el) = AsyncClient::new(opts, 256);
        client
            .subscribe(topic(gw, TopicKind::Cmd), QoS::AtLeastOnce)
            .await
            .unwrap();
        let (tx, cmds) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(r) = ready_tx.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(String::from_utf8(p.payload.to_vec()).unwrap());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("fake gateway subscribed")
            .unwrap();
        FakeGateway {
            gw,
            client,
            cmds,
            task,
        }
    }

    pub async fn publish(&self, kind: TopicKind, payload: String) {
        self.publish_on(topic(self.gw, kind), kind, payload).await;
    }

    pub async fn publish_on(&self, t: String, kind: TopicKind, payload: String) {
        let qos = if kind.qos() == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        self.client
            .publish(t, qos, kind.retained(), payload)
            .await
            .unwrap();
    }

    /// Vanishes without a DISCONNECT (the TCP connection just closes), so the broker sends
    /// the Last Will.
    pub fn vanish(self) {
        self.task.abort();
    }
}
