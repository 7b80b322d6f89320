//! The outbox: reports stored first, sent in order, sent again after `resend_after`
//! without a receipt making progress, removed under a receipt.

use std::sync::atomic::Ordering;

use metalbus_protocol::command::Work;
use metalbus_protocol::controller::Receipt;
use metalbus_protocol::report::{JobStatus, ReportBody};
use metalbus_protocol::topic::NodeTopic;
use metalbus_protocol::PROTOCOL_VERSION;
use tracing::{debug, error, warn};

use super::{Action, Core, Publisher, Qos, SEND_BATCH};
use crate::jobs::JobEvent;
use crate::outbox::{Queued, RunningJob};

impl Core {
    /// A job that ran when the agent died is reported `failed`, so the controller's
    /// retry logic takes over; its processes are killed.
    pub(super) fn recover_interrupted_job(
        &mut self,
        actions: &mut Vec<Action>,
    ) -> anyhow::Result<()> {
        let Some(job) = self.store.job()? else {
            return Ok(());
        };
        warn!(job = %job.command_id, "the agent restarted during a job; reporting it failed");
        actions.push(Action::KillLeftovers(job.command_id.clone()));
        self.queue(ReportBody::Job {
            command_id: job.command_id,
            job: Work::Job(job.job),
            status: JobStatus::Failed,
            progress: None,
            step: None,
            message: None,
            error: Some("agent restarted during job".into()),
        });
        self.store.set_job(None)
    }

    pub(super) fn on_receipt(&mut self, payload: &[u8]) {
        let receipt: Receipt = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "malformed receipt ignored");
                return;
            }
        };
        let theirs = receipt
            .protocol
            .unwrap_or_else(metalbus_protocol::first_protocol);
        if let Some(link) = self.link.as_mut() {
            if link.controller_protocol != Some(theirs) {
                link.controller_protocol = Some(theirs);
                if theirs < PROTOCOL_VERSION {
                    // It reads what it knows and ignores the rest; say so once.
                    warn!(
                        controller = theirs,
                        agent = PROTOCOL_VERSION,
                        "the controller speaks an older protocol than this agent: upgrade the controller first"
                    );
                }
            }
        }
        match self.store.receipt(&receipt.session, receipt.seq) {
            Ok(removed) if removed > 0 => {
                let now = self.clock.monotonic();
                if let Some(link) = self.link.as_mut() {
                    link.last_progress = now;
                }
                self.stats
                    .receipted
                    .fetch_max(receipt.seq, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => error!(error = %e, "cannot apply a receipt"),
        }
    }

    pub(super) fn on_job_event(&mut self, event: JobEvent) {
        let record = match event.status {
            JobStatus::Started => Some(Some(RunningJob {
                command_id: event.command_id.clone(),
                job: event.job,
            })),
            JobStatus::Complete | JobStatus::Failed => Some(None),
            JobStatus::Progress => None,
        };
        if let Some(job) = record {
            if let Err(e) = self.store.set_job(job.as_ref()) {
                error!(error = %e, "cannot record the running job");
            }
        }
        let ours = self.reboot_after.as_ref() == Some(&event.command_id);
        let ends = matches!(event.status, JobStatus::Complete | JobStatus::Failed);
        let reboots = ours && event.status == JobStatus::Complete;
        let command_id = event.command_id.clone();
        let seq = self.queue(ReportBody::Job {
            command_id: event.command_id,
            job: Work::Job(event.job),
            status: event.status,
            progress: event.progress,
            step: event.step,
            message: event.message,
            error: event.error,
        });
        if ours && ends {
            self.reboot_after = None;
        }
        if let (true, Some(seq)) = (reboots, seq) {
            self.reboot_after_install(command_id, seq);
        }
    }

    /// Stores a report in the outbox (it is sent from there); returns its number.
    pub(super) fn queue(&mut self, body: ReportBody) -> Option<u64> {
        let now = self.clock.now();
        let sent_upto = self.link.map_or(0, |l| l.sent_upto);
        match self.store.queue(body, now, &self.node_id, sent_upto) {
            Ok(Queued::New(seq)) => {
                self.stats.last_seq.store(seq, Ordering::Relaxed);
                Some(seq)
            }
            Ok(Queued::Merged(seq)) => Some(seq),
            Ok(Queued::Dropped) => {
                warn!(
                    dropped = self.store.dropped,
                    "outbox full; progress report dropped"
                );
                None
            }
            Err(e) => {
                error!(error = %e, "cannot store a report; it is lost");
                None
            }
        }
    }

    /// Hands unsent reports to MQTT in order; after `resend_after` without a receipt
    /// making progress, starts again from the oldest unreceipted one.
    /// The count of reports waiting is kept also while disconnected: that is when it
    /// grows, and when an operator looks at it.
    pub(super) fn send_backlog(&mut self, out: &mut dyn Publisher) {
        let (pending, oldest) = match self.store.backlog() {
            Ok(b) => b,
            Err(e) => {
                error!(error = %e, "cannot read the outbox");
                return;
            }
        };
        self.stats.pending.store(pending, Ordering::Relaxed);
        let Some(mut link) = self.link else {
            return;
        };
        let now = self.clock.monotonic();
        let Some(oldest) = oldest else {
            link.last_progress = now;
            self.link = Some(link);
            return;
        };
        let resending = link.sent_upto >= oldest
            && now.saturating_sub(link.last_progress) >= self.settings.resend_after;
        if resending {
            debug!(
                from = oldest,
                "no receipt for a while; sending the outbox again"
            );
            link.sent_upto = oldest - 1;
            link.last_progress = now;
        }
        let topic = self.topic(NodeTopic::Reports);
        'send: loop {
            let batch = match self.store.pending(link.sent_upto, SEND_BATCH) {
                Ok(b) => b,
                Err(e) => {
                    error!(error = %e, "cannot read the outbox");
                    break;
                }
            };
            if batch.is_empty() {
                break;
            }
            for report in batch {
                let body = match serde_json::to_vec(&report) {
                    Ok(b) => b,
                    Err(e) => {
                        error!(seq = report.seq, error = %e, "a stored report does not serialize");
                        break 'send;
                    }
                };
                if !out.publish(topic.clone(), Qos::AtLeastOnce, false, body) {
                    break 'send; // the request queue is full: the next tick goes on
                }
                link.sent_upto = report.seq;
                self.stats.sent.fetch_add(1, Ordering::Relaxed);
                if resending {
                    self.stats.resent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.link = Some(link);
    }
}
