//! Typed, validated configuration of `dmr-agent`: defaults, then a TOML file, then `DMR_...`
//! environment variables, in that order.
//!
//! The file is read into a generic TOML table first and every key is checked by hand, so a
//! bad file is reported with *every* wrong key at once, each with its path (`mqtt.url: ...`),
//! and unknown keys are errors rather than silently ignored typos. Nothing here opens a port,
//! a serial device or the database: the caller exits with status 78 (EX_CONFIG) on
//! [`ConfigErrors`] before starting anything. Secrets (the MQTT password) are wrapped in
//! [`Secret`] so no `Debug` or log line can print them.
//!
//! [`load`] also reads `enrollment.json` from the state directory (written by
//! `dmr-agent enroll`, see [`super::enroll`]) and merges it in, the file and environment
//! winning wherever they say something:
//! - `gateway_id`: the enrollment's; a configured one must be the same gateway.
//! - `trusted_keys`: the file's keys are always trusted; the enrollment's are kept apart
//!   ([`AgentConfig::enrolled_keys`]) because they are the cloud's to retire: they seed the
//!   store's cloud-managed keys until the first sync replaces them (a key id in both uses
//!   the file's key).
//! - `[mqtt]`: `url`, `username` and `password` each come from the configuration when set
//!   there, else from the enrollment; without `[mqtt]` the enrollment's credentials are used
//!   with default link settings.
//! - `cloud_url`: the configured one, else the enrollment's `sync_url`.
//! - locks: a configuration that maps any lock explicitly (`[[bus]] locks = [...]`) wins
//!   and the enrollment's list is ignored; otherwise the enrollment's locks all go on the one
//!   configured `[[bus]]`. Enrolled locks with zero or several buses and no explicit mapping
//!   are a configuration error (exit 78): say which lock is on which port.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dmr_protocol::keys::{VerifyingKey, parse_public_b64u};
use dmr_protocol::message::ConfigSet;
use toml::{Table, Value};
use uuid::Uuid;

use super::enroll::Enrollment;

/// How often a just-unlocked door is polled unless `door_watch_interval_ms` says otherwise
/// (capped by `poll_interval_ms`).
pub const DEFAULT_DOOR_WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// Exit status for a configuration error (sysexits.h EX_CONFIG).
pub const EX_CONFIG: u8 = 78;

/// A value that must never be printed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Every problem found in a configuration, each prefixed with the key path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration ({} problem(s)):\n  {}", .0.len(), .0.join("\n  "))]
pub struct ConfigErrors(pub Vec<String>);

/// The MQTT link.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    pub host: String,
    pub port: u16,
    pub tls: bool,
    /// PEM CA bundle for `mqtts://` (a private broker CA); default: the system's roots.
    pub ca_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// MQTT client id; defaults to `dmr-gw-<gateway id>`.
    pub client_id: String,
    pub keep_alive: Duration,
    /// QoS 1 events published but not yet acknowledged, at most.
    pub inflight: u16,
    /// First reconnect delay; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

/// One lock on a bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockEntry {
    /// Modbus unit address, 1..=247.
    pub addr: u8,
    pub lock_id: Uuid,
}

/// One RS-485 serial port and the locks on it.
#[derive(Debug, Clone)]
pub struct BusConfig {
    pub port: String,
    pub baud: u32,
    pub locks: Vec<LockEntry>,
}

/// The optional QR scanner on a UART.
#[derive(Debug, Clone)]
pub struct ScannerConfig {
    pub port: String,
    pub baud: u32,
}

/// The local HTTP API on the venue LAN.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Where `POST /v1/unlock` listens; `None` turns the API off.
    pub listen: Option<SocketAddr>,
    /// Attempts allowed per client IP per minute.
    pub rate_per_min: u32,
    /// Loopback listener for `/status` and `/metrics`.
    pub status_listen: SocketAddr,
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub gateway_id: Uuid,
    pub key_file: PathBuf,
    pub state_dir: PathBuf,
    pub cloud_url: Option<String>,
    /// Cloud signing keys by key id (may be empty until enrollment).
    pub trusted_keys: BTreeMap<u32, VerifyingKey>,
    /// Cloud keys from `enrollment.json` (not in `trusted_keys`); the HTTP sync manages them.
    pub enrolled_keys: BTreeMap<u32, VerifyingKey>,
    pub token_skew_s: u64,
    pub heartbeat_interval: Duration,
    pub poll_interval: Duration,
    /// How often a just-unlocked lock's door is looked at until its open/close cycle was
    /// seen (at most `poll_interval`). Kept apart from the round interval so idle locks can
    /// be polled slowly while a person at a door still gets a quick release of the lock.
    pub door_watch_interval: Duration,
    /// Failed polls in a row before a lock is declared offline.
    pub offline_after: u32,
    /// How long to wait for the bus to confirm an unlock.
    pub unlock_timeout: Duration,
    /// Upper bound of the state database in pages (4 KiB); `None` = only the disk limits it.
    pub max_db_pages: Option<u64>,
    /// Memory-map up to this many MiB of the state database (0 = off, the default). Cuts
    /// the token lookup tail (no `pread` per uncached page) but mapped pages count in RSS
    /// once touched: only for gateways with memory to spare (docs/benchmarks.md, Agent).
    pub state_mmap_mb: u64,
    pub mqtt: Option<MqttConfig>,
    pub http: HttpConfig,
    pub scanner: Option<ScannerConfig>,
    pub buses: Vec<BusConfig>,
    /// How often the HTTP sync pulls tokens, revocations, settings and keys.
    pub sync_interval: Duration,
    /// With MQTT up, outbox rows older than this are drained over HTTP too.
    pub sync_drain_after: Duration,
    /// Whether `enrollment.json` was merged in.
    pub enrolled: bool,
    /// Whether the configuration file maps locks itself (`[[bus]] locks = [...]`): then the
    /// file wins over the enrollment's and the cloud's lock lists.
    pub locks_in_file: bool,
    /// The runtime settings the enrollment carried (applied if newer than the stored ones).
    pub enrolled_config: Option<ConfigSet>,
}

impl AgentConfig {
    /// Path of the SQLite state database.
    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("agent.db")
    }

    /// Where lock `lock_id` is: bus index and address.
    pub fn find_lock(&self, lock_id: &Uuid) -> Option<(usize, u8)> {
        self.buses.iter().enumerate().find_map(|(i, b)| {
            b.locks
                .iter()
                .find(|l| &l.lock_id == lock_id)
                .map(|l| (i, l.addr))
        })
    }
}

/// Environment variables read on top of the file, and the key each sets.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("DMR_GATEWAY_ID", "gateway_id"),
    ("DMR_KEY_FILE", "key_file"),
    ("DMR_STATE_DIR", "state_dir"),
    ("DMR_CLOUD_URL", "cloud_url"),
    ("DMR_SYNC_INTERVAL_S", "sync_interval_s"),
    ("DMR_TOKEN_SKEW_S", "token_skew_s"),
    ("DMR_HEARTBEAT_INTERVAL_S", "heartbeat_interval_s"),
    ("DMR_MAX_DB_PAGES", "max_db_pages"),
    ("DMR_STATE_MMAP_MB", "state_mmap_mb"),
    ("DMR_MQTT_URL", "mqtt.url"),
    ("DMR_MQTT_USERNAME", "mqtt.username"),
    ("DMR_MQTT_PASSWORD", "mqtt.password"),
    ("DMR_HTTP_LISTEN", "http.listen"),
    ("DMR_STATUS_LISTEN", "http.status_listen"),
];

/// Loads `path` (if given), applies the environment `env`, merges `enrollment.json` from the
/// state directory if there is one, validates.
pub fn load(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<AgentConfig, ConfigErrors> {
    let text = read(path)?;
    parse_with(&text, env, true, super::enroll::load)
}

/// Like [`load`] for `dmr-agent enroll`: the gateway id and lock mapping may still be
/// missing (enrollment is what provides them).
pub fn load_for_enroll(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<AgentConfig, ConfigErrors> {
    let text = read(path)?;
    parse_with(&text, env, false, |_| Ok(None))
}

fn read(path: Option<&Path>) -> Result<String, ConfigErrors> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p).map_err(|e| {
            ConfigErrors(vec![format!(
                "cannot read configuration file {}: {e}",
                p.display()
            )])
        })?,
        None => String::new(),
    };
    Ok(text)
}

/// Parses TOML text, applies the environment `env`, validates (no enrollment file).
pub fn parse(
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<AgentConfig, ConfigErrors> {
    parse_with(text, env, true, |_| Ok(None))
}

/// Parses TOML text, applies `env`, merges the enrollment `enrollment(state_dir)` returns,
/// validates. `need_identity`: a missing gateway id is an error (false only for enroll).
pub fn parse_with(
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
    need_identity: bool,
    enrollment: impl FnOnce(&Path) -> Result<Option<Enrollment>, String>,
) -> Result<AgentConfig, ConfigErrors> {
    let mut table: Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigErrors(vec![format!("not valid TOML: {e}")]))?;
    let env: BTreeMap<String, String> = env.into_iter().collect();
    for (var, key) in ENV_KEYS {
        if let Some(v) = env.get(*var) {
            set_path(&mut table, key, Value::String(v.clone()));
        }
    }
    let mut c = Checker {
        errors: Vec::new(),
        need_identity,
    };
    let cfg = c.agent(&table, enrollment);
    match cfg {
        Some(cfg) if c.errors.is_empty() => Ok(cfg),
        _ => Err(ConfigErrors(c.errors)),
    }
}

fn set_path(table: &mut Table, path: &str, v: Value) {
    match path.split_once('.') {
        None => {
            table.insert(path.into(), v);
        }
        Some((head, rest)) => {
            let entry = table
                .entry(head.to_string())
                .or_insert_with(|| Value::Table(Table::new()));
            if let Value::Table(t) = entry {
                set_path(t, rest, v);
            }
        }
    }
}

struct Checker {
    errors: Vec<String>,
    need_identity: bool,
}

/// Reads typed fields out of one table, remembering which keys were consumed so the rest
/// can be reported as unknown.
struct Section<'a> {
    path: String,
    table: &'a Table,
    seen: HashSet<&'static str>,
}

impl Checker {
    fn err(&mut self, path: &str, msg: impl fmt::Display) {
        self.errors.push(format!("{path}: {msg}"));
    }

    fn finish(&mut self, s: Section<'_>) {
        for k in s.table.keys() {
            if !s.seen.contains(k.as_str()) {
                let p = join(&s.path, k);
                self.err(&p, "unknown key");
            }
        }
    }

    fn string(&mut self, s: &mut Section<'_>, key: &'static str) -> Option<String> {
        s.seen.insert(key);
        match s.table.get(key)? {
            Value::String(v) => Some(v.clone()),
            other => {
                self.err(
                    &join(&s.path, key),
                    format!("expected a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// Integers may also come as strings (environment overrides are strings).
    fn int(&mut self, s: &mut Section<'_>, key: &'static str, min: i64, max: i64) -> Option<i64> {
        s.seen.insert(key);
        let p = join(&s.path, key);
        let v = match s.table.get(key)? {
            Value::Integer(i) => *i,
            Value::String(t) => match t.trim().parse::<i64>() {
                Ok(i) => i,
                Err(_) => {
                    self.err(&p, format!("expected an integer, found \"{t}\""));
                    return None;
                }
            },
            other => {
                self.err(
                    &p,
                    format!("expected an integer, found {}", other.type_str()),
                );
                return None;
            }
        };
        if v < min || v > max {
            self.err(&p, format!("must be in {min}..={max}, found {v}"));
            return None;
        }
        Some(v)
    }

    fn uuid(&mut self, s: &mut Section<'_>, key: &'static str) -> Option<Uuid> {
        let t = self.string(s, key)?;
        match Uuid::try_parse(t.trim()) {
            Ok(u) => Some(u),
            Err(_) => {
                self.err(
                    &join(&s.path, key),
                    format!("expected a UUID, found \"{t}\""),
                );
                None
            }
        }
    }

    fn addr(&mut self, s: &mut Section<'_>, key: &'static str) -> Option<SocketAddr> {
        let t = self.string(s, key)?;
        match t.trim().parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    &join(&s.path, key),
                    format!("expected IP:port, found \"{t}\""),
                );
                None
            }
        }
    }

    fn sub<'a>(&mut self, s: &mut Section<'a>, key: &'static str) -> Option<Section<'a>> {
        s.seen.insert(key);
        match s.table.get(key)? {
            Value::Table(t) => Some(Section {
                path: join(&s.path, key),
                table: t,
                seen: HashSet::new(),
            }),
            other => {
                self.err(
                    &join(&s.path, key),
                    format!("expected a table, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn agent(
        &mut self,
        root: &Table,
        enrollment: impl FnOnce(&Path) -> Result<Option<Enrollment>, String>,
    ) -> Option<AgentConfig> {
        let mut s = Section {
            path: String::new(),
            table: root,
            seen: HashSet::new(),
        };
        let state_dir = self
            .string(&mut s, "state_dir")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/dmr-agent"));
        let enrolled = match enrollment(&state_dir) {
            Ok(e) => e,
            Err(msg) => {
                self.err("enrollment", msg);
                None
            }
        };
        let mut gateway_id = self.uuid(&mut s, "gateway_id");
        match (&enrolled, gateway_id) {
            (Some(e), Some(g)) if e.gateway_id != g => self.err(
                "gateway_id",
                format!(
                    "{g} is configured but enrollment.json is for gateway {}; remove gateway_id from the file (the enrollment provides it) or enroll again",
                    e.gateway_id
                ),
            ),
            (Some(e), None) if !root.contains_key("gateway_id") => gateway_id = Some(e.gateway_id),
            (None, None) if !root.contains_key("gateway_id") => {
                if self.need_identity {
                    self.err(
                        "gateway_id",
                        "required (the gateway's UUID), or run `dmr-agent enroll` to get one",
                    );
                } else {
                    gateway_id = Some(Uuid::nil());
                }
            }
            _ => {}
        }
        let key_file = self
            .string(&mut s, "key_file")
            .map(PathBuf::from)
            .unwrap_or_else(|| state_dir.join("gateway.key"));
        let cloud_url = self
            .string(&mut s, "cloud_url")
            .or_else(|| enrolled.as_ref().map(|e| e.sync_url.clone()));
        if let Some(u) = &cloud_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            self.err(
                "cloud_url",
                format!("expected http(s)://..., found \"{u}\""),
            );
        }
        let token_skew_s = self
            .int(&mut s, "token_skew_s", 0, 3600)
            .map_or(dmr_protocol::token::DEFAULT_SKEW_S, |v| v as u64);
        let heartbeat_interval = Duration::from_secs(
            self.int(&mut s, "heartbeat_interval_s", 1, 3600)
                .unwrap_or(30) as u64,
        );
        let poll_interval = Duration::from_millis(
            self.int(&mut s, "poll_interval_ms", 20, 60_000)
                .unwrap_or(500) as u64,
        );
        // Default 100 ms, never slower than the rounds: watching a door less often than
        // the ordinary round looks at it would be pointless.
        let door_watch_interval = match self.int(&mut s, "door_watch_interval_ms", 20, 60_000) {
            Some(v) if Duration::from_millis(v as u64) > poll_interval => {
                self.err(
                    "door_watch_interval_ms",
                    format!(
                        "must not exceed poll_interval_ms ({}), found {v}",
                        poll_interval.as_millis()
                    ),
                );
                poll_interval
            }
            Some(v) => Duration::from_millis(v as u64),
            None => poll_interval.min(DEFAULT_DOOR_WATCH_INTERVAL),
        };
        let offline_after = self.int(&mut s, "offline_after", 1, 1000).unwrap_or(3) as u32;
        let unlock_timeout = Duration::from_millis(
            self.int(&mut s, "unlock_timeout_ms", 50, 60_000)
                .unwrap_or(2_000) as u64,
        );
        let max_db_pages = self
            .int(&mut s, "max_db_pages", 64, i64::MAX)
            .map(|v| v as u64);
        let state_mmap_mb = self.int(&mut s, "state_mmap_mb", 0, 65_536).unwrap_or(0) as u64;
        let sync_interval = Duration::from_secs(
            self.int(&mut s, "sync_interval_s", 5, 86_400).unwrap_or(60) as u64,
        );
        let sync_drain_after = Duration::from_secs(
            self.int(&mut s, "sync_drain_after_s", 1, 86_400)
                .unwrap_or(60) as u64,
        );
        let trusted_keys = self.trusted_keys(&mut s);
        let mut enrolled_keys = BTreeMap::new();
        let mqtt_creds = enrolled.as_ref().map(|e| &e.mqtt);
        let mqtt = match self.sub(&mut s, "mqtt") {
            Some(m) => self.mqtt(m, gateway_id, mqtt_creds),
            None => match mqtt_creds {
                Some(creds) => {
                    let empty = Table::new();
                    let m = Section {
                        path: "mqtt".into(),
                        table: &empty,
                        seen: HashSet::new(),
                    };
                    self.mqtt(m, gateway_id, Some(creds))
                }
                None => None,
            },
        };
        let http = self.http(&mut s);
        let scanner = self.sub(&mut s, "scanner").and_then(|sc| self.scanner(sc));
        let mut buses = self.buses(&mut s);
        let locks_in_file = buses.iter().any(|b| !b.locks.is_empty());
        self.finish(s);
        if let Some(e) = &enrolled {
            for k in &e.trusted_keys {
                if trusted_keys.contains_key(&k.key_id) {
                    continue;
                }
                match parse_public_b64u(&k.public_key) {
                    Ok(key) => {
                        enrolled_keys.insert(k.key_id, key);
                    }
                    Err(err) => self.err(
                        "enrollment.trusted_keys",
                        format!("key {}: {err}", k.key_id),
                    ),
                }
            }
            self.enrolled_locks(e, &mut buses);
        }
        let enrolled_config =
            enrolled
                .as_ref()
                .and_then(|e| e.config.as_ref())
                .map(|c| ConfigSet {
                    version: c.version,
                    heartbeat_interval_s: c.heartbeat_interval_s,
                    token_skew_s: c.token_skew_s,
                });
        Some(AgentConfig {
            gateway_id: gateway_id?,
            key_file,
            state_dir,
            cloud_url,
            trusted_keys,
            enrolled_keys,
            token_skew_s,
            heartbeat_interval,
            poll_interval,
            door_watch_interval,
            offline_after,
            unlock_timeout,
            max_db_pages,
            state_mmap_mb,
            mqtt,
            http,
            scanner,
            buses,
            sync_interval,
            sync_drain_after,
            enrolled: enrolled.is_some(),
            locks_in_file,
            enrolled_config,
        })
    }

    /// The lock rule (see the module doc): explicit mapping wins, else the single bus.
    fn enrolled_locks(&mut self, e: &Enrollment, buses: &mut [BusConfig]) {
        if e.locks.is_empty() || buses.iter().any(|b| !b.locks.is_empty()) {
            return;
        }
        match buses {
            [one] => {
                let mut addrs = HashSet::new();
                for l in &e.locks {
                    let Ok(addr) = u8::try_from(l.addr) else {
                        self.err(
                            "enrollment.locks",
                            format!("lock {} has address {} (1..=247)", l.lock_id, l.addr),
                        );
                        continue;
                    };
                    if !addrs.insert(addr) {
                        self.err(
                            "enrollment.locks",
                            format!("address {addr} is used by two enrolled locks; fix the lock addresses in the console"),
                        );
                        continue;
                    }
                    one.locks.push(LockEntry {
                        addr,
                        lock_id: l.lock_id,
                    });
                }
            }
            [] => self.err(
                "bus",
                format!(
                    "enrollment.json lists {} lock(s) but no [[bus]] is configured; add the RS-485 port as [[bus]] port = \"/dev/ttyUSB0\"",
                    e.locks.len()
                ),
            ),
            many => self.err(
                "bus",
                format!(
                    "enrollment.json lists {} lock(s) and {} [[bus]] ports are configured; say which lock is on which port with [[bus]] locks = [{{ addr = N, lock_id = \"...\" }}]",
                    e.locks.len(),
                    many.len()
                ),
            ),
        }
    }

    fn trusted_keys(&mut self, s: &mut Section<'_>) -> BTreeMap<u32, VerifyingKey> {
        let mut out = BTreeMap::new();
        let Some(sec) = self.sub(s, "trusted_keys") else {
            return out;
        };
        for (k, v) in sec.table {
            let p = join(&sec.path, k);
            let Ok(id) = k.parse::<u32>() else {
                self.err(&p, "key ids must be decimal numbers (the token key_id)");
                continue;
            };
            match v {
                Value::String(t) => match parse_public_b64u(t) {
                    Ok(key) => {
                        out.insert(id, key);
                    }
                    Err(e) => self.err(&p, e),
                },
                other => self.err(
                    &p,
                    format!(
                        "expected a base64url public key, found {}",
                        other.type_str()
                    ),
                ),
            }
        }
        out
    }

    fn mqtt(
        &mut self,
        mut m: Section<'_>,
        gw: Option<Uuid>,
        enrolled: Option<&super::enroll::MqttCredentials>,
    ) -> Option<MqttConfig> {
        let url = self
            .string(&mut m, "url")
            .or_else(|| enrolled.map(|c| c.url.clone()));
        if url.is_none() {
            self.err(
                &join(&m.path, "url"),
                "required when [mqtt] is present (or run `dmr-agent enroll`)",
            );
        }
        let username = self
            .string(&mut m, "username")
            .or_else(|| enrolled.map(|c| c.username.clone()));
        let password = self
            .string(&mut m, "password")
            .or_else(|| enrolled.map(|c| c.password.clone()))
            .map(Secret::new);
        let ca_file = self.string(&mut m, "ca_file").map(PathBuf::from);
        let client_id = self.string(&mut m, "client_id");
        let keep_alive = self.int(&mut m, "keep_alive_s", 5, 3600).unwrap_or(30) as u64;
        let inflight = self.int(&mut m, "inflight", 1, 65_000).unwrap_or(500) as u16;
        let rmin = self
            .int(&mut m, "reconnect_min_ms", 10, 600_000)
            .unwrap_or(500) as u64;
        let rmax = self
            .int(&mut m, "reconnect_max_ms", 10, 3_600_000)
            .unwrap_or(30_000) as u64;
        let path = join(&m.path, "url");
        self.finish(m);
        let url = url?;
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            self.err(
                &path,
                format!("expected mqtt://host:port or mqtts://host:port, found \"{url}\""),
            );
            return None;
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => match p.parse::<u16>() {
                Ok(p) if p > 0 => (h.to_string(), p),
                _ => {
                    self.err(&path, format!("bad port in \"{url}\""));
                    return None;
                }
            },
            None => (rest.to_string(), if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() {
            self.err(&path, format!("no host in \"{url}\""));
            return None;
        }
        if ca_file.is_some() && !tls {
            self.err(&path, "ca_file is set, so the url must be mqtts://");
            return None;
        }
        Some(MqttConfig {
            url,
            host,
            port,
            tls,
            ca_file,
            username,
            password,
            client_id: client_id
                .unwrap_or_else(|| format!("dmr-gw-{}", gw.unwrap_or_default().hyphenated())),
            keep_alive: Duration::from_secs(keep_alive),
            inflight,
            reconnect_min: Duration::from_millis(rmin),
            reconnect_max: Duration::from_millis(rmax.max(rmin)),
        })
    }

    fn http(&mut self, s: &mut Section<'_>) -> HttpConfig {
        let default_status: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8481));
        let Some(mut h) = self.sub(s, "http") else {
            return HttpConfig {
                listen: None,
                rate_per_min: 30,
                status_listen: default_status,
            };
        };
        let listen = self.addr(&mut h, "listen");
        let rate_per_min = self.int(&mut h, "rate_per_min", 1, 100_000).unwrap_or(30) as u32;
        let status_listen = self.addr(&mut h, "status_listen");
        if let Some(a) = status_listen
            && !a.ip().is_loopback()
        {
            self.err(
                &join(&h.path, "status_listen"),
                format!(
                    "must be a loopback address (status and metrics are not for the LAN), found {a}"
                ),
            );
        }
        self.finish(h);
        HttpConfig {
            listen,
            rate_per_min,
            status_listen: status_listen.unwrap_or(default_status),
        }
    }

    fn scanner(&mut self, mut sc: Section<'_>) -> Option<ScannerConfig> {
        let port = self.string(&mut sc, "port");
        if port.is_none() {
            self.err(
                &join(&sc.path, "port"),
                "required when [scanner] is present",
            );
        }
        let baud = self.int(&mut sc, "baud", 1200, 4_000_000).unwrap_or(9600) as u32;
        self.finish(sc);
        Some(ScannerConfig { port: port?, baud })
    }

    fn buses(&mut self, s: &mut Section<'_>) -> Vec<BusConfig> {
        s.seen.insert("bus");
        let mut out = Vec::new();
        let Some(v) = s.table.get("bus") else {
            return out;
        };
        let Value::Array(items) = v else {
            self.err("bus", "expected [[bus]] tables");
            return out;
        };
        let mut lock_ids = HashSet::new();
        let mut ports = HashSet::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("bus[{i}]");
            let Value::Table(t) = item else {
                self.err(&path, "expected a table");
                continue;
            };
            let mut b = Section {
                path: path.clone(),
                table: t,
                seen: HashSet::new(),
            };
            let port = self.string(&mut b, "port");
            if port.is_none() {
                self.err(&join(&path, "port"), "required (serial device path)");
            }
            if let Some(p) = &port
                && !ports.insert(p.clone())
            {
                self.err(&join(&path, "port"), format!("{p} is listed twice"));
            }
            let baud = self.int(&mut b, "baud", 1200, 4_000_000).unwrap_or(9600) as u32;
            b.seen.insert("locks");
            let mut locks = Vec::new();
            let mut addrs = HashSet::new();
            match t.get("locks") {
                None => {}
                Some(Value::Array(ls)) => {
                    for (j, l) in ls.iter().enumerate() {
                        let lp = format!("{path}.locks[{j}]");
                        let Value::Table(lt) = l else {
                            self.err(&lp, "expected { addr = N, lock_id = \"uuid\" }");
                            continue;
                        };
                        let mut ls = Section {
                            path: lp.clone(),
                            table: lt,
                            seen: HashSet::new(),
                        };
                        let addr = self.int(&mut ls, "addr", 1, 247).map(|a| a as u8);
                        let lock_id = self.uuid(&mut ls, "lock_id");
                        if addr.is_none() && !lt.contains_key("addr") {
                            self.err(&join(&lp, "addr"), "required (1..=247)");
                        }
                        if lock_id.is_none() && !lt.contains_key("lock_id") {
                            self.err(&join(&lp, "lock_id"), "required");
                        }
                        self.finish(ls);
                        if let (Some(addr), Some(lock_id)) = (addr, lock_id) {
                            if !addrs.insert(addr) {
                                self.err(
                                    &join(&lp, "addr"),
                                    format!("address {addr} is used twice on this bus"),
                                );
                            }
                            if !lock_ids.insert(lock_id) {
                                self.err(
                                    &join(&lp, "lock_id"),
                                    format!("lock {lock_id} is listed twice"),
                                );
                            }
                            locks.push(LockEntry { addr, lock_id });
                        }
                    }
                }
                Some(_) => self.err(&join(&path, "locks"), "expected an array of tables"),
            }
            self.finish(b);
            if let Some(port) = port {
                out.push(BusConfig { port, baud, locks });
            }
        }
        out
    }
}

fn join(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_string()
    } else {
        format!("{base}.{key}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn good() -> String {
        let pk = dmr_protocol::keys::public_b64u(
            &dmr_protocol::keys::signing_key_from_seed([1; 32]).verifying_key(),
        );
        GOOD.replace("PUBKEY", &pk)
    }

    const GOOD: &str = r#"
gateway_id = "0193a5e0-0000-7000-8000-0000000000cc"
state_dir = "/tmp/x"
trusted_keys = { "1" = "PUBKEY" }
[mqtt]
url = "mqtt://127.0.0.1:1883"
password = "hunter2"
[[bus]]
port = "/dev/ttyUSB0"
locks = [ { addr = 1, lock_id = "0193a5e0-0000-7000-8000-000000000001" } ]
"#;

    #[test]
    fn good_file_parses_and_hides_password() {
        let c = parse(&good(), []).unwrap();
        assert_eq!(c.mqtt.as_ref().unwrap().port, 1883);
        assert_eq!(c.buses[0].locks[0].addr, 1);
        assert_eq!(c.trusted_keys.len(), 1);
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.key_file, PathBuf::from("/tmp/x/gateway.key"));
    }

    #[test]
    fn state_mmap_is_off_unless_asked_and_bounded() {
        assert_eq!(parse(&good(), []).unwrap().state_mmap_mb, 0);
        let c = parse(&good(), [("DMR_STATE_MMAP_MB".into(), "256".into())]).unwrap();
        assert_eq!(c.state_mmap_mb, 256);
        let e = parse(&good(), [("DMR_STATE_MMAP_MB".into(), "-1".into())])
            .unwrap_err()
            .0
            .join("\n");
        assert!(e.contains("state_mmap_mb"), "{e}");
    }

    #[test]
    fn door_watch_interval_defaults_to_100_ms_capped_by_the_poll_interval() {
        let c = parse(&good(), []).unwrap();
        assert_eq!(c.poll_interval, Duration::from_millis(500));
        assert_eq!(c.door_watch_interval, Duration::from_millis(100));
        let fast = format!("poll_interval_ms = 50\n{}", good());
        assert_eq!(
            parse(&fast, []).unwrap().door_watch_interval,
            Duration::from_millis(50)
        );
        let set = format!("door_watch_interval_ms = 40\n{}", good());
        assert_eq!(
            parse(&set, []).unwrap().door_watch_interval,
            Duration::from_millis(40)
        );
        for bad in ["door_watch_interval_ms = 600", "door_watch_interval_ms = 5"] {
            let e = parse(&format!("{bad}\n{}", good()), [])
                .unwrap_err()
                .0
                .join("\n");
            assert!(e.contains("door_watch_interval_ms: must"), "{bad}: {e}");
        }
    }

    #[test]
    fn every_bad_key_is_reported_with_its_path() {
        let bad = r#"
gateway_id = "nope"
token_skew_s = -1
colour = "blue"
[mqtt]
url = "http://x"
[[bus]]
port = "/dev/ttyUSB0"
locks = [ { addr = 300, lock_id = "0193a5e0-0000-7000-8000-000000000001" } ]
"#;
        let e = parse(bad, []).unwrap_err().0;
        let joined = e.join("\n");
        for needle in [
            "gateway_id: expected a UUID",
            "token_skew_s: must be in",
            "colour: unknown key",
            "mqtt.url: expected mqtt://",
            "bus[0].locks[0].addr: must be in 1..=247",
        ] {
            assert!(joined.contains(needle), "missing {needle} in {joined}");
        }
    }

    #[test]
    fn environment_overrides_file() {
        let c = parse(
            &good(),
            [
                (
                    "DMR_MQTT_URL".to_string(),
                    "mqtts://broker:8883".to_string(),
                ),
                ("DMR_TOKEN_SKEW_S".to_string(), "30".to_string()),
            ],
        )
        .unwrap();
        let m = c.mqtt.unwrap();
        assert!(m.tls);
        assert_eq!(m.host, "broker");
        assert_eq!(c.token_skew_s, 30);
        let e = parse(&good(), [("DMR_TOKEN_SKEW_S".into(), "abc".into())]).unwrap_err();
        assert!(e.0[0].starts_with("token_skew_s: expected an integer"));
    }
}
