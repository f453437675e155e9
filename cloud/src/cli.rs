//! The command line: `serve`, `migrate`, `check-config`, `backup --to FILE`,
//! `admin create-user` and `keys rotate|list|new-master`. Configuration is loaded and validated before anything else; a bad
//! configuration exits with status 78 before a port or a database is opened.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::{Config, EXIT_CONFIG, LogFormat, Secret};
use crate::db::Db;
use crate::users::handlers::{Creator, create_user};
use crate::users::types::CreateUser;

#[derive(Debug, Parser)]
#[command(name = "dmr-cloud", version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("DMR_BUILD_COMMIT"), ")"), about = "Dumeiren cloud control plane")]
pub struct Cli {
    /// TOML configuration file (values there are overridden by DMR_* environment variables).
    #[arg(long, global = true, env = "DMR_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API (creates and migrates a SQLite database on first start).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Validate the configuration, print it (secrets redacted) and exit.
    CheckConfig,
    /// Copy a SQLite database online into a new file (PostgreSQL: use pg_dump).
    Backup {
        /// The new file to write; must not exist.
        #[arg(long)]
        to: PathBuf,
    },
    /// Administration.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Cloud signing keys (need DMR_MASTER_KEY, except new-master).
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a new active signing key; the current one stays trusted for the overlap.
    Rotate {
        /// Hours the previous key stays trusted (gateways learn the new key at their next sync).
        #[arg(long, default_value_t = crate::link::keys::DEFAULT_OVERLAP_HOURS)]
        overlap_hours: u64,
    },
    /// List the signing keys (public halves and status).
    List,
    /// Print a fresh random master key (base64) for DMR_MASTER_KEY.
    NewMaster,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a user: a platform admin, or a user of a merchant. The password is read from
    /// --password-file or the first line of standard input, never from the command line.
    CreateUser {
        #[arg(long)]
        username: String,
        /// platform_admin, merchant_owner, merchant_staff or technician.
        #[arg(long, default_value = "platform_admin")]
        role: String,
        /// Required for merchant roles.
        #[arg(long)]
        merchant_id: Option<String>,
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long)]
        phone: Option<String>,
        /// File whose first line is the password.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
}

/// Entry point used by `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dmr-cloud: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(&config);
    let needs_master = matches!(
        cli.command,
        Command::Serve | Command::Keys(KeysCommand::Rotate { .. } | KeysCommand::List)
    );
    if needs_master && config.keys.master_key.is_none() {
        eprintln!(
            "dmr-cloud: invalid configuration:\n  - keys.master_key: missing; {}",
            crate::config::MASTER_KEY_HELP
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    for name in crate::config::unknown_env_keys(std::env::vars()) {
        tracing::warn!(%name, "environment variable matches no configuration key; ignored");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dmr-cloud: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "failed");
            eprintln!("dmr-cloud: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // try_init: a second initialisation (tests) is not an error worth dying for.
    let _ = match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

async fn dispatch(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve => crate::app::run(config).await,
        Command::CheckConfig => {
            println!("configuration OK\n{config:#?}");
            Ok(())
        }
        Command::Migrate => {
            let db = open(&config).await?;
            db.migrate().await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Backup { to } => {
            // Decided from the URL, so the answer does not depend on reaching the server.
            if crate::db::Backend::of_url(config.database.url.expose())?
                == crate::db::Backend::Postgres
            {
                anyhow::bail!("{}", crate::db::PG_BACKUP_HINT);
            }
            let db = Db::connect(config.database.url.expose(), 1).await?;
            db.backup_to(&to).await?;
            println!("backup written to {}", to.display());
            Ok(())
        }
        Command::Keys(KeysCommand::NewMaster) => {
            println!("{}", crate::link::keys::new_master_key());
            Ok(())
        }
        Command::Keys(cmd) => {
            let master = config
                .keys
                .master_key
                .clone()
                .context(crate::config::MASTER_KEY_HELP)?;
            let db = open(&config).await?;
            db.migrate().await?;
            let ring = crate::link::keys::KeyRing::new(db, master);
            ring.ensure().await?;
            match cmd {
                KeysCommand::Rotate { overlap_hours } => {
                    let id = ring
                        .rotate(std::time::Duration::from_secs(
                            overlap_hours.saturating_mul(3600),
                        ))
                        .await?;
                    println!(
                        "key {id} is now active; the previous key stays trusted for {overlap_hours} h"
                    );
                }
                KeysCommand::List | KeysCommand::NewMaster => {
                    for k in ring.list().await? {
                        println!(
                            "{}\t{}\t{}\tcreated {}\tretire_after {}",
                            k.key_id,
                            k.status,
                            k.public_key,
                            k.created_at,
                            k.retire_after
                                .map(|t| t.to_string())
                                .unwrap_or_else(|| "-".into())
                        );
                    }
                }
            }
            Ok(())
        }
        Command::Admin(AdminCommand::CreateUser {
            username,
            role,
            merchant_id,
            display_name,
            phone,
            password_file,
        }) => {
            let password = read_password(password_file)?;
            let db = open(&config).await?;
            db.migrate().await?;
            let input = CreateUser {
                display_name: display_name.unwrap_or_else(|| username.clone()),
                username,
                password: password.expose().clone(),
                role,
                phone,
                merchant_id,
            };
            let user = create_user(&db, Creator::CommandLine, input)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "created user {} ({}, id {})",
                user.username, user.role, user.id
            );
            Ok(())
        }
    }
}

async fn open(config: &Config) -> anyhow::Result<Db> {
    Db::connect(
        config.database.url.expose(),
        config.database.max_connections,
    )
    .await
}

fn read_password(file: Option<PathBuf>) -> anyhow::Result<Secret<String>> {
    let line = match file {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading password file {}", path.display()))?;
            text.lines().next().unwrap_or("").to_string()
        }
        None => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    if line.is_empty() {
        anyhow::bail!("empty password (give it with --password-file or on standard input)");
    }
    Ok(Secret::new(line))
}
