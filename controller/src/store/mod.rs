//! The controller's redb store: tables, typed reads, and write transactions.
//!
//! Architecture Invariant: there is one writer, and the types say so. [`Store`] is the
//! only handle with `write`; it is not `Clone`, and `metalbus serve` gives it to the
//! engine. Everyone else (the HTTP API, start-up and shutdown checks) holds a
//! [`StoreReader`], which can only read, each read in its own read transaction.

#[cfg(test)]
pub(crate) mod flaky;
mod records;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use metalbus_protocol::command::CommandStatus;
use metalbus_protocol::event::{EventSource, EventType, NodeEvent};
use metalbus_protocol::{NodeId, Timestamp};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use records::{
    AuditEntry, CampaignNodeRecord, CampaignRecord, CommandRecord, CredentialRecord,
    EnrollTokenRecord, Heartbeat, NodeRecord, StoredInventory, TokenRecord,
};

use crate::telemetry::Telemetry;

/// id → [`NodeRecord`]
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
/// name → id, the unique-name index
const NAMES: TableDefinition<&str, &str> = TableDefinition::new("node_names");
/// id → [`StoredInventory`]
const INVENTORY: TableDefinition<&str, &[u8]> = TableDefinition::new("inventory");
/// id → [`Heartbeat`]
const HEARTBEATS: TableDefinition<&str, &[u8]> = TableDefinition::new("heartbeats");
/// sha256(token) hex → [`TokenRecord`]
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
/// enrollment token id → [`EnrollTokenRecord`]
const ENROLL_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("enroll_tokens");
/// node id → [`CredentialRecord`]
const CREDENTIALS: TableDefinition<&str, &[u8]> = TableDefinition::new("credentials");
/// (node id, n) → [`AuditEntry`], n counting from 1 per node
const HISTORY: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("history");
/// (node id, n) → [`NodeEvent`]; n grows with each new or repeated event, so key order
/// is `last_timestamp` order
const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
/// command id → [`CommandRecord`]
const COMMANDS: TableDefinition<&str, &[u8]> = TableDefinition::new("commands");
/// store-wide facts, e.g. `schema`
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// campaign id → [`CampaignRecord`] (schema 2)
const CAMPAIGNS: TableDefinition<&str, &[u8]> = TableDefinition::new("campaigns");
/// (campaign id, place) → [`CampaignNodeRecord`], the place counting from 0 in the
/// order the selector resolved (schema 2)
const CAMPAIGN_NODES: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("campaign_nodes");
/// The tables keyed by text that hold encoded records.
const BYTE_TABLES: [TableDefinition<&str, &[u8]>; 9] = [
    NODES,
    INVENTORY,
    HEARTBEATS,
    TOKENS,
    META,
    COMMANDS,
    ENROLL_TOKENS,
    CREDENTIALS,
    CAMPAIGNS,
];

/// How many events a node keeps: in all, and with one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventBounds {
    pub per_node: usize,
    pub per_reason: usize,
}

/// The schema this build writes, recorded in `meta` under `schema` (as decimal text).
/// A store at an older schema is migrated forward at open, through [`MIGRATIONS`]; one
/// at a newer schema is refused (docs/OPERATIONS.md, upgrades).
pub const SCHEMA_VERSION: u32 = 2;

/// One step forward: what a store at schema `to - 1` needs to be at schema `to`.
pub struct Migration {
    pub to: u32,
    /// What changes, for the log.
    pub what: &'static str,
    pub run: fn(&redb::WriteTransaction) -> Result<(), StoreError>,
}

/// Every step from schema 1 to [`SCHEMA_VERSION`], in order. Schema 1 is the first
/// released one; `tests/fixtures/store-schema1/` is a store it wrote, which every later
/// build must open with every record intact (`tests/schema.rs`).
pub const MIGRATIONS: &[Migration] = &[Migration {
    to: 2,
    what: "campaign tables",
    run: campaign_tables,
}];

/// Store failures, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {source}")]
    Open {
        path: PathBuf,
        source: redb::DatabaseError,
    },
    #[error("store {op} failed: {source}")]
    Db {
        op: &'static str,
        source: redb::Error,
    },
    #[error("stored {table} record {key:?} is unreadable: {source}")]
    Decode {
        table: &'static str,
        key: String,
        source: serde_json::Error,
    },
    #[error(
        "the store was written by a newer Metalbus (schema {found}); this build reads schema {SCHEMA_VERSION} and older: run the newer metalbus, or restore a backup taken with this version"
    )]
    Schema { found: String },
    #[error("a {table} record cannot be encoded: {source}")]
    Encode {
        table: &'static str,
        source: serde_json::Error,
    },
    #[error("the store is unavailable after an I/O error; retrying")]
    Unavailable,
    #[error("backup: {0}")]
    Backup(String),
}

/// Shorthand for converting any redb error into [`StoreError::Db`].
macro_rules! tryop {
    ($op:expr, $e:expr) => {
        $e.map_err(|e| StoreError::Db {
            op: $op,
            source: e.into(),
        })?
    };
}

/// Schema 2: campaigns (issue 16). New tables only; no record changes.
fn campaign_tables(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    tryop!("create table", txn.open_table(CAMPAIGNS));
    tryop!("create table", txn.open_table(CAMPAIGN_NODES));
    Ok(())
}

/// The schema a store's `meta` records (`None`: a new store), or why this build, which
/// reads up to `current`, cannot open it: not a number, or newer.
fn recorded_schema(
    meta: &impl redb::ReadableTable<&'static str, &'static [u8]>,
    current: u32,
) -> Result<Option<u32>, StoreError> {
    let Some(text) = tryop!("read schema", meta.get("schema"))
        .map(|v| String::from_utf8_lossy(v.value()).into_owned())
    else {
        return Ok(None);
    };
    match text.trim().parse::<u32>() {
        Ok(at) if at <= current => Ok(Some(at)),
        _ => Err(StoreError::Schema { found: text }),
    }
}

/// Brings the store in `txn` to schema `current` with `steps` (in the caller's one
/// transaction: all of it commits, or none). A new store is written at `current`; one
/// at a newer schema, or one no step leads from, is refused.
fn migrate(
    txn: &redb::WriteTransaction,
    steps: &[Migration],
    current: u32,
) -> Result<(), StoreError> {
    let found = recorded_schema(&tryop!("open meta", txn.open_table(META)), current)?;
    let Some(mut at) = found else {
        let mut meta = tryop!("open meta", txn.open_table(META));
        tryop!(
            "write schema",
            meta.insert("schema", current.to_string().as_bytes())
        );
        return Ok(());
    };
    while at < current {
        let step = steps
            .iter()
            .find(|m| m.to == at + 1)
            .ok_or_else(|| StoreError::Schema {
                found: format!("{at} (no migration to {})", at + 1),
            })?;
        (step.run)(txn)?;
        tracing::info!(
            from = at,
            to = step.to,
            what = step.what,
            "migrated the store"
        );
        at = step.to;
    }
    let mut meta = tryop!("open meta", txn.open_table(META));
    tryop!(
        "write schema",
        meta.insert("schema", current.to_string().as_bytes())
    );
    Ok(())
}

mod backup;
mod metrics;

pub use backup::{check_backup, BackupInfo};

pub use metrics::{
    key_ms, Agg, Point, Resource, Rollup, MINUTE_MS, MIN_SPACING_MS, RAW_KEEP, ROLLUP_KEEP,
};

/// Opens the database again after an I/O error (redb refuses every operation after one,
/// until the database is closed and re-opened).
type Opener = Box<dyn Fn() -> Result<Database, StoreError> + Send + Sync>;

/// The write handle: the one writer owns it (not `Clone`). It reads too, through
/// [`StoreReader`].
///
/// There is no second one to be had:
///
/// ```compile_fail
/// fn second_writer(store: &metalbus::store::Store) -> metalbus::store::Store {
///     store.clone()
/// }
/// ```
pub struct Store {
    reader: StoreReader,
}

/// A read-only handle; cheap to clone. It cannot write:
///
/// ```compile_fail
/// fn write_through(reader: &mut metalbus::store::StoreReader) {
///     let _ = reader.write(redb::Durability::Immediate, |_| Ok(()));
/// }
/// ```
///
/// while the same call on the write handle compiles:
///
/// ```
/// fn write_through(store: &mut metalbus::store::Store) {
///     let _ = store.write(redb::Durability::Immediate, |_| Ok(()));
/// }
/// ```
#[derive(Clone)]
pub struct StoreReader {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` only while being re-opened, or after a failed re-open.
    db: RwLock<Option<Arc<Database>>>,
    opener: Option<Opener>,
    /// Set when an operation failed in a way that needs a re-open.
    broken: AtomicBool,
    telemetry: Arc<Telemetry>,
}

impl std::ops::Deref for Store {
    type Target = StoreReader;

    fn deref(&self) -> &StoreReader {
        &self.reader
    }
}

/// redb's page cache, reads and buffered writes together. redb's default is 1 GiB, so
/// the cache grew with the file: 55 MB of a 10,000-node controller's heap at the start
/// (heaptrack, DECISIONS §71). The engine keeps what it works on in memory; the cache
/// serves API reads, which the kernel's page cache backs.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

impl Store {
    /// Opens or creates `path`. Fails if another process holds it.
    pub fn open(path: &Path, telemetry: Arc<Telemetry>) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        let opener: Opener = Box::new(move || {
            Database::builder()
                .set_cache_size(CACHE_BYTES)
                .create(&path)
                .map_err(|source| StoreError::Open {
                    path: path.clone(),
                    source,
                })
        });
        Self::from_opener(opener, telemetry)
    }

    /// An in-memory store for tests.
    pub fn in_memory(telemetry: Arc<Telemetry>) -> Result<Self, StoreError> {
        let db = tryop!(
            "create",
            Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())
        );
        let mut store = Self::with_db(db, None, telemetry);
        store.init()?;
        Ok(store)
    }

    /// A store whose database `opener` opens (again, after I/O errors).
    pub fn from_opener(opener: Opener, telemetry: Arc<Telemetry>) -> Result<Self, StoreError> {
        let db = opener()?;
        let mut store = Self::with_db(db, Some(opener), telemetry);
        store.init()?;
        Ok(store)
    }

    fn with_db(db: Database, opener: Option<Opener>, telemetry: Arc<Telemetry>) -> Self {
        Self {
            reader: StoreReader {
                inner: Arc::new(Inner {
                    db: RwLock::new(Some(Arc::new(db))),
                    opener,
                    broken: AtomicBool::new(false),
                    telemetry,
                }),
            },
        }
    }

    /// A read-only handle for everyone but the writer.
    pub fn reader(&self) -> StoreReader {
        self.reader.clone()
    }

    fn init(&mut self) -> Result<(), StoreError> {
        self.write(Durability::Immediate, |tx| {
            let txn = tx.txn;
            for def in BYTE_TABLES {
                tryop!("create table", txn.open_table(def));
            }
            tryop!("create table", txn.open_table(NAMES));
            tryop!("create table", txn.open_table(HISTORY));
            tryop!("create table", txn.open_table(EVENTS));
            tryop!("create table", txn.open_table(CAMPAIGN_NODES));
            tryop!("create table", txn.open_table(metrics::METRICS_RAW));
            tryop!("create table", txn.open_table(metrics::METRICS_1M));
            migrate(txn, MIGRATIONS, SCHEMA_VERSION)
        })
    }

    /// Runs `f` in one write transaction and commits it with `durability`.
    pub fn write<T>(
        &mut self,
        durability: Durability,
        f: impl FnOnce(&mut WriteTx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let reader = &self.reader;
        let result = (|| {
            let db = reader.db()?;
            let mut txn = tryop!("begin write", db.begin_write());
            tryop!("set durability", txn.set_durability(durability));
            let out = f(&mut WriteTx { txn: &txn })?;
            let started = Instant::now();
            tryop!("commit", txn.commit());
            reader.inner.telemetry.observe_commit(started.elapsed());
            Ok(out)
        })();
        if let Err(e) = &result {
            reader.inner.telemetry.store_errors.inc();
            reader.note(e);
        }
        result
    }
}

impl StoreReader {
    /// The current database handle, re-opening it first if an I/O error broke it.
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        if self.inner.broken.load(Ordering::SeqCst) {
            self.reopen()?;
        }
        let guard = self.inner.db.read().unwrap_or_else(|e| e.into_inner());
        guard.clone().ok_or(StoreError::Unavailable)
    }

    /// Closes and re-opens the database. The old handle must be gone first (it holds the
    /// file lock), so this waits briefly for readers that still hold it.
    fn reopen(&self) -> Result<(), StoreError> {
        let Some(opener) = &self.inner.opener else {
            return Err(StoreError::Unavailable);
        };
        let mut guard = self.inner.db.write().unwrap_or_else(|e| e.into_inner());
        if !self.inner.broken.load(Ordering::SeqCst) {
            return Ok(()); // another caller re-opened it meanwhile
        }
        if let Some(mut old) = guard.take() {
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(shared) if Instant::now() < deadline => {
                        old = shared;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(shared) => {
                        *guard = Some(shared);
                        return Err(StoreError::Unavailable);
                    }
                }
            }
        }
        let db = opener()?;
        *guard = Some(Arc::new(db));
        self.inner.broken.store(false, Ordering::SeqCst);
        tracing::warn!("store re-opened after an I/O error");
        Ok(())
    }

    /// Marks the store for a re-open when `e` is an I/O failure.
    fn note(&self, e: &StoreError) {
        if let StoreError::Db { source, .. } = e {
            if matches!(source, redb::Error::Io(_) | redb::Error::PreviousIo) {
                self.inner.broken.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Whether the store answers: a read transaction that opens the nodes table and
    /// reads no record (what `/readyz` asks, on every probe, without decoding the fleet).
    pub fn ping(&self) -> Result<(), StoreError> {
        let txn = tryop!("begin read", self.db()?.begin_read());
        tryop!("open nodes", txn.open_table(NODES));
        Ok(())
    }

    /// Every node, in id order.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.scan(NODES, "nodes")
    }

    /// A node by id, or else by name.
    pub fn find_node(&self, key: &str) -> Result<Option<NodeRecord>, StoreError> {
        let txn = tryop!("begin read", self.db()?.begin_read());
        let nodes = tryop!("open nodes", txn.open_table(NODES));
        if let Some(rec) = get_json(&nodes, "nodes", key)? {
            return Ok(Some(rec));
        }
        let names = tryop!("open names", txn.open_table(NAMES));
        let id = tryop!("read names", names.get(key)).map(|v| v.value().to_string());
        match id {
            Some(id) => get_json(&nodes, "nodes", &id),
            None => Ok(None),
        }
    }

    pub fn inventory(&self, id: &NodeId) -> Result<Option<StoredInventory>, StoreError> {
        self.get(INVENTORY, "inventory", id.as_str())
    }

    pub fn heartbeat(&self, id: &NodeId) -> Result<Option<Heartbeat>, StoreError> {
        self.get(HEARTBEATS, "heartbeats", id.as_str())
    }

    pub fn token(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.get(TOKENS, "tokens", hash)
    }

    /// Every API token, by hash.
    pub fn tokens(&self) -> Result<Vec<(String, TokenRecord)>, StoreError> {
        self.scan_keyed(TOKENS, "tokens")
    }

    /// Every enrollment token, by id.
    pub fn enroll_tokens(&self) -> Result<Vec<(String, EnrollTokenRecord)>, StoreError> {
        self.scan_keyed(ENROLL_TOKENS, "enroll_tokens")
    }

    /// Every node credential, by node id.
    pub fn credentials(&self) -> Result<Vec<(String, CredentialRecord)>, StoreError> {
        self.scan_keyed(CREDENTIALS, "credentials")
    }

    /// Every command whose status is one of `statuses` (`sent` ones wait for their
    /// agent's ack, `queued` ones for the controller itself), in one scan.
    pub fn commands_in(
        &self,
        statuses: &[CommandStatus],
    ) -> Result<Vec<CommandRecord>, StoreError> {
        let all: Vec<CommandRecord> = self.scan(COMMANDS, "commands")?;
        Ok(all
            .into_iter()
            .filter(|c| statuses.contains(&c.status))
            .collect())
    }

    pub fn command(&self, id: &str) -> Result<Option<CommandRecord>, StoreError> {
        self.get(COMMANDS, "commands", id)
    }

    /// A node's audit entries, newest first: `limit` of them after skipping `offset`.
    pub fn history(
        &self,
        id: &NodeId,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let txn = tryop!("begin read", self.db()?.begin_read());
        let t = tryop!("open history", txn.open_table(HISTORY));
        let key = id.as_str();
        let mut out = Vec::new();
        let range = tryop!("scan history", t.range((key, 0)..=(key, u64::MAX)));
        for entry in range.rev().skip(offset).take(limit) {
            let (k, v) = tryop!("scan history", entry);
            let (node, n) = k.value();
            out.push(decode("history", &format!("{node}:{n}"), v.value())?);
        }
        Ok(out)
    }

    /// A node's events, newest first, that pass `filter`; at most `limit`.
    pub fn events(
        &self,
        id: &NodeId,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<NodeEvent>, StoreError> {
        let txn = tryop!("begin read", self.db()?.begin_read());
        let t = tryop!("open events", txn.open_table(EVENTS));
        let key = id.as_str();
        let mut out = Vec::new();
        let range = tryop!("scan events", t.range((key, 0)..=(key, u64::MAX)));
        for entry in range.rev() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = tryop!("scan events", entry);
            let (node, n) = k.value();
            let ev: NodeEvent = decode("events", &format!("{node}:{n}"), v.value())?;
            if filter.since.is_some_and(|s| ev.last_timestamp < s) {
                break; // older ones follow
            }
            if filter.kind.is_some_and(|k| ev.kind != k)
                || filter.source.is_some_and(|s| ev.source != s)
            {
                continue;
            }
            out.push(ev);
        }
        Ok(out)
    }

    fn get<T: DeserializeOwned>(
        &self,
        def: TableDefinition<&str, &[u8]>,
        table: &'static str,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let txn = tryop!("begin read", self.db()?.begin_read());
        let t = tryop!("open table", txn.open_table(def));
        get_json(&t, table, key)
    }

    /// Every campaign, newest first.
    pub fn campaigns(&self) -> Result<Vec<CampaignRecord>, StoreError> {
        let mut all: Vec<CampaignRecord> = self.scan(CAMPAIGNS, "campaigns")?;
        all.sort_by(|a, b| (b.view.created_at, &b.view.id).cmp(&(a.view.created_at, &a.view.id)));
        Ok(all)
    }

    pub fn campaign(&self, id: &str) -> Result<Option<CampaignRecord>, StoreError> {
        self.get(CAMPAIGNS, "campaigns", id)
    }

    /// A campaign's nodes in their order: `limit` of them from `offset`.
    pub fn campaign_nodes(
        &self,
        id: &str,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<(u32, CampaignNodeRecord)>, StoreError> {
        let txn = tryop!("begin read", self.db()?.begin_read());
        let t = tryop!("open campaign_nodes", txn.open_table(CAMPAIGN_NODES));
        let mut out = Vec::new();
        let range = tryop!("scan campaign_nodes", t.range((id, 0)..=(id, u32::MAX)));
        for entry in range.skip(offset).take(limit) {
            let (k, v) = tryop!("scan campaign_nodes", entry);
            let (c, n) = k.value();
            out.push((n, decode("campaign_nodes", &format!("{c}:{n}"), v.value())?));
        }
        Ok(out)
    }

    fn scan_keyed<T: DeserializeOwned>(
        &self,
        def: TableDefinition<&str, &[u8]>,
        table: &'static str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let txn = tryop!("begin read", self.db()?.begin_read());
        let t = tryop!("open table", txn.open_table(def));
        let mut out = Vec::new();
        for entry in tryop!("scan", t.iter()) {
            let (k, v) = tryop!("scan", entry);
            out.push((k.value().to_string(), decode(table, k.value(), v.value())?));
        }
        Ok(out)
    }

    fn scan<T: DeserializeOwned>(
        &self,
        def: TableDefinition<&str, &[u8]>,
        table: &'static str,
    ) -> Result<Vec<T>, StoreError> {
        let txn = tryop!("begin read", self.db()?.begin_read());
        let t = tryop!("open table", txn.open_table(def));
        let mut out = Vec::new();
        for entry in tryop!("scan", t.iter()) {
            let (k, v) = tryop!("scan", entry);
            out.push(decode(table, k.value(), v.value())?);
        }
        Ok(out)
    }
}

fn decode<T: DeserializeOwned>(
    table: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
        table,
        key: key.to_string(),
        source,
    })
}

fn get_json<T: DeserializeOwned>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    table: &'static str,
    key: &str,
) -> Result<Option<T>, StoreError> {
    match tryop!("read", t.get(key)) {
        Some(v) => decode(table, key, v.value()).map(Some),
        None => Ok(None),
    }
}

/// A record as stored. Our records are plain data, so this does not fail in practice;
/// if it did, the transaction fails rather than storing an empty value.
fn encode(table: &'static str, value: &impl Serialize) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode { table, source })
}

/// Which events `Store::events` returns.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventFilter {
    pub kind: Option<EventType>,
    pub source: Option<EventSource>,
    /// Only events seen (last) at or after this.
    pub since: Option<Timestamp>,
}

/// The operations allowed inside one write transaction.
pub struct WriteTx<'a> {
    txn: &'a redb::WriteTransaction,
}

impl WriteTx<'_> {
    /// Inserts or replaces a node and keeps the name index in step. `old_name` is the
    /// name it had before, if it existed.
    pub fn put_node(
        &mut self,
        node: &NodeRecord,
        old_name: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut nodes = tryop!("open nodes", self.txn.open_table(NODES));
        tryop!(
            "write node",
            nodes.insert(node.id.as_str(), encode("nodes", node)?.as_slice())
        );
        let mut names = tryop!("open names", self.txn.open_table(NAMES));
        if let Some(old) = old_name.filter(|o| *o != node.name) {
            tryop!("write names", names.remove(old));
        }
        tryop!(
            "write names",
            names.insert(node.name.as_str(), node.id.as_str())
        );
        Ok(())
    }

    /// Removes a node with everything stored under it: its name, inventory,
    /// heartbeat, history, events and metrics history.
    pub fn delete_node(&mut self, id: &NodeId, name: &str) -> Result<(), StoreError> {
        let key = id.as_str();
        let mut nodes = tryop!("open nodes", self.txn.open_table(NODES));
        tryop!("delete node", nodes.remove(key));
        let mut names = tryop!("open names", self.txn.open_table(NAMES));
        let owned = tryop!("read names", names.get(name)).is_some_and(|v| v.value() == key);
        if owned {
            tryop!("delete name", names.remove(name));
        }
        for def in [INVENTORY, HEARTBEATS] {
            let mut t = tryop!("open table", self.txn.open_table(def));
            tryop!("delete", t.remove(key));
        }
        for def in [HISTORY, EVENTS] {
            let mut t = tryop!("open table", self.txn.open_table(def));
            tryop!(
                "delete",
                t.retain_in((key, 0)..=(key, u64::MAX), |_, _| false)
            );
        }
        self.delete_metrics(id)
    }

    pub fn put_inventory(&mut self, id: &NodeId, inv: &StoredInventory) -> Result<(), StoreError> {
        let mut t = tryop!("open inventory", self.txn.open_table(INVENTORY));
        tryop!(
            "write inventory",
            t.insert(id.as_str(), encode("inventory", inv)?.as_slice())
        );
        Ok(())
    }

    pub fn put_heartbeat(&mut self, id: &NodeId, hb: &Heartbeat) -> Result<(), StoreError> {
        let mut t = tryop!("open heartbeats", self.txn.open_table(HEARTBEATS));
        tryop!(
            "write heartbeat",
            t.insert(id.as_str(), encode("heartbeats", hb)?.as_slice())
        );
        Ok(())
    }

    pub fn put_audit(&mut self, n: u64, entry: &AuditEntry) -> Result<(), StoreError> {
        let mut t = tryop!("open history", self.txn.open_table(HISTORY));
        tryop!(
            "write history",
            t.insert(
                (entry.node_id.as_str(), n),
                encode("history", entry)?.as_slice()
            )
        );
        Ok(())
    }

    /// Records `event` for `node`. A repeat of one of the node's stored events replaces
    /// it with `count` bumped, moved to the newest place. Keeps at most `keep.per_node`
    /// events, at most `keep.per_reason` of them with the event's reason (the oldest of
    /// that reason goes first, so one noisy reason cannot push out the others), and
    /// drops the node's events last seen before `cutoff`. True when an event was dropped
    /// for its reason.
    pub fn put_event(
        &mut self,
        node: &NodeId,
        event: &NodeEvent,
        keep: EventBounds,
        cutoff: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut t = tryop!("open events", self.txn.open_table(EVENTS));
        let key = node.as_str();
        // An unreadable entry (`None`) is dropped rather than blocking every later event.
        let mut stored: Vec<(u64, Option<NodeEvent>)> = Vec::new();
        for entry in tryop!("scan events", t.range((key, 0)..=(key, u64::MAX))) {
            let (k, v) = tryop!("scan events", entry);
            stored.push((k.value().1, serde_json::from_slice(v.value()).ok()));
        }
        let next = stored.last().map_or(1, |(n, _)| n + 1);
        let mut record = event.clone();
        let repeat = stored
            .iter()
            .position(|(_, old)| old.as_ref().is_some_and(|o| o.same_as(event)));
        if let Some(i) = repeat {
            let (n, old) = stored.remove(i);
            if let Some(old) = old {
                record.first_timestamp = old.first_timestamp;
                record.count = old.count.saturating_add(event.count);
            }
            tryop!("write events", t.remove((key, n)));
        }
        tryop!(
            "write events",
            t.insert((key, next), encode("events", &record)?.as_slice())
        );
        // Oldest first: the oldest of this reason over its bound, then the aged, then
        // whatever is over the node's bound.
        let same_reason: Vec<usize> = (0..stored.len())
            .filter(|&i| {
                stored[i]
                    .1
                    .as_ref()
                    .is_some_and(|e| e.reason == event.reason)
            })
            .collect();
        let over_reason = same_reason
            .len()
            .saturating_sub(keep.per_reason.saturating_sub(1));
        let mut dropped = vec![false; stored.len()];
        for &i in &same_reason[..over_reason] {
            dropped[i] = true;
        }
        let kept_before = stored.len() - over_reason;
        let mut over_node = kept_before.saturating_sub(keep.per_node.saturating_sub(1));
        for (i, (_, ev)) in stored.iter().enumerate() {
            let aged = ev.as_ref().is_none_or(|e| e.last_timestamp < cutoff);
            if dropped[i] {
                continue;
            }
            if over_node > 0 {
                over_node -= 1;
                dropped[i] = true;
            } else if aged {
                dropped[i] = true;
            }
        }
        for (i, (n, _)) in stored.iter().enumerate() {
            if dropped[i] {
                tryop!("write events", t.remove((key, *n)));
            }
        }
        Ok(over_reason > 0)
    }

    /// Drops every event last seen before `cutoff`; returns how many.
    pub fn prune_events(&mut self, cutoff: Timestamp) -> Result<u64, StoreError> {
        let mut t = tryop!("open events", self.txn.open_table(EVENTS));
        let mut removed = 0u64;
        tryop!(
            "prune events",
            t.retain(|_, v| {
                let keep = serde_json::from_slice::<NodeEvent>(v)
                    .is_ok_and(|ev| ev.last_timestamp >= cutoff);
                removed += u64::from(!keep);
                keep
            })
        );
        Ok(removed)
    }

    pub fn put_campaign(&mut self, rec: &CampaignRecord) -> Result<(), StoreError> {
        let mut t = tryop!("open campaigns", self.txn.open_table(CAMPAIGNS));
        tryop!(
            "write campaign",
            t.insert(rec.view.id.as_str(), encode("campaigns", rec)?.as_slice())
        );
        Ok(())
    }

    pub fn put_campaign_node(
        &mut self,
        campaign: &str,
        place: u32,
        rec: &CampaignNodeRecord,
    ) -> Result<(), StoreError> {
        let mut t = tryop!("open campaign_nodes", self.txn.open_table(CAMPAIGN_NODES));
        tryop!(
            "write campaign node",
            t.insert((campaign, place), encode("campaign_nodes", rec)?.as_slice())
        );
        Ok(())
    }

    pub fn put_command(&mut self, rec: &CommandRecord) -> Result<(), StoreError> {
        let mut t = tryop!("open commands", self.txn.open_table(COMMANDS));
        tryop!(
            "write command",
            t.insert(
                rec.command.command_id.as_str(),
                encode("commands", rec)?.as_slice()
            )
        );
        Ok(())
    }

    pub fn put_enroll_token(
        &mut self,
        id: &str,
        token: &EnrollTokenRecord,
    ) -> Result<(), StoreError> {
        let mut t = tryop!("open enroll tokens", self.txn.open_table(ENROLL_TOKENS));
        tryop!(
            "write enroll token",
            t.insert(id, encode("enroll_tokens", token)?.as_slice())
        );
        Ok(())
    }

    pub fn delete_enroll_token(&mut self, id: &str) -> Result<(), StoreError> {
        let mut t = tryop!("open enroll tokens", self.txn.open_table(ENROLL_TOKENS));
        tryop!("delete enroll token", t.remove(id));
        Ok(())
    }

    pub fn put_credential(
        &mut self,
        id: &NodeId,
        cred: &CredentialRecord,
    ) -> Result<(), StoreError> {
        let mut t = tryop!("open credentials", self.txn.open_table(CREDENTIALS));
        tryop!(
            "write credential",
            t.insert(id.as_str(), encode("credentials", cred)?.as_slice())
        );
        Ok(())
    }

    pub fn delete_credential(&mut self, id: &NodeId) -> Result<(), StoreError> {
        let mut t = tryop!("open credentials", self.txn.open_table(CREDENTIALS));
        tryop!("delete credential", t.remove(id.as_str()));
        Ok(())
    }

    pub fn delete_token(&mut self, hash: &str) -> Result<(), StoreError> {
        let mut t = tryop!("open tokens", self.txn.open_table(TOKENS));
        tryop!("delete token", t.remove(hash));
        Ok(())
    }

    pub fn put_token(&mut self, hash: &str, token: &TokenRecord) -> Result<(), StoreError> {
        let mut t = tryop!("open tokens", self.txn.open_table(TOKENS));
        tryop!(
            "write token",
            t.insert(hash, encode("tokens", token)?.as_slice())
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metalbus_protocol::event::EventReason;
    use metalbus_protocol::Timestamp;

    pub(crate) fn record(id: &str, name: &str) -> NodeRecord {
        let t = Timestamp::from_unix_millis(1_000);
        NodeRecord {
            conn: 1,
            session: Some("s".into()),
            hostname: Some(name.into()),
            metrics_interval_s: Some(15),
            ..NodeRecord::discovered(NodeId::new(id).unwrap(), name.into(), t)
        }
    }

    #[test]
    fn nodes_are_found_by_id_or_name_and_renames_move_the_index() {
        let mut store = Store::in_memory(Arc::new(Telemetry::new())).unwrap();
        let mut n = record("n1", "alpha");
        store
            .write(Durability::Immediate, |tx| tx.put_node(&n, None))
            .unwrap();
        assert_eq!(store.find_node("n1").unwrap().unwrap().name, "alpha");
        assert_eq!(store.find_node("alpha").unwrap().unwrap().id.as_str(), "n1");
        n.name = "beta".into();
        store
            .write(Durability::Immediate, |tx| tx.put_node(&n, Some("alpha")))
            .unwrap();
        assert!(store.find_node("alpha").unwrap().is_none());
        assert_eq!(store.find_node("beta").unwrap().unwrap().id.as_str(), "n1");
        assert!(store.find_node("nope").unwrap().is_none());
        assert_eq!(store.nodes().unwrap().len(), 1);
    }

    /// The schema in `store`'s meta table, as stored.
    fn schema_of(store: &mut Store) -> String {
        store
            .write(Durability::Immediate, |tx| {
                let meta = tryop!("open meta", tx.txn.open_table(META));
                let v = tryop!("read", meta.get("schema")).map(|v| v.value().to_vec());
                Ok(String::from_utf8(v.unwrap()).unwrap())
            })
            .unwrap()
    }

    /// A store as schema 1 left it: these tests run their own steps from there.
    fn schema1_store() -> Store {
        let mut store = Store::in_memory(Arc::new(Telemetry::new())).unwrap();
        store
            .write(Durability::Immediate, |tx| {
                let mut meta = tryop!("open meta", tx.txn.open_table(META));
                tryop!("write schema", meta.insert("schema", b"1".as_slice()));
                Ok(())
            })
            .unwrap();
        store
    }

    /// Runs `migrate` on `store` with `steps` up to `current`.
    fn migrate_to(store: &mut Store, steps: &[Migration], current: u32) -> Result<(), StoreError> {
        store.write(Durability::Immediate, |tx| migrate(tx.txn, steps, current))
    }

    fn mark_two(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
        let mut meta = tryop!("open meta", txn.open_table(META));
        tryop!("mark", meta.insert("step-2", b"ran".as_slice()));
        Ok(())
    }

    fn mark_three(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
        let mut meta = tryop!("open meta", txn.open_table(META));
        let two = tryop!("read", meta.get("step-2")).is_some();
        tryop!(
            "mark",
            meta.insert(
                "step-3",
                if two {
                    b"after-2".as_slice()
                } else {
                    b"alone".as_slice()
                }
            )
        );
        Ok(())
    }

    fn failing(_: &redb::WriteTransaction) -> Result<(), StoreError> {
        Err(StoreError::Unavailable)
    }

    #[test]
    fn a_new_store_is_written_at_this_schema() {
        let mut store = Store::in_memory(Arc::new(Telemetry::new())).unwrap();
        assert_eq!(schema_of(&mut store), SCHEMA_VERSION.to_string());
    }

    #[test]
    fn the_real_steps_take_a_schema1_store_to_this_schema() {
        let mut store = schema1_store();
        migrate_to(&mut store, MIGRATIONS, SCHEMA_VERSION).unwrap();
        assert_eq!(schema_of(&mut store), SCHEMA_VERSION.to_string());
        assert!(store.campaigns().unwrap().is_empty());
    }

    #[test]
    fn an_older_store_is_migrated_step_by_step_keeping_its_records() {
        let mut store = schema1_store();
        let n = record("n1", "alpha");
        store
            .write(Durability::Immediate, |tx| tx.put_node(&n, None))
            .unwrap();
        let steps = [
            Migration {
                to: 3,
                what: "three",
                run: mark_three,
            },
            Migration {
                to: 2,
                what: "two",
                run: mark_two,
            },
        ];
        migrate_to(&mut store, &steps, 3).unwrap();
        assert_eq!(schema_of(&mut store), "3");
        let marks = store
            .write(Durability::Immediate, |tx| {
                let meta = tryop!("open meta", tx.txn.open_table(META));
                let get = |k: &str| -> Result<Option<Vec<u8>>, StoreError> {
                    Ok(tryop!("read", meta.get(k)).map(|v| v.value().to_vec()))
                };
                Ok((get("step-2")?, get("step-3")?))
            })
            .unwrap();
        assert_eq!(marks, (Some(b"ran".to_vec()), Some(b"after-2".to_vec())));
        assert_eq!(store.find_node("n1").unwrap().unwrap().name, "alpha");
        // Opening again at the same schema runs nothing.
        migrate_to(
            &mut store,
            &[Migration {
                to: 4,
                what: "never",
                run: failing,
            }],
            3,
        )
        .unwrap();
    }

    #[test]
    fn a_failed_migration_leaves_the_store_as_it_was() {
        let mut store = schema1_store();
        let steps = [
            Migration {
                to: 2,
                what: "two",
                run: mark_two,
            },
            Migration {
                to: 3,
                what: "broken",
                run: failing,
            },
        ];
        assert!(migrate_to(&mut store, &steps, 3).is_err());
        assert_eq!(schema_of(&mut store), "1");
    }

    #[test]
    fn a_newer_store_or_a_gap_in_the_steps_is_refused() {
        let mut store = schema1_store();
        let err = migrate_to(&mut store, &[], 0).unwrap_err().to_string();
        assert!(
            err.contains("written by a newer Metalbus (schema 1)"),
            "{err}"
        );
        let err = migrate_to(&mut store, &[], 2).unwrap_err().to_string();
        assert!(err.contains("(schema 1 (no migration to 2))"), "{err}");
        assert_eq!(schema_of(&mut store), "1");
    }

    #[test]
    fn a_failed_transaction_writes_nothing() {
        let mut store = Store::in_memory(Arc::new(Telemetry::new())).unwrap();
        let n = record("n1", "alpha");
        let result: Result<(), StoreError> = store.write(Durability::Immediate, |tx| {
            tx.put_node(&n, None)?;
            Err(StoreError::Schema {
                found: "test".into(),
            })
        });
        assert!(result.is_err());
        assert!(store.find_node("n1").unwrap().is_none());
    }

    #[test]
    fn data_survives_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.redb");
        {
            let mut store = Store::open(&path, Arc::new(Telemetry::new())).unwrap();
            store
                .write(Durability::Immediate, |tx| {
                    tx.put_node(&record("n1", "a"), None)
                })
                .unwrap();
        }
        let store = Store::open(&path, Arc::new(Telemetry::new())).unwrap();
        assert_eq!(store.nodes().unwrap()[0].id.as_str(), "n1");
    }

    fn ev(kind: EventType, reason: EventReason, secs: i64) -> NodeEvent {
        NodeEvent::new(
            kind,
            reason,
            format!("{reason} happened"),
            EventSource::Controller,
            Timestamp::from_unix_millis(secs * 1000),
        )
    }

    fn put(store: &mut Store, e: &NodeEvent, max: usize, cutoff_s: i64) {
        put_within(store, e, max, max, cutoff_s);
    }

    fn put_within(
        store: &mut Store,
        e: &NodeEvent,
        per_node: usize,
        per_reason: usize,
        cutoff_s: i64,
    ) -> bool {
        let node = NodeId::new("n1").unwrap();
        let cutoff = Timestamp::from_unix_millis(cutoff_s * 1000);
        let keep = EventBounds {
            per_node,
            per_reason,
        };
        store
            .write(Durability::Immediate, |tx| {
                tx.put_event(&node, e, keep, cutoff)
            })
            .unwrap()
    }

    #[test]
    fn one_noisy_reason_cannot_push_the_others_out() {
        let mut store = Store::in_memory(Arc::new(Telemetry::new())).unwrap();
        let (n, w) = (EventType::Normal, EventType::Warning);
        use EventReason::{MessageRejected as R, NodeOnline as A, StuckState as D};
        assert!(!put_within(&mut store, &ev(n, A, 1), 10, 3, 0));
        assert!(!put_within(&mut store, &ev(w, D, 2), 10, 3, 0));
        // A flood of distinct texts with one reason: each is a new event.
        let mut dropped = 0;
        for i in 0..50 {
            let mut flood = ev(w, R, 10 + i);
            flood.message = format!("rejected #{i}");
            dropped += u32::from(put_within(&mut store, &flood, 10, 3, 0));
        }
        assert_eq!(dropped, 47);
        let kept = stored(&store, EventFilter::default());
        assert_eq!(kept, vec![(R, 1), (R, 1), (R, 1), (D, 1), (A, 1)]);
        let newest = &store
            .events(&NodeId::new("n1").unwrap(), &EventFilter::default(), 1)
            .unwrap()[0];
        assert_eq!(newest.message, "rejected #49");
    }

    fn stored(store: &Store, filter: EventFilter) -> Vec<(EventReason, u64)> {
        store
            .events(&NodeId::new("n1").unwrap(), &filter, 100)
            .unwrap()
            .into_iter()
            .map(|e| (e.reason, e.count))
            .collect()
    }

    #[test]
    fn events_collapse_repeats_keep_a_bounded_newest_set_and_filter() {
        let mut store = Store::in_memory(Arc::new(Telemetry::new())).unwrap();
        let (n, w) = (EventType::Normal, EventType::Warning);
        use EventReason::{
            InventoryChanged as C, NodeError as E, NodeOffline as B, NodeOnline as A,
            StuckState as D,
        };
        put(&mut store, &ev(n, A, 10), 3, 0);
        put(&mut store, &ev(w, B, 20), 3, 0);
        put(&mut store, &ev(n, A, 30), 3, 0);
        // A repeat keeps its first time, counts, and becomes the newest.
        assert_eq!(stored(&store, EventFilter::default()), vec![(A, 2), (B, 1)]);
        let a = &store
            .events(&NodeId::new("n1").unwrap(), &EventFilter::default(), 1)
            .unwrap()[0];
        assert_eq!(a.first_timestamp, Timestamp::from_unix_millis(10_000));
        assert_eq!(a.last_timestamp, Timestamp::from_unix_millis(30_000));
        // At most 3 per node: the oldest goes.
        put(&mut store, &ev(n, C, 40), 3, 0);
        put(&mut store, &ev(w, D, 50), 3, 0);
        assert_eq!(
            stored(&store, EventFilter::default()),
            vec![(D, 1), (C, 1), (A, 2)]
        );
        // Filters: type, source, since.
        let warnings = EventFilter {
            kind: Some(w),
            ..EventFilter::default()
        };
        assert_eq!(stored(&store, warnings), vec![(D, 1)]);
        let from_agents = EventFilter {
            source: Some(EventSource::Agent),
            ..EventFilter::default()
        };
        assert!(stored(&store, from_agents).is_empty());
        let recent = EventFilter {
            since: Some(Timestamp::from_unix_millis(40_000)),
            ..EventFilter::default()
        };
        assert_eq!(stored(&store, recent), vec![(D, 1), (C, 1)]);
        // Writing drops the node's events older than the cutoff.
        put(&mut store, &ev(n, E, 60), 10, 45);
        assert_eq!(stored(&store, EventFilter::default()), vec![(E, 1), (D, 1)]);
        // The sweep drops them for every node.
        let removed = store
            .write(Durability::Immediate, |tx| {
                tx.prune_events(Timestamp::from_unix_millis(55_000))
            })
            .unwrap();
        assert_eq!(removed, 1);
        assert_eq!(stored(&store, EventFilter::default()), vec![(E, 1)]);
    }

    #[test]
    fn an_unreadable_stored_event_is_dropped_by_the_next_write() {
        let mut store = Store::in_memory(Arc::new(Telemetry::new())).unwrap();
        store
            .write(Durability::Immediate, |tx| {
                let mut t = tryop!("open events", tx.txn.open_table(EVENTS));
                tryop!("write", t.insert(("n1", 1), b"{not an event".as_slice()));
                Ok(())
            })
            .unwrap();
        put(
            &mut store,
            &ev(EventType::Normal, EventReason::NodeOnline, 10),
            10,
            0,
        );
        assert_eq!(
            stored(&store, EventFilter::default()),
            vec![(EventReason::NodeOnline, 1)]
        );
    }
}
