//! The reconciler (DESIGN 7.3): per-state timeouts with recovery attempts, the
//! discovery timeout of pre-registered nodes, and heartbeat staleness.
//!
//! It runs over the in-memory nodes every second, and on the earliest state deadline
//! (the engine wakes for its next pass), so a stuck node is caught on time. No
//! timer lives only in memory: each deadline is derived from stored timestamps
//! (`state_changed_at`, `last_progress_at`, `recovered_at`, the heartbeat), so a node
//! stuck across a controller restart is still caught on time.

use std::time::Duration;

use metalbus_protocol::event::EventReason;
use metalbus_protocol::lifecycle::NodeState;
use metalbus_protocol::machine::Event;
use metalbus_protocol::status::OfflineReason;
use metalbus_protocol::{NodeId, Timestamp};
use tracing::{info, warn};

use super::batch::Batch;
use super::fleet::silence_limit;
use super::lifecycle::Ctx;
use super::Engine;
use crate::store::NodeRecord;

/// How often the reconciler looks at every node.
pub(super) const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// The least time between two passes, however close the deadlines.
const MIN_PASS_GAP: Duration = Duration::from_millis(50);
/// How long a new agent's birth waits for its inventory before it is matched to
/// registrations by hostname alone.
const INVENTORY_WAIT: Duration = Duration::from_secs(5);

/// A node silent for its window is offline, unless this many nodes, and more than
/// [`MASS_SILENCE_PERCENT`] of those online, fell silent at once: then the silence is
/// more likely on the controller's side (behind on its input, or cut off from the
/// racks) than in each host, and the verdict waits until a node has been silent for
/// [`MASS_SILENCE_WINDOWS`] windows. Kubernetes' node lifecycle controller stops
/// evicting from a zone where most nodes went not-ready for the same reason. Found by
/// the fleet benchmark: 10,000 agents reporting every second over TLS on a saturated
/// box put ingest 3 s behind; every node then went offline and online again, and each
/// of those verdicts (a commit, an event, a publish) put it further behind.
const MASS_SILENCE_MIN: usize = 50;
const MASS_SILENCE_PERCENT: usize = 10;
const MASS_SILENCE_WINDOWS: u32 = 3;

/// What the reconciler found about one node.
enum Finding {
    Stuck { state: NodeState, timeout: Duration },
    Stale { silent_for: Duration },
    Heard,
}

impl Engine {
    /// Acts on every node past a deadline, once `RECONCILE_EVERY` has passed.
    pub(super) fn reconcile(&mut self, now: Timestamp, batch: &mut Batch) {
        if now < self.reconciler.next_at {
            return;
        }
        // The next pass: in a second, or at the earliest state deadline before that, so
        // a stuck node is caught on its deadline rather than up to a tick later.
        // Staleness keeps the 1 s grid: a fleet's heartbeats would wake it constantly.
        let mut next = now.plus(RECONCILE_EVERY);
        let mut overdue: Vec<NodeId> = self
            .arrivals
            .births
            .iter()
            .filter(|(_, (_, since))| now >= since.plus(INVENTORY_WAIT))
            .map(|(id, _)| id.clone())
            .collect();
        overdue.sort();
        for id in overdue {
            if let Some((birth, _)) = self.arrivals.births.remove(&id) {
                info!(node = %id, "no inventory from the new agent; matching by hostname");
                self.create_node(&id, birth, now, batch);
            }
        }
        let timeouts = self.cfg.controller.lifecycle.timeouts;
        let mut found: Vec<(NodeId, Finding)> = Vec::new();
        // Online nodes past their window: id, window, silent for the mass-silence limit.
        let mut silent: Vec<(NodeId, Duration, bool)> = Vec::new();
        let mut online = 0usize;
        for n in self.fleet.nodes.values() {
            if let Some(timeout) = timeouts.of(n.state) {
                let deadline = timer_base(n).plus(timeout);
                if now < deadline {
                    next = next.min(deadline.max(now.plus(MIN_PASS_GAP)));
                } else {
                    found.push((
                        n.id.clone(),
                        Finding::Stuck {
                            state: n.state,
                            timeout,
                        },
                    ));
                }
            }
            if n.state == NodeState::Retired {
                continue;
            }
            let silent_for = silence_limit(n);
            let heard = self.heartbeats.last_seen(&n.id);
            // After a restart every node gets a full window before it can be stale.
            let started = self.reconciler.started_at;
            let since = heard.map_or(started, |t| t.max(started));
            let fresh = self.heartbeats.fresh(n, now);
            online += usize::from(n.online);
            if n.online && now >= since.plus(silent_for) {
                let long = silent_for.saturating_mul(MASS_SILENCE_WINDOWS);
                silent.push((n.id.clone(), silent_for, now >= since.plus(long)));
            } else if !n.online && n.offline_reason == Some(OfflineReason::Stale) && fresh {
                found.push((n.id.clone(), Finding::Heard));
            }
        }
        let mass =
            silent.len() >= MASS_SILENCE_MIN && silent.len() * 100 > online * MASS_SILENCE_PERCENT;
        if mass != self.reconciler.mass_silence {
            self.reconciler.mass_silence = mass;
            if mass {
                warn!(
                    silent = silent.len(),
                    online,
                    "many nodes silent at once: the controller may be behind or cut off; \
                     a node is marked offline only after {MASS_SILENCE_WINDOWS} silent windows"
                );
            } else {
                info!("no mass silence any more; nodes go offline after one silent window");
            }
        }
        for (id, window, long) in silent {
            if !mass {
                found.push((id, Finding::Stale { silent_for: window }));
            } else if long {
                let silent_for = window.saturating_mul(MASS_SILENCE_WINDOWS);
                found.push((id, Finding::Stale { silent_for }));
            }
        }
        self.reconciler.next_at = next;
        found.sort_by(|a, b| a.0.cmp(&b.0));
        for (id, finding) in found {
            match finding {
                Finding::Stuck { state, timeout } => self.on_stuck(&id, state, timeout, now, batch),
                Finding::Stale { silent_for } => {
                    self.set_online(&id, false, silent_for, now, batch)
                }
                Finding::Heard => self.set_online(&id, true, Duration::ZERO, now, batch),
            }
        }
    }

    fn on_stuck(
        &mut self,
        id: &NodeId,
        state: NodeState,
        timeout: Duration,
        now: Timestamp,
        batch: &mut Batch,
    ) {
        let limit = humantime::format_duration(timeout);
        let (event, ctx) = if state == NodeState::Registered {
            let error = format!("no agent matched this registration within {limit}");
            warn!(node = %id, "{error}");
            let ctx = Ctx {
                error: Some(error),
                reason: Some(EventReason::DiscoveryTimeout),
                ..Ctx::default()
            };
            (Event::DiscoveryTimeout, ctx)
        } else {
            let max = self.cfg.controller.lifecycle.max_recovery_attempts;
            warn!(node = %id, %state, timeout = %limit, "node stuck");
            batch.counts.stuck.push(state);
            batch.controller(id, now).warning(
                EventReason::StuckState,
                format!("no progress in {state} for {limit}"),
            );
            let ctx = Ctx {
                error: Some(format!(
                    "stuck in {state}: no progress for {limit}, {max} recovery attempts made"
                )),
                reason: Some(EventReason::StuckState),
                ..Ctx::default()
            };
            (Event::Stuck, ctx)
        };
        if !self.run_machine(id, event, ctx, now, batch) {
            // Never refire every second for a node the machine will not move: wait a
            // full timeout again.
            self.restart_timer(id, now, batch);
        }
    }

    fn restart_timer(&mut self, id: &NodeId, now: Timestamp, batch: &mut Batch) {
        if let Some(before) = self.fleet.nodes.get(id).cloned() {
            let mut after = before.clone();
            after.recovered_at = Some(now);
            self.replace(before, after, now, batch);
        }
    }

    /// Marks a node offline for silence (or online again when heard from), with its
    /// event.
    fn set_online(
        &mut self,
        id: &NodeId,
        online: bool,
        silent_for: Duration,
        now: Timestamp,
        batch: &mut Batch,
    ) {
        let Some(before) = self.fleet.nodes.get(id).cloned() else {
            return;
        };
        let mut after = before.clone();
        after.online = online;
        if online {
            after.offline_reason = None;
            info!(node = %id, "node heard from again");
            batch
                .controller(id, now)
                .normal(EventReason::NodeOnline, "agent heard from again");
        } else {
            after.offline_reason = Some(OfflineReason::Stale);
            let silent = humantime::format_duration(silent_for);
            warn!(node = %id, silent_for = %silent, "node offline: nothing heard");
            batch.controller(id, now).warning(
                EventReason::NodeOffline,
                format!("nothing heard from the agent for {silent}"),
            );
        }
        self.replace(before, after, now, batch);
    }
}

/// Where the node's state timer starts: the last state change, the last recovery
/// attempt, and while installing the last job report, whichever is newest.
fn timer_base(n: &NodeRecord) -> Timestamp {
    let mut base = n.state_changed_at;
    if let Some(t) = n.recovered_at {
        base = base.max(t);
    }
    if n.state == NodeState::Installing {
        if let Some(t) = n.last_progress_at {
            base = base.max(t);
        }
    }
    base
}

/// When the reconciler looks next, and when this engine started: no node is stale
/// before a full window after that.
pub(super) struct Reconciler {
    pub next_at: Timestamp,
    pub started_at: Timestamp,
    /// The last pass found many nodes silent at once (see [`MASS_SILENCE_MIN`]).
    pub mass_silence: bool,
}
