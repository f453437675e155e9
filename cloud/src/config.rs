//! Typed, validated configuration: built-in defaults, then an optional TOML file, then
//! `DMR_...` environment variables (and the conventional `DATABASE_URL`). Every bad key is
//! collected and reported together with its path and where it came from, so an operator
//! fixes a broken file in one round trip instead of one error at a time. Nothing here opens
//! a port or a database: `serve` only starts once this has succeeded.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Exit status for bad configuration (`EX_CONFIG` from sysexits.h).
pub const EXIT_CONFIG: u8 = 78;

/// A value that must never reach a log line or an error message.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }
    /// The only way to read the value; grep for it to audit where secrets go.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Base of links the cloud hands out (QR payloads), without a trailing slash.
    pub public_base_url: String,
    pub body_limit_bytes: usize,
    /// Take the client address for rate limiting from `X-Forwarded-For` (only behind a
    /// proxy that sets it; otherwise a client could pick its own bucket).
    pub trust_forwarded_for: bool,
    /// The built front end (`cloud/web/dist`) to serve at `/` and `/h5/`; without it the
    /// process serves the API alone.
    pub web_dir: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct DatabaseConfig {
    /// `sqlite://FILE` or `postgres://...`; may hold a password, hence the wrapper.
    pub url: Secret<String>,
    pub max_connections: u32,
}

#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// HS256 key for access tokens. When absent a random one is generated once and kept in
    /// the database, so every instance sharing that database agrees on it.
    pub jwt_secret: Option<Secret<String>>,
    pub issuer: String,
    pub audience: String,
    pub access_ttl_secs: u64,
    pub refresh_ttl_secs: u64,
    pub login_max_failures: u32,
    pub login_window_secs: u64,
    pub login_lockout_secs: u64,
}

#[derive(Clone, Debug)]
pub struct RateLimitConfig {
    /// Requests per client per minute on public and login endpoints.
    pub per_minute: u32,
}

/// Cloud signing keys.
#[derive(Clone, Debug)]
pub struct KeysConfig {
    /// 32-byte AES-256 key that encrypts the cloud's private signing keys at rest. Only
    /// from the environment (`DMR_MASTER_KEY`, base64), never from the file, so the file
    /// and the database together do not give the keys away. `serve` and `keys` refuse to
    /// start without it.
    pub master_key: Option<Secret<[u8; 32]>>,
}

/// What enrollment and sync tell gateways.
#[derive(Clone, Debug)]
pub struct GatewayLinkConfig {
    /// The MQTT URL handed to gateways at enrollment.
    pub mqtt_url: String,
    /// Default heartbeat interval for gateways (seconds).
    pub heartbeat_interval_s: u32,
    /// Default tolerated clock difference for unlock tokens (seconds).
    pub token_skew_s: u32,
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub format: LogFormat,
    pub filter: String,
}

/// The MQTT broker that runs inside `dmr-cloud serve` unless disabled.
#[derive(Clone, Debug)]
pub struct EmbeddedBrokerConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    pub max_connections: usize,
    /// Largest MQTT packet accepted (remaining length), in bytes.
    pub max_packet_bytes: usize,
}

/// The MQTT side of the gateway link: where the broker is, who the cloud is on it, and how
/// the bridge batches what it consumes.
#[derive(Clone, Debug)]
pub struct MqttConfig {
    /// Run the bridge at all (an API-only instance can leave the link to others).
    pub enabled: bool,
    /// `mqtt://host:port` or `mqtts://host:port`, as given.
    pub url: String,
    /// Parsed from `url`.
    pub host: String,
    pub port: u16,
    pub tls: bool,
    /// PEM CA bundle for `mqtts://` (the system roots when absent).
    pub ca_file: Option<PathBuf>,
    pub username: String,
    /// Password of the cloud's own MQTT user `dmr-cloud`: what the bridge logs in with and
    /// what the embedded broker and the EMQX hook accept. When absent a random one is
    /// generated once and kept in the database (`app_secrets`), like the JWT key.
    pub password: Option<Secret<String>>,
    /// Unique per instance: a broker drops an older connection with the same id. Empty in
    /// the file means `dmr-cloud-<hostname>-<pid>`.
    pub client_id: String,
    /// Subscribe through `$share/dmr-cloud/...` so several instances split the load.
    pub shared_subscription: bool,
    pub keep_alive_secs: u64,
    /// Messages handed to ingest in one batch at most.
    pub batch_max: usize,
    /// How long the bridge waits to fill a batch.
    pub batch_wait_ms: u64,
    /// Batches verified and applied at the same time.
    pub workers: usize,
    /// Messages received but not yet applied; at the bound the bridge stops reading the socket.
    pub queue: usize,
    /// Messages the broker may send before the cloud acknowledges (QoS 1 receive window).
    pub inflight: u16,
    /// Shared secret EMQX sends to the HTTP auth/ACL hooks; without it the hooks refuse.
    pub hook_secret: Option<Secret<String>>,
    /// The broker that runs inside `dmr-cloud serve` unless disabled.
    pub embedded: EmbeddedBrokerConfig,
}

impl MqttConfig {
    /// Splits `mqtt://host:port` / `mqtts://host:port` into (tls, host, port).
    pub fn parse_url(url: &str) -> Result<(bool, String, u16), String> {
        let (tls, rest, default_port) = if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r, 1883)
        } else if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r, 8883)
        } else {
            return Err("must start with mqtt:// or mqtts://".into());
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains('/') || rest.contains('@') {
            return Err("must be mqtt(s)://host[:port] with no path or credentials \
                 (set mqtt.username and mqtt.password instead)"
                .into());
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && !h.ends_with(':') => {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("port {p:?} is not a number in 1..=65535"))?;
                (h.trim_start_matches('[').trim_end_matches(']'), port)
            }
            _ => (rest, default_port),
        };
        Ok((tls, host.to_string(), port))
    }
}

/// The whole validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub rate_limit: RateLimitConfig,
    pub keys: KeysConfig,
    pub gateway: GatewayLinkConfig,
    pub mqtt: MqttConfig,
    pub log: LogConfig,
    pub orders: OrdersSection,
    pub firmware: FirmwareSection,
    /// WeChat Pay, offered to payers when `wechatpay.mchid` is set (the sandbox stays the
    /// default provider either way). Validated into usable keys here, so a bad key file
    /// stops `serve` with exit 78 before anything listens.
    pub wechatpay: Option<dmr_wechatpay::WechatPayConfig>,
    /// WeChat OAuth (snsapi_base) for the phone page, so JSAPI knows the payer's openid:
    /// present when WeChat Pay is configured and `wechatpay.app_secret` is set.
    pub wechat_oauth: Option<WechatOAuthConfig>,
}

/// The phone page's WeChat OAuth step (`wechatpay.app_secret`, `wechatpay.oauth_base_url`):
/// the official account's appid (the same `wechatpay.appid` payments use, since JSAPI needs
/// an openid of that app) and its AppSecret, which only the cloud ever sees.
#[derive(Clone, Debug)]
pub struct WechatOAuthConfig {
    pub appid: String,
    pub app_secret: Secret<String>,
    /// Where `/sns/oauth2/access_token` lives (`https://api.weixin.qq.com`; tests point it
    /// at a fake on loopback).
    pub base_url: String,
    /// WeChat sends the payer back here: `{public_base_url}/api/v1/public/wechat/oauth/callback`.
    pub redirect_uri: String,
    /// Bound on the code exchange, so a slow WeChat gives the payer an error, not a hang.
    pub timeout: std::time::Duration,
}

/// Firmware releases (`[firmware]`): which vendor keys an uploaded image must be signed
/// with, and how large an upload may be.
#[derive(Clone, Debug)]
pub struct FirmwareSection {
    /// Trusted vendor public keys by key id, from `"ID:BASE64URL, ID:BASE64URL"` (the
    /// same notation as `dmr-tech fw inspect --vendor-key`). Empty: every upload is refused.
    pub vendor_keys: BTreeMap<u32, ed25519_dalek::VerifyingKey>,
    /// Largest image accepted by the upload endpoint (413 above it).
    pub max_image_bytes: usize,
}

/// Parses `firmware.vendor_keys`: comma-separated `ID:BASE64URL` pairs.
pub fn parse_vendor_keys(text: &str) -> Result<BTreeMap<u32, ed25519_dalek::VerifyingKey>, String> {
    let mut keys = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, key) = part
            .split_once(':')
            .ok_or_else(|| format!("{part:?} must be ID:BASE64URL"))?;
        let id: u32 = id
            .trim()
            .parse()
            .map_err(|_| format!("key id {id:?} is not a number 0..=4294967295"))?;
        let key = dmr_protocol::keys::parse_public_b64u(key.trim())
            .map_err(|e| format!("key {id}: {e}"))?;
        if keys.insert(id, key).is_some() {
            return Err(format!("key id {id} is listed twice"));
        }
    }
    Ok(keys)
}

/// Order timing and payment providers (`[orders]`).
#[derive(Clone, Debug)]
pub struct OrdersSection {
    pub pay_timeout_secs: u64,
    pub unlock_timeout_secs: u64,
    pub refund_grace_secs: u64,
    pub job_interval_ms: u64,
    /// Run the order jobs (expiry, timeouts, refunds, settlement) in `serve`.
    pub jobs: bool,
    /// HMAC key of the sandbox provider's notifications; generated and kept in the
    /// database when unset. The sandbox is only offered when `sandbox` is true.
    pub sandbox: bool,
    pub sandbox_key: Option<Secret<String>>,
}

/// Where a raw value came from, for error messages.
#[derive(Clone, Debug)]
enum Origin {
    File(PathBuf),
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(p) => write!(f, "file {}", p.display()),
            Origin::Env(name) => write!(f, "environment variable {name}"),
        }
    }
}

#[derive(Clone, Debug)]
enum Raw {
    Toml(toml::Value),
    Env(String),
}

/// One problem with one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigIssue {
    pub path: String,
    pub message: String,
}

/// Every problem found, reported at once.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", render_issues(.0))]
pub struct ConfigError(pub Vec<ConfigIssue>);

fn render_issues(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(|i| format!("  - {}: {}", i.path, i.message))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where the cloud looks for its broker unless told otherwise (the embedded one listens here).
pub const DEFAULT_MQTT_URL: &str = "mqtt://127.0.0.1:1883";

/// Every key the cloud understands; the environment name is derived from the path
/// (`auth.access_ttl_secs` -> `DMR_AUTH_ACCESS_TTL_SECS`).
pub const KEYS: &[&str] = &[
    "server.listen",
    "server.public_base_url",
    "server.body_limit_bytes",
    "server.trust_forwarded_for",
    "server.web_dir",
    "database.url",
    "database.max_connections",
    "auth.jwt_secret",
    "auth.issuer",
    "auth.audience",
    "auth.access_ttl_secs",
    "auth.refresh_ttl_secs",
    "auth.login_max_failures",
    "auth.login_window_secs",
    "auth.login_lockout_secs",
    "rate_limit.per_minute",
    "gateway.mqtt_url",
    "gateway.heartbeat_interval_s",
    "gateway.token_skew_s",
    "mqtt.hook_secret",
    "mqtt.embedded.enabled",
    "mqtt.embedded.listen",
    "mqtt.embedded.max_connections",
    "mqtt.embedded.max_packet_bytes",
    "log.format",
    "log.filter",
    "mqtt.enabled",
    "mqtt.url",
    "mqtt.ca_file",
    "mqtt.username",
    "mqtt.password",
    "mqtt.client_id",
    "mqtt.shared_subscription",
    "mqtt.keep_alive_secs",
    "mqtt.batch_max",
    "mqtt.batch_wait_ms",
    "mqtt.workers",
    "mqtt.queue",
    "mqtt.inflight",
    "orders.pay_timeout_secs",
    "orders.unlock_timeout_secs",
    "orders.refund_grace_secs",
    "orders.job_interval_ms",
    "orders.jobs",
    "orders.sandbox",
    "orders.sandbox_key",
    "firmware.vendor_keys",
    "firmware.max_image_bytes",
    "wechatpay.mchid",
    "wechatpay.appid",
    "wechatpay.merchant_serial_no",
    "wechatpay.private_key_file",
    "wechatpay.api_v3_key",
    "wechatpay.platform_certificate_files",
    "wechatpay.public_key_id",
    "wechatpay.public_key_file",
    "wechatpay.notify_url",
    "wechatpay.refund_notify_url",
    "wechatpay.base_url",
    "wechatpay.request_timeout_ms",
    "wechatpay.retry_attempts",
    "wechatpay.breaker_failures",
    "wechatpay.breaker_cool_down_secs",
    "wechatpay.app_secret",
    "wechatpay.oauth_base_url",
];

/// Keys that hold secrets and are therefore read only from the environment, never a file.
const ENV_ONLY_KEYS: &[&str] = &["wechatpay.api_v3_key", "wechatpay.app_secret"];

/// The environment variable that holds the master key (`keys.master_key`, environment only).
pub const MASTER_KEY_ENV: &str = "DMR_MASTER_KEY";

/// How to make a master key, for error messages.
pub const MASTER_KEY_HELP: &str = "set DMR_MASTER_KEY to 32 random bytes in base64 \
     (make one with `openssl rand -base64 32` or `dmr-cloud keys new-master`) and keep it \
     outside the database backups";

/// Parses a base64 (standard or url-safe, padded or not) 32-byte master key.
pub fn parse_master_key(text: &str) -> Result<[u8; 32], String> {
    use base64::Engine as _;
    let t = text.trim();
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    let raw = engines
        .iter()
        .find_map(|e| e.decode(t).ok())
        .ok_or_else(|| format!("not base64; {MASTER_KEY_HELP}"))?;
    <[u8; 32]>::try_from(raw.as_slice())
        .map_err(|_| format!("decodes to {} bytes, not 32; {MASTER_KEY_HELP}", raw.len()))
}

/// The environment variable for a key path.
pub fn env_name(path: &str) -> String {
    format!("DMR_{}", path.replace('.', "_").to_ascii_uppercase())
}

impl Config {
    /// Loads from the process environment and an optional file.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Loads from an explicit environment (tests pass their own).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut issues = Vec::new();
        let mut raw: BTreeMap<String, (Origin, Raw)> = BTreeMap::new();

        if let Some(path) = file {
            match std::fs::read_to_string(path) {
                Err(e) => issues.push(ConfigIssue {
                    path: path.display().to_string(),
                    message: format!("cannot read config file: {e}"),
                }),
                Ok(text) => match text.parse::<toml::Table>() {
                    Err(e) => issues.push(ConfigIssue {
                        path: path.display().to_string(),
                        message: format!("not valid TOML: {e}"),
                    }),
                    Ok(table) => flatten(&table, "", path, &mut raw, &mut issues),
                },
            }
        }

        let env: BTreeMap<String, String> = env.into_iter().collect();
        // The conventional variable works too; the DMR_ one wins when both are set.
        if let Some(url) = env.get("DATABASE_URL") {
            raw.insert(
                "database.url".into(),
                (Origin::Env("DATABASE_URL".into()), Raw::Env(url.clone())),
            );
        }
        for key in KEYS {
            let name = env_name(key);
            if let Some(v) = env.get(&name) {
                raw.insert((*key).into(), (Origin::Env(name), Raw::Env(v.clone())));
            }
        }

        let master_key = match env.get(MASTER_KEY_ENV) {
            None => None,
            Some(text) => match parse_master_key(text) {
                Ok(k) => Some(Secret::new(k)),
                Err(message) => {
                    issues.push(ConfigIssue {
                        path: "keys.master_key".into(),
                        message: format!("{message} (from environment variable {MASTER_KEY_ENV})"),
                    });
                    None
                }
            },
        };

        let mut r = Reader {
            raw: &raw,
            issues: &mut issues,
        };
        let mut config = Config {
            server: ServerConfig {
                listen: r.parsed("server.listen", SocketAddr::from(([127, 0, 0, 1], 8080))),
                public_base_url: r.string("server.public_base_url", "http://127.0.0.1:8080"),
                body_limit_bytes: r.int("server.body_limit_bytes", 1 << 20, 1024, 64 << 20),
                trust_forwarded_for: r.boolean("server.trust_forwarded_for", false),
                web_dir: r.optional_string("server.web_dir").map(PathBuf::from),
            },
            database: DatabaseConfig {
                url: Secret::new(r.string("database.url", "sqlite://dmr-cloud.db")),
                max_connections: r.int("database.max_connections", 10, 1, 1000),
            },
            auth: AuthConfig {
                jwt_secret: r.optional_string("auth.jwt_secret").map(Secret::new),
                issuer: r.string("auth.issuer", "dmr-cloud"),
                audience: r.string("auth.audience", "dmr-console"),
                access_ttl_secs: r.int("auth.access_ttl_secs", 900, 10, 86_400),
                refresh_ttl_secs: r.int("auth.refresh_ttl_secs", 30 * 86_400, 60, 365 * 86_400),
                login_max_failures: r.int("auth.login_max_failures", 5, 1, 1000),
                login_window_secs: r.int("auth.login_window_secs", 900, 1, 86_400),
                login_lockout_secs: r.int("auth.login_lockout_secs", 900, 1, 86_400),
            },
            rate_limit: RateLimitConfig {
                per_minute: r.int("rate_limit.per_minute", 100, 1, 1_000_000),
            },
            keys: KeysConfig { master_key },
            gateway: GatewayLinkConfig {
                mqtt_url: r.string("gateway.mqtt_url", "mqtt://127.0.0.1:1883"),
                heartbeat_interval_s: r.int("gateway.heartbeat_interval_s", 30, 5, 3600),
                token_skew_s: r.int("gateway.token_skew_s", 120, 0, 3600),
            },
            log: LogConfig {
                format: r.choice(
                    "log.format",
                    LogFormat::Json,
                    &[("json", LogFormat::Json), ("pretty", LogFormat::Pretty)],
                ),
                filter: r.string("log.filter", "info"),
            },
            mqtt: MqttConfig {
                enabled: r.boolean("mqtt.enabled", true),
                url: r.string("mqtt.url", DEFAULT_MQTT_URL),
                host: String::new(),
                port: 0,
                tls: false,
                ca_file: r.optional_string("mqtt.ca_file").map(PathBuf::from),
                username: r.string("mqtt.username", "dmr-cloud"),
                password: r.optional_string("mqtt.password").map(Secret::new),
                client_id: r.string("mqtt.client_id", ""),
                shared_subscription: r.boolean("mqtt.shared_subscription", true),
                keep_alive_secs: r.int("mqtt.keep_alive_secs", 30, 5, 3600),
                batch_max: r.int("mqtt.batch_max", 500, 1, 10_000),
                batch_wait_ms: r.int("mqtt.batch_wait_ms", 5, 0, 1000),
                workers: r.int("mqtt.workers", 4, 1, 64),
                queue: r.int("mqtt.queue", 20_000, 10, 1_000_000),
                inflight: r.int("mqtt.inflight", 1000, 1, 65_535),
                hook_secret: r.optional_string("mqtt.hook_secret").map(Secret::new),
                embedded: EmbeddedBrokerConfig {
                    enabled: r.boolean("mqtt.embedded.enabled", true),
                    listen: r.parsed(
                        "mqtt.embedded.listen",
                        SocketAddr::from(([127, 0, 0, 1], 1883)),
                    ),
                    max_connections: r.int("mqtt.embedded.max_connections", 10_000, 1, 1_000_000),
                    max_packet_bytes: r.int(
                        "mqtt.embedded.max_packet_bytes",
                        256 * 1024,
                        1024,
                        16 << 20,
                    ),
                },
            },
            orders: OrdersSection {
                pay_timeout_secs: r.int("orders.pay_timeout_secs", 300, 1, 86_400),
                unlock_timeout_secs: r.int("orders.unlock_timeout_secs", 30, 1, 3600),
                refund_grace_secs: r.int("orders.refund_grace_secs", 120, 0, 86_400),
                job_interval_ms: r.int("orders.job_interval_ms", 1000, 10, 600_000),
                jobs: r.boolean("orders.jobs", true),
                sandbox: r.boolean("orders.sandbox", true),
                sandbox_key: r.optional_string("orders.sandbox_key").map(Secret::new),
            },
            firmware: FirmwareSection {
                vendor_keys: BTreeMap::new(),
                max_image_bytes: r.int(
                    "firmware.max_image_bytes",
                    4 << 20,
                    4096,
                    i64::from(dmr_protocol::firmware::MAX_PAYLOAD)
                        + dmr_protocol::firmware::HEADER_LEN as i64,
                ),
            },
            wechatpay: None,
            wechat_oauth: None,
        };
        config.wechatpay = wechatpay_section(&mut r, &config.server.public_base_url);
        config.wechat_oauth = wechat_oauth_section(
            &mut r,
            config.wechatpay.as_ref(),
            &config.server.public_base_url,
        );
        if let Some(text) = r.optional_string("firmware.vendor_keys") {
            match parse_vendor_keys(&text) {
                Ok(keys) => config.firmware.vendor_keys = keys,
                Err(message) => issues.push(ConfigIssue {
                    path: "firmware.vendor_keys".into(),
                    message: format!(
                        "{message}; write the vendor public keys as ID:BASE64URL, \
                         comma-separated (`dmr-tech fw keygen` prints one)"
                    ),
                }),
            }
        }

        // Cross-field checks, after every key parsed on its own.
        let url = config.database.url.expose();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            issues.push(ConfigIssue {
                path: "database.url".into(),
                message: "must start with sqlite:, postgres:// or postgresql://".into(),
            });
        }
        if let Some(secret) = &config.auth.jwt_secret
            && secret.expose().len() < 32
        {
            issues.push(ConfigIssue {
                path: "auth.jwt_secret".into(),
                message: "must be at least 32 characters".into(),
            });
        }
        let mqtt = &config.gateway.mqtt_url;
        if !(mqtt.starts_with("mqtt://") || mqtt.starts_with("mqtts://")) {
            issues.push(ConfigIssue {
                path: "gateway.mqtt_url".into(),
                message: "must be an mqtt:// or mqtts:// URL".into(),
            });
        }
        for (path, secret) in [
            ("mqtt.password", &config.mqtt.password),
            ("mqtt.hook_secret", &config.mqtt.hook_secret),
        ] {
            if let Some(secret) = secret
                && secret.expose().len() < 16
            {
                issues.push(ConfigIssue {
                    path: path.into(),
                    message: "must be at least 16 characters (try `openssl rand -base64 24`)"
                        .into(),
                });
            }
        }
        let base = &config.server.public_base_url;
        if !(base.starts_with("http://") || base.starts_with("https://")) || base.ends_with('/') {
            issues.push(ConfigIssue {
                path: "server.public_base_url".into(),
                message: "must be an http(s) URL without a trailing slash".into(),
            });
        }
        if let Some(dir) = &config.server.web_dir
            && (!dir.join("index.html").is_file() || !dir.join("h5").join("index.html").is_file())
        {
            issues.push(ConfigIssue {
                path: "server.web_dir".into(),
                message: format!(
                    "{} has no index.html and h5/index.html; build the front end \
                     (cd cloud/web && npm ci && npm run build) or unset the key",
                    dir.display()
                ),
            });
        }
        if config
            .log
            .filter
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            issues.push(ConfigIssue {
                path: "log.filter".into(),
                message: "not a valid tracing filter directive".into(),
            });
        }

        match MqttConfig::parse_url(&config.mqtt.url) {
            Ok((tls, host, port)) => {
                config.mqtt.tls = tls;
                config.mqtt.host = host;
                config.mqtt.port = port;
            }
            Err(message) => issues.push(ConfigIssue {
                path: "mqtt.url".into(),
                message: format!("{message}, e.g. mqtt://127.0.0.1:1883"),
            }),
        }
        if let Some(ca) = &config.mqtt.ca_file
            && !ca.is_file()
        {
            issues.push(ConfigIssue {
                path: "mqtt.ca_file".into(),
                message: format!("{} is not a readable file", ca.display()),
            });
        }
        if config.mqtt.ca_file.is_some() && !config.mqtt.tls {
            issues.push(ConfigIssue {
                path: "mqtt.ca_file".into(),
                message: "only used with an mqtts:// url; remove it or switch mqtt.url".into(),
            });
        }
        if config.mqtt.username.is_empty() || config.mqtt.username.starts_with("gw:") {
            issues.push(ConfigIssue {
                path: "mqtt.username".into(),
                message: "must be non-empty and must not start with gw: (gateway accounts)".into(),
            });
        }
        if config.mqtt.client_id.len() > 64 || config.mqtt.client_id.contains(['+', '#', '/']) {
            issues.push(ConfigIssue {
                path: "mqtt.client_id".into(),
                message: "at most 64 characters, without + # or /".into(),
            });
        }
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError(issues))
        }
    }
}

/// `DMR_` variables that match no key (likely typos), for a warning at start-up. Variables
/// of the test harness and the `--config` option are not configuration keys.
pub fn unknown_env_keys(env: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    let known: Vec<String> = KEYS.iter().map(|k| env_name(k)).collect();
    let mut unknown: Vec<String> = env
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("DMR_"))
        .filter(|k| !known.contains(k))
        .filter(|k| {
            k != "DMR_CONFIG"
                && k != "DMR_REQUIRE_PG"
                && k != MASTER_KEY_ENV
                && !k.starts_with("DMR_TEST_")
        })
        .collect();
    unknown.sort();
    unknown
}

fn flatten(
    table: &toml::Table,
    prefix: &str,
    file: &Path,
    out: &mut BTreeMap<String, (Origin, Raw)>,
    issues: &mut Vec<ConfigIssue>,
) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(inner) => flatten(inner, &path, file, out, issues),
            _ if path == "keys.master_key" => issues.push(ConfigIssue {
                path,
                message: format!(
                    "the master key is read only from the environment ({MASTER_KEY_ENV}), \
                     never from a file (in file {}); remove it there",
                    file.display()
                ),
            }),
            _ if ENV_ONLY_KEYS.contains(&path.as_str()) => issues.push(ConfigIssue {
                message: format!(
                    "a secret, read only from the environment ({}), never from a file \
                     (in file {}); remove it there",
                    env_name(&path),
                    file.display()
                ),
                path,
            }),
            _ if KEYS.contains(&path.as_str()) => {
                out.insert(
                    path,
                    (Origin::File(file.to_path_buf()), Raw::Toml(v.clone())),
                );
            }
            _ => issues.push(ConfigIssue {
                path,
                message: format!("unknown key (in file {})", file.display()),
            }),
        }
    }
}

/// The `[wechatpay]` section: nothing when `mchid` is unset (and then no other key may be
/// set, so a half-written section is not silently ignored); otherwise every key is read, the
/// key files loaded and the whole thing validated by the client's own checks, all problems
/// reported at once. File contents and the API v3 key never reach a message.
fn wechatpay_section(
    r: &mut Reader<'_>,
    public_base_url: &str,
) -> Option<dmr_wechatpay::WechatPayConfig> {
    let set: Vec<&str> = KEYS
        .iter()
        .copied()
        .filter(|k| k.starts_with("wechatpay.") && r.raw.contains_key(*k))
        .collect();
    let Some(mchid) = r.optional_string("wechatpay.mchid") else {
        for k in set {
            r.issues.push(ConfigIssue {
                path: k.into(),
                message: "set wechatpay.mchid to enable WeChat Pay, or remove this key".into(),
            });
        }
        return None;
    };
    let before = r.issues.len();
    fn required(r: &mut Reader<'_>, path: &str) -> String {
        let v = r.optional_string(path).unwrap_or_default();
        if v.is_empty() {
            r.issues.push(ConfigIssue {
                path: path.into(),
                message: "required when wechatpay.mchid is set".into(),
            });
        }
        v
    }
    fn read(r: &mut Reader<'_>, path: &str, file: &str) -> String {
        match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) => {
                r.issues.push(ConfigIssue {
                    path: path.into(),
                    message: format!("cannot read {file}: {e}"),
                });
                String::new()
            }
        }
    }
    let appid = required(r, "wechatpay.appid");
    let serial = required(r, "wechatpay.merchant_serial_no");
    let key_file = required(r, "wechatpay.private_key_file");
    let api_v3_key = r
        .optional_string("wechatpay.api_v3_key")
        .unwrap_or_default();
    if api_v3_key.is_empty() {
        r.issues.push(ConfigIssue {
            path: "wechatpay.api_v3_key".into(),
            message: format!(
                "required when wechatpay.mchid is set; put the 32-character API v3 key in {}",
                env_name("wechatpay.api_v3_key")
            ),
        });
    }
    let private_key = if key_file.is_empty() {
        String::new()
    } else {
        read(r, "wechatpay.private_key_file", &key_file)
    };
    let certs: Vec<String> = r
        .optional_string("wechatpay.platform_certificate_files")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(String::from)
        .collect::<Vec<_>>()
        .into_iter()
        .map(|f| read(r, "wechatpay.platform_certificate_files", &f))
        .collect();
    let public_key = match (
        r.optional_string("wechatpay.public_key_id"),
        r.optional_string("wechatpay.public_key_file"),
    ) {
        (None, None) => None,
        (Some(id), Some(file)) => Some(dmr_wechatpay::PublicKeyConfig {
            id,
            pem: read(r, "wechatpay.public_key_file", &file),
        }),
        _ => {
            r.issues.push(ConfigIssue {
                path: "wechatpay.public_key_id".into(),
                message: "wechatpay.public_key_id and wechatpay.public_key_file go together".into(),
            });
            None
        }
    };
    let default_notify = format!("{public_base_url}/api/v1/payments/notify/wechatpay");
    let notify_url = r.string("wechatpay.notify_url", &default_notify);
    // Refund notifications come to the same route (it tells them apart by event type).
    let refund_notify_url = r.string("wechatpay.refund_notify_url", &notify_url);
    let base_url = r.string("wechatpay.base_url", dmr_wechatpay::PRODUCTION_BASE_URL);
    let timeout_ms: u64 = r.int("wechatpay.request_timeout_ms", 10_000, 100, 120_000);
    let attempts: u32 = r.int("wechatpay.retry_attempts", 3, 1, 10);
    let failures: u32 = r.int("wechatpay.breaker_failures", 5, 1, 1000);
    let cool_down: u64 = r.int("wechatpay.breaker_cool_down_secs", 30, 1, 3600);
    if r.issues.len() > before {
        return None;
    }
    let mut c = dmr_wechatpay::WechatPayConfig::new(
        mchid,
        appid,
        serial,
        private_key,
        api_v3_key,
        notify_url,
    );
    c.platform_certificates_pem = certs;
    c.wechatpay_public_key = public_key;
    c.refund_notify_url = Some(refund_notify_url);
    c.base_url = base_url;
    c.request_timeout = std::time::Duration::from_millis(timeout_ms);
    c.connect_timeout = c.request_timeout.min(std::time::Duration::from_secs(5));
    c.retry.max_attempts = attempts;
    c.breaker.failure_threshold = failures;
    c.breaker.cool_down = std::time::Duration::from_secs(cool_down);
    match c.validate() {
        Ok(_) => Some(c),
        Err(dmr_wechatpay::Error::Config(problems)) => {
            for p in problems {
                r.issues.push(ConfigIssue {
                    path: "wechatpay".into(),
                    message: p,
                });
            }
            None
        }
        Err(e) => {
            r.issues.push(ConfigIssue {
                path: "wechatpay".into(),
                message: e.to_string(),
            });
            None
        }
    }
}

/// The OAuth half of `[wechatpay]`: nothing without `wechatpay.app_secret` (the page then
/// pays by Native QR code only). The secret is checked for shape only and never echoed.
fn wechat_oauth_section(
    r: &mut Reader<'_>,
    wechatpay: Option<&dmr_wechatpay::WechatPayConfig>,
    public_base_url: &str,
) -> Option<WechatOAuthConfig> {
    let secret = r.optional_string("wechatpay.app_secret");
    let base_url = r.string("wechatpay.oauth_base_url", "https://api.weixin.qq.com");
    // Without mchid, wechatpay_section has already reported every wechatpay.* key.
    let wx = wechatpay?;
    let secret = secret?;
    let mut ok = true;
    // WeChat AppSecrets are 32 hex characters; allow some room but refuse anything that
    // cannot be one (a path, a quoted value, whitespace) without repeating it.
    if !(16..=64).contains(&secret.len()) || !secret.chars().all(|c| c.is_ascii_alphanumeric()) {
        r.issues.push(ConfigIssue {
            path: "wechatpay.app_secret".into(),
            message: format!(
                "must be the official account's AppSecret (32 letters and digits), set in {}",
                env_name("wechatpay.app_secret")
            ),
        });
        ok = false;
    }
    let base_url = base_url.trim_end_matches('/').to_string();
    if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
        r.issues.push(ConfigIssue {
            path: "wechatpay.oauth_base_url".into(),
            message: format!("{base_url:?} is not an http(s) URL"),
        });
        ok = false;
    }
    if !ok {
        return None;
    }
    Some(WechatOAuthConfig {
        appid: wx.appid.clone(),
        app_secret: Secret::new(secret),
        base_url,
        redirect_uri: format!(
            "{}/api/v1/public/wechat/oauth/callback",
            public_base_url.trim_end_matches('/')
        ),
        timeout: wx.request_timeout,
    })
}

struct Reader<'a> {
    raw: &'a BTreeMap<String, (Origin, Raw)>,
    issues: &'a mut Vec<ConfigIssue>,
}

impl Reader<'_> {
    fn bad(&mut self, path: &str, origin: &Origin, message: impl fmt::Display) {
        self.issues.push(ConfigIssue {
            path: path.into(),
            message: format!("{message} (from {origin})"),
        });
    }

    fn optional_string(&mut self, path: &str) -> Option<String> {
        let (origin, raw) = self.raw.get(path)?;
        match raw {
            Raw::Env(s) => Some(s.clone()),
            Raw::Toml(toml::Value::String(s)) => Some(s.clone()),
            Raw::Toml(other) => {
                self.bad(
                    path,
                    origin,
                    format!("expected a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn string(&mut self, path: &str, default: &str) -> String {
        self.optional_string(path)
            .unwrap_or_else(|| default.to_string())
    }

    fn parsed<T: std::str::FromStr>(&mut self, path: &str, fallback: T) -> T
    where
        T::Err: fmt::Display,
    {
        let Some((origin, _)) = self.raw.get(path) else {
            return fallback;
        };
        let origin = origin.clone();
        match self.optional_string(path) {
            None => fallback,
            Some(s) => match s.parse::<T>() {
                Ok(v) => v,
                Err(e) => {
                    self.bad(path, &origin, format!("cannot parse {s:?}: {e}"));
                    fallback
                }
            },
        }
    }

    fn int<T: TryFrom<i64> + Copy>(&mut self, path: &str, default: T, min: i64, max: i64) -> T {
        let Some((origin, raw)) = self.raw.get(path) else {
            return default;
        };
        let origin = origin.clone();
        let value: Result<i64, String> = match raw {
            Raw::Toml(toml::Value::Integer(i)) => Ok(*i),
            Raw::Toml(other) => Err(format!("expected an integer, found {}", other.type_str())),
            Raw::Env(s) => s
                .trim()
                .parse::<i64>()
                .map_err(|_| format!("expected an integer, found {s:?}")),
        };
        match value {
            Err(e) => {
                self.bad(path, &origin, e);
                default
            }
            Ok(v) if v < min || v > max => {
                self.bad(path, &origin, format!("{v} is outside {min}..={max}"));
                default
            }
            Ok(v) => T::try_from(v).unwrap_or(default),
        }
    }

    fn boolean(&mut self, path: &str, default: bool) -> bool {
        let Some((origin, raw)) = self.raw.get(path) else {
            return default;
        };
        let origin = origin.clone();
        match raw {
            Raw::Toml(toml::Value::Boolean(b)) => *b,
            Raw::Env(s) if s == "true" || s == "1" => true,
            Raw::Env(s) if s == "false" || s == "0" => false,
            Raw::Toml(other) => {
                let t = other.type_str();
                self.bad(path, &origin, format!("expected true or false, found {t}"));
                default
            }
            Raw::Env(s) => {
                let s = s.clone();
                self.bad(
                    path,
                    &origin,
                    format!("expected true or false, found {s:?}"),
                );
                default
            }
        }
    }

    fn choice<T: Copy>(&mut self, path: &str, default: T, options: &[(&str, T)]) -> T {
        let Some((origin, _)) = self.raw.get(path) else {
            return default;
        };
        let origin = origin.clone();
        let Some(s) = self.optional_string(path) else {
            return default;
        };
        match options.iter().find(|(name, _)| *name == s) {
            Some((_, v)) => *v,
            None => {
                let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                self.bad(path, &origin, format!("{s:?} is not one of {names:?}"));
                default
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load() {
        let c = Config::load_from(None, env(&[])).unwrap();
        assert_eq!(c.server.listen.port(), 8080);
        assert_eq!(c.rate_limit.per_minute, 100);
        assert_eq!(c.database.url.expose(), "sqlite://dmr-cloud.db");
    }

    #[test]
    fn env_overrides_file_and_every_bad_key_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[server]\nlisten = \"nope\"\nbody_limit_bytes = \"big\"\n[auth]\naccess_ttl_secs = 5\nbogus = 1\n[rate_limit]\nper_minute = 7\n",
        )
        .unwrap();
        let err = Config::load_from(
            Some(&file),
            env(&[
                ("DMR_LOG_FORMAT", "xml"),
                ("DMR_RATE_LIMIT_PER_MINUTE", "9"),
            ]),
        )
        .unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|i| i.path.as_str()).collect();
        for p in [
            "server.listen",
            "server.body_limit_bytes",
            "auth.access_ttl_secs",
            "auth.bogus",
            "log.format",
        ] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
        assert_eq!(err.0.len(), 5, "{err}");

        std::fs::write(&file, "[rate_limit]\nper_minute = 7\n").unwrap();
        let c = Config::load_from(Some(&file), env(&[("DMR_RATE_LIMIT_PER_MINUTE", "9")])).unwrap();
        assert_eq!(c.rate_limit.per_minute, 9);
        let c = Config::load_from(Some(&file), env(&[])).unwrap();
        assert_eq!(c.rate_limit.per_minute, 7);
    }

    #[test]
    fn mqtt_defaults_and_checks() {
        let c = Config::load_from(None, env(&[])).unwrap();
        assert!(c.mqtt.embedded.enabled);
        assert_eq!(
            c.mqtt.embedded.listen,
            SocketAddr::from(([127, 0, 0, 1], 1883))
        );
        assert_eq!(c.mqtt.embedded.max_packet_bytes, 256 * 1024);
        assert!(c.mqtt.password.is_none() && c.mqtt.hook_secret.is_none());
        let err = Config::load_from(
            None,
            env(&[
                ("DMR_MQTT_HOOK_SECRET", "short"),
                ("DMR_MQTT_PASSWORD", "short-too"),
                ("DMR_MQTT_EMBEDDED_LISTEN", "nowhere"),
                ("DMR_MQTT_EMBEDDED_MAX_PACKET_BYTES", "10"),
                ("DMR_MQTT_EMBEDDED_ENABLED", "maybe"),
            ]),
        )
        .unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|i| i.path.as_str()).collect();
        for p in [
            "mqtt.hook_secret",
            "mqtt.password",
            "mqtt.embedded.listen",
            "mqtt.embedded.max_packet_bytes",
            "mqtt.embedded.enabled",
        ] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
        assert!(
            !err.to_string().contains("short-too"),
            "secrets never print"
        );
        let c = Config::load_from(
            None,
            env(&[
                ("DMR_MQTT_EMBEDDED_ENABLED", "false"),
                ("DMR_MQTT_HOOK_SECRET", "a-long-enough-hook-secret"),
            ]),
        )
        .unwrap();
        assert!(!c.mqtt.embedded.enabled);
        assert_eq!(
            c.mqtt.hook_secret.unwrap().expose(),
            "a-long-enough-hook-secret"
        );
    }

    #[test]
    fn unknown_env_keys_are_found() {
        let found = unknown_env_keys(env(&[
            ("DMR_DATABSE_URL", "x"),
            ("DMR_DATABASE_URL", "x"),
            ("DMR_TEST_DATABASE_URL", "x"),
            ("HOME", "/root"),
        ]));
        assert_eq!(found, vec!["DMR_DATABSE_URL".to_string()]);
    }

    #[test]
    fn secrets_never_print() {
        let c = Config::load_from(
            None,
            env(&[
                ("DATABASE_URL", "postgres://u:hunter2hunter2@h/db"),
                (
                    "DMR_AUTH_JWT_SECRET",
                    "0123456789abcdef0123456789abcdef-s3cr3t",
                ),
            ]),
        )
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }

    #[test]
    fn firmware_vendor_keys_are_validated() {
        let key = dmr_protocol::keys::signing_key_from_seed([3u8; 32]).verifying_key();
        let b64 = dmr_protocol::keys::public_b64u(&key);
        let c = Config::load_from(
            None,
            env(&[
                (
                    "DMR_FIRMWARE_VENDOR_KEYS",
                    format!(" 7:{b64} , 9:{b64}").as_str(),
                ),
                ("DMR_FIRMWARE_MAX_IMAGE_BYTES", "65536"),
            ]),
        )
        .unwrap();
        assert_eq!(c.firmware.vendor_keys.len(), 2);
        assert_eq!(c.firmware.vendor_keys[&7], key);
        assert_eq!(c.firmware.max_image_bytes, 65536);
        assert!(
            Config::load_from(None, env(&[]))
                .unwrap()
                .firmware
                .vendor_keys
                .is_empty()
        );
        for bad in [
            "7".to_string(),
            format!("x:{b64}"),
            "7:not-a-key".to_string(),
            format!("7:{b64},7:{b64}"),
        ] {
            let e = Config::load_from(None, env(&[("DMR_FIRMWARE_VENDOR_KEYS", bad.as_str())]))
                .unwrap_err();
            assert!(
                e.0.iter().any(|i| i.path == "firmware.vendor_keys"),
                "{bad}: {e}"
            );
        }
        let e =
            Config::load_from(None, env(&[("DMR_FIRMWARE_MAX_IMAGE_BYTES", "10")])).unwrap_err();
        assert_eq!(e.0[0].path, "firmware.max_image_bytes");
    }

    #[test]
    fn master_key_comes_from_the_environment_only() {
        let key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
        let c = Config::load_from(None, env(&[("DMR_MASTER_KEY", key)])).unwrap();
        assert_eq!(c.keys.master_key.unwrap().expose(), &[1u8; 32]);
        assert!(
            !format!(
                "{:?}",
                Config::load_from(None, env(&[("DMR_MASTER_KEY", key)])).unwrap()
            )
            .contains(key)
        );
        let c = Config::load_from(None, env(&[])).unwrap();
        assert!(c.keys.master_key.is_none());
        let err = Config::load_from(None, env(&[("DMR_MASTER_KEY", "c2hvcnQ=")])).unwrap_err();
        assert_eq!(err.0[0].path, "keys.master_key");
        assert!(
            err.0[0].message.contains("openssl rand -base64 32"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, format!("[keys]\nmaster_key = \"{key}\"\n")).unwrap();
        let err = Config::load_from(Some(&file), env(&[])).unwrap_err();
        assert!(
            err.to_string().contains("only from the environment"),
            "{err}"
        );
        assert!(unknown_env_keys(env(&[("DMR_MASTER_KEY", key)])).is_empty());
    }

    #[test]
    fn mqtt_section_parses_and_collects_every_error() {
        let c = Config::load_from(None, env(&[])).unwrap();
        assert_eq!(
            (c.mqtt.host.as_str(), c.mqtt.port, c.mqtt.tls),
            ("127.0.0.1", 1883, false)
        );
        assert!(c.mqtt.shared_subscription);
        let c = Config::load_from(
            None,
            env(&[
                ("DMR_MQTT_URL", "mqtts://broker.example:8884"),
                ("DMR_MQTT_SHARED_SUBSCRIPTION", "false"),
                ("DMR_MQTT_PASSWORD", "pw-s3cr3t-long-enough"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (c.mqtt.host.as_str(), c.mqtt.port, c.mqtt.tls),
            ("broker.example", 8884, true)
        );
        assert!(!c.mqtt.shared_subscription);
        assert!(!format!("{c:?}").contains("pw-s3cr3t-long-enough"));
        let err = Config::load_from(
            None,
            env(&[
                ("DMR_MQTT_URL", "tcp://x:1"),
                ("DMR_MQTT_USERNAME", "gw:abc"),
                ("DMR_MQTT_BATCH_MAX", "0"),
                ("DMR_MQTT_ENABLED", "maybe"),
            ]),
        )
        .unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|i| i.path.as_str()).collect();
        for p in [
            "mqtt.url",
            "mqtt.username",
            "mqtt.batch_max",
            "mqtt.enabled",
        ] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
        for bad in [
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:x",
            "mqtt://u:p@h",
            "mqtt://h/x",
        ] {
            assert!(MqttConfig::parse_url(bad).is_err(), "{bad}");
        }
        assert_eq!(
            MqttConfig::parse_url("mqtt://h").unwrap(),
            (false, "h".into(), 1883)
        );
    }

    #[test]
    fn short_jwt_secret_and_bad_url_are_refused() {
        let err = Config::load_from(
            None,
            env(&[
                ("DMR_AUTH_JWT_SECRET", "short"),
                ("DMR_DATABASE_URL", "mysql://x"),
            ]),
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        assert!(!err.to_string().contains("short"));
    }

    /// The crate's conformance-vector test keys, written to files as an operator would.
    fn wechatpay_files(dir: &Path) -> (Vec<(String, String)>, String) {
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/wechatpay/tests/vectors/vectors.json"
            ))
            .unwrap(),
        )
        .unwrap();
        let k = &v["keys"];
        let s = |n: &str| k[n].as_str().unwrap().to_string();
        let key = dir.join("apiclient_key.pem");
        let cert = dir.join("platform.pem");
        let public = dir.join("pub_key.pem");
        std::fs::write(&key, s("merchant_private_key_pem")).unwrap();
        std::fs::write(&cert, s("platform_certificate_pem")).unwrap();
        std::fs::write(&public, s("wechatpay_public_key_pem")).unwrap();
        let e = vec![
            (
                "DMR_SERVER_PUBLIC_BASE_URL",
                "https://pay.example.com".to_string(),
            ),
            ("DMR_WECHATPAY_MCHID", s("mchid")),
            ("DMR_WECHATPAY_APPID", s("appid")),
            ("DMR_WECHATPAY_MERCHANT_SERIAL_NO", s("merchant_serial_no")),
            ("DMR_WECHATPAY_PRIVATE_KEY_FILE", key.display().to_string()),
            ("DMR_WECHATPAY_API_V3_KEY", s("api_v3_key")),
            (
                "DMR_WECHATPAY_PLATFORM_CERTIFICATE_FILES",
                cert.display().to_string(),
            ),
            ("DMR_WECHATPAY_PUBLIC_KEY_ID", s("wechatpay_public_key_id")),
            (
                "DMR_WECHATPAY_PUBLIC_KEY_FILE",
                public.display().to_string(),
            ),
        ];
        (
            e.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            s("api_v3_key"),
        )
    }

    #[test]
    fn wechatpay_section_loads_validates_and_keeps_secrets() {
        let c = Config::load_from(None, env(&[])).unwrap();
        assert!(c.wechatpay.is_none(), "off unless configured");
        let dir = tempfile::tempdir().unwrap();
        let (vars, v3) = wechatpay_files(dir.path());
        let c = Config::load_from(None, vars.clone()).unwrap();
        let wx = c.wechatpay.as_ref().unwrap();
        assert_eq!(
            wx.notify_url,
            "https://pay.example.com/api/v1/payments/notify/wechatpay"
        );
        assert_eq!(
            wx.refund_notify_url.as_deref(),
            Some(wx.notify_url.as_str())
        );
        assert_eq!(wx.base_url, dmr_wechatpay::PRODUCTION_BASE_URL);
        assert_eq!(wx.platform_certificates_pem.len(), 1);
        assert!(wx.wechatpay_public_key.is_some());
        let shown = format!("{c:?}");
        assert!(!shown.contains(&v3), "the API v3 key never prints");
        assert!(
            !shown.contains("BEGIN PRIVATE KEY"),
            "the private key never prints"
        );

        // Half a section, an unreadable key file, a bad key, an http notify URL: all reported.
        let err = Config::load_from(None, env(&[("DMR_WECHATPAY_APPID", "wx1")])).unwrap_err();
        assert_eq!(err.0[0].path, "wechatpay.appid", "{err}");
        let mut bad = vars.clone();
        bad.retain(|(k, _)| k != "DMR_WECHATPAY_API_V3_KEY" && k != "DMR_SERVER_PUBLIC_BASE_URL");
        bad.push((
            "DMR_WECHATPAY_PRIVATE_KEY_FILE".into(),
            "/nonexistent/key.pem".into(),
        ));
        let err = Config::load_from(None, bad).unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|i| i.path.as_str()).collect();
        assert!(paths.contains(&"wechatpay.api_v3_key"), "{err}");
        assert!(paths.contains(&"wechatpay.private_key_file"), "{err}");
        let mut bad = vars.clone();
        bad.push(("DMR_WECHATPAY_API_V3_KEY".into(), "too-short-v3-key".into()));
        bad.push((
            "DMR_WECHATPAY_NOTIFY_URL".into(),
            "http://plain.example".into(),
        ));
        let err = Config::load_from(None, bad).unwrap_err().to_string();
        assert!(
            err.contains("api_v3_key") && err.contains("notify_url"),
            "{err}"
        );
        assert!(!err.contains("too-short-v3-key"), "{err}");
        std::fs::write(dir.path().join("apiclient_key.pem"), "not a key").unwrap();
        let err = Config::load_from(None, vars.clone())
            .unwrap_err()
            .to_string();
        assert!(err.contains("merchant_private_key_pem"), "{err}");

        // The API v3 key is a secret: environment only.
        let file = dir.path().join("c.toml");
        std::fs::write(&file, format!("[wechatpay]\napi_v3_key = \"{v3}\"\n")).unwrap();
        let err = Config::load_from(Some(&file), vars)
            .unwrap_err()
            .to_string();
        assert!(err.contains("DMR_WECHATPAY_API_V3_KEY"), "{err}");
        assert!(!err.contains(&v3), "{err}");
    }
    #[test]
    fn wechat_oauth_needs_the_app_secret_from_the_environment_only() {
        let dir = tempfile::tempdir().unwrap();
        let (vars, _) = wechatpay_files(dir.path());
        let c = Config::load_from(None, vars.clone()).unwrap();
        assert!(c.wechat_oauth.is_none(), "no app secret: Native only");

        let secret = "0123456789abcdef0123456789ABCDEF";
        let mut with = vars.clone();
        with.push(("DMR_WECHATPAY_APP_SECRET".into(), secret.into()));
        let c = Config::load_from(None, with.clone()).unwrap();
        let o = c.wechat_oauth.as_ref().unwrap();
        assert_eq!(o.appid, c.wechatpay.as_ref().unwrap().appid);
        assert_eq!(o.base_url, "https://api.weixin.qq.com");
        assert_eq!(
            o.redirect_uri,
            "https://pay.example.com/api/v1/public/wechat/oauth/callback"
        );
        assert!(
            !format!("{c:?}").contains(secret),
            "the secret never prints"
        );

        // A bad secret or base URL is reported without the value.
        let mut bad = vars.clone();
        bad.push(("DMR_WECHATPAY_APP_SECRET".into(), "not a secret!".into()));
        bad.push(("DMR_WECHATPAY_OAUTH_BASE_URL".into(), "ftp://x".into()));
        let err = Config::load_from(None, bad).unwrap_err().to_string();
        assert!(
            err.contains("wechatpay.app_secret") && err.contains("oauth_base_url"),
            "{err}"
        );
        assert!(!err.contains("not a secret!"), "{err}");

        // Environment only, and only with the rest of the section.
        let file = dir.path().join("c.toml");
        std::fs::write(&file, format!("[wechatpay]\napp_secret = \"{secret}\"\n")).unwrap();
        let err = Config::load_from(Some(&file), vars)
            .unwrap_err()
            .to_string();
        assert!(err.contains("DMR_WECHATPAY_APP_SECRET"), "{err}");
        assert!(!err.contains(secret), "{err}");
        let err = Config::load_from(None, env(&[("DMR_WECHATPAY_APP_SECRET", secret)]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("wechatpay.app_secret") && err.contains("mchid"),
            "{err}"
        );
    }
}
