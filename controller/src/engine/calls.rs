//! The operator's calls, from the HTTP API. [`decide`] is a function from a node and an
//! action to what the engine should do (an event for the state machine, a field update,
//! an operation) or a refusal; the engine glue finds the node, checks `If-Match`, carries
//! the decision out inside the batch, and answers after the commit.

use std::collections::BTreeMap;
use std::fmt;

use metalbus_protocol::api::MatchHints;
use metalbus_protocol::command::{CommandId, CommandStatus, PowerAction};
use metalbus_protocol::event::EventReason;
use metalbus_protocol::lifecycle::NodeState;
use metalbus_protocol::machine::{Event, Refusal};
use metalbus_protocol::{is_valid_node_name, NodeId, Timestamp};
use tokio::sync::oneshot;
use tracing::info;

use super::batch::Batch;
use super::lifecycle::Ctx;
use super::Engine;
use crate::config::ControllerConfig;
use crate::store::NodeRecord;

/// An operator's request, from the HTTP API.
#[derive(Debug)]
pub struct Call {
    /// Node id or name.
    pub key: String,
    pub action: Action,
    /// Who asked (the token's name), for the audit log.
    pub user: Option<String>,
    /// `If-Match`: the version the caller last saw.
    pub if_match: Option<u64>,
    pub reply: oneshot::Sender<Result<Reply, CallError>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Manage {
        plan: Option<String>,
    },
    Unmanage,
    Delete {
        force: bool,
    },
    SetState {
        state: NodeState,
        comment: Option<String>,
        force: bool,
    },
    Retry,
    Update(NodeUpdate),
    /// `POST /nodes`: a `registered` node for an agent not seen yet.
    Register(Registration),
    /// `POST .../reboot` and `.../poweroff`: a command to the node's agent.
    Power(PowerAction),
    /// `POST .../wake`: magic packets to the MACs of the node's inventory. The call is
    /// answered once they went out (or could not).
    Wake,
}

/// A pre-registration (DESIGN section 8).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Registration {
    pub name: String,
    pub hints: MatchHints,
    pub labels: BTreeMap<String, String>,
    pub group: Option<String>,
}

/// `PATCH /nodes/{node}`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeUpdate {
    pub name: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    /// `Some("")` clears the group.
    pub group: Option<String>,
    pub control_plane: Option<bool>,
}

/// A successful call: the node as committed, and the state it had before.
#[derive(Debug, Clone)]
pub struct Reply {
    pub node: NodeRecord,
    pub before: NodeState,
    /// The operation a call started (reboot, poweroff, wake), and its status.
    pub operation: Option<(CommandId, CommandStatus)>,
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    NotFound,
    Stale {
        given: u64,
        current: u64,
    },
    Refused(Refusal),
    BadRequest(String),
    Conflict(String),
    /// Something other than a node is not there (a token, say).
    Missing(String),
    Store(String),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::NotFound => f.write_str("node not found"),
            CallError::Stale { given, current } => write!(
                f,
                "version {given} is stale; the node is at version {current}"
            ),
            CallError::Refused(r) => write!(f, "{r}"),
            CallError::BadRequest(m) | CallError::Conflict(m) | CallError::Missing(m) => {
                f.write_str(m)
            }
            CallError::Store(m) => write!(f, "store failure: {m}"),
        }
    }
}

/// What a call did, answered once the batch is committed.
#[derive(Debug)]
pub(super) struct Done {
    pub id: NodeId,
    pub before: NodeState,
    pub operation: Option<(CommandId, CommandStatus)>,
    /// Answered only once the operation is over (a wake, when its packets went out),
    /// not right after the commit.
    pub answered_when_over: bool,
}

/// What a call on an existing node comes to.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Decision {
    /// An event for the state machine, with who and why.
    Machine(Event, Ctx),
    /// Change the node's fields.
    Update(NodeUpdate),
    /// Send the node's agent a power command.
    Power(PowerAction),
    /// Wake the node.
    Wake,
}

/// Decides a call from the node and the action alone. `machine_ready` is what `retry`
/// needs: agent online, heartbeat fresh, inventory present.
pub(super) fn decide(
    node: &NodeRecord,
    action: &Action,
    user: Option<&str>,
    cfg: &ControllerConfig,
    machine_ready: bool,
) -> Result<Decision, CallError> {
    let mut ctx = Ctx {
        user: user.map(String::from),
        ..Ctx::default()
    };
    let event = match action {
        Action::Manage { plan } => {
            let plan = cfg
                .pick_plan(plan.as_deref())
                .map_err(CallError::BadRequest)?;
            ctx.plan = Some(plan.name);
            Event::Manage
        }
        Action::Unmanage => Event::Unmanage,
        Action::Delete { force } => {
            ctx.force = *force;
            Event::Delete { force: *force }
        }
        Action::SetState {
            state,
            comment,
            force,
        } => {
            ctx.comment = comment.clone();
            ctx.force = *force;
            Event::SetState {
                to: *state,
                force: *force,
            }
        }
        Action::Retry => {
            ctx.comment = Some("retry".into());
            Event::Retry { machine_ready }
        }
        Action::Update(update) => return Ok(Decision::Update(update.clone())),
        Action::Power(power) => {
            operable(node, power.as_str())?;
            return Ok(Decision::Power(*power));
        }
        Action::Wake => {
            if node.state == NodeState::Retired {
                return Err(CallError::BadRequest(format!(
                    "node {} is retired; it cannot be woken",
                    node.name
                )));
            }
            return Ok(Decision::Wake);
        }
        // Made before any node exists; never decided on one.
        Action::Register(_) => return Err(CallError::Conflict("node exists".into())),
    };
    Ok(Decision::Machine(event, ctx))
}

/// Whether `node` has an agent to send an operation to; the refusal otherwise.
fn operable(node: &NodeRecord, what: &str) -> Result<(), CallError> {
    match node.state {
        NodeState::Retired => Err(CallError::BadRequest(format!(
            "node {} is retired; it cannot be sent a {what}",
            node.name
        ))),
        NodeState::Registered => Err(CallError::BadRequest(format!(
            "node {} is registered but its agent has not connected yet; there is no agent to {what} it",
            node.name
        ))),
        _ => Ok(()),
    }
}

impl Engine {
    pub(super) fn on_call(&mut self, call: Call, now: Timestamp, batch: &mut Batch) {
        match self.do_call(&call, now, batch) {
            Ok(done) if done.answered_when_over => match done.operation.clone() {
                Some((op, _)) => batch.parked.push((op, call.reply, done)),
                None => batch.replies.push((call.reply, Ok(done))),
            },
            result => batch.replies.push((call.reply, result)),
        }
    }

    fn do_call(
        &mut self,
        call: &Call,
        now: Timestamp,
        batch: &mut Batch,
    ) -> Result<Done, CallError> {
        if let Action::Register(reg) = &call.action {
            return self.register(reg, call.user.as_deref(), now, batch);
        }
        let id = self.fleet.resolve(&call.key).ok_or(CallError::NotFound)?;
        let node = self
            .fleet
            .nodes
            .get(&id)
            .cloned()
            .ok_or(CallError::NotFound)?;
        if let Some(given) = call.if_match {
            if given != node.version {
                return Err(CallError::Stale {
                    given,
                    current: node.version,
                });
            }
        }
        let before = node.state;
        let ready = self.machine_ready(&node, now);
        let decision = decide(
            &node,
            &call.action,
            call.user.as_deref(),
            &self.cfg.controller,
            ready,
        )?;
        let mut answered_when_over = false;
        let operation = match decision {
            Decision::Machine(event, ctx) => {
                self.machine(&id, event, ctx, now, batch)
                    .map_err(CallError::Refused)?;
                None
            }
            Decision::Update(update) => {
                self.update_node(&node, &update, now, batch)?;
                None
            }
            Decision::Power(power) => {
                let op = self.power(&node, power, call.user.as_deref(), now, batch);
                Some((op, CommandStatus::Sent))
            }
            Decision::Wake => {
                let op = self.wake(&node, call.user.as_deref(), now, batch)?;
                answered_when_over = true;
                Some((op, CommandStatus::Queued))
            }
        };
        Ok(Done {
            id,
            before,
            operation,
            answered_when_over,
        })
    }

    /// Agent online, heartbeat fresh, inventory present.
    pub(super) fn machine_ready(&self, node: &NodeRecord, now: Timestamp) -> bool {
        node.online && self.heartbeats.fresh(node, now) && node.inventory_at.is_some()
    }

    /// A new `registered` node; its agent claims it on arrival (`create_node`).
    fn register(
        &mut self,
        reg: &Registration,
        user: Option<&str>,
        now: Timestamp,
        batch: &mut Batch,
    ) -> Result<Done, CallError> {
        self.fleet.check_name(&reg.name, None)?;
        check_labels(&reg.labels)?;
        let group = reg.group.as_deref().map(check_group).transpose()?.flatten();
        let id = loop {
            let id = NodeId::new(self.ids.registration())
                .map_err(|e| CallError::Store(e.to_string()))?;
            if !self.fleet.nodes.contains_key(&id) && !self.fleet.names.contains_key(id.as_str()) {
                break id;
            }
        };
        let node = NodeRecord {
            state: NodeState::Registered,
            online: false,
            labels: reg.labels.clone(),
            group,
            registration: Some(reg.hints.clone()),
            ..NodeRecord::discovered(id.clone(), reg.name.clone(), now)
        };
        let hints = &reg.hints;
        let by: Vec<String> = [
            hints.mac.as_ref().map(|m| format!("mac {m}")),
            hints.ip.map(|i| format!("ip {i}")),
            hints.hostname.as_ref().map(|h| format!("hostname {h}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        info!(node = %id, name = %reg.name, user = user.unwrap_or("-"), "node registered");
        batch.controller(&id, now).normal(
            EventReason::Registered,
            format!(
                "registered by {}; matched by {}",
                user.unwrap_or("unknown"),
                by.join(", ")
            ),
        );
        self.fleet.names.insert(reg.name.clone(), id.clone());
        self.fleet.nodes.insert(id.clone(), node);
        batch.nodes.insert(id.clone(), None);
        batch.durable = true;
        Ok(Done {
            id,
            before: NodeState::Registered,
            operation: None,
            answered_when_over: false,
        })
    }

    fn update_node(
        &mut self,
        node: &NodeRecord,
        update: &NodeUpdate,
        now: Timestamp,
        batch: &mut Batch,
    ) -> Result<(), CallError> {
        let mut after = node.clone();
        if let Some(name) = &update.name {
            self.fleet.check_name(name, Some(&node.id))?;
            after.name = name.clone();
        }
        if let Some(labels) = &update.labels {
            check_labels(labels)?;
            after.labels = labels.clone();
        }
        if let Some(group) = &update.group {
            after.group = check_group(group)?;
        }
        if let Some(cp) = update.control_plane {
            after.control_plane = cp;
        }
        if after.name != node.name {
            self.fleet.names.remove(&node.name);
            self.fleet.names.insert(after.name.clone(), node.id.clone());
        }
        self.replace(node.clone(), after, now, batch);
        Ok(())
    }

    pub(super) fn reply(&self, done: Done) -> Result<Reply, CallError> {
        let node = self
            .fleet
            .nodes
            .get(&done.id)
            .cloned()
            .ok_or(CallError::NotFound)?;
        Ok(Reply {
            node,
            before: done.before,
            operation: done.operation,
        })
    }
}

/// Label keys of 1 to 63 safe characters; values up to 256 characters, no controls.
fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), CallError> {
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
        if !key_ok || v.len() > 256 || v.chars().any(char::is_control) {
            return Err(CallError::BadRequest(format!(
                "label {k:?}={v:?}: keys are 1 to 63 of letters, digits, '.', '_', '-', '/'; values at most 256 characters"
            )));
        }
    }
    Ok(())
}

/// A group name; `""` clears the group.
fn check_group(group: &str) -> Result<Option<String>, CallError> {
    if group.is_empty() {
        Ok(None)
    } else if is_valid_node_name(group) {
        Ok(Some(group.to_string()))
    } else {
        Err(CallError::BadRequest(format!(
            "group {group:?} must be 1 to 64 of A-Z, a-z, 0-9, '.', '_', '-'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(state: NodeState) -> NodeRecord {
        NodeRecord {
            state,
            ..NodeRecord::discovered(
                NodeId::new("n1").unwrap(),
                "web-1".into(),
                Timestamp::from_unix_millis(0),
            )
        }
    }

    fn decide_on(state: NodeState, action: Action) -> Result<Decision, CallError> {
        decide(
            &node(state),
            &action,
            Some("ops"),
            &ControllerConfig::default(),
            true,
        )
    }

    #[test]
    fn lifecycle_calls_become_machine_events_with_who_and_why() {
        let Ok(Decision::Machine(event, ctx)) =
            decide_on(NodeState::Discovered, Action::Manage { plan: None })
        else {
            panic!("manage is an event")
        };
        assert_eq!(event, Event::Manage);
        assert_eq!(ctx.user.as_deref(), Some("ops"));
        assert!(ctx.plan.is_some(), "the default plan is named");
        let Ok(Decision::Machine(event, ctx)) =
            decide_on(NodeState::Active, Action::Delete { force: true })
        else {
            panic!()
        };
        assert_eq!((event, ctx.force), (Event::Delete { force: true }, true));
        let not_ready = decide(
            &node(NodeState::InstallFailed),
            &Action::Retry,
            None,
            &ControllerConfig::default(),
            false,
        );
        let Ok(Decision::Machine(event, ctx)) = not_ready else {
            panic!()
        };
        assert_eq!(
            event,
            Event::Retry {
                machine_ready: false
            }
        );
        assert_eq!(ctx.comment.as_deref(), Some("retry"));
        let state = Action::SetState {
            state: NodeState::Active,
            comment: Some("done by hand".into()),
            force: false,
        };
        let Ok(Decision::Machine(_, ctx)) = decide_on(NodeState::Installed, state) else {
            panic!()
        };
        assert_eq!(ctx.comment.as_deref(), Some("done by hand"));
    }

    #[test]
    fn an_unknown_plan_is_refused_before_anything_happens() {
        let err = decide_on(
            NodeState::Discovered,
            Action::Manage {
                plan: Some("nope".into()),
            },
        )
        .unwrap_err();
        assert!(matches!(err, CallError::BadRequest(m) if m.contains("unknown plan 'nope'")));
    }

    #[test]
    fn operations_need_an_agent_and_a_node_that_is_not_retired() {
        for action in PowerAction::ALL {
            assert_eq!(
                decide_on(NodeState::Active, Action::Power(action)),
                Ok(Decision::Power(action))
            );
            for (state, says) in [
                (NodeState::Retired, "is retired"),
                (NodeState::Registered, "agent has not connected"),
            ] {
                let err = decide_on(state, Action::Power(action)).unwrap_err();
                assert!(
                    matches!(&err, CallError::BadRequest(m) if m.contains(says) && m.contains(action.as_str())),
                    "{err:?}"
                );
            }
        }
        assert_eq!(
            decide_on(NodeState::Registered, Action::Wake),
            Ok(Decision::Wake)
        );
        assert!(decide_on(NodeState::Retired, Action::Wake).is_err());
    }
}
