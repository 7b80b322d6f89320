//! What agents report through their outbox: acks and job events, applied strictly in
//! `seq` order per session, exactly once, and receipted after the commit.

use metalbus_protocol::command::{CommandStatus, Work};
use metalbus_protocol::controller::Progress;
use metalbus_protocol::event::EventReason;
use metalbus_protocol::machine::Event;
use metalbus_protocol::report::{JobStatus, Report, ReportBody};
use metalbus_protocol::{NodeId, Timestamp};
use std::collections::{BTreeMap, HashMap};

use tracing::{debug, warn};

use super::batch::{Batch, Tally};
use super::lifecycle::Ctx;
use super::operations::PowerReport;
use super::Engine;
use crate::ingest::Place;
use crate::telemetry::Limit;

/// Reports kept per node while waiting for a gap to fill. Each is at most ~20 KiB once
/// valid (a refused one is held as its place only), and the agent sends them again
/// anyway: holding is only a shortcut.
pub(super) const MAX_HELD_REPORTS: usize = 256;
/// Reports held for all nodes together.
pub(super) const MAX_HELD_REPORTS_TOTAL: usize = 16_384;
/// Bytes of reports (as JSON) held per node.
pub(super) const MAX_HELD_BYTES: usize = 1024 * 1024;
/// Bytes of reports held for all nodes together.
pub(super) const MAX_HELD_BYTES_TOTAL: usize = 64 * 1024 * 1024;

/// Reports waiting for a gap to fill, per node, with their count and size in all.
#[derive(Debug, Default)]
pub(super) struct Held {
    by_node: HashMap<NodeId, BTreeMap<u64, (Sequenced, usize)>>,
    count: usize,
    bytes: usize,
}

impl Held {
    /// Keeps `report` unless a bound of count or bytes, per node or in all, would be
    /// passed; false when it was not kept.
    fn insert(&mut self, id: &NodeId, report: Sequenced) -> bool {
        let size = report.size();
        let held = self.by_node.entry(id.clone()).or_default();
        if held.contains_key(&report.seq()) {
            return true;
        }
        let node_bytes: usize = held.values().map(|(_, b)| b).sum();
        let fits = held.len() < MAX_HELD_REPORTS
            && self.count < MAX_HELD_REPORTS_TOTAL
            && node_bytes + size <= MAX_HELD_BYTES
            && self.bytes + size <= MAX_HELD_BYTES_TOTAL;
        if fits {
            held.insert(report.seq(), (report, size));
            self.count += 1;
            self.bytes += size;
        }
        fits
    }

    /// Takes the report held at `seq` for `id`.
    fn take(&mut self, id: &NodeId, seq: u64) -> Option<Sequenced> {
        let held = self.by_node.get_mut(id)?;
        let (report, size) = held.remove(&seq)?;
        if held.is_empty() {
            self.by_node.remove(id);
        }
        self.count -= 1;
        self.bytes -= size;
        Some(report)
    }

    /// Forgets every report held for `id`.
    fn clear(&mut self, id: &NodeId) {
        for (_, size) in self
            .by_node
            .remove(id)
            .into_iter()
            .flat_map(BTreeMap::into_values)
        {
            self.count -= 1;
            self.bytes -= size;
        }
    }

    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// One place in a node's report stream.
#[derive(Debug)]
pub(crate) enum Sequenced {
    /// A report to apply.
    Report(Box<Report>),
    /// A report ingest refused: its place is taken with a Warning event, so the stream
    /// moves on (DESIGN section 4: refuse, never stall).
    Refused { place: Place, error: String },
}

impl Sequenced {
    fn session(&self) -> &str {
        match self {
            Sequenced::Report(r) => &r.session,
            Sequenced::Refused { place, .. } => &place.session,
        }
    }

    fn seq(&self) -> u64 {
        match self {
            Sequenced::Report(r) => r.seq,
            Sequenced::Refused { place, .. } => place.seq,
        }
    }

    /// About what holding it costs: its JSON size.
    fn size(&self) -> usize {
        match self {
            Sequenced::Report(r) => serde_json::to_vec(r).map_or(0, |v| v.len()),
            Sequenced::Refused { place, error } => place.session.len() + error.len() + 16,
        }
    }
}

impl Engine {
    /// A report from the agent's outbox: applied strictly in `seq` order per session.
    /// A duplicate is dropped (and receipted again); one after a gap waits until the gap
    /// is filled (the agent resends from its oldest unreceipted report).
    pub(super) fn on_sequenced_report(
        &mut self,
        id: &NodeId,
        report: Sequenced,
        now: Timestamp,
        batch: &mut Batch,
    ) {
        let Some(node) = self.fleet.nodes.get(id).cloned() else {
            debug!(node = %id, "report from an unknown node; the agent resends it after its birth");
            return;
        };
        self.touch(id, now);
        let first_since_connect = self.reconnected.remove(id);
        if node.old_sessions.iter().any(|s| s == report.session()) {
            batch.counts.add(Tally::Duplicate);
            debug!(node = %id, session = %report.session(), "report of an earlier agent session dropped");
            return;
        }
        let mut last = node.last_applied_seq;
        if node.report_session.as_deref() != Some(report.session()) {
            // A new outbox: numbering starts at 1. (A node that never reported takes the
            // session as it finds it: the controller's store may be younger than the
            // agent's outbox.)
            if report.seq() != 1 && node.report_session.is_some() {
                self.hold(id, report, batch);
                return;
            }
            let mut after = node.clone();
            if let Some(old) = after.report_session.take() {
                after.old_sessions.push(old);
                let excess = after.old_sessions.len().saturating_sub(4);
                after.old_sessions.drain(..excess);
            }
            after.report_session = Some(report.session().to_string());
            after.last_applied_seq = report.seq() - 1;
            last = after.last_applied_seq;
            self.held.clear(id);
            self.replace(node, after, now, batch);
        }
        if report.seq() <= last {
            batch.counts.add(Tally::Duplicate);
            batch.receipts.insert(id.clone());
            return;
        }
        if report.seq() > last + 1 {
            if !first_since_connect {
                self.hold(id, report, batch);
                return;
            }
            // The agent resends from the oldest report it holds on every connect, and it
            // drops a report only once receipted, which happens only once it is durable
            // here. So a gap before the first report of a connection never fills: this
            // store is older than what it receipted (it was restored from a backup).
            let lost = report.seq() - last - 1;
            warn!(node = %id, from = last + 1, to = report.seq() - 1, "reports receipted before a restore are not in the store; skipped");
            batch.agent(id, now).warning(
                EventReason::ReportsLost,
                format!(
                    "{lost} reports ({} to {}) were receipted by a store this one was restored behind; skipped",
                    last + 1,
                    report.seq() - 1
                ),
            );
            if let Some(n) = self.fleet.nodes.get_mut(id) {
                n.last_applied_seq = report.seq() - 1;
            }
            self.held.clear(id);
        }
        let mut next = Some(report);
        while let Some(r) = next {
            let seq = r.seq();
            match r {
                Sequenced::Report(r) => self.on_report(id, *r, now, batch),
                Sequenced::Refused { error, .. } => {
                    warn!(node = %id, seq, %error, "refused report takes its place in the stream");
                    batch
                        .agent(id, now)
                        .warning(EventReason::MessageRejected, error);
                }
            }
            if let Some(n) = self.fleet.nodes.get_mut(id) {
                n.last_applied_seq = seq;
            }
            batch.nodes.entry(id.clone()).or_insert(None);
            batch.durable = true;
            batch.receipts.insert(id.clone());
            batch.counts.add(Tally::Applied);
            next = self.held.take(id, seq + 1);
        }
    }

    /// Keeps a report that came after a gap (bounded; the agent resends anyway).
    fn hold(&mut self, id: &NodeId, report: Sequenced, batch: &mut Batch) {
        batch.counts.add(Tally::HeldBack);
        let seq = report.seq();
        if !self.held.insert(id, report) {
            debug!(node = %id, seq, "held reports full; the agent sends this one again");
            batch.counts.limit(Limit::HeldReports);
        }
    }

    /// An ack or a job event. Both prove the agent alive; a job event also resets the
    /// install timer. A report that does not fit the node (another command, an
    /// impossible status) is refused with a warning and changes nothing.
    fn on_report(&mut self, id: &NodeId, report: Report, now: Timestamp, batch: &mut Batch) {
        let Some(node) = self.fleet.nodes.get(id).cloned() else {
            return;
        };
        match report.body {
            ReportBody::Ack {
                command_id,
                accepted,
                reason,
            } => {
                let status = if accepted {
                    CommandStatus::Accepted
                } else {
                    CommandStatus::Rejected
                };
                self.update_command(&command_id, status, reason.clone(), now, batch);
                if accepted {
                    return;
                }
                // The agent will never run it.
                let why = reason.unwrap_or_else(|| "no reason given".into());
                match node.job.as_ref().filter(|j| j.command_id == command_id) {
                    Some(job) => {
                        // The same as a failed attempt.
                        warn!(node = %id, command = %command_id, reason = %why, "agent refused the job");
                        batch.agent(id, now).warning(
                            EventReason::CommandRejected,
                            format!("agent refused command {command_id}: {why}"),
                        );
                        let event = Event::Job {
                            command_id: command_id.clone(),
                            job: job.kind,
                            status: JobStatus::Failed,
                            error: Some(format!("agent refused the command: {why}")),
                        };
                        self.run_machine(id, event, Ctx::default(), now, batch);
                    }
                    None => {
                        let power = self
                            .sent_to(id, &command_id, batch)
                            .and_then(|rec| rec.command.kind.power());
                        if let Some(action) = power {
                            warn!(node = %id, command = %command_id, reason = %why, "agent refused the {action}");
                            batch.agent(id, now).warning(
                                EventReason::CommandRejected,
                                format!("agent refused {action} command {command_id}: {why}"),
                            );
                        }
                    }
                }
            }
            ReportBody::Job {
                command_id,
                job: Work::Power(action),
                status,
                error,
                ..
            } => {
                let report = PowerReport {
                    command_id,
                    action,
                    status,
                    error,
                };
                self.on_power_report(id, report, now, batch);
            }
            ReportBody::Job {
                command_id,
                job: Work::Job(job),
                status,
                progress,
                step,
                message,
                error,
            } => {
                let done = match status {
                    JobStatus::Complete => Some(CommandStatus::Succeeded),
                    JobStatus::Failed => Some(CommandStatus::Failed),
                    _ => None,
                };
                if let Some(s) = done {
                    self.update_command(&command_id, s, error.clone(), now, batch);
                }
                let ctx = Ctx {
                    error: error.clone(),
                    ..Ctx::default()
                };
                let event = Event::Job {
                    command_id: command_id.clone(),
                    job,
                    status,
                    error,
                };
                if !self.run_machine(id, event, ctx, now, batch) {
                    return;
                }
                let Some(before) = self.fleet.nodes.get(id).cloned() else {
                    return;
                };
                let mut after = before.clone();
                after.last_progress_at = Some(now);
                after.progress = match status {
                    JobStatus::Started | JobStatus::Progress => Some(Progress {
                        percent: progress.unwrap_or(0),
                        step,
                        message,
                    }),
                    JobStatus::Complete | JobStatus::Failed => None,
                };
                if status == JobStatus::Progress {
                    // Progress is transient: no version bump.
                    if after != before {
                        self.fleet.nodes.insert(id.clone(), after);
                        batch.nodes.entry(id.clone()).or_insert(Some(before.name));
                    }
                } else {
                    self.replace(before, after, now, batch);
                }
            }
        }
    }
}
