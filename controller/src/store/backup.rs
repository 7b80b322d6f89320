//! Backups: a consistent copy of the whole store while the controller runs, and the
//! check a copy must pass before it is restored.
//!
//! The copy is one read transaction: redb serves it the store as of its start (MVCC),
//! however the engine writes meanwhile, and every table is copied from that one view
//! into a new redb file. Nothing is paused; a node's history, events and state in the
//! copy are those of the same commit.

use std::path::Path;

use redb::{Database, Durability, ReadTransaction, ReadableDatabase, TableDefinition};

use super::{
    metrics, recorded_schema, StoreError, StoreReader, BYTE_TABLES, CAMPAIGN_NODES, COMMANDS,
    EVENTS, HISTORY, META, NAMES, NODES, SCHEMA_VERSION, TOKENS,
};

/// What a backup holds, for the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupInfo {
    pub schema: u32,
    pub nodes: u64,
    pub history: u64,
    pub events: u64,
    pub commands: u64,
    /// API tokens.
    pub tokens: u64,
}

/// How many rows `def` has in `view` (0 when it does not exist).
fn rows<K: redb::Key + 'static, V: redb::Value + 'static>(
    view: &ReadTransaction,
    def: TableDefinition<K, V>,
) -> Result<u64, StoreError> {
    match view.open_table(def) {
        Ok(t) => Ok(tryop!(
            "backup: count",
            redb::ReadableTableMetadata::len(&t)
        )),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(StoreError::Db {
            op: "backup: open table",
            source: e.into(),
        }),
    }
}

/// Copies every row of `def` from `from` into `to`; how many.
fn copy<K: redb::Key + 'static, V: redb::Value + 'static>(
    from: &ReadTransaction,
    to: &redb::WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<u64, StoreError> {
    let src = match from.open_table(def) {
        Ok(t) => t,
        // A table the store never made (none today: `init` makes them all).
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => {
            return Err(StoreError::Db {
                op: "backup: open table",
                source: e.into(),
            })
        }
    };
    let mut dst = tryop!("backup: create table", to.open_table(def));
    let mut n = 0;
    for row in tryop!("backup: read", redb::ReadableTable::iter(&src)) {
        let (k, v) = tryop!("backup: read row", row);
        tryop!("backup: write row", dst.insert(k.value(), v.value()));
        n += 1;
    }
    Ok(n)
}

/// Copies all of `view` into the new database `to`, in one write transaction; how many
/// rows.
fn copy_all(view: &ReadTransaction, to: &Database) -> Result<u64, StoreError> {
    let mut txn = tryop!("backup: begin", to.begin_write());
    tryop!(
        "backup: durability",
        txn.set_durability(Durability::Immediate)
    );
    let mut rows = 0;
    for def in BYTE_TABLES {
        rows += copy(view, &txn, def)?;
    }
    rows += copy(view, &txn, NAMES)?;
    rows += copy(view, &txn, HISTORY)?;
    rows += copy(view, &txn, EVENTS)?;
    rows += copy(view, &txn, CAMPAIGN_NODES)?;
    rows += copy(view, &txn, metrics::METRICS_RAW)?;
    rows += copy(view, &txn, metrics::METRICS_1M)?;
    tryop!("backup: commit", txn.commit());
    Ok(rows)
}

impl StoreReader {
    /// Writes a consistent copy of the store to `path` (a new file; an existing one is
    /// refused). The engine goes on writing meanwhile.
    pub fn backup_to(&self, path: &Path) -> Result<BackupInfo, StoreError> {
        let db = self.db()?;
        let view = tryop!("backup: begin read", db.begin_read());
        if path.exists() {
            return Err(StoreError::Backup(format!(
                "{} exists already",
                path.display()
            )));
        }
        let out = Database::create(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        copy_all(&view, &out)?;
        drop(out);
        check_backup(path)
    }
}

/// Opens the backup at `path` and says what it holds, or why it cannot be restored:
/// not a redb file, no schema, or a schema newer than this build reads.
pub fn check_backup(path: &Path) -> Result<BackupInfo, StoreError> {
    let db = Database::open(path).map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let view = tryop!("backup: begin read", db.begin_read());
    let meta = view
        .open_table(META)
        .map_err(|_| StoreError::Backup("it has no meta table: not a Metalbus store".into()))?;
    let schema = recorded_schema(&meta, SCHEMA_VERSION)?
        .ok_or_else(|| StoreError::Backup("it records no schema: not a Metalbus store".into()))?;
    Ok(BackupInfo {
        schema,
        nodes: rows(&view, NODES)?,
        history: rows(&view, HISTORY)?,
        events: rows(&view, EVENTS)?,
        commands: rows(&view, COMMANDS)?,
        tokens: rows(&view, TOKENS)?,
    })
}
