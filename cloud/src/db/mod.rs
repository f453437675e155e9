//! The database: one `sqlx` Any pool that talks to SQLite (the default, a file created and
//! migrated on first start, in WAL mode) or PostgreSQL, with the same SQL on both. The SQL
//! stays portable by convention: text UUIDs, BIGINT fen and Unix milliseconds, JSON as TEXT,
//! `$n` placeholders (SQLite accepts them too), no booleans, no backend-only functions.
//! Migrations are append-only numbered files under `cloud/migrations/`, embedded in the
//! binary.

pub mod lease;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor as _};

/// What `backup` says for PostgreSQL, whose own tool does this job properly.
pub const PG_BACKUP_HINT: &str = "backup --to only copies SQLite databases; for PostgreSQL use \
     pg_dump (e.g. `pg_dump --format=custom --file=FILE \"$DATABASE_URL\"`)";

/// Which engine a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of_url(url: &str) -> anyhow::Result<Backend> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            bail!("unsupported database URL scheme (use sqlite: or postgres://)")
        }
    }
}

/// The pools plus the knowledge of which engine sits behind them.
///
/// `pool` takes every write and whatever must see its own writes; `read` is for reads that
/// may run beside the writes (console lists, exports, dashboards, status polls). On
/// PostgreSQL both are the same pool. On SQLite, which has one write lock for the whole
/// file, `pool` is a single connection: writers queue for it in the pool, in order,
/// instead of in SQLite's busy handler, which sleeps 1, 2, 5 … 100 ms between looks at the
/// lock and leaves it idle meanwhile. Measured with the order flow bench (issue 6,
/// docs/benchmarks.md): 8 connections sustained 200 flows/s with p99 ~1 s, one connection
/// 250/s with p99 165 ms. `read` then holds `max_connections` read-only connections (WAL
/// lets them read while the writer commits), so a long export does not hold up the writes.
#[derive(Clone, Debug)]
pub struct Db {
    pub pool: AnyPool,
    pub read: AnyPool,
    pub backend: Backend,
}

/// The embedded migrations (see `build.rs` for why edits to them trigger a rebuild).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Milliseconds since the Unix epoch: the one time format in the database.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A new random id in the canonical text form.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Db {
    /// Opens the pools (see [`Db`]). SQLite files are created when missing.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Db> {
        install_default_drivers();
        let backend = Backend::of_url(url)?;
        let memory = url.contains(":memory:");
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") && !memory => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_string(),
        };
        let (pool, read) = match backend {
            Backend::Postgres => {
                let pool = open(&url, backend, max_connections, false).await?;
                (pool.clone(), pool)
            }
            // Every connection to `:memory:` is a database of its own: one connection, both ways.
            Backend::Sqlite if memory => {
                let pool = open(&url, backend, 1, false).await?;
                (pool.clone(), pool)
            }
            // The writer first: it creates the file and switches it to WAL.
            Backend::Sqlite => (
                open(&url, backend, 1, false).await?,
                open(&url, backend, max_connections, true).await?,
            ),
        };
        Ok(Db {
            pool,
            read,
            backend,
        })
    }

    /// Applies every embedded migration that has not run yet.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        MIGRATOR
            .run(&self.pool)
            .await
            .context("applying database migrations")
    }

    /// Checks the database answers (for `/health`).
    pub async fn ping(&self) -> anyhow::Result<()> {
        let one: i64 = sqlx::query_scalar("SELECT CAST(1 AS BIGINT)")
            .fetch_one(&self.pool)
            .await
            .context("database ping")?;
        if one != 1 {
            bail!("database ping answered {one}");
        }
        Ok(())
    }

    /// An online, consistent copy of a SQLite database in a new file (`VACUUM INTO`).
    /// PostgreSQL has its own tool for this, so that case is an error that says so.
    pub async fn backup_to(&self, target: &Path) -> anyhow::Result<()> {
        if self.backend != Backend::Sqlite {
            bail!("{PG_BACKUP_HINT}");
        }
        if target.exists() {
            bail!(
                "{} already exists; refusing to overwrite a backup",
                target.display()
            );
        }
        let target_text = target
            .to_str()
            .context("backup path is not valid UTF-8")?
            .to_string();
        sqlx::query("VACUUM INTO $1")
            .bind(target_text)
            .execute(&self.pool)
            .await
            .with_context(|| format!("VACUUM INTO {}", target.display()))?;
        Ok(())
    }

    /// A value from `app_secrets`, created from `make` on first use. The insert races
    /// harmlessly between instances: `ON CONFLICT DO NOTHING`, then everyone reads the winner.
    pub async fn shared_secret(
        &self,
        name: &str,
        make: impl FnOnce() -> String,
    ) -> anyhow::Result<String> {
        sqlx::query(
            "INSERT INTO app_secrets (name, value, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name.to_string())
        .bind(make())
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .context("storing a generated secret")?;
        let v: String = sqlx::query_scalar("SELECT value FROM app_secrets WHERE name = $1")
            .bind(name.to_string())
            .fetch_one(&self.pool)
            .await
            .context("reading a generated secret")?;
        Ok(v)
    }
}

/// One pool. `read_only` (SQLite) makes its connections refuse writes (`query_only`), so a
/// write sent to the read pool by mistake fails loudly instead of contending for the lock.
async fn open(
    url: &str,
    backend: Backend,
    max_connections: u32,
    read_only: bool,
) -> anyhow::Result<AnyPool> {
    // No liveness ping on every acquire: it doubled the round trips of every query (to
    // SQLite's per-connection worker thread, or to the PostgreSQL server process) and
    // the console-read profile showed those hand-offs as a large share of CPU (issue 5).
    // A SQLite connection is a file handle that nothing outside can break. A PostgreSQL
    // connection can die with its server, so one that sat idle for more than a second
    // is pinged before use (a busy pool, the case that matters for load, never is); a
    // connection that breaks while busy fails its query with an I/O error, which the
    // API answers as 503 `database_unavailable` (error.rs), and sqlx replaces it.
    let mut opts = AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(false);
    if url.contains(":memory:") {
        // The database lives and dies with its one connection: never retire it.
        opts = opts.idle_timeout(None).max_lifetime(None);
    }
    if backend == Backend::Postgres {
        opts = opts.before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > Duration::from_secs(1) {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        });
    }
    if backend == Backend::Sqlite {
        opts = opts.after_connect(move |conn, _meta| {
            Box::pin(async move {
                // WAL lets readers work while one writer commits; busy_timeout makes a
                // writer wait instead of failing with SQLITE_BUSY (another process, such
                // as `dmr-cloud backup`, may hold the lock).
                conn.execute("PRAGMA journal_mode = WAL").await?;
                // FULL: every commit is on disk before it returns. What the cloud commits
                // is then answered to someone who forgets it: a payment notification gets
                // its 2xx (the provider never sends it again) and a gateway's events their
                // ack (the agent deletes them from its outbox). With NORMAL, WAL mode syncs
                // only at checkpoints, so a power cut could lose transactions already
                // answered. The cost is one fsync per commit (docs/benchmarks.md, order flow).
                conn.execute("PRAGMA synchronous = FULL").await?;
                conn.execute("PRAGMA busy_timeout = 10000").await?;
                conn.execute("PRAGMA foreign_keys = ON").await?;
                // Read pages through a shared memory map instead of a read() call and a
                // copy into each connection's private 2 MB cache: with a database of
                // gigabytes the copies showed up in the profile (issue 5). SQLite caps
                // the value at its compile-time limit (2 GB by default); pages past the
                // mapped size are read the ordinary way.
                conn.execute("PRAGMA mmap_size = 2147418112").await?;
                // Checkpoint the WAL every 10,000 pages (40 MB) instead of SQLite's 1,000.
                // A checkpoint copies each page once however often it changed, and the
                // order flow rewrites the same hot pages (index leaves, the day roll-ups)
                // many times a second: at 150 flows/s the default ran about 60
                // checkpoints a second, each with its fsyncs, inside some writer's commit.
                conn.execute("PRAGMA wal_autocheckpoint = 10000").await?;
                if read_only {
                    conn.execute("PRAGMA query_only = ON").await?;
                }
                Ok(())
            })
        });
    }
    opts.connect(url)
        .await
        .with_context(|| format!("cannot open the {backend:?} database"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_migrations_are_the_files_on_disk() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .collect();
        files.sort();
        let embedded: Vec<_> = MIGRATOR.iter().collect();
        assert_eq!(embedded.len(), files.len());
        for (m, f) in embedded.iter().zip(&files) {
            let text = std::fs::read_to_string(f).unwrap();
            assert_eq!(
                m.sql.as_str(),
                text.as_str(),
                "{} is stale in the binary",
                f.display()
            );
        }
    }

    /// SQLite: writes go through one connection, reads through read-only ones that see
    /// what the writer committed and refuse to write.
    #[tokio::test]
    async fn sqlite_has_one_writer_and_read_only_readers() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let db = Db::connect(&url, 4).await.unwrap();
        assert_eq!(db.pool.options().get_max_connections(), 1);
        assert_eq!(db.read.options().get_max_connections(), 4);
        // A commit the cloud answered must survive a power cut (2 = FULL).
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(sync, 2, "the writer must commit with synchronous = FULL");
        sqlx::query("CREATE TABLE t (v BIGINT)")
            .execute(&db.pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO t (v) VALUES (7)")
            .execute(&db.pool)
            .await
            .unwrap();
        let v: i64 = sqlx::query_scalar("SELECT v FROM t")
            .fetch_one(&db.read)
            .await
            .unwrap();
        assert_eq!(v, 7);
        let refused = sqlx::query("INSERT INTO t (v) VALUES (8)")
            .execute(&db.read)
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("readonly"), "{refused}");
        // While the writer holds a transaction, a second writer waits for the pool (not
        // SQLite's lock), and readers still read the last commit.
        let mut tx = db.pool.begin().await.unwrap();
        sqlx::query("INSERT INTO t (v) VALUES (9)")
            .execute(&mut *tx)
            .await
            .unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t")
            .fetch_one(&db.read)
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert!(db.pool.try_acquire().is_none(), "the one writer is taken");
        tx.commit().await.unwrap();
    }
}
