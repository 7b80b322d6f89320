//! Which monitors' subscriptions could take a node's metrics: the door hands a metrics
//! message to the router only when one could (DECISIONS §73).
//!
//! Nodes' messages reach the controller from the door directly (through
//! [`crate::intake::Intake`]); the router is there for monitors. Statuses and
//! inventories go to it always (they are retained, for monitors that subscribe later),
//! reports and enrollment requests never (no client may receive them), and metrics, the
//! bulk of a fleet's traffic, only while a monitor's filter matches their topic.
//!
//! The filters are kept per router session, the way the router keeps them: a clean
//! session's go when its connection ends, a persistent session's stay (the router keeps
//! queueing for it) until a clean connection takes the session over or it unsubscribes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Monitors' subscription filters, by router session.
#[derive(Default)]
pub struct Interest {
    sessions: RwLock<HashMap<String, Session>>,
    /// Whether any session has a filter: the check every message makes first.
    any: AtomicBool,
    /// Names the connections: one that a newer connection took the session from leaves
    /// the newer one's filters alone when it ends.
    connections: AtomicU64,
}

#[derive(Default)]
struct Session {
    /// The connection that has the session now.
    holder: u64,
    filters: Vec<String>,
}

impl Interest {
    /// A monitor's connection opened `session` (a clean one starts without filters);
    /// what it is known by in [`Interest::closed`].
    pub fn opened(&self, session: &str, clean: bool) -> u64 {
        let holder = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        self.update(|s| {
            let entry = s.entry(session.to_string()).or_default();
            entry.holder = holder;
            if clean {
                entry.filters.clear();
            }
        });
        holder
    }

    /// `session` subscribed to `filters`.
    pub fn subscribed<'a>(&self, session: &str, filters: impl IntoIterator<Item = &'a str>) {
        self.update(|s| {
            let list = &mut s.entry(session.to_string()).or_default().filters;
            for f in filters {
                let f = unshared(f);
                if !list.iter().any(|g| g == f) {
                    list.push(f.to_string());
                }
            }
        });
    }

    /// `session` unsubscribed from `filters`.
    pub fn unsubscribed<'a>(&self, session: &str, filters: impl IntoIterator<Item = &'a str>) {
        self.update(|s| {
            if let Some(entry) = s.get_mut(session) {
                for f in filters {
                    let f = unshared(f);
                    entry.filters.retain(|g| g != f);
                }
            }
        });
    }

    /// The connection `holder` of `session` ended. A clean session goes with it, a
    /// persistent one stays while it has filters; neither when a newer connection holds
    /// the session.
    pub fn closed(&self, session: &str, clean: bool, holder: u64) {
        self.update(|s| {
            let ours = s.get(session).is_some_and(|e| e.holder == holder);
            let empty = s.get(session).is_some_and(|e| e.filters.is_empty());
            if ours && (clean || empty) {
                s.remove(session);
            }
        });
    }

    /// Whether any monitor's filter matches `topic`.
    pub fn wants(&self, topic: &str) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        self.read()
            .values()
            .flat_map(|s| &s.filters)
            .any(|filter| rumqttd::protocol::matches(topic, filter))
    }

    fn update(&self, change: impl FnOnce(&mut HashMap<String, Session>)) {
        let mut sessions = self.write();
        change(&mut sessions);
        let any = sessions.values().any(|s| !s.filters.is_empty());
        self.any.store(any, Ordering::Release);
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, Session>> {
        self.sessions.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, Session>> {
        self.sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The filter of a shared subscription (`$share/{group}/{filter}`), which is what it
/// matches.
fn unshared(filter: &str) -> &str {
    filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(filter, |(_, f)| f)
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "metalbus/v1/nodes/n1/metrics";

    #[test]
    fn nothing_is_wanted_until_a_filter_matches() {
        let w = Interest::default();
        assert!(!w.wants(METRICS));
        w.subscribed("monitor:a", ["metalbus/v1/nodes/+/status"]);
        assert!(!w.wants(METRICS));
        for (filter, narrow) in [
            ("#", false),
            ("metalbus/#", false),
            ("metalbus/v1/nodes/+/metrics", true),
            ("metalbus/v1/nodes/n1/+", true),
            ("$share/dash/metalbus/v1/nodes/+/metrics", true),
            (METRICS, true),
        ] {
            let w = Interest::default();
            w.subscribed("monitor:b", [filter]);
            assert!(w.wants(METRICS), "{filter}");
            let other = "metalbus/v1/nodes/n1/metrics/x";
            assert_eq!(w.wants(other), !narrow, "{filter}");
        }
        let w = Interest::default();
        w.subscribed("monitor:c", ["metalbus/v1/nodes/n2/metrics", "$share/"]);
        assert!(!w.wants(METRICS));
    }

    #[test]
    fn a_clean_session_goes_with_its_connection_and_a_persistent_one_stays() {
        let w = Interest::default();
        let clean = w.opened("monitor:clean", true);
        w.subscribed("monitor:clean", ["#"]);
        let kept = w.opened("monitor:kept", false);
        w.subscribed("monitor:kept", ["metalbus/v1/nodes/+/metrics"]);
        w.closed("monitor:clean", true, clean);
        w.closed("monitor:kept", false, kept);
        assert!(w.wants(METRICS), "a persistent session still queues");
        // Back, persistent: still there; then taken over by a clean connection: gone.
        w.opened("monitor:kept", false);
        assert!(w.wants(METRICS));
        w.opened("monitor:kept", true);
        assert!(!w.wants(METRICS));
    }

    #[test]
    fn a_connection_taken_over_leaves_the_newer_ones_filters() {
        let w = Interest::default();
        let older = w.opened("monitor:dash", true);
        w.subscribed("monitor:dash", ["#"]);
        let newer = w.opened("monitor:dash", true);
        w.subscribed("monitor:dash", [METRICS]);
        // The router ends the older connection after the newer one took over.
        w.closed("monitor:dash", true, older);
        assert!(w.wants(METRICS));
        assert!(
            !w.wants("metalbus/v1/summary"),
            "the older session's filter stays gone"
        );
        w.closed("monitor:dash", true, newer);
        assert!(!w.wants(METRICS));
        assert!(w.read().is_empty());
    }

    #[test]
    fn unsubscribing_the_last_filter_stops_the_wanting() {
        let w = Interest::default();
        w.subscribed("m", ["#", "#", "$share/g/metalbus/v1/nodes/+/metrics"]);
        w.unsubscribed("m", ["#"]);
        assert!(w.wants(METRICS));
        w.unsubscribed("m", ["$share/g/metalbus/v1/nodes/+/metrics"]);
        assert!(!w.wants(METRICS));
        w.unsubscribed("nobody", ["#"]);
        assert!(!w.any.load(Ordering::Acquire));
        // A persistent session left without filters is forgotten when it ends.
        let holder = w.opened("m", false);
        w.closed("m", false, holder);
        assert!(w.read().is_empty());
    }
}
