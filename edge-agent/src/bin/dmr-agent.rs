//! `dmr-agent`: the venue gateway daemon. A thin shell over `dmr_edge_agent::agent`:
//! parse arguments, load and validate the configuration (exit 78 on any problem, before a
//! port, device or database is opened), open the buses, start, tell systemd READY, and
//! shut down cleanly on SIGTERM/SIGINT.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use dmr_edge_agent::agent::{self, clock::SystemClock, config, locks::LockPort};
use dmr_edge_agent::bus;

#[derive(Parser, Debug)]
#[command(name = "dmr-agent", version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("DMR_BUILD_COMMIT"), ")"), about = "Dumeiren venue gateway daemon")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the daemon.
    Run {
        #[arg(long, short, env = "DMR_CONFIG", default_value = "/etc/dmr/agent.toml")]
        config: PathBuf,
    },
    /// Validate the configuration and exit (0 ok, 78 invalid).
    CheckConfig {
        #[arg(long, short, env = "DMR_CONFIG", default_value = "/etc/dmr/agent.toml")]
        config: PathBuf,
    },
    /// Print the health signals and the outbox backlog of a running agent.
    Status {
        #[arg(long, short, env = "DMR_CONFIG", default_value = "/etc/dmr/agent.toml")]
        config: PathBuf,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create the gateway key file (mode 0600); refuses to overwrite one.
    Keygen {
        #[arg(long, short, env = "DMR_CONFIG", default_value = "/etc/dmr/agent.toml")]
        config: PathBuf,
    },
    /// Enroll with the cloud using a one-time code: creates the gateway key if needed and
    /// saves the cloud's answer (identity, keys, MQTT credentials, locks) in the state dir.
    Enroll {
        #[arg(long, short, env = "DMR_CONFIG", default_value = "/etc/dmr/agent.toml")]
        config: PathBuf,
        /// Cloud API base URL, e.g. https://cloud.example.com
        #[arg(long)]
        cloud: String,
        /// The enrollment code shown in the console (e.g. ABCDE-FGHJK).
        #[arg(long)]
        code: String,
        /// A name for this gateway in the console.
        #[arg(long)]
        name: Option<String>,
    },
}

fn load_config(path: &Path) -> Result<config::AgentConfig, ExitCode> {
    config::load(Some(path), std::env::vars()).map_err(|e| {
        eprintln!("dmr-agent: {}: {e}", path.display());
        ExitCode::from(config::EX_CONFIG)
    })
}

/// The configuration for `keygen`, `enroll` and `status`: the gateway id may not be known
/// yet, and enrollment.json is not read.
fn load_enroll_config(path: &Path) -> Result<config::AgentConfig, ExitCode> {
    config::load_for_enroll(Some(path), std::env::vars()).map_err(|e| {
        eprintln!("dmr-agent: {}: {e}", path.display());
        ExitCode::from(config::EX_CONFIG)
    })
}

fn enroll(config_path: &Path, cloud: &str, code: &str, name: Option<&str>) -> ExitCode {
    use agent::enroll as en;
    let c = match load_enroll_config(config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if !(cloud.starts_with("http://") || cloud.starts_with("https://")) {
        eprintln!("dmr-agent enroll: --cloud must be an http(s):// URL, found \"{cloud}\"");
        return ExitCode::from(64);
    }
    let (key, created) = match en::ensure_key(&c.key_file) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("dmr-agent enroll: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    if created {
        println!("created the gateway key {} (0600)", c.key_file.display());
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dmr-agent enroll: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let client =
            en::http_client(Duration::from_secs(30)).map_err(|e| en::EnrollError::Unreachable {
                url: cloud.to_string(),
                reason: e.to_string(),
            })?;
        en::enroll(&client, cloud, &key, code, name).await
    });
    let e = match result {
        Ok(e) => e,
        Err(err) => {
            eprintln!("dmr-agent enroll: {err}");
            return ExitCode::from(err.exit_code());
        }
    };
    match en::save(&c.state_dir, &e) {
        Ok(path) => {
            println!(
                "enrolled as gateway {} ({} lock(s), {} trusted key(s)); saved {} (0600)",
                e.gateway_id,
                e.locks.len(),
                e.trusted_keys.len(),
                path.display()
            );
        }
        Err(err) => {
            eprintln!("dmr-agent enroll: {err}");
            eprintln!("the code is used up; fix the state directory and ask for a new code");
            return ExitCode::FAILURE;
        }
    }
    if !c.gateway_id.is_nil() && c.gateway_id != e.gateway_id {
        eprintln!(
            "warning: {} sets gateway_id = {} but the cloud enrolled this box as {}; remove gateway_id from the file before `dmr-agent run`",
            config_path.display(),
            c.gateway_id,
            e.gateway_id
        );
    }
    if let Err(errs) = config::load(Some(config_path), std::env::vars()) {
        eprintln!("warning: `dmr-agent run` will refuse the configuration as it is: {errs}");
    } else {
        println!("start the service: systemctl start dmr-agent");
    }
    ExitCode::SUCCESS
}

fn init_tracing() {
    // DMR_LOG wins; RUST_LOG (what the systemd unit sets) is honoured too.
    let filter = tracing_subscriber::EnvFilter::try_from_env("DMR_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let started = Instant::now();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::CheckConfig { config } => match load_config(&config) {
            Ok(c) => {
                println!(
                    "{}: ok (gateway {}, {} bus(es), {} lock(s), {} trusted key(s))",
                    config.display(),
                    c.gateway_id,
                    c.buses.len(),
                    c.buses.iter().map(|b| b.locks.len()).sum::<usize>(),
                    c.trusted_keys.len() + c.enrolled_keys.len()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Cmd::Enroll {
            config,
            cloud,
            code,
            name,
        } => enroll(&config, &cloud, &code, name.as_deref()),
        Cmd::Keygen { config } => {
            let c = match load_enroll_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let key = dmr_protocol::keys::generate();
            match dmr_protocol::keys::save_signing_key(&c.key_file, &key) {
                Ok(()) => {
                    println!(
                        "wrote {} (0600); public key {}",
                        c.key_file.display(),
                        dmr_protocol::keys::public_b64u(&key.verifying_key())
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("dmr-agent keygen: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Status { config, json } => {
            // Status needs only the status address and the state directory; it must work for
            // an operator who cannot read the agent's 0600 enrollment.json.
            let c = match load_enroll_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            status(&c, json)
        }
        Cmd::Run { config } => {
            let c = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_tracing();
            let key = match dmr_protocol::keys::load_signing_key(&c.key_file) {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("dmr-agent: {e} (create it with `dmr-agent keygen`)");
                    return ExitCode::from(config::EX_CONFIG);
                }
            };
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("dmr-agent")
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("dmr-agent: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(run(c, key, started)) {
                Ok(code) => code,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "dmr-agent failed");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Opens every bus; a bus that cannot be opened yet gets a retry task (returned so
/// shutdown can stop it).
async fn open_buses(
    c: &config::AgentConfig,
) -> (Vec<Arc<dyn LockPort>>, Vec<tokio::task::JoinHandle<()>>) {
    let mut ports: Vec<Arc<dyn LockPort>> = Vec::new();
    let mut retries = Vec::new();
    for b in &c.buses {
        let mut bc = match b.port.strip_prefix("tcp://") {
            Some(addr) => bus::BusConfig::tcp(addr),
            None => bus::BusConfig::serial(&b.port, b.baud),
        };
        bc.offline_after = c.offline_after;
        match bus::spawn(bc.clone()).await {
            Ok(h) => {
                tracing::info!(port = %b.port, locks = b.locks.len(), "bus open");
                ports.push(Arc::new(h));
            }
            Err(e) => {
                // The other buses, the outbox and the cloud link keep working; this bus's
                // locks show as offline and unlocks answer lock_unreachable until the port
                // can be opened (retried every 5 s).
                tracing::error!(port = %b.port, error = %e, "cannot open bus; its locks are unreachable, retrying");
                let switch = Arc::new(agent::locks::SwitchPort::new(Arc::new(
                    agent::locks::DeadBus {
                        reason: e.to_string(),
                    },
                )));
                let (sw, port) = (switch.clone(), b.port.clone());
                retries.push(tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        if let Ok(h) = bus::spawn(bc.clone()).await {
                            tracing::info!(%port, "bus open");
                            sw.set(Arc::new(h));
                            return;
                        }
                    }
                }));
                ports.push(switch);
            }
        }
    }
    (ports, retries)
}

async fn run(
    c: config::AgentConfig,
    key: dmr_protocol::keys::SigningKey,
    started: Instant,
) -> anyhow::Result<ExitCode> {
    let (ports, retries) = open_buses(&c).await;
    let mut running = agent::start(c, key, ports, SystemClock)
        .await
        .context("starting the agent")?;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    tracing::info!(
        startup_ms = started.elapsed().as_millis() as u64,
        status = %running.status_addr,
        "ready"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let signal = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
    };
    let early = running.run_until(signal).await;
    let aborted = running.shutdown(Duration::from_secs(10)).await;
    for r in retries {
        if !r.is_finished() {
            tracing::info!("stopping a bus open retry");
            r.abort();
        }
    }
    if !aborted.is_empty() {
        tracing::warn!(?aborted, "tasks did not stop within the grace period");
    }
    Ok(if early.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "status endpoint answered {}",
        head.lines().next().unwrap_or_default()
    );
    Ok(body.to_string())
}

fn status(c: &config::AgentConfig, json: bool) -> ExitCode {
    match http_get(c.http.status_listen, "/status") {
        Ok(body) => {
            if json {
                println!("{body}");
                return ExitCode::SUCCESS;
            }
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
                println!("{body}");
                return ExitCode::SUCCESS;
            };
            println!("gateway      {}", v["gateway_id"].as_str().unwrap_or("?"));
            println!("uptime       {} s", v["uptime_s"]);
            println!("cloud link   {}", v["cloud_link"].as_str().unwrap_or("?"));
            println!(
                "outbox       {} pending, oldest {} s",
                v["outbox_pending"], v["outbox_oldest_age_s"]
            );
            println!(
                "dead letter  {} (events the cloud rejected; see the log)",
                v["outbox_dead_letters"]
            );
            println!(
                "http sync    last ok {} ms, {} failure(s){}",
                v["sync_last_ok_ms"],
                v["sync_failures"],
                v["sync_last_error"]
                    .as_str()
                    .map(|e| format!(", last: {e}"))
                    .unwrap_or_default()
            );
            for r in v["poll_rounds"].as_array().into_iter().flatten() {
                println!(
                    "poll bus {}    round last {:.1} ms, mean {:.1} ms, longest {:.1} ms ({} rounds)",
                    r["bus"],
                    r["last_ms"].as_f64().unwrap_or(0.0),
                    r["mean_ms"].as_f64().unwrap_or(0.0),
                    r["max_ms"].as_f64().unwrap_or(0.0),
                    r["rounds"]
                );
            }
            println!(
                "doors        {} watched after an unlock",
                v["doors_watched"]
            );
            if let Some(locks) = v["locks"].as_array() {
                for l in locks {
                    println!(
                        "lock {} addr {:>3}  bus link {:<7}  state {}",
                        l["lock_id"].as_str().unwrap_or("?"),
                        l["addr"],
                        l["bus_link"].as_str().unwrap_or("?"),
                        l["lock_state"].as_str().unwrap_or("?")
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "dmr-agent status: the agent is not answering on {}: {e:#}",
                c.http.status_listen
            );
            match agent::store::read_outbox_stats(&c.db_path()) {
                Ok(s) => println!(
                    "agent not running; outbox in {}: {} pending",
                    c.db_path().display(),
                    s.pending
                ),
                Err(e) => eprintln!("cannot read {}: {e}", c.db_path().display()),
            }
            ExitCode::from(3)
        }
    }
}
