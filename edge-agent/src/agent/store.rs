//! The gateway's durable state in SQLite, owned by one dedicated thread.
//!
//! rusqlite is blocking, so the connection lives on its own OS thread ([`Store::open`]) and
//! async tasks send it closures over a bounded channel, each with a oneshot reply
//! ([`Store::call`]). When the channel is full (256 requests) callers wait: an unlock
//! never gets ahead of the disk. One owner also means the verify-then-record decision of
//! an unlock is serialized: two presentations of the same single-use token can never both
//! pass, and no lock is needed for it.
//!
//! Durable writes on the unlock path (a use with its `accepted` event, outbox events) go
//! through [`Store::call_grouped`]: **group commit**. The thread opens one transaction for
//! the first such request, then runs every grouped request already waiting in the channel
//! inside it (for at most [`GROUP_WINDOW`] from the first), commits once (one fsync), and
//! only then sends each its reply. Nothing waiting means an immediate commit, so a lone
//! unlock pays exactly what it did before; a burst shares fsyncs instead of queueing one
//! each behind the disk. A reply (and so the lock being driven) never precedes its commit.
//!
//! The database runs in WAL mode with `synchronous=FULL`, so a committed transaction
//! survives a power cut. Migrations are numbered and applied in order inside one
//! transaction each (`PRAGMA user_version` is the number applied). Tables: locks, trusted
//! keys, cached tokens (indexed by short code), token uses, the revocation list (with its
//! version in `settings`), the outbox (every event as its signed JWS, so replays keep the
//! same id), commands already seen, settings and the time anchor.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dmr_protocol::jws::Kid;
use dmr_protocol::keys::{SigningKey, VerifyingKey};
use dmr_protocol::message::{
    self, Command, ConfigSet, Envelope, Event, Expect, Message, MessageError, Presenter,
    ResultCode, UnlockEvent,
};
use dmr_protocol::token::{self, CheckTime, GatewayView, Reject, ShortCode, UnlockToken};
use dmr_protocol::topic::TopicKind;
use rusqlite::{Connection, ErrorCode, OptionalExtension as _, params};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::clock::TrustedClock;

/// Requests waiting for the store thread, at most; further callers wait for room.
pub const STORE_QUEUE: usize = 256;

/// How long one group transaction keeps taking in waiting requests, measured from its first
/// (the issue's bound for group commit). The first request of a group waits at most this
/// plus one fsync.
pub const GROUP_WINDOW: Duration = Duration::from_millis(10);

/// Requests in one group transaction, at most.
pub const GROUP_MAX: usize = 512;

/// Numbered migrations; index + 1 is the version. Append only.
const MIGRATIONS: &[&str] = &[
    // 1: initial schema
    r#"
CREATE TABLE locks (
    lock_id TEXT PRIMARY KEY,
    bus INTEGER NOT NULL,
    addr INTEGER NOT NULL
);
CREATE TABLE trusted_keys (
    key_id INTEGER PRIMARY KEY,
    public_key BLOB NOT NULL,
    source TEXT NOT NULL
);
CREATE TABLE tokens (
    token_id BLOB PRIMARY KEY,
    short_code INTEGER NOT NULL,
    lock_id BLOB NOT NULL,
    not_after INTEGER NOT NULL,
    token BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX tokens_short_code ON tokens(short_code);
CREATE TABLE token_uses (
    id INTEGER PRIMARY KEY,
    token_id BLOB NOT NULL,
    lock_id BLOB NOT NULL,
    at_ms INTEGER NOT NULL,
    via TEXT NOT NULL,
    event_id TEXT NOT NULL
);
CREATE INDEX token_uses_token ON token_uses(token_id);
CREATE TABLE revocations (
    token_id BLOB PRIMARY KEY,
    version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    lock_id TEXT,
    created_ms INTEGER NOT NULL,
    jws TEXT NOT NULL
);
CREATE TABLE seen_commands (
    id TEXT PRIMARY KEY,
    ts_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE time_anchor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    cloud_ms INTEGER NOT NULL
);
"#,
    // 2: HTTP sync. Outbox rows the cloud rejected are kept (never silently dropped) in
    // dead_letters with the cloud's reason; the token cursor is an opaque text; a cloud key
    // learnt from the cloud may carry the end of its rotation overlap.
    r#"
CREATE TABLE dead_letters (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    topic TEXT NOT NULL,
    lock_id TEXT,
    created_ms INTEGER NOT NULL,
    jws TEXT NOT NULL,
    error TEXT NOT NULL,
    dead_ms INTEGER NOT NULL
);
CREATE TABLE text_settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
ALTER TABLE trusted_keys ADD COLUMN not_after_ms INTEGER;
"#,
];

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create state directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state database is full (disk or max_db_pages reached): {0}")]
    Full(#[source] rusqlite::Error),
    #[error("state database error: {0}")]
    Sqlite(#[source] rusqlite::Error),
    #[error("state database migration {version} failed: {source}")]
    Migration {
        version: usize,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "state database has schema version {found}, newer than this agent knows ({known}); refusing to touch it"
    )]
    TooNew { found: usize, known: usize },
    #[error("the store thread has stopped")]
    Stopped,
    #[error("committing the group transaction failed, nothing in it was recorded: {reason}")]
    Commit { reason: String, full: bool },
    #[error("cannot start the store thread: {0}")]
    Thread(#[source] std::io::Error),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => StoreError::Full(e),
            _ => StoreError::Sqlite(e),
        }
    }
}

impl StoreError {
    /// Whether the disk (or the configured cap) is full.
    pub fn is_full(&self) -> bool {
        matches!(
            self,
            StoreError::Full(_) | StoreError::Commit { full: true, .. }
        )
    }
}

/// Where a lock is: bus index and unit address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockPlace {
    pub bus: usize,
    pub addr: u8,
}

/// What the store needs at start.
#[derive(Debug)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub gateway_id: Uuid,
    pub key: SigningKey,
    pub skew_s: u64,
    pub locks: Vec<(Uuid, LockPlace)>,
    pub trusted_keys: BTreeMap<u32, VerifyingKey>,
    /// Cloud keys from the enrollment: stored as cloud-managed until the first sync.
    pub enrolled_keys: BTreeMap<u32, VerifyingKey>,
    pub max_db_pages: Option<u64>,
    /// `PRAGMA mmap_size` in bytes (0 = off).
    pub mmap_bytes: u64,
}

/// How a token was presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// The `DMR1.` text form (or anything that is not a short code).
    Text(String),
    /// An 8-digit short code of a cached token.
    Code(ShortCode),
}

impl Presented {
    /// Classifies raw input: eight digits are a short code, anything else a token text.
    pub fn classify(input: &str) -> Self {
        match ShortCode::parse(input) {
            Some(c) => Presented::Code(c),
            None => Presented::Text(input.trim().to_string()),
        }
    }
}

/// The verdict on a presented token, after it has been recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeemed {
    /// Every check passed; the use and the `accepted` event are durable.
    Accepted {
        token_id: Uuid,
        lock_id: Uuid,
        order_id: Option<Uuid>,
        place: LockPlace,
    },
    /// Refused with a reason code (the refusal event is in the outbox if it could be written).
    Refused {
        code: ResultCode,
        reason: String,
        token_id: Option<Uuid>,
        lock_id: Option<Uuid>,
    },
    /// The use could not be recorded, so the lock must not move.
    StorageFailed { reason: String },
}

impl Redeemed {
    /// The reason code to answer with.
    pub fn code(&self) -> ResultCode {
        match self {
            Redeemed::Accepted { .. } => ResultCode::Accepted,
            Redeemed::Refused { code, .. } => *code,
            Redeemed::StorageFailed { .. } => ResultCode::StorageError,
        }
    }
}

/// One outbox row ready to publish.
#[derive(Debug, Clone)]
pub struct OutRow {
    pub seq: i64,
    pub topic: TopicKind,
    pub jws: String,
}

/// Backlog size and age.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct OutboxStats {
    pub pending: u64,
    /// Created time of the oldest row, Unix ms.
    pub oldest_ms: Option<u64>,
    /// Rows the cloud rejected, kept in `dead_letters`.
    pub dead_letters: u64,
}

/// The cloud's verdict on one drained outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Applied or duplicate: the cloud has it; delete the row.
    Delivered(i64),
    /// Rejected: move the row to `dead_letters` with the reason.
    Rejected(i64, String),
}

/// What the HTTP sync sends back with a pull, and the versions it holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncPosition {
    pub tokens_after: Option<String>,
    pub revocations_version: u64,
    pub config_version: u64,
}

/// Result of applying a verified command's state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub result: ResultCode,
    /// New runtime settings when a config.set changed them.
    pub config: Option<ConfigSet>,
}

/// Told the outcome of the group commit its request was part of; sends the reply.
type Done = Box<dyn FnOnce(&Result<(), StoreError>) + Send>;

/// A request for the store thread.
enum Job {
    /// Runs alone, commits whatever it writes itself.
    Plain(Box<dyn FnOnce(&mut Db) + Send>),
    /// Runs inside the current group transaction; its reply waits for the commit.
    Grouped(Box<dyn FnOnce(&mut Db) -> Done + Send>),
}

/// Outbox rows the broker has acknowledged (PUBACK) and that are not deleted yet: the link
/// hands them over here without waiting for the store thread, and the thread deletes them
/// inside the next transaction it commits anyway ([`Db::run_group`]) or, when none comes
/// along, in a commit of their own without an fsync ([`Db::flush_delivered`]).
///
/// Why a deletion may be lost: an outbox row that comes back after a power cut is published
/// again with its signed id, and the cloud drops the second copy by that id; the event itself
/// was durable before it was first published. So deleting costs no fsync of its own.
#[derive(Debug, Default)]
struct Delivered {
    seqs: Vec<i64>,
    /// When the oldest entry of `seqs` was handed over.
    since: Option<Instant>,
}

/// Outbox rows committed since the MQTT link last looked, in `seq` order: the link publishes
/// from here without a round trip to the store thread ([`Store::take_fresh`]). The store
/// thread adds a row only once the transaction that wrote it has committed, so nothing here
/// can be undone; the link uses it only after a read of the outbox itself found nothing
/// more (everything committed before that read was in it, everything after is here).
#[derive(Debug, Default)]
struct Fresh {
    rows: VecDeque<OutRow>,
    /// Rows were dropped at the bound: the link must read the outbox itself again.
    overflowed: bool,
}

/// Rows kept in [`Fresh`] at most (a link that is down or behind reads the outbox instead).
const FRESH_MAX: usize = 1024;

/// Handle to the store thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    tx: mpsc::Sender<Job>,
    delivered: Arc<std::sync::Mutex<Delivered>>,
    fresh: Arc<std::sync::Mutex<Fresh>>,
}

/// The hand-over lists (`Fresh`, `Delivered`) hold plain data that every update leaves
/// whole, so a panic elsewhere while one was held does not make it unusable: take it anyway.
fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Store {
    /// Opens (creating if needed) the database, migrates it, and starts the owner thread.
    /// Returns the handle and the thread's join handle; the thread ends when every handle
    /// is dropped.
    pub fn open(
        cfg: StoreConfig,
        clock: Arc<TrustedClock>,
    ) -> Result<(Store, std::thread::JoinHandle<()>), StoreError> {
        let delivered = Arc::new(std::sync::Mutex::new(Delivered::default()));
        let fresh = Arc::new(std::sync::Mutex::new(Fresh::default()));
        let db = Db::open(cfg, clock, delivered.clone(), fresh.clone())?;
        let (tx, mut rx) = mpsc::channel::<Job>(STORE_QUEUE);
        let handle = std::thread::Builder::new()
            .name("dmr-store".into())
            .spawn(move || {
                let mut db = db;
                // A plain request met while a group was collecting runs right after its commit.
                let mut next: Option<Job> = None;
                loop {
                    let job = match next.take() {
                        Some(j) => j,
                        None => match rx.blocking_recv() {
                            Some(j) => j,
                            None => break,
                        },
                    };
                    match job {
                        Job::Plain(f) => f(&mut db),
                        Job::Grouped(f) => next = db.run_group(f, &mut rx),
                    }
                    if db.stop {
                        break;
                    }
                }
                tracing::debug!("store thread: closing the database");
            })
            .map_err(StoreError::Thread)?;
        Ok((
            Store {
                tx,
                delivered,
                fresh,
            },
            handle,
        ))
    }

    /// Asks the thread to close the database after the requests already queued; later
    /// calls fail with [`StoreError::Stopped`].
    pub async fn close(&self) -> Result<(), StoreError> {
        self.call(|db| db.stop = true).await
    }

    /// Runs `f` on the store thread and returns its result.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Db) -> R + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job = Job::Plain(Box::new(move |db| {
            let _ = reply.send(f(db));
        }));
        self.tx.send(job).await.map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)
    }

    /// Runs `f` on the store thread inside a group transaction (see the module text) and
    /// answers after that transaction's commit: `(what f returned, the commit's outcome)`.
    /// When the commit failed nothing `f` wrote is on disk; what `f` returned describes what
    /// it did inside the rolled-back transaction, and the caller decides what still holds.
    ///
    /// `f` must not open a transaction itself (SQLite has no nested `BEGIN`): use single
    /// statements or a savepoint, which is what [`Db::redeem`] and [`Db::append`] do.
    ///
    /// Requests in one group see each other's uncommitted writes: a token presented twice in
    /// one group is `used_up` the second time. If that group's commit then fails, the first
    /// presentation answers `storage_error` and the second stays refused although no use was
    /// kept: both refuse, which is the safe side; the token can be presented again.
    pub async fn call_grouped<R, F>(&self, f: F) -> Result<(R, Result<(), StoreError>), StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Db) -> R + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job = Job::Grouped(Box::new(move |db| {
            let r = f(db);
            Box::new(move |commit: &Result<(), StoreError>| {
                let c = match commit {
                    Ok(()) => Ok(()),
                    Err(e) => Err(StoreError::Commit {
                        reason: e.to_string(),
                        full: e.is_full(),
                    }),
                };
                let _ = reply.send((r, c));
            })
        }));
        self.tx.send(job).await.map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)
    }

    /// The whole unlock decision ([`Db::redeem`]) with group commit: the answer comes only
    /// once the use and its event are committed. A failed commit turns an acceptance into
    /// [`Redeemed::StorageFailed`] (the lock must not move); a refusal keeps its code (only
    /// its event was lost, and a full disk must not hide the answer).
    pub async fn redeem(&self, presented: Presented, via: Presenter) -> Redeemed {
        settle(
            self.call_grouped(move |db| db.redeem(&presented, via))
                .await,
        )
    }

    /// Opens a cloud command ([`Db::open_command`]) and, when it is an `unlock`, makes the
    /// whole unlock decision ([`Db::redeem`]) in the same group transaction: the command id,
    /// the moved time anchor, the token use and its `accepted` event share one commit (one
    /// fsync), and the answer comes only after it. A redelivered command is dropped by its id
    /// (`Ok(None)`) because the id was committed together with the use, before the lock moved.
    /// A failed commit loses the id and the use together: the unlock is answered
    /// `storage_error` (the lock must not move) and a redelivery would be decided afresh.
    pub async fn open_command(&self, payload: String) -> Result<Option<Opened>, CommandError> {
        let r = self
            .call_grouped(move |db| {
                let env = match db.open_command(&payload) {
                    Ok(Some(env)) => env,
                    Ok(None) => return Ok(None),
                    Err(e) => return Err(e),
                };
                let redeemed = match &env.message {
                    Message::Cmd(Command::Unlock { token }) => {
                        Some(db.redeem(&Presented::classify(token), Presenter::Cloud))
                    }
                    _ => None,
                };
                Ok(Some((env, redeemed)))
            })
            .await?;
        match r {
            (Ok(Some((env, redeemed))), commit) => {
                let redeemed = redeemed.map(|red| settle(Ok((red, commit))));
                Ok(Some(Opened { env, redeemed }))
            }
            (Ok(None), _) => Ok(None),
            (Err(e), _) => Err(e),
        }
    }

    /// Signs and appends several messages to the outbox as one unit (all or none) with group
    /// commit; answers once they are durable. The unlock path writes its outcome event and
    /// the command's ack this way: one commit instead of two.
    pub async fn append_all(
        &self,
        messages: Vec<(TopicKind, Option<Uuid>, Message)>,
    ) -> Result<Vec<Uuid>, StoreError> {
        let (r, commit) = self.call_grouped(move |db| db.append_all(messages)).await?;
        commit?;
        r
    }

    /// Hands over outbox rows the broker acknowledged; they are deleted with the next commit
    /// (see `Delivered`). Does not wait for the store thread.
    pub fn delivered(&self, seqs: &[i64]) {
        if seqs.is_empty() {
            return;
        }
        let mut d = locked(&self.delivered);
        d.seqs.extend_from_slice(seqs);
        d.since.get_or_insert_with(Instant::now);
    }

    /// Committed outbox rows after `after_seq`, at most `max`, taken out of `Fresh` (older
    /// ones are dropped). `None` when rows were lost at its bound since the last call: read
    /// the outbox itself then.
    pub fn take_fresh(&self, after_seq: i64, max: usize) -> Option<Vec<OutRow>> {
        let mut f = locked(&self.fresh);
        if f.overflowed {
            f.overflowed = false;
            f.rows.clear();
            return None;
        }
        while f.rows.front().is_some_and(|r| r.seq <= after_seq) {
            f.rows.pop_front();
        }
        let n = f.rows.len().min(max);
        Some(f.rows.drain(..n).collect())
    }

    /// Delivered rows waiting for deletion, and how long the oldest has waited.
    pub fn delivered_waiting(&self) -> (usize, Option<Duration>) {
        let d = locked(&self.delivered);
        (d.seqs.len(), d.since.map(|t| t.elapsed()))
    }

    /// Deletes the delivered rows still waiting, in a commit without an fsync (see
    /// `Delivered`); answers when it is done.
    pub async fn flush_delivered(&self) -> Result<(), StoreError> {
        self.call(|db| db.flush_delivered()).await?
    }
}

/// A command opened by [`Store::open_command`].
#[derive(Debug, Clone)]
pub struct Opened {
    pub env: Envelope,
    /// For an `unlock`: the decision, already committed (or `StorageFailed`).
    pub redeemed: Option<Redeemed>,
}

/// Turns a group-committed unlock decision and its commit's outcome into the answer: a failed
/// commit turns an acceptance into [`Redeemed::StorageFailed`] (the lock must not move); a
/// refusal keeps its code (only its event was lost, and a full disk must not hide the answer).
fn settle(r: Result<(Redeemed, Result<(), StoreError>), StoreError>) -> Redeemed {
    match r {
        Ok((r, Ok(()))) => r,
        Ok((
            Redeemed::Accepted {
                token_id, lock_id, ..
            },
            Err(e),
        )) => {
            if e.is_full() {
                tracing::error!(%token_id, %lock_id, error = %e,
                        "REFUSING UNLOCK: the state database is full, the use cannot be recorded, so the lock stays shut");
            } else {
                tracing::error!(%token_id, %lock_id, error = %e,
                        "REFUSING UNLOCK: committing the use failed, so the lock stays shut");
            }
            Redeemed::StorageFailed {
                reason: e.to_string(),
            }
        }
        Ok((refused, Err(e))) => {
            tracing::error!(error = %e, code = refused.code().as_str(), "cannot record the refusal event");
            refused
        }
        Err(e) => Redeemed::StorageFailed {
            reason: e.to_string(),
        },
    }
}

impl Store {
    /// Appends an event to the outbox with group commit; answers once it is durable.
    pub async fn append_event(&self, event: Event) -> Result<Uuid, StoreError> {
        let (r, commit) = self.call_grouped(move |db| db.append_event(event)).await?;
        commit?;
        r
    }
}

/// The connection and what the thread caches beside it. Only the store thread touches it.
pub struct Db {
    conn: Connection,
    gw: Uuid,
    key: SigningKey,
    clock: Arc<TrustedClock>,
    skew_s: u64,
    keys: BTreeMap<u32, VerifyingKey>,
    /// End of the rotation overlap of keys that have one (Unix ms, trusted time).
    key_not_after: BTreeMap<u32, u64>,
    locks: HashMap<Uuid, LockPlace>,
    pending: u64,
    dead: u64,
    stop: bool,
    /// Shared with the [`Store`] handles: acknowledged rows to delete.
    delivered: Arc<std::sync::Mutex<Delivered>>,
    /// Shared with the [`Store`] handles: committed rows for the link.
    fresh: Arc<std::sync::Mutex<Fresh>>,
    /// Rows written inside the open group transaction, for [`Fresh`] once it commits.
    staged: Vec<OutRow>,
    /// `synchronous` was lowered for a lazy deletion and not yet put back to FULL.
    sync_lowered: bool,
    /// Group transactions committed, and the requests they carried (for benchmarks/metrics).
    groups: u64,
    grouped: u64,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("gw", &self.gw)
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

/// What token checks consult: in-memory keys and locks, revocations and uses from SQLite.
struct View<'a> {
    db: &'a Db,
}

impl GatewayView for View<'_> {
    fn trusted_key(&self, key_id: u32) -> Option<&VerifyingKey> {
        if let Some(na) = self.db.key_not_after.get(&key_id)
            && self.db.clock.now_ms() > *na
        {
            return None;
        }
        self.db.keys.get(&key_id)
    }
    fn owns_lock(&self, lock_id: &Uuid) -> bool {
        self.db.locks.contains_key(lock_id)
    }
    fn is_revoked(&self, token_id: &Uuid) -> bool {
        // A read error counts as revoked: refusing is the safe side.
        self.db
            .conn
            .prepare_cached("SELECT 1 FROM revocations WHERE token_id = ?1")
            .and_then(|mut s| s.exists(params![token_id.as_bytes()]))
            .unwrap_or(true)
    }
    fn uses(&self, token_id: &Uuid) -> u32 {
        // A read error counts as used up, for the same reason.
        self.db
            .conn
            .prepare_cached("SELECT COUNT(*) FROM token_uses WHERE token_id = ?1")
            .and_then(|mut s| s.query_row(params![token_id.as_bytes()], |r| r.get::<_, u32>(0)))
            .unwrap_or(u32::MAX)
    }
}

fn topic_name(t: TopicKind) -> &'static str {
    t.as_str()
}

fn topic_from(name: &str) -> TopicKind {
    match name {
        "ack" => TopicKind::Ack,
        "state" => TopicKind::State,
        "heartbeat" => TopicKind::Heartbeat,
        _ => TopicKind::Event,
    }
}

impl Db {
    /// Runs `first` and every grouped request already waiting (within [`GROUP_WINDOW`] and
    /// [`GROUP_MAX`]) in one transaction, commits, then tells each the outcome. Returns a
    /// plain request met on the way, to be run next (order is kept).
    fn run_group(
        &mut self,
        first: Box<dyn FnOnce(&mut Db) -> Done + Send>,
        rx: &mut mpsc::Receiver<Job>,
    ) -> Option<Job> {
        let started = Instant::now();
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            // Without a group the request still works: its statements and savepoints commit
            // by themselves.
            tracing::warn!(error = %e, "cannot open a group transaction; running the request alone");
            let done = first(self);
            done(&Ok(()));
            return None;
        }
        let mut done = vec![first(self)];
        let mut leftover = None;
        // SQLite rolls the whole transaction back by itself on some errors (full disk, I/O):
        // then nothing more may join it, and the commit below fails for everyone in it.
        while !self.conn.is_autocommit()
            && started.elapsed() < GROUP_WINDOW
            && done.len() < GROUP_MAX
        {
            match rx.try_recv() {
                Ok(Job::Grouped(f)) => done.push(f(self)),
                Ok(plain) => {
                    leftover = Some(plain);
                    break;
                }
                Err(_) => break,
            }
        }
        // Acknowledged rows ride along: their deletion needs no commit of its own. In a
        // savepoint, so a failure undoes only them and leaves them for the next commit.
        if !self.conn.is_autocommit() {
            let seqs = self.take_delivered();
            if !seqs.is_empty() {
                let pending = self.pending;
                let r = self
                    .conn
                    .execute_batch("SAVEPOINT delivered")
                    .map_err(StoreError::from)
                    .and_then(|()| self.delete_rows(&seqs))
                    .and_then(|()| Ok(self.conn.execute_batch("RELEASE delivered")?));
                if let Err(e) = r {
                    self.pending = pending;
                    let _ = self
                        .conn
                        .execute_batch("ROLLBACK TO delivered; RELEASE delivered");
                    tracing::warn!(error = %e, "cannot delete acknowledged outbox rows; retrying later");
                    self.give_back_delivered(seqs);
                }
            }
        }
        // A lazy deletion lowers `synchronous` for its own commit; if putting it back failed
        // then, this commit must not go out without its fsync.
        let durable = if self.sync_lowered {
            match self.conn.pragma_update(None, "synchronous", "FULL") {
                Ok(()) => {
                    self.sync_lowered = false;
                    Ok(())
                }
                Err(e) => Err(StoreError::from(e)),
            }
        } else {
            Ok(())
        };
        let commit = match durable {
            Ok(()) => self.conn.execute_batch("COMMIT").map_err(StoreError::from),
            Err(e) => Err(e),
        };
        if commit.is_err() {
            if !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            // The in-memory backlog count was moved by rows that are now gone.
            match self
                .conn
                .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get::<_, i64>(0))
            {
                Ok(n) => self.pending = n as u64,
                Err(e) => tracing::warn!(error = %e, "cannot recount the outbox"),
            }
        }
        let staged = std::mem::take(&mut self.staged);
        if commit.is_ok() {
            self.publish_fresh(staged);
        }
        self.groups += 1;
        self.grouped += done.len() as u64;
        tracing::trace!(size = done.len(), "group committed");
        for d in done {
            d(&commit);
        }
        leftover
    }

    fn open(
        cfg: StoreConfig,
        clock: Arc<TrustedClock>,
        delivered: Arc<std::sync::Mutex<Delivered>>,
        fresh: Arc<std::sync::Mutex<Fresh>>,
    ) -> Result<Db, StoreError> {
        if let Some(dir) = cfg.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let mut conn = Connection::open(&cfg.path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a commit is on the disk before the agent acts on it (WAL + NORMAL could lose
        // the last transactions on power loss, and with them a recorded use).
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        if let Some(pages) = cfg.max_db_pages {
            conn.pragma_update(None, "max_page_count", pages)?;
        }
        if cfg.mmap_bytes > 0 {
            // Reads of pages SQLite has not cached become memory reads instead of pread():
            // the lookup tail on a busy machine (docs/benchmarks.md). Off by default because
            // touched pages count in RSS.
            conn.pragma_update(None, "mmap_size", cfg.mmap_bytes as i64)?;
        }
        migrate(&mut conn)?;
        let mut db = Db {
            conn,
            gw: cfg.gateway_id,
            key: cfg.key,
            clock,
            skew_s: cfg.skew_s,
            keys: BTreeMap::new(),
            key_not_after: BTreeMap::new(),
            locks: cfg.locks.iter().copied().collect(),
            pending: 0,
            dead: 0,
            stop: false,
            delivered,
            fresh,
            staged: Vec::new(),
            sync_lowered: false,
            groups: 0,
            grouped: 0,
        };
        db.sync_config(&cfg.locks, &cfg.trusted_keys, &cfg.enrolled_keys)?;
        db.pending = db
            .conn
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get::<_, i64>(0))?
            as u64;
        db.dead = db
            .conn
            .query_row("SELECT COUNT(*) FROM dead_letters", [], |r| {
                r.get::<_, i64>(0)
            })? as u64;
        if let Some(skew) = db.setting("token_skew_s")? {
            db.skew_s = skew as u64;
        }
        Ok(db)
    }

    /// Makes the locks table match the configuration and merges configured trusted keys.
    fn sync_config(
        &mut self,
        locks: &[(Uuid, LockPlace)],
        keys: &BTreeMap<u32, VerifyingKey>,
        enrolled: &BTreeMap<u32, VerifyingKey>,
    ) -> Result<(), StoreError> {
        // Once a sync has set the cloud's key list, the enrollment's copy is history: adding
        // it back at every start would resurrect keys the cloud has retired.
        let synced = self.text_setting("cloud_keys_synced")?.is_some();
        let tx = self.conn.transaction()?;
        if !synced {
            for (id, k) in enrolled {
                tx.execute(
                    "INSERT INTO trusted_keys (key_id, public_key, source) VALUES (?1, ?2, 'cloud')
                     ON CONFLICT(key_id) DO NOTHING",
                    params![id, &k.as_bytes()[..]],
                )?;
            }
        }
        tx.execute("DELETE FROM locks", [])?;
        for (id, p) in locks {
            tx.execute(
                "INSERT INTO locks (lock_id, bus, addr) VALUES (?1, ?2, ?3)",
                params![id.hyphenated().to_string(), p.bus as i64, p.addr],
            )?;
        }
        for (id, k) in keys {
            tx.execute(
                "INSERT INTO trusted_keys (key_id, public_key, source) VALUES (?1, ?2, 'config')
                 ON CONFLICT(key_id) DO UPDATE SET public_key = excluded.public_key",
                params![id, &k.as_bytes()[..]],
            )?;
        }
        tx.commit()?;
        self.load_keys()
    }

    fn load_keys(&mut self) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT key_id, public_key, not_after_ms FROM trusted_keys")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, u32>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Option<i64>>(2)?,
            ))
        })?;
        let mut loaded = BTreeMap::new();
        let mut not_after = BTreeMap::new();
        for row in rows {
            let (id, raw, na) = row?;
            if let Some(na) = na {
                not_after.insert(id, na as u64);
            }
            let key = <[u8; 32]>::try_from(raw.as_slice())
                .ok()
                .and_then(|b| VerifyingKey::from_bytes(&b).ok());
            match key {
                Some(k) => {
                    loaded.insert(id, k);
                }
                None => tracing::error!(
                    key_id = id,
                    "stored trusted key is not a valid Ed25519 key; ignoring it"
                ),
            }
        }
        drop(stmt);
        self.keys = loaded;
        self.key_not_after = not_after;
        Ok(())
    }

    /// The trusted cloud keys (those past their overlap included; callers check).
    pub fn trusted_keys(&self) -> BTreeMap<u32, VerifyingKey> {
        let now = self.clock.now_ms();
        self.keys
            .iter()
            .filter(|(id, _)| self.key_not_after.get(id).is_none_or(|na| now <= *na))
            .map(|(id, k)| (*id, *k))
            .collect()
    }

    /// Replaces the keys learnt from the cloud with `keys` (the cloud's full current list,
    /// from a response signed by a key already trusted). Keys from the configuration file
    /// stay. An empty list changes nothing: a gateway must never be left trusting no key.
    pub fn set_cloud_keys(
        &mut self,
        keys: &[(u32, VerifyingKey, Option<u64>)],
    ) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut keep = String::new();
            let mut up = tx.prepare_cached(
                "INSERT INTO trusted_keys (key_id, public_key, source, not_after_ms) VALUES (?1, ?2, 'cloud', ?3)
                 ON CONFLICT(key_id) DO UPDATE SET public_key = excluded.public_key, not_after_ms = excluded.not_after_ms",
            )?;
            for (id, k, na) in keys {
                up.execute(params![id, &k.as_bytes()[..], na.map(|v| v as i64)])?;
                if !keep.is_empty() {
                    keep.push(',');
                }
                keep.push_str(&id.to_string());
            }
            // Ids are u32 formatted by us: no injection possible.
            tx.execute(
                &format!(
                    "DELETE FROM trusted_keys WHERE source = 'cloud' AND key_id NOT IN ({keep})"
                ),
                [],
            )?;
            tx.execute(
                "INSERT INTO text_settings (name, value) VALUES ('cloud_keys_synced', '1')
                 ON CONFLICT(name) DO NOTHING",
                [],
            )?;
        }
        tx.commit()?;
        self.load_keys()
    }

    /// The locks this gateway drives now, sorted by bus and address.
    pub fn locks(&self) -> Vec<(Uuid, LockPlace)> {
        let mut v: Vec<_> = self.locks.iter().map(|(id, p)| (*id, *p)).collect();
        v.sort_by_key(|(id, p)| (p.bus, p.addr, *id));
        v
    }

    /// Replaces the lock map with the cloud's list (verified sync answer) and keeps that list,
    /// so a restart without the cloud still drives the same locks ([`Db::restore_cloud_locks`]).
    /// The caller has checked the list (addresses 1..=247, no address or id twice).
    pub fn set_cloud_locks(&mut self, locks: &[(Uuid, LockPlace)]) -> Result<(), StoreError> {
        let kept = locks
            .iter()
            .map(|(id, p)| format!("{}:{}:{}", id.hyphenated(), p.bus, p.addr))
            .collect::<Vec<_>>()
            .join(",");
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM locks", [])?;
        for (id, p) in locks {
            tx.execute(
                "INSERT INTO locks (lock_id, bus, addr) VALUES (?1, ?2, ?3)",
                params![id.hyphenated().to_string(), p.bus as i64, p.addr],
            )?;
        }
        tx.execute(
            "INSERT INTO text_settings (name, value) VALUES ('cloud_locks', ?1)
             ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            params![kept],
        )?;
        tx.commit()?;
        self.locks = locks.iter().copied().collect();
        Ok(())
    }

    /// At start, when the cloud manages the lock map: puts back the last list a sync
    /// applied (the enrollment's copy may be older). Returns whether there was one.
    pub fn restore_cloud_locks(&mut self, buses: usize) -> Result<bool, StoreError> {
        let Some(text) = self.text_setting("cloud_locks")? else {
            return Ok(false);
        };
        let mut locks = Vec::new();
        for item in text.split(',').filter(|i| !i.is_empty()) {
            let mut parts = item.split(':');
            let parsed = (|| {
                let id = Uuid::parse_str(parts.next()?).ok()?;
                let bus = parts.next()?.parse::<usize>().ok()?;
                let addr = parts.next()?.parse::<u8>().ok()?;
                (bus < buses).then_some((id, LockPlace { bus, addr }))
            })();
            match parsed {
                Some(l) => locks.push(l),
                None => {
                    tracing::warn!(
                        item,
                        "stored cloud lock list has an entry that does not fit this configuration; keeping the configured locks"
                    );
                    return Ok(false);
                }
            }
        }
        self.set_cloud_locks(&locks)?;
        Ok(true)
    }

    /// Moves the trusted-time anchor forward to a verified cloud `ts` (and persists it).
    /// Returns whether it moved.
    pub fn observe_cloud_time(&mut self, ts: u64) -> Result<bool, StoreError> {
        if !self.clock.observe_cloud_ms(ts) {
            return Ok(false);
        }
        self.conn.execute(
            "INSERT INTO time_anchor (id, cloud_ms) VALUES (1, ?1)
             ON CONFLICT(id) DO UPDATE SET cloud_ms = MAX(cloud_ms, excluded.cloud_ms)",
            params![ts as i64],
        )?;
        Ok(true)
    }

    fn text_setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM text_settings WHERE name = ?1")?
            .query_row(params![name], |r| r.get(0))
            .optional()?)
    }

    /// Where the HTTP sync stands: token cursor and the versions held.
    pub fn sync_position(&self) -> Result<SyncPosition, StoreError> {
        Ok(SyncPosition {
            tokens_after: self.text_setting("tokens_cursor")?,
            revocations_version: self.setting("revocation_version")?.unwrap_or(0) as u64,
            config_version: self.setting("config_version")?.unwrap_or(0) as u64,
        })
    }

    /// Persists the token cursor (after the tokens it covers are cached).
    pub fn set_tokens_cursor(&mut self, cursor: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO text_settings (name, value) VALUES ('tokens_cursor', ?1)
             ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            params![cursor],
        )?;
        Ok(())
    }

    /// Up to `limit` outbox rows created before `before_ms`, oldest first (the HTTP drain).
    pub fn outbox_older(&self, before_ms: u64, limit: usize) -> Result<Vec<OutRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, topic, jws FROM outbox WHERE created_ms < ?1 ORDER BY seq LIMIT ?2",
        )?;
        let before = i64::try_from(before_ms).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![before, limit as i64], |r| {
            Ok(OutRow {
                seq: r.get(0)?,
                topic: topic_from(&r.get::<_, String>(1)?),
                jws: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Applies the cloud's verdicts in one transaction: delivered rows are deleted, rejected
    /// ones moved to `dead_letters`. Rows already gone (the MQTT link's PUBACK got there
    /// first) are skipped, so delivering a row twice is harmless. Returns (deleted, dead).
    pub fn outbox_resolve(&mut self, verdicts: &[Delivery]) -> Result<(u64, u64), StoreError> {
        let now = self.clock.now_ms() as i64;
        let tx = self.conn.transaction()?;
        let (mut removed, mut dead) = (0u64, 0u64);
        {
            let mut del = tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?;
            let mut bury = tx.prepare_cached(
                "INSERT OR IGNORE INTO dead_letters (seq, id, topic, lock_id, created_ms, jws, error, dead_ms)
                 SELECT seq, id, topic, lock_id, created_ms, jws, ?2, ?3 FROM outbox WHERE seq = ?1",
            )?;
            for v in verdicts {
                match v {
                    Delivery::Delivered(seq) => removed += del.execute(params![seq])? as u64,
                    Delivery::Rejected(seq, why) => {
                        dead += bury.execute(params![seq, why, now])? as u64;
                        removed += del.execute(params![seq])? as u64;
                    }
                }
            }
        }
        tx.commit()?;
        self.pending = self.pending.saturating_sub(removed);
        self.dead += dead;
        Ok((removed, dead))
    }

    fn setting(&self, name: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM settings WHERE name = ?1")?
            .query_row(params![name], |r| r.get(0))
            .optional()?)
    }

    /// The persisted time anchor (newest cloud-signed ms), if any.
    pub fn time_anchor(&self) -> Result<Option<u64>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT cloud_ms FROM time_anchor WHERE id = 1", [], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?
            .map(|v| v as u64))
    }

    /// Group transactions committed since start, and the grouped requests they carried.
    pub fn group_stats(&self) -> (u64, u64) {
        (self.groups, self.grouped)
    }

    /// The gateway id.
    pub fn gateway_id(&self) -> Uuid {
        self.gw
    }

    /// Current token skew in seconds.
    pub fn skew_s(&self) -> u64 {
        self.skew_s
    }

    /// Direct access to the connection, for checks (integrity, counts) and tests.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    fn sign(&self, message: Message) -> (Uuid, String) {
        let id = Uuid::now_v7();
        let env = Envelope::new(id, self.gw, self.clock.now_ms(), message);
        (id, env.sign(Kid::Gateway(self.gw), &self.key))
    }

    /// Inserts one outbox row; returns its seq.
    fn insert_outbox(
        conn: &Connection,
        id: Uuid,
        topic: TopicKind,
        lock_id: Option<Uuid>,
        created_ms: u64,
        jws: &str,
    ) -> Result<i64, rusqlite::Error> {
        conn.prepare_cached(
            "INSERT INTO outbox (id, topic, lock_id, created_ms, jws) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            id.hyphenated().to_string(),
            topic_name(topic),
            lock_id.map(|l| l.hyphenated().to_string()),
            created_ms as i64,
            jws
        ])?;
        Ok(conn.last_insert_rowid())
    }

    /// Rows whose insert (and savepoint) succeeded: for [`Fresh`] now when they are already
    /// committed (no transaction open), else when the group commits.
    fn stage(&mut self, rows: Vec<OutRow>) {
        if self.conn.is_autocommit() {
            self.publish_fresh(rows);
        } else {
            self.staged.extend(rows);
        }
    }

    fn publish_fresh(&self, rows: Vec<OutRow>) {
        if rows.is_empty() {
            return;
        }
        let mut f = locked(&self.fresh);
        if f.rows.len() + rows.len() > FRESH_MAX {
            f.rows.clear();
            f.overflowed = true;
            return;
        }
        f.rows.extend(rows);
    }

    /// Signs `message` and appends it to the outbox: in its own durable transaction when
    /// called alone, in the group's when called through [`Store::call_grouped`].
    pub fn append(
        &mut self,
        topic: TopicKind,
        lock_id: Option<Uuid>,
        message: Message,
    ) -> Result<Uuid, StoreError> {
        let now = self.clock.now_ms();
        let (id, jws) = self.sign(message);
        let seq = Self::insert_outbox(&self.conn, id, topic, lock_id, now, &jws)?;
        self.pending += 1;
        self.stage(vec![OutRow { seq, topic, jws }]);
        Ok(id)
    }

    /// Signs `messages` and appends them to the outbox as one unit: a savepoint, so inside a
    /// group a failure undoes all of them and nothing else; alone, a transaction of its own.
    pub fn append_all(
        &mut self,
        messages: Vec<(TopicKind, Option<Uuid>, Message)>,
    ) -> Result<Vec<Uuid>, StoreError> {
        let now = self.clock.now_ms();
        let signed: Vec<_> = messages
            .into_iter()
            .map(|(topic, lock, m)| {
                let (id, jws) = self.sign(m);
                (topic, lock, id, jws)
            })
            .collect();
        let sp = self.conn.savepoint()?;
        let mut seqs = Vec::with_capacity(signed.len());
        for (topic, lock, id, jws) in &signed {
            seqs.push(Self::insert_outbox(&sp, *id, *topic, *lock, now, jws)?);
        }
        sp.commit()?;
        self.pending += signed.len() as u64;
        let mut ids = Vec::with_capacity(signed.len());
        let mut rows = Vec::with_capacity(signed.len());
        for ((topic, _, id, jws), seq) in signed.into_iter().zip(seqs) {
            ids.push(id);
            rows.push(OutRow { seq, topic, jws });
        }
        self.stage(rows);
        Ok(ids)
    }

    /// Appends an event.
    pub fn append_event(&mut self, event: Event) -> Result<Uuid, StoreError> {
        let lock = event.lock_id();
        self.append(TopicKind::Event, Some(lock), Message::Event(event))
    }

    /// Finds the token a presentation names: parse the text, or look the short code up in
    /// the cache. With a short code shared by several cached tokens, the one that passes
    /// every check is used; if more than one would pass, the code is refused as ambiguous
    /// (the presenter must show the full token).
    fn resolve(&self, presented: &Presented, time: CheckTime) -> Result<UnlockToken, Reject> {
        match presented {
            Presented::Text(t) => UnlockToken::from_text(t).map_err(Reject::from),
            Presented::Code(code) => {
                let candidates = self.cached_by_code(*code).unwrap_or_default();
                let mut first_err = None;
                let mut passing = Vec::new();
                for tok in candidates {
                    match token::verify(&tok, &View { db: self }, time) {
                        Ok(()) => passing.push(tok),
                        Err(e) => {
                            first_err.get_or_insert(e);
                        }
                    }
                }
                match passing.len() {
                    1 => Ok(passing.remove(0)),
                    0 => Err(first_err
                        .unwrap_or(Reject::BadFormat(token::FormatError::Length { found: 0 }))),
                    _ => Err(Reject::BadFormat(token::FormatError::Length { found: 0 })),
                }
            }
        }
    }

    /// Cached tokens with this short code.
    pub fn cached_by_code(&self, code: ShortCode) -> Result<Vec<UnlockToken>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT token FROM tokens WHERE short_code = ?1")?;
        let rows = stmt.query_map(params![code.value()], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for r in rows {
            if let Ok(t) = UnlockToken::from_bytes(&r?) {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// The whole unlock decision: find the token, verify it (PROTOCOL.md §1 order), and, if it
    /// passes, record the use and the `accepted` event in one durable transaction. A refusal
    /// is recorded as an event too (best effort: a full disk must not hide the answer).
    pub fn redeem(&mut self, presented: &Presented, via: Presenter) -> Redeemed {
        let now_ms = self.clock.now_ms();
        let time = CheckTime {
            now_s: now_ms / 1000,
            skew_s: self.skew_s,
        };
        let verdict = self
            .resolve(presented, time)
            .and_then(|tok| token::verify(&tok, &View { db: self }, time).map(|()| tok));
        // A short code that names no cached token is answered bad_format like any text that
        // is not a token, but the log should say what really happened.
        let code_unknown = match presented {
            Presented::Code(c) => self
                .cached_by_code(*c)
                .map(|v| v.is_empty())
                .unwrap_or(false),
            Presented::Text(_) => false,
        };
        match verdict {
            Ok(tok) => {
                let c = *tok.claims();
                let Some(place) = self.locks.get(&c.lock_id).copied() else {
                    // verify() checked owns_lock; unreachable in practice.
                    return Redeemed::Refused {
                        code: ResultCode::WrongLock,
                        reason: "lock not on this gateway".into(),
                        token_id: Some(c.token_id),
                        lock_id: Some(c.lock_id),
                    };
                };
                let order_id = (!c.order_id.is_nil()).then_some(c.order_id);
                match self.record_use(&c, order_id, via, now_ms) {
                    Ok(()) => Redeemed::Accepted {
                        token_id: c.token_id,
                        lock_id: c.lock_id,
                        order_id,
                        place,
                    },
                    Err(e) => {
                        if e.is_full() {
                            tracing::error!(token_id = %c.token_id, lock_id = %c.lock_id, error = %e,
                                "REFUSING UNLOCK: the state database is full, the use cannot be recorded, so the lock stays shut");
                        } else {
                            tracing::error!(token_id = %c.token_id, lock_id = %c.lock_id, error = %e,
                                "REFUSING UNLOCK: recording the use failed, so the lock stays shut");
                        }
                        Redeemed::StorageFailed {
                            reason: e.to_string(),
                        }
                    }
                }
            }
            Err(reject) => {
                let code = ResultCode::from(&reject);
                let (token_id, lock_id) = match presented {
                    Presented::Text(t) => UnlockToken::from_text(t)
                        .map(|t| (Some(t.claims().token_id), Some(t.claims().lock_id)))
                        .unwrap_or((None, None)),
                    Presented::Code(_) => (None, None),
                };
                let event = Event::Unlock(UnlockEvent {
                    lock_id: lock_id.unwrap_or_else(Uuid::nil),
                    token_id,
                    order_id: None,
                    result: code,
                    via: Some(via),
                    at: now_ms,
                });
                if let Err(e) = self.append_event(event) {
                    tracing::error!(error = %e, code = code.as_str(), "cannot record the refusal event");
                }
                Redeemed::Refused {
                    code,
                    reason: if code_unknown {
                        "no cached token has this short code".to_string()
                    } else {
                        reject.to_string()
                    },
                    token_id,
                    lock_id,
                }
            }
        }
    }

    fn record_use(
        &mut self,
        c: &token::TokenClaims,
        order_id: Option<Uuid>,
        via: Presenter,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let (event_id, jws) = self.sign(Message::Event(Event::Unlock(UnlockEvent {
            lock_id: c.lock_id,
            token_id: Some(c.token_id),
            order_id,
            result: ResultCode::Accepted,
            via: Some(via),
            at: now_ms,
        })));
        let via_s = match via {
            Presenter::Cloud => "cloud",
            Presenter::Lan => "lan",
            Presenter::Scanner => "scanner",
        };
        // A savepoint, not a transaction: inside a group it undoes only this use if one of
        // the two inserts fails; alone it is a transaction of its own.
        let tx = self.conn.savepoint()?;
        tx.prepare_cached(
            "INSERT INTO token_uses (token_id, lock_id, at_ms, via, event_id) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            c.token_id.as_bytes(),
            c.lock_id.as_bytes(),
            now_ms as i64,
            via_s,
            event_id.hyphenated().to_string()
        ])?;
        let seq = Self::insert_outbox(
            &tx,
            event_id,
            TopicKind::Event,
            Some(c.lock_id),
            now_ms,
            &jws,
        )?;
        tx.commit()?;
        self.pending += 1;
        self.stage(vec![OutRow {
            seq,
            topic: TopicKind::Event,
            jws,
        }]);
        Ok(())
    }

    /// Uses recorded for a token.
    pub fn uses_of(&self, token_id: &Uuid) -> u32 {
        View { db: self }.uses(token_id)
    }

    /// Whether a token id is on the revocation list (a read error counts as revoked).
    pub fn is_revoked(&self, token_id: &Uuid) -> bool {
        View { db: self }.is_revoked(token_id)
    }

    /// The cached copy of the token whose text is `text` (by token id), if it is cached.
    /// `Ok(None)` also for a text that is not a token.
    pub fn cached_by_text(&self, text: &str) -> Result<Option<UnlockToken>, StoreError> {
        let Ok(tok) = UnlockToken::from_text(text) else {
            return Ok(None);
        };
        let raw = self
            .conn
            .prepare_cached("SELECT token FROM tokens WHERE token_id = ?1")?
            .query_row(params![tok.claims().token_id.as_bytes()], |r| {
                r.get::<_, Vec<u8>>(0)
            })
            .optional()?;
        Ok(raw.and_then(|b| UnlockToken::from_bytes(&b).ok()))
    }

    /// Up to `limit` outbox rows after `after_seq`, oldest first.
    pub fn outbox_batch(&self, after_seq: i64, limit: usize) -> Result<Vec<OutRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, topic, jws FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after_seq, limit as i64], |r| {
            Ok(OutRow {
                seq: r.get(0)?,
                topic: topic_from(&r.get::<_, String>(1)?),
                jws: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Deletes acknowledged rows (one transaction for the batch).
    pub fn outbox_delete(&mut self, seqs: &[i64]) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        let mut removed = 0u64;
        {
            let mut stmt = tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?;
            for s in seqs {
                removed += stmt.execute(params![s])? as u64;
            }
        }
        tx.commit()?;
        self.pending = self.pending.saturating_sub(removed);
        Ok(())
    }

    fn take_delivered(&self) -> Vec<i64> {
        let mut d = locked(&self.delivered);
        d.since = None;
        std::mem::take(&mut d.seqs)
    }

    fn give_back_delivered(&self, mut seqs: Vec<i64>) {
        if seqs.is_empty() {
            return;
        }
        let mut d = locked(&self.delivered);
        seqs.append(&mut d.seqs);
        d.seqs = seqs;
        d.since.get_or_insert_with(Instant::now);
    }

    /// Deletes outbox rows by seq with the current transaction (or each as its own when
    /// there is none); rows already gone are skipped. Keeps the backlog count.
    fn delete_rows(&mut self, seqs: &[i64]) -> Result<(), StoreError> {
        let mut removed = 0u64;
        {
            let mut stmt = self
                .conn
                .prepare_cached("DELETE FROM outbox WHERE seq = ?1")?;
            for s in seqs {
                removed += stmt.execute(params![s])? as u64;
            }
        }
        self.pending = self.pending.saturating_sub(removed);
        Ok(())
    }

    /// Deletes the acknowledged rows handed over by [`Store::delivered`] that no group
    /// commit took along, in one transaction committed without an fsync: see `Delivered`
    /// for why losing it is harmless. `synchronous` is back to FULL before anything else
    /// commits.
    pub fn flush_delivered(&mut self) -> Result<(), StoreError> {
        let seqs = self.take_delivered();
        if seqs.is_empty() {
            return Ok(());
        }
        let r = self.delete_lazily(&seqs);
        if r.is_err() {
            self.give_back_delivered(seqs);
        }
        r
    }

    fn delete_lazily(&mut self, seqs: &[i64]) -> Result<(), StoreError> {
        self.sync_lowered = true;
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        let r = (|| {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            let pending = self.pending;
            match self.delete_rows(seqs) {
                Ok(()) => {
                    if let Err(e) = self.conn.execute_batch("COMMIT") {
                        self.pending = pending;
                        if !self.conn.is_autocommit() {
                            let _ = self.conn.execute_batch("ROLLBACK");
                        }
                        return Err(e.into());
                    }
                    Ok(())
                }
                Err(e) => {
                    self.pending = pending;
                    let _ = self.conn.execute_batch("ROLLBACK");
                    Err(e)
                }
            }
        })();
        // Every other commit must stay durable: if this fails, `sync_lowered` stays set and
        // the next group commit tries again before it commits, or fails (see run_group).
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        self.sync_lowered = false;
        r
    }

    /// Backlog size and age (acknowledged rows still waiting for deletion are deleted
    /// first, so the figure is what the broker has not acknowledged).
    pub fn outbox_stats(&mut self) -> Result<OutboxStats, StoreError> {
        if let Err(e) = self.flush_delivered() {
            tracing::warn!(error = %e, "cannot delete acknowledged outbox rows");
        }
        let oldest = self
            .conn
            .prepare_cached("SELECT created_ms FROM outbox ORDER BY seq LIMIT 1")?
            .query_row([], |r| r.get::<_, i64>(0))
            .optional()?;
        Ok(OutboxStats {
            pending: self.pending,
            oldest_ms: oldest.map(|v| v as u64),
            dead_letters: self.dead,
        })
    }

    /// Verifies a command (signature by a trusted cloud key, our gateway, not expired by
    /// trusted time), drops it if its id was seen before (`Ok(None)`), and moves the time
    /// anchor forward to its `ts`.
    pub fn open_command(&mut self, compact: &str) -> Result<Option<Envelope>, CommandError> {
        let keys = &self.keys;
        let (_kid, env) = message::open(
            compact,
            |kid| match kid {
                Kid::Cloud(n) => keys.get(n),
                Kid::Gateway(_) => None,
            },
            Expect {
                gw: self.gw,
                now_ms: self.clock.now_ms(),
            },
        )?;
        let fresh = self
            .conn
            .prepare_cached("INSERT OR IGNORE INTO seen_commands (id, ts_ms) VALUES (?1, ?2)")
            .and_then(|mut s| s.execute(params![env.id.hyphenated().to_string(), env.ts as i64]))
            .map_err(StoreError::from)?;
        if fresh == 0 {
            return Ok(None);
        }
        self.observe_cloud_time(env.ts)?;
        Ok(Some(env))
    }

    /// Caches pushed tokens; returns how many were stored and how many were not tokens.
    pub fn put_tokens(&mut self, texts: &[String]) -> Result<(usize, usize), StoreError> {
        let mut parsed = Vec::with_capacity(texts.len());
        let mut bad = 0;
        for t in texts {
            match UnlockToken::from_text(t) {
                Ok(tok) => parsed.push(tok),
                Err(_) => bad += 1,
            }
        }
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO tokens (token_id, short_code, lock_id, not_after, token) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(token_id) DO NOTHING",
            )?;
            for tok in &parsed {
                let c = tok.claims();
                stmt.execute(params![
                    c.token_id.as_bytes(),
                    tok.short_code().value(),
                    c.lock_id.as_bytes(),
                    c.not_after as i64,
                    &tok.as_bytes()[..]
                ])?;
            }
        }
        tx.commit()?;
        Ok((parsed.len(), bad))
    }

    /// Applies a revocation list. Older than the version held: `stale`, nothing changes.
    /// The same version again: `ok`, nothing changes (ids already present stay).
    pub fn revoke(&mut self, ids: &[Uuid], version: u64) -> Result<ResultCode, StoreError> {
        let current = self.setting("revocation_version")?.unwrap_or(0) as u64;
        if version < current {
            return Ok(ResultCode::Stale);
        }
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO revocations (token_id, version) VALUES (?1, ?2) ON CONFLICT(token_id) DO NOTHING",
            )?;
            for id in ids {
                stmt.execute(params![id.as_bytes(), version as i64])?;
            }
            tx.execute(
                "INSERT INTO settings (name, value) VALUES ('revocation_version', ?1)
                 ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                params![version as i64],
            )?;
        }
        tx.commit()?;
        Ok(ResultCode::Ok)
    }

    /// Applies runtime settings if `cs.version` is newer than the one held.
    pub fn config_set(&mut self, cs: &ConfigSet) -> Result<Applied, StoreError> {
        let current = self.setting("config_version")?.unwrap_or(0) as u64;
        if cs.version < current {
            return Ok(Applied {
                result: ResultCode::Stale,
                config: None,
            });
        }
        if cs.version == current && current != 0 {
            return Ok(Applied {
                result: ResultCode::Ok,
                config: None,
            });
        }
        let tx = self.conn.transaction()?;
        let put = |name: &str, v: i64| {
            tx.execute(
                "INSERT INTO settings (name, value) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                params![name, v],
            )
        };
        put("config_version", cs.version as i64)?;
        if let Some(h) = cs.heartbeat_interval_s {
            put("heartbeat_interval_s", i64::from(h))?;
        }
        if let Some(s) = cs.token_skew_s {
            put("token_skew_s", i64::from(s))?;
        }
        tx.commit()?;
        if let Some(s) = cs.token_skew_s {
            self.skew_s = u64::from(s);
        }
        Ok(Applied {
            result: ResultCode::Ok,
            config: Some(cs.clone()),
        })
    }

    /// Heartbeat interval set by the cloud, if any.
    pub fn heartbeat_override_s(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.setting("heartbeat_interval_s")?.map(|v| v as u64))
    }

    /// Drops cached tokens long expired and command ids too old to be redelivered.
    pub fn prune(&mut self) -> Result<(usize, usize), StoreError> {
        let now_ms = self.clock.now_ms();
        let cutoff_s = (now_ms / 1000).saturating_sub(self.skew_s + 86_400) as i64;
        let t = self
            .conn
            .execute("DELETE FROM tokens WHERE not_after < ?1", params![cutoff_s])?;
        let c = self.conn.execute(
            "DELETE FROM seen_commands WHERE ts_ms < ?1",
            params![now_ms.saturating_sub(7 * 86_400_000) as i64],
        )?;
        Ok((t, c))
    }

    /// `PRAGMA integrity_check`: "ok" when the file is sound.
    pub fn integrity_check(&self) -> Result<String, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }
}

/// Why a command was not opened.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Message(#[from] MessageError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Applies the numbered migrations not yet applied.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let applied: usize =
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    if applied > MIGRATIONS.len() {
        return Err(StoreError::TooNew {
            found: applied,
            known: MIGRATIONS.len(),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let version = i + 1;
        let tx = conn
            .transaction()
            .map_err(|source| StoreError::Migration { version, source })?;
        tx.execute_batch(sql)
            .and_then(|()| tx.pragma_update(None, "user_version", version as i64))
            .map_err(|source| StoreError::Migration { version, source })?;
        tx.commit()
            .map_err(|source| StoreError::Migration { version, source })?;
        tracing::info!(version, "state database migrated");
    }
    Ok(())
}

/// Opens an existing state database read-only (for `dmr-agent status` when the daemon is
/// not answering) and reads the backlog.
pub fn read_outbox_stats(path: &Path) -> Result<OutboxStats, StoreError> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let pending: i64 = conn.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
    let oldest: Option<i64> = conn
        .query_row(
            "SELECT created_ms FROM outbox ORDER BY seq LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let dead: i64 = conn
        .query_row("SELECT COUNT(*) FROM dead_letters", [], |r| r.get(0))
        .unwrap_or(0);
    Ok(OutboxStats {
        pending: pending as u64,
        oldest_ms: oldest.map(|v| v as u64),
        dead_letters: dead as u64,
    })
}

/// The command body as a typed value (helper for callers).
pub fn command_of(env: &Envelope) -> Option<&Command> {
    match &env.message {
        Message::Cmd(c) => Some(c),
        _ => None,
    }
}
