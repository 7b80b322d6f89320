//! Engine tests with an in-memory store, a fake clock and the publish queue read
//! directly: no broker, no network.

use std::sync::Arc;

use metalbus_link::FakeClock;
use metalbus_protocol::command::CommandId;
use metalbus_protocol::inventory::Inventory;
use metalbus_protocol::lifecycle::NodeState;
use metalbus_protocol::metrics::MetricsSample;
use metalbus_protocol::status::{Birth, Offline, OfflineReason, Status};
use metalbus_protocol::topic::Topics;
use metalbus_protocol::{NodeId, Timestamp};
use tokio::sync::mpsc::UnboundedReceiver;

use super::*;
use crate::publish::{Outbound, PublishQueue};
use crate::store::{Store, StoreReader};
use crate::telemetry::Telemetry;
use crate::wake::WakeRequest;

pub(super) struct Rig {
    pub(super) engine: Engine,
    pub(super) out: UnboundedReceiver<Outbound>,
    wakes: UnboundedReceiver<WakeRequest>,
    pub(super) clock: Arc<FakeClock>,
    pub(super) store: StoreReader,
}

/// An engine over an in-memory store with the default config (also used by the other
/// engine parts' tests).
pub(super) fn rig() -> Rig {
    rig_with(crate::config::ControllerConfig::default())
}

pub(super) fn rig_with(cfg: crate::config::ControllerConfig) -> Rig {
    let telemetry = Arc::new(Telemetry::new());
    let store = Store::in_memory(telemetry.clone()).unwrap();
    let clock = Arc::new(FakeClock::at(1_700_000_000_000));
    let reader = store.reader();
    let (engine, out, wakes) = engine_on(store, &clock, telemetry, cfg);
    Rig {
        engine,
        out,
        wakes,
        clock,
        store: reader,
    }
}

/// An engine over `store`: a fresh one, or the one a restarted controller builds.
fn engine_on(
    store: Store,
    clock: &Arc<FakeClock>,
    telemetry: Arc<Telemetry>,
    cfg: crate::config::ControllerConfig,
) -> (
    Engine,
    UnboundedReceiver<Outbound>,
    UnboundedReceiver<WakeRequest>,
) {
    let (publish, out) = PublishQueue::new();
    let (wake, wakes) = tokio::sync::mpsc::unbounded_channel();
    let engine = Engine::new(
        store,
        Outlets {
            publish,
            wake,
            live: crate::live::LiveFeed::default(),
        },
        telemetry,
        clock.clone(),
        EngineConfig {
            topics: Topics::default(),
            metrics_flush: Duration::from_secs(10),
            controller: Arc::new(cfg),
            identity: crate::security::ephemeral_identity(),
            keyring: Default::default(),
        },
    )
    .unwrap();
    (engine, out, wakes)
}

impl Rig {
    fn published(&mut self) -> Vec<Outbound> {
        let mut v = Vec::new();
        while let Ok(m) = self.out.try_recv() {
            v.push(m);
        }
        v
    }

    pub(super) fn node(&self, id: &str) -> NodeRecord {
        self.store.find_node(id).unwrap().unwrap()
    }

    /// The controller restarts: a new engine over the same store, with `cfg`.
    pub(super) fn restart(self, cfg: crate::config::ControllerConfig) -> Rig {
        let store = self.engine.into_store();
        let (engine, out, wakes) = engine_on(store, &self.clock, Arc::new(Telemetry::new()), cfg);
        Rig {
            engine,
            out,
            wakes,
            ..self
        }
    }
}

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

pub(super) fn birth(node: &str, conn: u64, session: &str, hostname: &str) -> Input {
    Input::Status {
        id: id(node),
        status: Status::Birth(Birth {
            conn,
            session: session.into(),
            agent_version: "0.1.0".into(),
            hostname: hostname.into(),
            boot_id: None,
            metrics_interval_s: 15,
            ts: Timestamp::from_unix_millis(0),
            node_id: None,
            protocol: metalbus_protocol::PROTOCOL_VERSION,
        }),
    }
}

fn offline(node: &str, conn: u64, session: Option<&str>, reason: OfflineReason) -> Input {
    Input::Status {
        id: id(node),
        status: Status::Offline(Offline {
            conn,
            reason,
            session: session.map(String::from),
            node_id: None,
        }),
    }
}

fn inventory(node: &str, threads: u32) -> Input {
    let mut inv = Inventory::default();
    inv.cpu.threads = Some(threads);
    Input::Inventory {
        id: id(node),
        inventory: Box::new(inv),
    }
}

fn topics_of(msgs: &[Outbound]) -> Vec<&str> {
    msgs.iter().map(|m| m.topic.as_str()).collect()
}

#[test]
fn first_birth_creates_a_discovered_node_and_publishes_retained_state() {
    let mut r = rig();
    r.engine.apply(vec![birth("n1", 1, "s", "web-01")]);
    let n = r.node("n1");
    assert_eq!(
        (n.state, n.name.as_str(), n.version, n.online),
        (NodeState::Discovered, "web-01", 1, true)
    );
    let out = r.published();
    assert_eq!(
        topics_of(&out),
        ["metalbus/v1/nodes/n1/state", "metalbus/v1/summary"]
    );
    assert!(out.iter().all(|m| m.retain));
    let state: serde_json::Value = serde_json::from_slice(&out[0].payload).unwrap();
    assert_eq!(state["state"], "discovered");
    assert_eq!(state["phase"], "Unmanaged");
    let summary: serde_json::Value = serde_json::from_slice(&out[1].payload).unwrap();
    assert_eq!(
        (summary["total"].as_u64(), summary["online"].as_u64()),
        (Some(1), Some(1))
    );
}

#[test]
fn a_repeated_birth_changes_nothing() {
    let mut r = rig();
    r.engine.apply(vec![birth("n1", 1, "s", "h")]);
    r.published();
    r.engine.apply(vec![birth("n1", 1, "s", "h")]);
    assert_eq!(r.node("n1").version, 1);
    assert!(r.published().is_empty());
}

#[test]
fn a_will_older_than_the_newest_birth_is_ignored() {
    let mut r = rig();
    r.engine.apply(vec![birth("n1", 5, "s", "h")]);
    // The Will of connection 4 arrives after the birth of connection 5.
    r.engine
        .apply(vec![offline("n1", 4, Some("s"), OfflineReason::Lost)]);
    assert!(r.node("n1").online);
    // A Will from an earlier incarnation (another session) too.
    r.engine
        .apply(vec![offline("n1", 9, Some("old"), OfflineReason::Lost)]);
    assert!(r.node("n1").online);
    // The current connection's Will counts.
    r.engine
        .apply(vec![offline("n1", 5, Some("s"), OfflineReason::Lost)]);
    let n = r.node("n1");
    assert!(!n.online);
    assert_eq!(n.offline_reason, Some(OfflineReason::Lost));
    assert_eq!(n.version, 2);
}

#[test]
fn a_stale_birth_is_ignored_but_a_new_session_resets_the_counter() {
    let mut r = rig();
    r.engine.apply(vec![birth("n1", 5, "s", "h")]);
    r.engine
        .apply(vec![offline("n1", 5, Some("s"), OfflineReason::Shutdown)]);
    r.engine.apply(vec![birth("n1", 3, "s", "h")]);
    assert!(
        !r.node("n1").online,
        "birth of an older connection is stale"
    );
    // State dir wiped on the host: new session, counter back at 1.
    r.engine.apply(vec![birth("n1", 1, "fresh", "h")]);
    let n = r.node("n1");
    assert!(n.online);
    assert_eq!((n.conn, n.session.as_deref()), (1, Some("fresh")));
}

#[test]
fn shutdown_is_recorded_with_its_reason() {
    let mut r = rig();
    r.engine.apply(vec![birth("n1", 1, "s", "h")]);
    r.engine
        .apply(vec![offline("n1", 1, None, OfflineReason::Shutdown)]);
    assert_eq!(r.node("n1").offline_reason, Some(OfflineReason::Shutdown));
    r.engine.apply(vec![birth("n1", 2, "s", "h")]);
    let n = r.node("n1");
    assert!(n.online);
    assert_eq!(n.offline_reason, None);
}

#[test]
fn offline_for_an_unknown_node_creates_nothing() {
    let mut r = rig();
    r.engine
        .apply(vec![offline("ghost", 1, None, OfflineReason::Lost)]);
    assert!(r.store.find_node("ghost").unwrap().is_none());
}

#[test]
fn an_inventory_before_the_birth_is_kept_and_applied() {
    let mut r = rig();
    r.engine.apply(vec![inventory("n1", 8)]);
    assert!(r.store.find_node("n1").unwrap().is_none());
    r.engine.apply(vec![birth("n1", 1, "s", "h")]);
    let inv = r.store.inventory(&id("n1")).unwrap().unwrap();
    assert_eq!(inv.inventory.cpu.threads, Some(8));
}

#[test]
fn a_changed_inventory_bumps_the_version_an_unchanged_one_does_not() {
    let mut r = rig();
    r.engine
        .apply(vec![birth("n1", 1, "s", "h"), inventory("n1", 8)]);
    let v = r.node("n1").version;
    r.engine.apply(vec![inventory("n1", 8)]);
    assert_eq!(r.node("n1").version, v);
    r.engine.apply(vec![inventory("n1", 16)]);
    assert_eq!(r.node("n1").version, v + 1);
    let inv = r.store.inventory(&id("n1")).unwrap().unwrap();
    assert_eq!(inv.inventory.cpu.threads, Some(16));
}

#[test]
fn names_stay_unique_when_hostnames_collide() {
    let mut r = rig();
    r.engine.apply(vec![
        birth("aaaaaaaaaaaa1", 1, "s", "rack-host"),
        birth("bbbbbbbbbbbb2", 1, "s", "rack-host"),
        birth("rack-host", 1, "s", "bad host name!"),
    ]);
    assert_eq!(r.node("aaaaaaaaaaaa1").name, "rack-host");
    assert_eq!(r.node("bbbbbbbbbbbb2").name, "rack-host-bbbbbbbb");
    // A hostname that cannot be a name falls back to the id, made unique: here the id
    // "rack-host" is already another node's name.
    let third = r
        .store
        .nodes()
        .unwrap()
        .into_iter()
        .find(|n| n.id.as_str() == "rack-host")
        .unwrap();
    assert_eq!(third.name, "rack-host-2");
}

#[test]
fn metrics_refresh_the_heartbeat_after_a_flush() {
    let mut r = rig();
    r.engine.apply(vec![birth("n1", 1, "s", "h")]);
    r.clock.advance_ms(5_000);
    let sample: MetricsSample = serde_json::from_str(
        r#"{"ts":"2026-01-01T00:00:00Z","cpu_percent":42.0,"load":null,"memory":null,"swap":null,
            "filesystems":null,"network":null,"disk_io":null,"uptime_s":5,"temperatures_c":null}"#,
    )
    .unwrap();
    r.engine.apply(vec![Input::Metrics {
        id: id("n1"),
        sample,
    }]);
    r.engine.flush_heartbeats(Durability::None);
    let hb = r.store.heartbeat(&id("n1")).unwrap().unwrap();
    assert_eq!(hb.sample.and_then(|s| s.cpu_percent), Some(42.0));
    assert_eq!(hb.last_seen_at, r.clock.now());
    // Metrics alone change no node record.
    assert_eq!(r.node("n1").version, 1);
    // Metrics for a node never born are dropped.
    r.engine.apply(vec![Input::Metrics {
        id: id("ghost"),
        sample: serde_json::from_str(r#"{"ts":"2026-01-01T00:00:00Z"}"#).unwrap(),
    }]);
    r.engine.flush_heartbeats(Durability::None);
    assert!(r.store.heartbeat(&id("ghost")).unwrap().is_none());
}

#[test]
fn resync_republishes_every_retained_state() {
    let mut r = rig();
    r.engine
        .apply(vec![birth("n1", 1, "s", "a"), birth("n2", 1, "s", "b")]);
    r.published();
    r.engine.apply(vec![Input::Resync]);
    let out = r.published();
    assert_eq!(
        topics_of(&out),
        [
            "metalbus/v1/nodes/n1/state",
            "metalbus/v1/nodes/n2/state",
            "metalbus/v1/summary"
        ]
    );
}

#[test]
fn a_restarted_engine_sees_the_stored_nodes() {
    let mut r = rig();
    r.engine.apply(vec![birth("n1", 1, "s", "a")]);
    let again = r.restart(crate::config::ControllerConfig::default()).engine;
    assert_eq!(again.summary().total, 1);
    assert!(again.fleet.names.contains_key("a"));
}

#[test]
fn a_failed_commit_publishes_nothing_and_is_retried() {
    use crate::store::flaky::FlakyBackend;
    use std::sync::atomic::Ordering;

    let telemetry = Arc::new(Telemetry::new());
    let dir = tempfile::tempdir().unwrap();
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let opener = FlakyBackend::opener(dir.path().join("m.redb"), failing.clone());
    let writer = Store::from_opener(opener, telemetry.clone()).unwrap();
    let store = writer.reader();
    let (mut engine, mut out, _wakes) = engine_on(
        writer,
        &Arc::new(FakeClock::at(0)),
        telemetry,
        crate::config::ControllerConfig::default(),
    );

    // The inventory arrives first and waits; the birth then fails to commit.
    engine.apply(vec![inventory("n1", 4)]);
    while out.try_recv().is_ok() {} // the first, empty summary
    failing.store(true, Ordering::SeqCst);
    engine.apply(vec![birth("n1", 1, "s", "h")]);
    assert!(
        out.try_recv().is_err(),
        "nothing is published for a failed commit"
    );
    assert!(store.find_node("n1").is_err() || store.find_node("n1").unwrap().is_none());
    // The copy still holds the refused change until the store can be read again.
    assert!(engine.retry.reload || engine.fleet.nodes.is_empty());
    // A token and a call meanwhile are answered with the store's error, not dropped.
    let (reply, mut token) = tokio::sync::oneshot::channel();
    let record = crate::store::TokenRecord {
        name: "t".into(),
        role: metalbus_protocol::api::Role::Viewer,
        created_at: Timestamp::from_unix_millis(0),
    };
    let (register, mut answer) = call(super::Action::Register(super::Registration {
        name: "spare".into(),
        hints: metalbus_protocol::api::MatchHints {
            hostname: Some("spare".into()),
            ..Default::default()
        },
        ..Default::default()
    }));
    engine.apply(vec![
        Input::Keys {
            change: super::KeyChange::ApiToken {
                hash: "h".into(),
                record,
            },
            reply,
        },
        register,
    ]);
    assert!(matches!(
        token.try_recv(),
        Ok(Err(super::CallError::Store(_)))
    ));
    assert!(matches!(
        answer.try_recv(),
        Ok(Err(super::CallError::Store(_)))
    ));

    // The disk recovers: the next round applies the kept inputs, early inventory too.
    failing.store(false, Ordering::SeqCst);
    engine.apply(Vec::new());
    let n = store.find_node("n1").unwrap().unwrap();
    assert!(n.online);
    let inv = store.inventory(&id("n1")).unwrap().unwrap();
    assert_eq!(inv.inventory.cpu.threads, Some(4));
    let mut topics = Vec::new();
    while let Ok(m) = out.try_recv() {
        topics.push(m.topic);
    }
    assert!(
        topics.contains(&"metalbus/v1/nodes/n1/state".to_string()),
        "{topics:?}"
    );
}

#[test]
fn wills_do_not_move_last_seen() {
    let mut r = rig();
    r.engine.apply(vec![birth("n1", 1, "s", "h")]);
    r.engine.flush_heartbeats(Durability::None);
    let seen = r.store.heartbeat(&id("n1")).unwrap().unwrap().last_seen_at;
    r.clock.advance_ms(45_000);
    r.engine
        .apply(vec![offline("n1", 1, Some("s"), OfflineReason::Lost)]);
    r.engine.flush_heartbeats(Durability::None);
    let after = r.store.heartbeat(&id("n1")).unwrap().unwrap().last_seen_at;
    assert_eq!(
        after, seen,
        "a Will is the broker's word, not a sign of life"
    );
}

fn call(
    action: super::Action,
) -> (
    Input,
    tokio::sync::oneshot::Receiver<Result<super::Reply, super::CallError>>,
) {
    let (reply, rx) = tokio::sync::oneshot::channel();
    let call = super::Call {
        key: "n1".into(),
        action,
        user: Some("admin".into()),
        if_match: None,
        reply,
    };
    (Input::Call(Box::new(call)), rx)
}

fn commands(out: &[Outbound]) -> Vec<serde_json::Value> {
    out.iter()
        .filter(|m| m.topic.ends_with("/commands"))
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect()
}

#[test]
fn manage_sends_the_install_and_a_new_birth_resends_it_until_acked() {
    let mut r = rig();
    r.engine.apply(vec![birth("n1", 1, "s", "h")]);
    r.published();
    let (input, mut answer) = call(super::Action::Manage { plan: None });
    r.engine.apply(vec![input]);
    let reply = answer.try_recv().unwrap().unwrap();
    assert_eq!(reply.node.state, NodeState::Pending);
    assert_eq!(reply.node.plan.as_deref(), Some("demo"));
    assert_eq!(reply.node.version, 2, "one change, one version");
    let sent = commands(&r.published());
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["kind"], "install");
    assert_eq!(sent[0]["plan"]["name"], "demo");
    let id = sent[0]["command_id"].as_str().unwrap().to_string();
    assert_eq!(
        r.store.command(id.as_str()).unwrap().unwrap().status,
        metalbus_protocol::command::CommandStatus::Sent
    );
    let history = r.store.history(&NodeId::new("n1").unwrap(), 10, 0).unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].user.as_deref(), Some("admin"));

    // The agent was away: its next birth gets the same command again.
    r.engine.apply(vec![birth("n1", 2, "s", "h")]);
    let again = commands(&r.published());
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["command_id"], id.as_str());

    // Once acked, a birth sends nothing.
    let ack: metalbus_protocol::report::Report = serde_json::from_value(serde_json::json!({
        "session": "s", "seq": 1, "ts": "2026-01-01T00:00:00Z",
        "kind": "ack", "command_id": id, "accepted": true
    }))
    .unwrap();
    r.engine.apply(vec![Input::Report {
        id: NodeId::new("n1").unwrap(),
        report: Box::new(ack),
    }]);
    r.engine.apply(vec![birth("n1", 3, "s", "h")]);
    assert!(commands(&r.published()).is_empty());
    assert_eq!(
        r.store.command(id.as_str()).unwrap().unwrap().status,
        metalbus_protocol::command::CommandStatus::Accepted
    );
}

#[test]
fn a_stale_if_match_is_refused_and_changes_nothing() {
    let mut r = rig();
    r.engine.apply(vec![birth("n1", 1, "s", "h")]);
    let (reply, mut answer) = tokio::sync::oneshot::channel();
    r.engine.apply(vec![Input::Call(Box::new(super::Call {
        key: "n1".into(),
        action: super::Action::Manage { plan: None },
        user: None,
        if_match: Some(7),
        reply,
    }))]);
    assert!(matches!(
        answer.try_recv().unwrap(),
        Err(super::CallError::Stale {
            given: 7,
            current: 1
        })
    ));
    assert_eq!(r.node("n1").state, NodeState::Discovered);
}

fn report(session: &str, seq: u64, command: impl std::fmt::Display, status: &str) -> Input {
    let r: metalbus_protocol::report::Report = serde_json::from_value(serde_json::json!({
        "session": session, "seq": seq, "ts": "2026-01-01T00:00:00Z",
        "kind": "job", "command_id": command.to_string(), "job": "install", "status": status,
        "progress": 10
    }))
    .unwrap();
    Input::Report {
        id: NodeId::new("n1").unwrap(),
        report: Box::new(r),
    }
}

fn receipts(out: &[Outbound]) -> Vec<u64> {
    out.iter()
        .filter(|m| m.topic.ends_with("/receipts"))
        .map(|m| {
            serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn reports_apply_in_seq_order_once_and_are_receipted() {
    let mut r = rig();
    r.engine.apply(vec![birth("n1", 1, "s", "h")]);
    let (input, _answer) = call(super::Action::Manage { plan: None });
    r.engine.apply(vec![input]);
    let cmd = r.node("n1").job.unwrap().command_id;
    r.published();

    // seq 1 applies (started → installing); receipt 1.
    r.engine.apply(vec![report("o1", 1, &cmd, "started")]);
    assert_eq!(r.node("n1").state, NodeState::Installing);
    assert_eq!(receipts(&r.published()), vec![1]);
    // A duplicate changes nothing, but is receipted again.
    let v = r.node("n1").version;
    r.engine.apply(vec![report("o1", 1, &cmd, "started")]);
    assert_eq!(r.node("n1").version, v);
    assert_eq!(receipts(&r.published()), vec![1]);
    // 3 after a gap waits, unreceipted; 2 fills it and both apply.
    r.engine.apply(vec![report("o1", 3, &cmd, "complete")]);
    assert_eq!(r.node("n1").state, NodeState::Installing);
    assert!(receipts(&r.published()).is_empty());
    r.engine.apply(vec![report("o1", 2, &cmd, "progress")]);
    assert_eq!(r.node("n1").state, NodeState::Active);
    assert_eq!(r.node("n1").last_applied_seq, 3);
    assert_eq!(receipts(&r.published()), vec![3]);
    // A new outbox (state wiped) starts at 1; late reports of the old one are dropped.
    r.engine.apply(vec![report("o2", 1, "c-other", "progress")]);
    assert_eq!(r.node("n1").report_session.as_deref(), Some("o2"));
    let before = r.node("n1");
    r.engine.apply(vec![report("o1", 4, &cmd, "failed")]);
    assert_eq!(r.node("n1"), before);
    // The history has each transition once.
    let h = r.store.history(&NodeId::new("n1").unwrap(), 50, 0).unwrap();
    assert_eq!(h.len(), 4);
}

fn refused(session: &str, seq: u64) -> Input {
    Input::RefusedReport {
        id: NodeId::new("n1").unwrap(),
        place: crate::ingest::Place {
            session: session.into(),
            seq,
        },
        error: "invalid_value: reason is 9000 bytes; at most 8192 are accepted".into(),
    }
}

#[test]
fn a_refused_report_takes_its_place_so_the_stream_moves_on() {
    let mut r = rig();
    r.engine.apply(vec![birth("n1", 1, "s", "h")]);
    let (input, _answer) = call(super::Action::Manage { plan: None });
    r.engine.apply(vec![input]);
    let cmd = r.node("n1").job.unwrap().command_id;
    r.engine.apply(vec![report("o1", 1, &cmd, "started")]);
    r.published();
    // 2 is refused; 3 arrived first and waits for it. Both then apply, receipted to 3.
    r.engine.apply(vec![report("o1", 3, &cmd, "complete")]);
    assert!(receipts(&r.published()).is_empty());
    r.engine.apply(vec![refused("o1", 2)]);
    assert_eq!(r.node("n1").last_applied_seq, 3);
    assert_eq!(r.node("n1").state, NodeState::Active);
    assert_eq!(receipts(&r.published()), vec![3]);
    let warning = events(&r)
        .into_iter()
        .find(|e| e.reason == EventReason::MessageRejected)
        .expect("a MessageRejected event");
    assert!(
        warning.message.contains("9000 bytes"),
        "{}",
        warning.message
    );
    // Sent again (the agent did not get the receipt): a duplicate, receipted again.
    r.engine.apply(vec![refused("o1", 2)]);
    assert_eq!(receipts(&r.published()), vec![3]);
    // A refused first report of a new outbox starts that outbox.
    r.engine.apply(vec![refused("o2", 1)]);
    assert_eq!(r.node("n1").report_session.as_deref(), Some("o2"));
    assert_eq!(receipts(&r.published()), vec![1]);
}

pub(super) fn limit_hits(r: &Rig, limit: &str) -> u64 {
    let line = format!("metalbus_limit_hits_total{{limit=\"{limit}\"}} ");
    r.engine
        .telemetry
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .unwrap_or_else(|| panic!("no {line}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn held_reports_are_bounded_per_node_and_the_overflow_counted() {
    let mut r = rig();
    r.engine.apply(vec![birth("n1", 1, "s", "h")]);
    assert_eq!(limit_hits(&r, "held_reports"), 0, "exists at 0");
    r.engine.apply(vec![report("o1", 1, "c-1", "progress")]);
    // 2 is missing; 3..=300 wait, but only MAX_HELD_REPORTS of them are kept.
    let late: Vec<Input> = (3..=300)
        .map(|seq| report("o1", seq, "c-1", "progress"))
        .collect();
    r.engine.apply(late);
    let kept = super::reports::MAX_HELD_REPORTS as u64;
    assert_eq!(limit_hits(&r, "held_reports"), 298 - kept);
    r.engine.apply(vec![report("o1", 2, "c-1", "progress")]);
    assert_eq!(r.node("n1").last_applied_seq, 2 + kept);
}

#[test]
fn early_inventories_are_bounded_and_expire() {
    let mut r = rig();
    let max = super::agent::MAX_EARLY_INVENTORIES;
    let early: Vec<Input> = (0..max).map(|i| inventory(&format!("e{i}"), 4)).collect();
    r.engine.apply(early);
    assert_eq!(r.engine.arrivals.early.len(), max);
    r.engine.apply(vec![inventory("late", 4)]);
    assert!(!r.engine.arrivals.early.contains_key(&id("late")));
    assert_eq!(limit_hits(&r, "early_inventories"), 1);
    // Ten minutes on, the old ones are gone and a new one has room.
    r.clock.advance(std::time::Duration::from_secs(601));
    r.engine.apply(vec![inventory("late", 4)]);
    assert_eq!(r.engine.arrivals.early.len(), 1);
    assert!(r.engine.arrivals.early.contains_key(&id("late")));
}

#[test]
fn unacknowledged_commands_are_sent_again_until_acked() {
    let mut r = rig();
    r.engine.apply(vec![birth("n1", 1, "s", "h")]);
    let (input, _answer) = call(super::Action::Manage { plan: None });
    r.engine.apply(vec![input]);
    assert_eq!(commands(&r.published()).len(), 1);
    r.clock.advance_ms(5_100);
    r.engine.apply(vec![]);
    let again = commands(&r.published());
    assert_eq!(again.len(), 1, "resent after resend_after");
    r.engine.apply(vec![]);
    assert!(
        commands(&r.published()).is_empty(),
        "not before the next resend_after"
    );
}

fn events(r: &Rig) -> Vec<metalbus_protocol::event::NodeEvent> {
    r.store
        .events(&id("n1"), &crate::store::EventFilter::default(), 100)
        .unwrap()
}

fn reasons(r: &Rig) -> Vec<(EventReason, u64)> {
    events(r).into_iter().map(|e| (e.reason, e.count)).collect()
}

#[test]
fn online_offline_and_install_steps_are_events_newest_first() {
    let mut r = rig();
    r.engine.apply(vec![birth("n1", 1, "s", "h")]);
    r.engine
        .apply(vec![offline("n1", 1, Some("s"), OfflineReason::Lost)]);
    r.engine.apply(vec![birth("n1", 2, "s", "h")]);
    let (input, _answer) = call(super::Action::Manage { plan: None });
    r.engine.apply(vec![input]);
    let cmd = r.node("n1").job.unwrap().command_id;
    r.engine.apply(vec![report("o1", 1, &cmd, "started")]);
    r.engine.apply(vec![report("o1", 2, &cmd, "progress")]);
    r.engine.apply(vec![report("o1", 3, &cmd, "complete")]);
    // NodeOnline came twice with the same message: one entry, counted, and it moved to
    // its newest place (after NodeOffline).
    assert_eq!(
        reasons(&r),
        vec![
            (EventReason::InstallCompleted, 1),
            (EventReason::InstallStarted, 1),
            (EventReason::NodeOnline, 2),
            (EventReason::NodeOffline, 1),
        ]
    );
    let all = events(&r);
    let offline = &all[3];
    assert_eq!(offline.kind, metalbus_protocol::event::EventType::Warning);
    assert_eq!(offline.message, "agent connection lost");
    assert_eq!(all[0].source, metalbus_protocol::event::EventSource::Agent);
    assert!(all[2].first_timestamp <= all[2].last_timestamp);
}

#[test]
fn a_report_for_a_job_never_sent_is_refused_and_shown_as_a_warning() {
    let mut r = rig();
    r.engine.apply(vec![birth("n1", 1, "s", "h")]);
    let before = r.node("n1");
    r.engine
        .apply(vec![report("o1", 1, "c-never-sent", "complete")]);
    let after = r.node("n1");
    assert_eq!(after.state, NodeState::Discovered);
    assert_eq!(after.job, before.job);
    assert_eq!(after.history_len, before.history_len, "no transition");
    let warning = events(&r)
        .into_iter()
        .find(|e| e.reason == EventReason::MessageRejected)
        .expect("a MessageRejected event");
    assert_eq!(warning.kind, metalbus_protocol::event::EventType::Warning);
    assert!(
        warning.message.contains("c-never-sent"),
        "{}",
        warning.message
    );
    // The report is still receipted: it was applied (as a refusal), not lost.
    assert_eq!(after.last_applied_seq, 1);
}

#[test]
fn a_changed_inventory_names_the_sections_that_changed() {
    let mut r = rig();
    r.engine
        .apply(vec![birth("n1", 1, "s", "h"), inventory("n1", 4)]);
    assert!(
        !reasons(&r)
            .iter()
            .any(|(r, _)| *r == EventReason::InventoryChanged),
        "the first inventory is not a change"
    );
    r.engine.apply(vec![inventory("n1", 8)]);
    let changed: Vec<_> = events(&r)
        .into_iter()
        .filter(|e| e.reason == EventReason::InventoryChanged)
        .collect();
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].message, "inventory changed: cpu");
}

#[test]
fn rejected_messages_of_known_nodes_collapse_into_one_counted_warning() {
    let mut r = rig();
    let rejected = |n: &str| Input::Rejected {
        id: id(n),
        error: "bad_json: not JSON: expected value at line 1 column 1".into(),
    };
    r.engine.apply(vec![rejected("n1")]);
    assert!(events(&r).is_empty(), "no events for unknown nodes");
    r.engine.apply(vec![birth("n1", 1, "s", "h")]);
    r.engine.apply(vec![rejected("n1"), rejected("n1")]);
    r.engine.apply(vec![rejected("n1")]);
    let warning = events(&r)
        .into_iter()
        .find(|e| e.reason == EventReason::MessageRejected)
        .unwrap();
    assert_eq!(warning.count, 3);
    assert_eq!(
        warning.message,
        "bad_json: not JSON: expected value at line 1 column 1"
    );
}

/// Timeouts short enough to read: installing 60 s, pending 30 s.
fn short_timeouts() -> crate::config::ControllerConfig {
    let mut cfg = crate::config::ControllerConfig::default();
    cfg.lifecycle.timeouts.installing = Duration::from_secs(60);
    cfg.lifecycle.timeouts.pending = Duration::from_secs(30);
    cfg
}

fn metric(r: &Rig, name: &str) -> f64 {
    r.engine
        .telemetry
        .render()
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Manage n1 and report `started`: the node is installing, with its command id.
fn installing(r: &mut Rig) -> CommandId {
    r.engine.apply(vec![birth("n1", 1, "s", "h")]);
    let (input, _answer) = call(super::Action::Manage { plan: None });
    r.engine.apply(vec![input]);
    let cmd = r.node("n1").job.unwrap().command_id;
    r.engine
        .apply(vec![ack("o1", 1, &cmd), report("o1", 2, &cmd, "started")]);
    assert_eq!(r.node("n1").state, NodeState::Installing);
    r.published();
    cmd
}

fn ack(session: &str, seq: u64, command: impl std::fmt::Display) -> Input {
    let r: metalbus_protocol::report::Report = serde_json::from_value(serde_json::json!({
        "session": session, "seq": seq, "ts": "2026-01-01T00:00:00Z",
        "kind": "ack", "command_id": command.to_string(), "accepted": true
    }))
    .unwrap();
    Input::Report {
        id: id("n1"),
        report: Box::new(r),
    }
}

#[test]
fn the_engine_wakes_for_the_reconciler_on_the_earliest_state_deadline() {
    let mut r = rig_with(short_timeouts());
    installing(&mut r);
    r.clock.advance_ms(59_700);
    r.engine.apply(vec![]);
    assert_eq!(r.node("n1").recovery_attempts, 0);
    // The deadline is 300 ms away: the engine wakes then, not a whole tick later.
    assert_eq!(
        r.engine.next_timer_in(),
        std::time::Duration::from_millis(300)
    );
    r.clock.advance_ms(300);
    r.engine.apply(vec![]);
    assert_eq!(r.node("n1").recovery_attempts, 1);
    // With no deadline within the second, the next look is a second away.
    assert_eq!(r.engine.next_timer_in(), std::time::Duration::from_secs(1));
}

#[test]
fn a_stuck_install_is_recovered_three_times_then_fails_with_the_reason() {
    let mut r = rig_with(short_timeouts());
    let mut cmd = installing(&mut r);
    for attempt in 1..=3u32 {
        r.clock.advance_ms(59_000);
        r.engine.apply(vec![]);
        assert_eq!(
            r.node("n1").recovery_attempts,
            attempt - 1,
            "not before 60 s"
        );
        r.clock.advance_ms(1_000);
        r.engine.apply(vec![]);
        let n = r.node("n1");
        assert_eq!(n.state, NodeState::Installing);
        assert_eq!(n.recovery_attempts, attempt);
        // The stuck job is cancelled and a new install sent.
        let sent = commands(&r.published());
        let kinds: Vec<&str> = sent.iter().map(|c| c["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["cancel", "install"], "attempt {attempt}");
        assert_eq!(sent[0]["target"], cmd.as_str());
        cmd = CommandId::new(sent[1]["command_id"].as_str().unwrap()).unwrap();
        assert_eq!(n.job.unwrap().command_id, cmd);
        // The agent acknowledges both, so neither is sent again.
        let seq = 2 + 2 * u64::from(attempt);
        let cancel = sent[0]["command_id"].as_str().unwrap();
        r.engine
            .apply(vec![ack("o1", seq - 1, cancel), ack("o1", seq, &cmd)]);
        r.published();
    }
    r.clock.advance_ms(60_000);
    r.engine.apply(vec![]);
    let n = r.node("n1");
    assert_eq!(n.state, NodeState::InstallFailed);
    assert_eq!(n.recovery_attempts, 3);
    let last = &r.store.history(&id("n1"), 1, 0).unwrap()[0];
    assert_eq!(
        last.triggered_by,
        metalbus_protocol::machine::Trigger::System
    );
    let meta = last.metadata.clone().unwrap();
    assert_eq!(meta["reason"], EventReason::StuckState.as_str(), "{meta}");
    assert_eq!(meta["recovery_attempts"], 3, "{meta}");
    assert!(
        meta["error"]
            .as_str()
            .unwrap()
            .starts_with("stuck in installing"),
        "{meta}"
    );
    // Events and counters agree: 4 detections (one collapsed event), 3 recoveries.
    let all = events(&r);
    let stuck = all
        .iter()
        .find(|e| e.reason == EventReason::StuckState)
        .unwrap();
    assert_eq!(stuck.count, 4);
    assert_eq!(stuck.message, "no progress in installing for 1m");
    assert_eq!(
        all.iter()
            .filter(|e| e.reason == EventReason::RecoveryAttempt)
            .count(),
        3
    );
    assert_eq!(all[0].reason, EventReason::InstallFailed);
    assert_eq!(
        metric(&r, "metalbus_stuck_states_total{state=\"installing\"}"),
        4.0
    );
    assert_eq!(
        metric(&r, "metalbus_recovery_attempts_total{state=\"installing\"}"),
        3.0
    );
}

#[test]
fn any_job_report_restarts_the_install_timer() {
    let mut r = rig_with(short_timeouts());
    let cmd = installing(&mut r);
    r.clock.advance_ms(50_000);
    r.engine.apply(vec![report("o1", 3, &cmd, "progress")]);
    r.clock.advance_ms(50_000);
    r.engine.apply(vec![]);
    assert_eq!(
        r.node("n1").recovery_attempts,
        0,
        "100 s in, 50 s since progress"
    );
    r.clock.advance_ms(10_000);
    r.engine.apply(vec![]);
    assert_eq!(r.node("n1").recovery_attempts, 1);
}

#[test]
fn a_node_stuck_across_a_restart_is_caught_on_time() {
    let mut r = rig_with(short_timeouts());
    installing(&mut r);
    r.clock.advance_ms(60_000);
    r.engine.apply(vec![]);
    assert_eq!(r.node("n1").recovery_attempts, 1);
    // The controller stops 20 s later and comes back 30 s after that.
    r.clock.advance_ms(50_000);
    let mut r = r.restart(short_timeouts());
    r.engine.apply(vec![]);
    assert_eq!(r.node("n1").recovery_attempts, 1, "50 s since the recovery");
    r.clock.advance_ms(10_000);
    r.engine.apply(vec![]);
    assert_eq!(
        r.node("n1").recovery_attempts,
        2,
        "60 s after the stored recovery time, not 60 s after the restart"
    );
}

#[test]
fn a_stuck_pending_node_is_sent_the_install_again() {
    let mut r = rig_with(short_timeouts());
    r.engine.apply(vec![birth("n1", 1, "s", "h")]);
    let (input, _answer) = call(super::Action::Manage { plan: None });
    r.engine.apply(vec![input]);
    r.published();
    r.clock.advance_ms(30_000);
    r.engine.apply(vec![]);
    let n = r.node("n1");
    assert_eq!((n.state, n.recovery_attempts), (NodeState::Pending, 1));
    let kinds: Vec<String> = commands(&r.published())
        .iter()
        .map(|c| c["kind"].as_str().unwrap().to_string())
        .collect();
    assert!(kinds.ends_with(&["install".to_string()]), "{kinds:?}");
}

fn sample_now() -> MetricsSample {
    serde_json::from_str(
        r#"{"ts":"2026-01-01T00:00:00Z","cpu_percent":1.0,"load":null,"memory":null,"swap":null,
            "filesystems":null,"network":null,"disk_io":null,"uptime_s":5,"temperatures_c":null}"#,
    )
    .unwrap()
}

/// `fleet` nodes (metrics every 15 s: a 45 s window), of which the first `silent` say
/// nothing more for `seconds` while the others report every 5 s. Online nodes after.
fn silent_fleet(fleet: usize, silent: usize, seconds: u64) -> (Rig, usize) {
    let mut r = rig();
    let births = (0..fleet)
        .map(|i| birth(&format!("m{i:03}"), 1, "s", &format!("m{i:03}")))
        .collect();
    r.engine.apply(births);
    for _ in 0..seconds / 5 {
        r.clock.advance_ms(5_000);
        let talk = (silent..fleet)
            .map(|i| Input::Metrics {
                id: id(&format!("m{i:03}")),
                sample: sample_now(),
            })
            .collect();
        r.engine.apply(talk);
    }
    let online = (0..fleet)
        .filter(|i| r.node(&format!("m{i:03}")).online)
        .count();
    (r, online)
}

fn offline_messages(r: &Rig, node: &str) -> Vec<String> {
    r.store
        .events(&id(node), &crate::store::EventFilter::default(), 100)
        .unwrap()
        .into_iter()
        .filter(|e| e.reason == EventReason::NodeOffline)
        .map(|e| e.message)
        .collect()
}

#[test]
fn many_nodes_silent_at_once_wait_three_windows_before_going_offline() {
    // 60 of 100 silent for 50 s: past their 45 s window, but more than 10 % at once.
    let (_, online) = silent_fleet(100, 60, 50);
    assert_eq!(online, 100, "mass silence: the verdict waits");
    // For 135 s, three windows: offline, saying for how long.
    let (r, online) = silent_fleet(100, 60, 135);
    assert_eq!(online, 40);
    let n = r.node("m000");
    assert_eq!(n.offline_reason, Some(OfflineReason::Stale));
    assert!(offline_messages(&r, "m000")
        .contains(&"nothing heard from the agent for 2m 15s".to_string()));
}

#[test]
fn a_few_silent_nodes_go_offline_after_one_window_in_any_fleet() {
    // 5 of 100: not a mass silence.
    let (r, online) = silent_fleet(100, 5, 50);
    assert_eq!(online, 95);
    assert!(
        offline_messages(&r, "m000").contains(&"nothing heard from the agent for 45s".to_string())
    );
    // A small fleet all silent at once: fewer than 50 nodes is not a mass silence.
    let (_, online) = silent_fleet(20, 20, 50);
    assert_eq!(online, 0);
}

#[test]
fn silence_for_three_metrics_intervals_is_offline_and_a_message_brings_it_back() {
    let mut r = rig();
    r.engine.apply(vec![birth("n1", 1, "s", "h")]);
    r.clock.advance_ms(44_000);
    r.engine.apply(vec![]);
    assert!(r.node("n1").online, "15 s interval: not stale before 45 s");
    r.clock.advance_ms(1_000);
    r.engine.apply(vec![]);
    let n = r.node("n1");
    assert!(!n.online);
    assert_eq!(n.offline_reason, Some(OfflineReason::Stale));
    let offline = events(&r).remove(0);
    assert_eq!(
        (offline.reason, offline.message.as_str()),
        (
            EventReason::NodeOffline,
            "nothing heard from the agent for 45s"
        )
    );
    // A metrics sample: online again at the next look.
    let sample: MetricsSample = serde_json::from_str(
        r#"{"ts":"2026-01-01T00:00:00Z","cpu_percent":1.0,"load":null,"memory":null,"swap":null,
            "filesystems":null,"network":null,"disk_io":null,"uptime_s":5,"temperatures_c":null}"#,
    )
    .unwrap();
    r.engine.apply(vec![Input::Metrics {
        id: id("n1"),
        sample,
    }]);
    r.clock.advance_ms(1_000);
    r.engine.apply(vec![]);
    let n = r.node("n1");
    assert!(n.online);
    assert_eq!(n.offline_reason, None);
    assert_eq!(events(&r)[0].reason, EventReason::NodeOnline);
}

#[test]
fn after_a_restart_old_heartbeats_get_a_full_window() {
    let mut r = rig();
    r.engine.apply(vec![birth("n1", 1, "s", "h")]);
    r.engine.flush_heartbeats(Durability::Immediate);
    // The controller was down for 10 minutes.
    r.clock.advance_ms(600_000);
    let mut r = r.restart(crate::config::ControllerConfig::default());
    r.engine.apply(vec![]);
    assert!(
        r.node("n1").online,
        "no verdict before the agents could speak"
    );
    r.clock.advance_ms(45_000);
    r.engine.apply(vec![]);
    assert!(!r.node("n1").online);
}

fn register(
    name: &str,
    mac: Option<&str>,
    hostname: Option<&str>,
) -> (
    Input,
    tokio::sync::oneshot::Receiver<Result<super::Reply, super::CallError>>,
) {
    let (reply, rx) = tokio::sync::oneshot::channel();
    let reg = super::Registration {
        name: name.into(),
        hints: metalbus_protocol::api::MatchHints {
            mac: mac.map(String::from),
            ip: None,
            hostname: hostname.map(String::from),
        },
        labels: [("rack".to_string(), "r1".to_string())].into(),
        group: Some("workers".into()),
    };
    let call = super::Call {
        key: name.into(),
        action: super::Action::Register(reg),
        user: Some("ops".into()),
        if_match: None,
        reply,
    };
    (Input::Call(Box::new(call)), rx)
}

fn inventory_with_mac(node: &str, mac: &str) -> Input {
    let mut inv = Inventory::default();
    inv.nics.push(metalbus_protocol::inventory::Nic {
        name: "eno1".into(),
        mac: Some(mac.into()),
        ..Default::default()
    });
    Input::Inventory {
        id: id(node),
        inventory: Box::new(inv),
    }
}

#[test]
fn a_registration_is_claimed_by_mac_and_the_agent_keeps_its_id() {
    let mut r = rig();
    let (input, mut answer) = register("web-a", Some("aa:bb:cc:00:00:01"), None);
    r.engine.apply(vec![input]);
    let reg = answer.try_recv().unwrap().unwrap().node;
    assert_eq!(reg.state, NodeState::Registered);
    assert!(reg.id.as_str().starts_with("reg-"), "{}", reg.id);
    assert!(!reg.online);
    // The name is taken now.
    let (input, mut again) = register("web-a", Some("aa:bb:cc:00:00:09"), None);
    r.engine.apply(vec![input]);
    assert!(matches!(
        again.try_recv().unwrap(),
        Err(super::CallError::Conflict(_))
    ));

    // The agent's birth waits for its inventory, which names the MAC.
    r.engine.apply(vec![birth("n1", 1, "s", "some-host")]);
    assert!(
        r.store.find_node("n1").unwrap().is_none(),
        "held for the inventory"
    );
    r.engine
        .apply(vec![inventory_with_mac("n1", "aa:bb:cc:00:00:01")]);
    let n = r.node("n1");
    assert_eq!(n.name, "web-a");
    assert_eq!(n.state, NodeState::Discovered);
    assert_eq!(n.labels.get("rack").map(String::as_str), Some("r1"));
    assert_eq!(n.group.as_deref(), Some("workers"));
    assert!(n.online);
    assert!(n.inventory_at.is_some(), "the held inventory is stored");
    // The record is gone as a node of its own; the name leads to the agent's node.
    assert!(r.store.find_node(reg.id.as_str()).unwrap().is_none());
    assert_eq!(r.store.find_node("web-a").unwrap().unwrap().id, id("n1"));
    assert_eq!(r.store.nodes().unwrap().len(), 1);
    let h = r.store.history(&id("n1"), 10, 0).unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(
        (h[0].from_state, h[0].to_state, h[0].triggered_by),
        (
            NodeState::Registered,
            NodeState::Discovered,
            metalbus_protocol::machine::Trigger::System
        )
    );
    assert_eq!(
        h[0].comment.as_deref(),
        Some(format!("matched registration {} by mac", reg.id).as_str())
    );
    assert!(reasons(&r)
        .iter()
        .any(|(e, _)| *e == EventReason::NodeMatched));
}

#[test]
fn without_an_inventory_a_new_agent_is_matched_by_hostname_after_a_wait() {
    let mut r = rig();
    let (input, _answer) = register("db", None, Some("db"));
    r.engine.apply(vec![input]);
    r.engine.apply(vec![birth("n1", 1, "s", "db-primary")]);
    r.clock.advance_ms(4_000);
    r.engine.apply(vec![]);
    assert!(r.store.find_node("n1").unwrap().is_none());
    r.clock.advance_ms(1_000);
    r.engine.apply(vec![]);
    let n = r.node("n1");
    assert_eq!((n.name.as_str(), n.state), ("db", NodeState::Discovered));
}

#[test]
fn an_agent_that_matches_nothing_is_discovered_under_its_hostname() {
    let mut r = rig();
    let (input, _answer) = register("db", Some("aa:bb:cc:00:00:01"), Some("db"));
    r.engine.apply(vec![input]);
    r.engine.apply(vec![
        birth("n1", 1, "s", "web-1"),
        inventory_with_mac("n1", "aa:bb:cc:00:00:02"),
    ]);
    let n = r.node("n1");
    assert_eq!((n.name.as_str(), n.state), ("web-1", NodeState::Discovered));
    assert_eq!(
        r.store.find_node("db").unwrap().unwrap().state,
        NodeState::Registered
    );
}

#[test]
fn ten_agents_at_once_claim_ten_registrations_each_once() {
    let mut r = rig();
    let mut inputs = Vec::new();
    for k in 0..10 {
        let (input, _answer) = register(&format!("rack1-{k:02}"), None, Some("rack1"));
        inputs.push(input);
    }
    r.engine.apply(inputs);
    let mut births = Vec::new();
    for k in 0..10 {
        births.push(birth(
            &format!("agent-{k}"),
            1,
            "s",
            &format!("rack1-node{k}"),
        ));
        births.push(inventory(&format!("agent-{k}"), 4));
    }
    r.engine.apply(births);
    let nodes = r.store.nodes().unwrap();
    assert_eq!(nodes.len(), 10, "ten agents, no record left over or shared");
    let mut names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    names.sort();
    let expected: Vec<String> = (0..10).map(|k| format!("rack1-{k:02}")).collect();
    assert_eq!(names, expected);
    assert!(nodes.iter().all(|n| n.state == NodeState::Discovered));
}

#[test]
fn a_registration_never_claimed_times_out_into_error() {
    let mut r = rig();
    let (input, mut answer) = register("ghost", None, Some("ghost"));
    r.engine.apply(vec![input]);
    let reg = answer.try_recv().unwrap().unwrap().node;
    r.clock.advance_ms(15 * 60_000 - 1_000);
    r.engine.apply(vec![]);
    assert_eq!(
        r.store.find_node("ghost").unwrap().unwrap().state,
        NodeState::Registered
    );
    r.clock.advance_ms(1_000);
    r.engine.apply(vec![]);
    let n = r.store.find_node("ghost").unwrap().unwrap();
    assert_eq!(n.state, NodeState::Error);
    let h = r.store.history(&reg.id, 1, 0).unwrap();
    let meta = h[0].metadata.clone().unwrap();
    assert_eq!(
        meta["reason"],
        EventReason::DiscoveryTimeout.as_str(),
        "{meta}"
    );
    let evs = r
        .store
        .events(&reg.id, &crate::store::EventFilter::default(), 10)
        .unwrap();
    assert_eq!(evs[0].reason, EventReason::DiscoveryTimeout);
    assert_eq!(
        evs[0].message,
        "no agent matched this registration within 15m"
    );
}

#[test]
fn a_registration_that_timed_out_is_not_claimed() {
    let mut r = rig();
    let (input, _answer) = register("late", None, Some("late"));
    r.engine.apply(vec![input]);
    r.clock.advance_ms(15 * 60_000);
    r.engine.apply(vec![]);
    assert_eq!(
        r.store.find_node("late").unwrap().unwrap().state,
        NodeState::Error
    );
    // Its agent comes at last: a node of its own, the record untouched for the operator.
    r.engine
        .apply(vec![birth("n1", 1, "s", "late-1"), inventory("n1", 2)]);
    let n = r.node("n1");
    assert_eq!(
        (n.name.as_str(), n.state),
        ("late-1", NodeState::Discovered)
    );
    assert_eq!(
        r.store.find_node("late").unwrap().unwrap().state,
        NodeState::Error
    );
}

#[test]
fn a_reboot_after_install_activates_on_the_first_birth_of_a_new_boot() {
    let mut cfg = crate::config::ControllerConfig::default();
    for plan in cfg.plans.values_mut() {
        plan.reboot_after = true;
    }
    let mut r = rig_with(cfg);
    let boot = |n: u64, boot_id: &str| {
        let mut b = birth("n1", n, "s", "h");
        if let Input::Status {
            status: Status::Birth(birth),
            ..
        } = &mut b
        {
            birth.boot_id = Some(boot_id.into());
        }
        b
    };
    r.engine.apply(vec![boot(1, "boot-a")]);
    let (input, _answer) = call(super::Action::Manage { plan: None });
    r.engine.apply(vec![input]);
    let cmd = r.node("n1").job.unwrap().command_id;
    r.engine.apply(vec![
        ack("o1", 1, &cmd),
        report("o1", 2, &cmd, "started"),
        report("o1", 3, &cmd, "complete"),
    ]);
    assert_eq!(
        r.node("n1").state,
        NodeState::Installed,
        "waits for the reboot"
    );
    // A reconnect of the same boot is not the reboot.
    r.engine.apply(vec![boot(2, "boot-a")]);
    assert_eq!(r.node("n1").state, NodeState::Installed);
    r.engine.apply(vec![boot(3, "boot-b")]);
    assert_eq!(r.node("n1").state, NodeState::Active);
    let last = &r.store.history(&id("n1"), 1, 0).unwrap()[0];
    assert_eq!(
        (last.from_state, last.to_state, last.triggered_by),
        (
            NodeState::Installed,
            NodeState::Active,
            metalbus_protocol::machine::Trigger::System
        )
    );
}

fn power_report(
    seq: u64,
    command: impl std::fmt::Display,
    job: &str,
    status: &str,
    error: Option<&str>,
) -> Input {
    let r: metalbus_protocol::report::Report = serde_json::from_value(serde_json::json!({
        "session": "s", "seq": seq, "ts": "2026-01-01T00:00:00Z",
        "kind": "job", "command_id": command.to_string(), "job": job, "status": status, "error": error
    }))
    .unwrap();
    Input::Report {
        id: id("n1"),
        report: Box::new(r),
    }
}

#[test]
fn a_reboot_is_a_command_resent_until_acked_and_ends_with_its_report() {
    use metalbus_protocol::command::CommandStatus;
    let mut r = rig();
    r.engine.apply(vec![birth("n1", 1, "s", "h")]);
    r.published();
    let (input, mut answer) = call(super::Action::Power(
        metalbus_protocol::command::PowerAction::Reboot,
    ));
    r.engine.apply(vec![input]);
    let reply = answer.try_recv().unwrap().unwrap();
    let (op, status) = reply.operation.unwrap();
    assert_eq!(status, CommandStatus::Sent);
    assert_eq!(reply.node.state, NodeState::Discovered, "no state change");
    let sent = commands(&r.published());
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["kind"], "reboot");
    assert_eq!(sent[0]["command_id"], op.as_str());
    assert!(reasons(&r).contains(&(EventReason::RebootRequested, 1)));

    // Unacked: the next birth sends it again, with the same id.
    r.engine.apply(vec![birth("n1", 2, "s", "h")]);
    assert_eq!(commands(&r.published())[0]["command_id"], op.as_str());

    r.engine.apply(vec![ack("s", 1, &op)]);
    assert_eq!(
        r.store.command(op.as_str()).unwrap().unwrap().status,
        CommandStatus::Accepted
    );
    r.engine
        .apply(vec![power_report(2, &op, "reboot", "complete", None)]);
    let rec = r.store.command(op.as_str()).unwrap().unwrap();
    assert_eq!(rec.status, CommandStatus::Succeeded);
    assert!(reasons(&r).contains(&(EventReason::RebootCompleted, 1)));
    assert_eq!(r.node("n1").state, NodeState::Discovered);
    assert_eq!(r.node("n1").last_applied_seq, 2);

    // A poweroff whose action fails ends `failed` with the agent's error.
    let (input, mut answer) = call(super::Action::Power(
        metalbus_protocol::command::PowerAction::Poweroff,
    ));
    r.engine.apply(vec![input]);
    let (off, _) = answer.try_recv().unwrap().unwrap().operation.unwrap();
    r.engine.apply(vec![
        ack("s", 3, &off),
        power_report(4, &off, "poweroff", "failed", Some("exited with status 3")),
    ]);
    let rec = r.store.command(off.as_str()).unwrap().unwrap();
    assert_eq!(rec.status, CommandStatus::Failed);
    assert_eq!(rec.reason.as_deref(), Some("exited with status 3"));
    assert!(reasons(&r).contains(&(EventReason::PoweroffFailed, 1)));

    // A power report for a command of another kind is refused and shown.
    r.engine
        .apply(vec![power_report(5, &op, "poweroff", "failed", Some("x"))]);
    assert_eq!(
        r.store.command(op.as_str()).unwrap().unwrap().status,
        CommandStatus::Succeeded
    );
    assert!(reasons(&r)
        .iter()
        .any(|(reason, _)| *reason == EventReason::MessageRejected));
}

#[test]
fn operations_are_refused_for_retired_and_registered_nodes_and_unknown_ones() {
    let mut r = rig();
    r.engine.apply(vec![birth("n1", 1, "s", "h")]);
    let (input, _a) = call(super::Action::Delete { force: true });
    r.engine.apply(vec![input]);
    assert_eq!(r.node("n1").state, NodeState::Retired);
    r.published();
    let (input, mut answer) = call(super::Action::Power(
        metalbus_protocol::command::PowerAction::Reboot,
    ));
    r.engine.apply(vec![input]);
    let err = answer.try_recv().unwrap().unwrap_err();
    assert!(
        matches!(&err, super::CallError::BadRequest(m) if m.contains("retired")),
        "{err:?}"
    );
    assert!(commands(&r.published()).is_empty(), "nothing sent");

    let (reply, mut answer) = tokio::sync::oneshot::channel();
    r.engine.apply(vec![Input::Call(Box::new(super::Call {
        key: "nope".into(),
        action: super::Action::Power(metalbus_protocol::command::PowerAction::Poweroff),
        user: None,
        if_match: None,
        reply,
    }))]);
    assert_eq!(
        answer.try_recv().unwrap().unwrap_err(),
        super::CallError::NotFound
    );

    let reg = super::Registration {
        name: "later".into(),
        hints: metalbus_protocol::api::MatchHints {
            hostname: Some("later".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let (reply, mut answer) = tokio::sync::oneshot::channel();
    r.engine.apply(vec![Input::Call(Box::new(super::Call {
        key: "later".into(),
        action: super::Action::Register(reg),
        user: None,
        if_match: None,
        reply,
    }))]);
    answer.try_recv().unwrap().unwrap();
    let (reply, mut answer) = tokio::sync::oneshot::channel();
    r.engine.apply(vec![Input::Call(Box::new(super::Call {
        key: "later".into(),
        action: super::Action::Power(metalbus_protocol::command::PowerAction::Reboot),
        user: None,
        if_match: None,
        reply,
    }))]);
    let err = answer.try_recv().unwrap().unwrap_err();
    assert!(
        matches!(&err, super::CallError::BadRequest(m) if m.contains("agent has not connected")),
        "{err:?}"
    );
}

#[test]
fn a_wake_is_queued_handed_to_the_wake_task_and_answered_with_its_outcome() {
    use metalbus_protocol::command::{CommandKind, CommandStatus};
    use tokio::sync::oneshot::error::TryRecvError;
    let mut r = rig();
    r.engine.apply(vec![birth("n1", 1, "s", "h")]);
    r.published();
    // No inventory yet: no MAC to wake.
    let (input, mut answer) = call(super::Action::Wake);
    r.engine.apply(vec![input]);
    let err = answer.try_recv().unwrap().unwrap_err();
    assert!(
        matches!(&err, super::CallError::BadRequest(m) if m.contains("no known MAC")),
        "{err:?}"
    );
    assert!(r.wakes.try_recv().is_err(), "nothing to send");

    r.engine
        .apply(vec![inventory_with_mac("n1", "52:54:00:12:34:56")]);
    let (input, mut answer) = call(super::Action::Wake);
    r.engine.apply(vec![input]);
    // Recorded `queued` and handed to the wake task; the call waits for the outcome.
    let request = r.wakes.try_recv().unwrap();
    assert_eq!(request.node_id, id("n1"));
    assert_eq!(request.macs, ["52:54:00:12:34:56"]);
    let op = request.operation_id;
    assert!(matches!(answer.try_recv(), Err(TryRecvError::Empty)));
    let rec = r.store.command(op.as_str()).unwrap().unwrap();
    assert_eq!(
        (rec.command.kind, rec.status),
        (CommandKind::Wake, CommandStatus::Queued)
    );
    assert!(reasons(&r).contains(&(EventReason::WakeRequested, 1)));

    // The wake task reports the packets sent: the call is answered `succeeded`.
    r.engine.apply(vec![Input::WakeSent {
        operation_id: op.clone(),
        error: None,
    }]);
    let (answered, status) = answer.try_recv().unwrap().unwrap().operation.unwrap();
    assert_eq!((answered, status), (op.clone(), CommandStatus::Succeeded));
    assert_eq!(
        r.store.command(op.as_str()).unwrap().unwrap().status,
        CommandStatus::Succeeded
    );

    // A wake whose packets could not go out ends `failed`, with a Warning.
    let (input, mut answer) = call(super::Action::Wake);
    r.engine.apply(vec![input]);
    let failed = r.wakes.try_recv().unwrap().operation_id;
    r.engine.apply(vec![Input::WakeSent {
        operation_id: failed.clone(),
        error: Some("network unreachable".into()),
    }]);
    let (_, status) = answer.try_recv().unwrap().unwrap().operation.unwrap();
    assert_eq!(status, CommandStatus::Failed);
    let rec = r.store.command(failed.as_str()).unwrap().unwrap();
    assert_eq!(rec.reason.as_deref(), Some("network unreachable"));
    assert!(reasons(&r).contains(&(EventReason::WakeFailed, 1)));

    // Never an agent command, not even on the next birth.
    r.engine.apply(vec![birth("n1", 2, "s", "h")]);
    assert!(commands(&r.published()).is_empty());

    // A wake whose outcome never came back before a restart ends `failed`.
    let (input, _gone) = call(super::Action::Wake);
    r.engine.apply(vec![input]);
    let lost = r.wakes.try_recv().unwrap().operation_id;
    let mut r = r.restart(crate::config::ControllerConfig::default());
    r.engine.apply(vec![]);
    let rec = r.store.command(lost.as_str()).unwrap().unwrap();
    assert_eq!(rec.status, CommandStatus::Failed);
    assert!(
        rec.reason.unwrap().contains("restarted"),
        "the reason says why"
    );

    // An outcome for something that is not a wake changes nothing.
    r.engine.apply(vec![Input::WakeSent {
        operation_id: CommandId::new("c-not-a-wake").unwrap(),
        error: None,
    }]);
    assert!(r.store.command("c-not-a-wake").unwrap().is_none());
}

#[test]
fn held_reports_are_bounded_in_bytes_per_node() {
    let mut r = rig();
    r.engine.apply(vec![birth("n1", 1, "s", "h")]);
    r.engine.apply(vec![report("o1", 1, "c-1", "progress")]);
    // 2 is missing; the rest wait, each about 8 KiB: the node's byte bound, not its
    // count bound, stops them.
    let big = |seq: u64| {
        let mut input = report("o1", seq, "c-1", "failed");
        if let Input::Report { report, .. } = &mut input {
            if let metalbus_protocol::report::ReportBody::Job { error, .. } = &mut report.body {
                *error = Some("e".repeat(8_000));
            }
        }
        input
    };
    r.engine.apply((3..=200).map(big).collect());
    let held = r.engine.held.bytes();
    assert!(held <= super::reports::MAX_HELD_BYTES, "{held}");
    assert!(held > super::reports::MAX_HELD_BYTES - 10_000, "{held}");
    let kept = held / 8_000;
    assert!(kept < super::reports::MAX_HELD_REPORTS, "{kept}");
    assert!(limit_hits(&r, "held_reports") >= 198 - kept as u64);
    // The gap fills: everything held applies and is let go.
    r.engine.apply(vec![report("o1", 2, "c-1", "progress")]);
    assert_eq!(r.engine.held.bytes(), 0);
    assert!(r.node("n1").last_applied_seq > 2);
}

/// After a restore the store is behind what the agent saw receipted: the first report
/// of a new connection comes after a gap that never fills, and is applied with a
/// `ReportsLost` warning. A replayed older birth does not arm that, and a gap later in
/// a connection still waits for the resend.
#[test]
fn only_a_gap_before_a_connections_first_report_is_skipped() {
    let mut r = rig();
    let node = NodeId::new("n1").unwrap();
    r.engine.apply(vec![birth("n1", 2, "s", "h")]);
    let (input, _answer) = call(super::Action::Manage { plan: None });
    r.engine.apply(vec![input]);
    let cmd = r.node("n1").job.unwrap().command_id;
    r.engine.apply(vec![report("o1", 1, &cmd, "started")]);
    assert_eq!(r.node("n1").last_applied_seq, 1);
    // A replayed birth of an older connection, then a gap: held, not skipped.
    r.engine.apply(vec![birth("n1", 1, "s", "h")]);
    r.engine.apply(vec![report("o1", 3, &cmd, "progress")]);
    assert_eq!(r.node("n1").last_applied_seq, 1);
    // A real new connection whose first report is 6: 2 to 5 are gone; 6 applies.
    r.engine.apply(vec![birth("n1", 3, "s", "h")]);
    r.published();
    r.engine.apply(vec![report("o1", 6, &cmd, "complete")]);
    assert_eq!(r.node("n1").last_applied_seq, 6);
    assert_eq!(r.node("n1").state, NodeState::Active);
    assert_eq!(receipts(&r.published()), vec![6]);
    let events = r
        .store
        .events(&node, &crate::store::EventFilter::default(), 50)
        .unwrap();
    let lost: Vec<_> = events
        .iter()
        .filter(|e| e.reason == metalbus_protocol::event::EventReason::ReportsLost)
        .collect();
    assert_eq!(lost.len(), 1, "{events:?}");
    assert!(
        lost[0].message.contains("4 reports (2 to 5)"),
        "{:?}",
        lost[0]
    );
    // Later in the same connection a gap waits again.
    r.engine.apply(vec![report("o1", 8, &cmd, "progress")]);
    assert_eq!(r.node("n1").last_applied_seq, 6);
}
