//! The live feed behind `GET /api/v1/events/stream` (and `metalbus nodes watch`): what
//! the engine has just committed, in commit order. It is a broadcast: a slow reader
//! misses messages (and is told how many), it never slows the engine.

use std::sync::Arc;

use metalbus_protocol::api::AuditEntry;
use metalbus_protocol::campaign::CampaignView;
use metalbus_protocol::controller::NodeStateMessage;
use metalbus_protocol::event::NodeEvent;
use metalbus_protocol::NodeId;
use serde::Serialize;
use tokio::sync::broadcast;

/// How many messages a reader may fall behind before it misses some.
const CAPACITY: usize = 4096;

/// One committed change.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum LiveEvent {
    /// A node's state message, as on its retained `state` topic: after a transition,
    /// a progress report, going online or offline, a rename.
    State(NodeStateMessage),
    /// An audit entry: one state transition.
    Transition(AuditEntry),
    /// A node event (DESIGN 7.5).
    Event { node_id: NodeId, event: NodeEvent },
    /// A node that is gone (a registration claimed by a new agent).
    Removed { node_id: NodeId },
    /// A campaign, as written: after each step that changed it.
    Campaign(CampaignView),
}

impl LiveEvent {
    /// The SSE `event:` name.
    pub fn name(&self) -> &'static str {
        match self {
            LiveEvent::State(_) => "state",
            LiveEvent::Transition(_) => "transition",
            LiveEvent::Event { .. } => "event",
            LiveEvent::Removed { .. } => "removed",
            LiveEvent::Campaign(_) => "campaign",
        }
    }
}

/// The sending side; clones share one feed.
#[derive(Clone, Debug)]
pub struct LiveFeed(broadcast::Sender<Arc<LiveEvent>>);

impl Default for LiveFeed {
    fn default() -> Self {
        Self(broadcast::channel(CAPACITY).0)
    }
}

impl LiveFeed {
    /// Tells every current reader; with none, the message is simply dropped.
    pub fn send(&self, event: LiveEvent) {
        if self.0.receiver_count() > 0 {
            let _ = self.0.send(Arc::new(event));
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.0.subscribe()
    }
}
