//! The agent's durable state: a redb file in its state dir (DESIGN section 4).
//!
//! - `conn`, the MQTT connection counter, and `session`, fixed for the life of the file.
//! - The **outbox**: every report, numbered 1, 2, 3… with no gaps, stored before it is
//!   sent and removed only when a receipt from the controller covers it. A progress report
//!   may be merged into the newest one when that one is an unsent progress report of the
//!   same job (only the newest progress counts); acks, `started`, `complete` and `failed`
//!   are never merged.
//! - The ids of the last 1,000 commands, with the ack given, so a repeated command is
//!   acked again and never run twice.
//! - The running job, so a restart during a job reports it `failed`.
//! - The pending power action (`reboot`, `poweroff`): acked and waiting for the receipt
//!   of its ack, or started (with the boot id it started in), so it runs at most once
//!   and a restart knows what became of it.
//!
//! Every change commits with `Durability::Immediate`.

use std::path::Path;

use anyhow::Context;
use metalbus_protocol::command::{CommandId, JobKind, PowerAction};
use metalbus_protocol::report::{JobStatus, Report, ReportBody};
use metalbus_protocol::{NodeId, Timestamp};
use rand::Rng;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::jobs::Ack;

const FILE: &str = "agent.redb";
/// Where the pre-outbox versions kept `conn` and `session`.
const LEGACY: &str = "agent-state.json";

const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
const SEEN: TableDefinition<&str, &[u8]> = TableDefinition::new("seen_commands");
const SEEN_ORDER: TableDefinition<u64, &str> = TableDefinition::new("seen_order");
const JOB: TableDefinition<&str, &[u8]> = TableDefinition::new("job");

/// How many command ids are remembered.
pub const REMEMBERED_COMMANDS: u64 = 1000;
/// Most reports kept unreceipted; past this, new progress reports are dropped.
pub const MAX_PENDING: u64 = 100_000;

/// What became of a queued report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Stored under a new sequence number.
    New(u64),
    /// Merged into the unsent progress report with this number.
    Merged(u64),
    /// The outbox is full and this was a progress report.
    Dropped,
}

/// The job that runs now, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningJob {
    pub command_id: CommandId,
    pub job: JobKind,
}

/// A power action the agent has accepted, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingPower {
    pub command_id: CommandId,
    /// `reboot` or `poweroff` (stored under the key `kind`).
    #[serde(rename = "kind")]
    pub action: PowerAction,
    /// The ack's report number: the action starts once a receipt covers it.
    pub ack_seq: u64,
    /// Set (durably) just before the action starts, with the boot id of that moment:
    /// never started twice; a restart in a new boot means it worked.
    pub started: Option<StartedIn>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedIn {
    pub boot_id: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct SeenCommand {
    accepted: bool,
    reason: Option<String>,
}

#[derive(Deserialize)]
struct Legacy {
    session: String,
    conn: u64,
}

pub struct AgentStore {
    db: Database,
    session: String,
    /// Progress reports dropped because the outbox was full, since start.
    pub dropped: u64,
}

macro_rules! db {
    ($e:expr, $what:expr) => {
        $e.map_err(|e| anyhow::anyhow!("agent store: {}: {e}", $what))?
    };
}

impl AgentStore {
    /// Opens (or creates) the store in `dir`, taking over an old `agent-state.json`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating state dir {}", dir.display()))?;
        let path = dir.join(FILE);
        let db = Database::create(&path).with_context(|| {
            format!(
                "opening {} (is another agent running with this state dir?)",
                path.display()
            )
        })?;
        let legacy: Option<Legacy> = std::fs::read(dir.join(LEGACY))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let store = Self::init(db, legacy.as_ref())?;
        if legacy.is_some() {
            let _ = std::fs::remove_file(dir.join(LEGACY));
        }
        Ok(store)
    }

    /// A store that lives in memory only, for tests of the agent's core.
    pub fn in_memory() -> anyhow::Result<Self> {
        let db = db!(
            Database::builder().create_with_backend(redb::backends::InMemoryBackend::new()),
            "create"
        );
        Self::init(db, None)
    }

    /// Creates the tables, and the session on first use.
    fn init(db: Database, legacy: Option<&Legacy>) -> anyhow::Result<Self> {
        let txn = db!(db.begin_write(), "begin");
        let session = {
            let mut meta = db!(txn.open_table(META), "meta");
            let found = db!(meta.get("session"), "read session").map(|v| v.value().to_string());
            match found {
                Some(s) => s,
                None => {
                    let s = legacy.map_or_else(new_session, |l| l.session.clone());
                    db!(meta.insert("session", s.as_str()), "write session");
                    s
                }
            }
        };
        {
            let mut c = db!(txn.open_table(COUNTERS), "counters");
            if let Some(l) = legacy {
                let conn = db!(c.get("conn"), "read conn").map_or(0, |v| v.value());
                db!(c.insert("conn", conn.max(l.conn)), "write conn");
            }
            db!(txn.open_table(OUTBOX), "outbox");
            db!(txn.open_table(SEEN), "seen");
            db!(txn.open_table(SEEN_ORDER), "seen order");
            db!(txn.open_table(JOB), "job");
        }
        db!(txn.commit(), "commit");
        Ok(Self {
            db,
            session,
            dropped: 0,
        })
    }

    pub fn session(&self) -> &str {
        &self.session
    }

    fn bump(&self, key: &str) -> anyhow::Result<u64> {
        let txn = db!(self.db.begin_write(), "begin");
        let next = {
            let mut c = db!(txn.open_table(COUNTERS), "counters");
            let next = db!(c.get(key), "read").map_or(0, |v| v.value()) + 1;
            db!(c.insert(key, next), "write");
            next
        };
        db!(txn.commit(), "commit");
        Ok(next)
    }

    /// Bumps and persists `conn` for a new connection attempt.
    pub fn next_conn(&mut self) -> anyhow::Result<u64> {
        self.bump("conn")
    }

    /// The counter of the latest connection attempt.
    pub fn conn(&self) -> anyhow::Result<u64> {
        let txn = db!(self.db.begin_read(), "begin");
        let c = db!(txn.open_table(COUNTERS), "counters");
        Ok(db!(c.get("conn"), "read").map_or(0, |v| v.value()))
    }

    /// Stores a report. A progress report merges into the newest report when that is a
    /// progress report of the same job not yet sent (its number is above `sent_upto`).
    pub fn queue(
        &mut self,
        body: ReportBody,
        now: Timestamp,
        node_id: &NodeId,
        sent_upto: u64,
    ) -> anyhow::Result<Queued> {
        let progress_of = |b: &ReportBody| match b {
            ReportBody::Job {
                command_id,
                status: JobStatus::Progress,
                ..
            } => Some(command_id.clone()),
            _ => None,
        };
        let mine = progress_of(&body);
        let txn = db!(self.db.begin_write(), "begin");
        let queued = {
            let mut outbox = db!(txn.open_table(OUTBOX), "outbox");
            let last = match db!(outbox.last(), "read newest") {
                Some((k, v)) => Some((k.value(), serde_json::from_slice::<Report>(v.value())?)),
                None => None,
            };
            let merge_into = match (&mine, &last) {
                (Some(job), Some((seq, r)))
                    if *seq > sent_upto && progress_of(&r.body).as_ref() == Some(job) =>
                {
                    Some(*seq)
                }
                _ => None,
            };
            let seq = match merge_into {
                Some(seq) => Some(seq),
                None if mine.is_some() && db!(outbox.len(), "count") >= MAX_PENDING => None,
                None => {
                    let mut c = db!(txn.open_table(COUNTERS), "counters");
                    let next = db!(c.get("seq"), "read seq").map_or(0, |v| v.value()) + 1;
                    db!(c.insert("seq", next), "write seq");
                    Some(next)
                }
            };
            match seq {
                None => Queued::Dropped,
                Some(seq) => {
                    let mut report = Report {
                        session: self.session.clone(),
                        seq,
                        ts: now,
                        body,
                        node_id: Some(node_id.clone()),
                    };
                    report.fit();
                    db!(
                        outbox.insert(seq, serde_json::to_vec(&report)?.as_slice()),
                        "write report"
                    );
                    if merge_into.is_some() {
                        Queued::Merged(seq)
                    } else {
                        Queued::New(seq)
                    }
                }
            }
        };
        if queued == Queued::Dropped {
            self.dropped += 1;
            return Ok(queued);
        }
        db!(txn.commit(), "commit");
        Ok(queued)
    }

    /// Up to `limit` unreceipted reports numbered above `after`, oldest first.
    pub fn pending(&self, after: u64, limit: usize) -> anyhow::Result<Vec<Report>> {
        let txn = db!(self.db.begin_read(), "begin");
        let outbox = db!(txn.open_table(OUTBOX), "outbox");
        let mut out = Vec::new();
        for entry in db!(outbox.range(after.saturating_add(1)..), "scan").take(limit) {
            let (_, v) = db!(entry, "scan");
            out.push(serde_json::from_slice(v.value())?);
        }
        Ok(out)
    }

    /// How many reports wait for a receipt, and the oldest one's number.
    pub fn backlog(&self) -> anyhow::Result<(u64, Option<u64>)> {
        let txn = db!(self.db.begin_read(), "begin");
        let outbox = db!(txn.open_table(OUTBOX), "outbox");
        let oldest = db!(outbox.first(), "oldest").map(|(k, _)| k.value());
        Ok((db!(outbox.len(), "count"), oldest))
    }

    /// A receipt: every report of `session` up to `seq` is committed at the controller
    /// and can go. Returns how many were removed.
    pub fn receipt(&mut self, session: &str, seq: u64) -> anyhow::Result<u64> {
        if session != self.session {
            return Ok(0);
        }
        let txn = db!(self.db.begin_write(), "begin");
        let removed = {
            let mut outbox = db!(txn.open_table(OUTBOX), "outbox");
            let before = db!(outbox.len(), "count");
            db!(outbox.retain_in(..=seq, |_, _| false), "remove receipted");
            before - db!(outbox.len(), "count")
        };
        if removed > 0 {
            db!(txn.commit(), "commit");
        }
        Ok(removed)
    }

    /// The ack given to `command_id`, if it was seen before.
    pub fn seen(&self, command_id: &CommandId) -> anyhow::Result<Option<Ack>> {
        let txn = db!(self.db.begin_read(), "begin");
        let t = db!(txn.open_table(SEEN), "seen");
        let found = db!(t.get(command_id.as_str()), "read");
        Ok(match found {
            Some(v) => {
                let s: SeenCommand = serde_json::from_slice(v.value())?;
                Some(Ack {
                    accepted: s.accepted,
                    reason: s.reason,
                })
            }
            None => None,
        })
    }

    /// Remembers `command_id` and its ack; only the newest 1,000 are kept.
    pub fn remember(&mut self, command_id: &CommandId, ack: &Ack) -> anyhow::Result<()> {
        let txn = db!(self.db.begin_write(), "begin");
        {
            let mut seen = db!(txn.open_table(SEEN), "seen");
            let mut order = db!(txn.open_table(SEEN_ORDER), "seen order");
            let mut c = db!(txn.open_table(COUNTERS), "counters");
            let n = db!(c.get("seen"), "read").map_or(0, |v| v.value()) + 1;
            db!(c.insert("seen", n), "write");
            let body = serde_json::to_vec(&SeenCommand {
                accepted: ack.accepted,
                reason: ack.reason.clone(),
            })?;
            db!(
                seen.insert(command_id.as_str(), body.as_slice()),
                "write seen"
            );
            db!(order.insert(n, command_id.as_str()), "write order");
            while db!(order.len(), "count") > REMEMBERED_COMMANDS {
                let oldest =
                    db!(order.pop_first(), "pop").map(|(k, v)| (k.value(), v.value().to_string()));
                if let Some((_, id)) = oldest {
                    db!(seen.remove(id.as_str()), "forget");
                }
            }
        }
        db!(txn.commit(), "commit");
        Ok(())
    }

    /// Records the job that runs now (or none).
    pub fn set_job(&mut self, job: Option<&RunningJob>) -> anyhow::Result<()> {
        self.put_record("current", job)
    }

    /// Records the pending power action (or none).
    pub fn set_power(&mut self, power: Option<&PendingPower>) -> anyhow::Result<()> {
        self.put_record("power", power)
    }

    /// The pending power action, if any.
    pub fn power(&self) -> anyhow::Result<Option<PendingPower>> {
        self.record("power")
    }

    /// The job recorded as running.
    pub fn job(&self) -> anyhow::Result<Option<RunningJob>> {
        self.record("current")
    }

    /// Writes (or, with `None`, removes) the record `key` of the job table.
    fn put_record<T: Serialize>(&mut self, key: &str, value: Option<&T>) -> anyhow::Result<()> {
        let txn = db!(self.db.begin_write(), "begin");
        {
            let mut t = db!(txn.open_table(JOB), "job");
            match value {
                Some(v) => {
                    db!(t.insert(key, serde_json::to_vec(v)?.as_slice()), key);
                }
                None => {
                    db!(t.remove(key), key);
                }
            }
        }
        db!(txn.commit(), "commit");
        Ok(())
    }

    /// The record `key` of the job table, if any.
    fn record<T: serde::de::DeserializeOwned>(&self, key: &str) -> anyhow::Result<Option<T>> {
        let txn = db!(self.db.begin_read(), "begin");
        let t = db!(txn.open_table(JOB), "job");
        let found = db!(t.get(key), key);
        Ok(match found {
            Some(v) => Some(serde_json::from_slice(v.value())?),
            None => None,
        })
    }

    /// Whether a receipt has covered report `seq` (it has left the outbox).
    pub fn receipted(&self, seq: u64) -> anyhow::Result<bool> {
        let txn = db!(self.db.begin_read(), "begin");
        let outbox = db!(txn.open_table(OUTBOX), "outbox");
        let present = db!(outbox.get(seq), "read report").is_some();
        let counter = {
            let c = db!(txn.open_table(COUNTERS), "counters");
            db!(c.get("seq"), "read seq").map_or(0, |v| v.value())
        };
        Ok(!present && seq <= counter)
    }
}

fn new_session() -> String {
    let bytes: [u8; 12] = rand::thread_rng().gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
