//! Promise 2 across a crash of `dmr-cloud` in its default shape (SQLite, embedded broker),
//! with the real binaries: `dmr-cloud serve`, `dmr-lock-sim` on a pty and an enrolled
//! `dmr-agent` (seeded and enrolled the way `scripts/run.sh` does it).
//!
//! The gateway deletes an event from its outbox once the broker PUBACKs it, and the broker
//! lives in the cloud's process. So: the cloud is made unable to apply anything (another
//! connection holds SQLite's write lock), doors open and close, and the agent must still
//! hold those events, because nothing has taken them yet. Then the cloud is killed with
//! SIGKILL, the lock released and the cloud started again; the agent's outbox drains, and
//! every message it ever queued is in the cloud's database exactly once: the outbox's
//! AUTOINCREMENT counter equals the gateway's `event` and `ack` messages the cloud applied.
//!
//! Needs `cargo build -p dmr-edge-agent -p dmr-firmware-sim` first, and python3 (the seed
//! script). SQLite only: the point is the embedded single-process deployment.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/ports.rs"]
mod ports;
#[path = "support/procs.rs"]
mod procs;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::{AnyConnection, Connection as _};

use ports::free_port;
use procs::{Proc, bin, wait_port};

const MASTER_KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const WAIT: Duration = Duration::from_secs(60);

struct Cloud {
    dir: PathBuf,
    db_url: String,
    http: u16,
    mqtt: u16,
}

impl Cloud {
    fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dmr-cloud"));
        cmd.env_remove("DATABASE_URL")
            .env("DMR_DATABASE_URL", &self.db_url)
            .env("DMR_MASTER_KEY", MASTER_KEY)
            .env("DMR_SERVER_LISTEN", format!("127.0.0.1:{}", self.http))
            .env(
                "DMR_SERVER_PUBLIC_BASE_URL",
                format!("http://127.0.0.1:{}", self.http),
            )
            .env(
                "DMR_MQTT_EMBEDDED_LISTEN",
                format!("127.0.0.1:{}", self.mqtt),
            )
            .env("DMR_MQTT_URL", format!("mqtt://127.0.0.1:{}", self.mqtt))
            .env(
                "DMR_GATEWAY_MQTT_URL",
                format!("mqtt://127.0.0.1:{}", self.mqtt),
            )
            .env("DMR_LOG_FILTER", "warn")
            .stdout(Stdio::null());
        cmd
    }

    fn serve(&self, n: u32) -> Proc {
        let log = std::fs::File::create(self.dir.join(format!("cloud-{n}.log"))).unwrap();
        let child = self
            .command()
            .arg("serve")
            .stderr(log)
            .spawn()
            .expect("spawning dmr-cloud serve");
        Proc(Some(child))
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    async fn healthy(&self, http: &reqwest::Client) {
        eventually("the cloud to be healthy", || async {
            http.get(self.url("/health"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
    }
}

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "crash test: {what} after {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

async fn get_json(http: &reqwest::Client, url: &str) -> Option<Value> {
    http.get(url).send().await.ok()?.json().await.ok()
}

/// The agent's outbox backlog, from its status endpoint.
async fn outbox_pending(http: &reqwest::Client, status_port: u16) -> Option<u64> {
    get_json(http, &format!("http://127.0.0.1:{status_port}/status"))
        .await?
        .get("outbox_pending")?
        .as_u64()
}

async fn scalar(url: &str, sql: &str, bind: Option<&str>) -> i64 {
    let mut conn = AnyConnection::connect(url).await.unwrap();
    let mut q = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_string()));
    if let Some(b) = bind {
        q = q.bind(b.to_string());
    }
    let v = q.fetch_one(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    v
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_crash_with_the_embedded_broker_loses_no_gateway_event() {
    sqlx::any::install_default_drivers();
    let (agent_bin, sim_bin) = (bin("dmr-agent"), bin("dmr-lock-sim"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cloud = Cloud {
        dir: d.to_path_buf(),
        db_url: format!("sqlite://{}", d.join("cloud.db").display()),
        http: free_port(),
        mqtt: free_port(),
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();

    // The cloud, an admin, the demo merchant with one gateway and four locks.
    let pw = d.join("admin.password");
    std::fs::write(&pw, "crash-test-admin-pw").unwrap();
    let made = cloud
        .command()
        .args(["admin", "create-user", "--username", "admin"])
        .args(["--role", "platform_admin", "--display-name", "Admin"])
        .arg("--password-file")
        .arg(&pw)
        .stderr(Stdio::inherit())
        .status()
        .unwrap();
    assert!(made.success(), "dmr-cloud admin create-user failed");
    let mut serving = cloud.serve(1);
    cloud.healthy(&http).await;
    let demo = d.join("demo.json");
    let seeded = Command::new("python3")
        .arg(workspace().join("scripts/demo_seed.py"))
        .arg(cloud.url(""))
        .arg(&pw)
        .arg(&demo)
        .status()
        .expect("python3 installed");
    assert!(seeded.success(), "scripts/demo_seed.py failed");
    let demo: Value = serde_json::from_str(&std::fs::read_to_string(&demo).unwrap()).unwrap();

    // The lock bus and the gateway.
    let sim_out = d.join("sim.out");
    let _sim = Proc(Some(
        Command::new(&sim_bin)
            .args([
                "--locks",
                "4",
                "--tcp",
                "127.0.0.1:0",
                "--control",
                "127.0.0.1:0",
            ])
            .arg("--link")
            .arg(d.join("ttyLOCKS"))
            .arg("--state")
            .arg(d.join("locks.json"))
            .stdout(std::fs::File::create(&sim_out).unwrap())
            .stderr(std::fs::File::create(d.join("sim.log")).unwrap())
            .spawn()
            .unwrap(),
    ));
    eventually("the simulator", || async {
        std::fs::read_to_string(&sim_out).is_ok_and(|s| s.contains("READY"))
    })
    .await;
    let control = std::fs::read_to_string(&sim_out)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CONTROL ").map(str::to_string))
        .expect("the simulator's control address");
    let (lan, status) = (free_port(), free_port());
    let agent_toml = d.join("agent.toml");
    std::fs::write(
        &agent_toml,
        format!(
            "state_dir = \"{}\"\nheartbeat_interval_s = 5\nsync_interval_s = 30\n\
             [http]\nlisten = \"127.0.0.1:{lan}\"\nstatus_listen = \"127.0.0.1:{status}\"\n\
             [[bus]]\nport = \"{}\"\nbaud = 9600\n",
            d.join("agent").display(),
            d.join("ttyLOCKS").display()
        ),
    )
    .unwrap();
    let enrolled = Command::new(&agent_bin)
        .arg("enroll")
        .arg("--config")
        .arg(&agent_toml)
        .args(["--cloud", &cloud.url(""), "--name", "Crash test gateway"])
        .args(["--code", demo["enrollment_code"].as_str().unwrap()])
        .stderr(std::fs::File::create(d.join("enroll.log")).unwrap())
        .status()
        .unwrap();
    assert!(enrolled.success(), "dmr-agent enroll failed");
    let _agent = Proc(Some(
        Command::new(&agent_bin)
            .arg("run")
            .arg("--config")
            .arg(&agent_toml)
            .stderr(std::fs::File::create(d.join("agent.log")).unwrap())
            .spawn()
            .unwrap(),
    ));
    wait_port(status, "the agent's status endpoint");
    // Connected: the gateway's retained state marks it online (the public lock page caches
    // lock rows, so it is not the place to watch).
    let gateway = demo["gateway_id"].as_str().unwrap();
    eventually("the gateway to be online", || async {
        scalar(
            &cloud.db_url,
            "SELECT online FROM gateways WHERE id = $1",
            Some(gateway),
        )
        .await
            == 1
    })
    .await;
    eventually("the agent's outbox to drain", || async {
        outbox_pending(&http, status).await == Some(0)
    })
    .await;

    // The cloud can apply nothing: another connection holds SQLite's write lock.
    let mut blocker = AnyConnection::connect(&cloud.db_url).await.unwrap();
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut blocker)
        .await
        .unwrap();
    for addr in 1..=4 {
        for open in [true, false] {
            let r = http
                .post(format!("{control}/locks/{addr}/door"))
                .json(&json!({ "open": open }))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "door {addr}: {}", r.status());
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    }
    // Time for the agent to see the doors, queue the events and publish them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = outbox_pending(&http, status).await.unwrap();
    assert!(
        held > 0,
        "the agent let go of its door events while the cloud could not apply them"
    );

    // Crash, release, start again.
    serving.kill9();
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut blocker)
        .await
        .unwrap();
    blocker.close().await.unwrap();
    let _serving = cloud.serve(2);
    cloud.healthy(&http).await;
    eventually("the agent's outbox to drain after the restart", || async {
        outbox_pending(&http, status).await == Some(0)
    })
    .await;

    let agent_db = std::fs::read_dir(d.join("agent"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "db"))
        .expect("the agent's database");
    let agent_url = format!("sqlite://{}?mode=ro", agent_db.display());
    let queued = scalar(
        &agent_url,
        "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'",
        None,
    )
    .await;
    let dead = scalar(&agent_url, "SELECT COUNT(*) FROM dead_letters", None).await;
    let applied = scalar(
        &cloud.db_url,
        "SELECT COUNT(*) FROM gateway_messages WHERE gateway_id = $1 AND type IN ('event', 'ack')",
        Some(gateway),
    )
    .await;
    eprintln!(
        "crash test: {queued} messages queued by the agent, {held} held at the crash, \
         {applied} applied by the cloud"
    );
    assert_eq!(dead, 0, "no message was rejected");
    assert_eq!(
        applied, queued,
        "every message the agent queued ({queued}) reached the cloud once ({applied} applied; \
         {held} were held at the crash)"
    );
}
