//! The node hub: every enrolled node's connection shares one session with rumqttd's
//! router, instead of a session each (issue 13).
//!
//! A session costs the router per-connection queues and, for each new subscription, a
//! scan of every retained message (rumqttd 0.20 `read_retained_messages`), so a fleet
//! connecting at once cost O(N²) on the router's one thread. Nodes need neither: they
//! publish on their own topics and receive only their own `commands` and `receipts`,
//! which are never retained. So the hub holds one session subscribed to
//! `{p}/nodes/+/commands`, `{p}/nodes/+/receipts` and `{p}/nodes/+/enrolled` and hands
//! each message to the connections of its node (an enrolling agent's connection takes
//! its place once it subscribes for the node id it enrolls); what they publish goes to
//! the router through the same session. Monitors keep a session of their own: they need
//! a general broker (wildcards, retained messages).
//!
//! Delivery inside the process is at most once, as between any broker and a client whose
//! connection drops: the end-to-end guarantees (DESIGN section 4) do not rest on it.
//! Commands are sent again until acknowledged, and reports until receipted.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::FutureExt;
use metalbus_protocol::topic::{NodeTopic, Topic, Topics};
use metalbus_protocol::NodeId;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish};
use rumqttd::Notification;
use tokio::sync::{mpsc, Notify};
use tracing::{debug, error, warn};

use crate::broker::Links;

/// The hub's session name with the router.
const SESSION: &str = "metalbus-door:nodes";
/// Messages waiting for one node connection; more are dropped (sent again end to end).
const PER_CONNECTION: usize = 64;
/// Packets waiting for the router from all node connections together; a connection
/// waits when it is full, and so, through TCP, does its agent.
const TO_ROUTER: usize = 4096;

/// One connection of a node, as the hub knows it (its mailbox is its identity).
struct Seat {
    client_id: String,
    mailbox: Arc<Mailbox>,
}

/// Messages for one connection. Nothing is allocated until the first one comes: a
/// tokio channel allocates a block of 32 slots up front, 3 KB for each of 10,000 idle
/// connections (measured with heaptrack, DECISIONS §71).
#[derive(Default)]
struct Mailbox {
    queue: Mutex<VecDeque<Publish>>,
    ready: Notify,
    /// A newer connection with the same client id took this one's place.
    closed: AtomicBool,
}

impl Mailbox {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Publish>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `false` when the connection is behind by [`PER_CONNECTION`] messages.
    fn put(&self, publish: Publish) -> bool {
        let mut queue = self.queue();
        if queue.len() >= PER_CONNECTION {
            return false;
        }
        queue.push_back(publish);
        drop(queue);
        self.ready.notify_one();
        true
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
    }
}

/// What node connections share: the way to the router, and who is connected.
pub struct Hub {
    to_router: mpsc::Sender<Packet>,
    seats: Mutex<HashMap<NodeId, Vec<Seat>>>,
}

/// A node connection's place in the hub: dropping it leaves.
pub struct Attached {
    hub: Arc<Hub>,
    id: NodeId,
    mailbox: Arc<Mailbox>,
}

impl Attached {
    /// The next message for this connection; `None` once a newer connection with the
    /// same client id took its place.
    pub async fn recv(&self) -> Option<Publish> {
        loop {
            if let Some(p) = self.try_recv() {
                return Some(p);
            }
            if self.mailbox.closed.load(Ordering::Acquire) {
                return None;
            }
            // A message put between the check and here left a permit: no wake is lost.
            self.mailbox.ready.notified().await;
        }
    }

    /// A message waiting now, if any.
    pub fn try_recv(&self) -> Option<Publish> {
        let mut queue = self.mailbox.queue();
        let next = queue.pop_front();
        if queue.is_empty() && queue.capacity() > 0 {
            // An idle connection holds no buffer.
            *queue = VecDeque::new();
        }
        next
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let mut seats = self.hub.lock();
        if let Some(list) = seats.get_mut(&self.id) {
            list.retain(|s| !Arc::ptr_eq(&s.mailbox, &self.mailbox));
            if list.is_empty() {
                seats.remove(&self.id);
            }
        }
    }
}

impl Hub {
    /// Opens the hub's session and starts its two tasks on the current runtime (the
    /// door's): one writes to the router, one hands out what the router forwards.
    pub async fn start(links: Links, topics: &Topics) -> Result<Arc<Hub>, String> {
        let (mut tx, rx, _) = tokio::task::spawn_blocking(move || links(SESSION, true))
            .await
            .map_err(|e| format!("opening the node hub's session: {e}"))??;
        for kind in [
            NodeTopic::Commands,
            NodeTopic::Receipts,
            NodeTopic::Enrolled,
        ] {
            tx.subscribe(topics.node_filter(kind))
                .map_err(|e| format!("the node hub could not subscribe: {e}"))?;
        }
        let (to_router, queue) = mpsc::channel(TO_ROUTER);
        let hub = Hub::new(to_router);
        tokio::spawn(write(tx, queue));
        tokio::spawn(hand_out(hub.clone(), topics.clone(), rx));
        Ok(hub)
    }

    fn new(to_router: mpsc::Sender<Packet>) -> Arc<Hub> {
        Arc::new(Hub {
            to_router,
            seats: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Vec<Seat>>> {
        self.seats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a place for a connection of node `id`. A connection of that node with the
    /// same client id loses its place (MQTT's session takeover): its mailbox closes.
    pub fn attach(self: &Arc<Self>, id: &NodeId, client_id: &str) -> Attached {
        let mailbox = Arc::new(Mailbox::default());
        let mut seats = self.lock();
        let list = seats.entry(id.clone()).or_default();
        list.retain(|s| {
            let same = s.client_id == client_id;
            if same {
                s.mailbox.close();
            }
            !same
        });
        list.push(Seat {
            client_id: client_id.to_string(),
            mailbox: mailbox.clone(),
        });
        Attached {
            hub: self.clone(),
            id: id.clone(),
            mailbox,
        }
    }

    /// Hands a node's publish to the router; waits while the router is behind.
    ///
    /// A place in the queue first, then the packet: `send` would keep a whole `Packet`
    /// in the future of every connection's task (1 KB each, idle or not).
    pub async fn publish(&self, publish: Publish) -> Result<(), String> {
        let place = self
            .to_router
            .reserve()
            .await
            .map_err(|_| "the node hub has stopped".to_string())?;
        place.send(Packet::Publish(publish, None));
        Ok(())
    }

    /// A hub without a router: what nodes publish waits in the returned queue (at most
    /// `queue` packets).
    #[cfg(test)]
    pub fn detached(queue: usize) -> (Arc<Hub>, mpsc::Receiver<Packet>) {
        let (to_router, rx) = mpsc::channel(queue);
        (Hub::new(to_router), rx)
    }

    /// Connections of `id` now.
    #[cfg(test)]
    pub fn connections(&self, id: &NodeId) -> usize {
        self.lock().get(id).map_or(0, Vec::len)
    }

    /// Gives `publish` to every connection of its node.
    fn deliver(&self, topics: &Topics, publish: Publish) {
        let topic = std::str::from_utf8(&publish.topic).unwrap_or("");
        let Ok(Topic::Node(id, NodeTopic::Commands | NodeTopic::Receipts | NodeTopic::Enrolled)) =
            topics.parse(topic)
        else {
            return;
        };
        let seats = self.lock();
        for seat in seats.get(&id).into_iter().flatten() {
            if !seat.mailbox.put(publish.clone()) {
                debug!(node = %id, "a node connection is behind; message dropped (sent again end to end)");
            }
        }
    }
}

/// Writes what node connections publish to the router, a batch per wake-up.
async fn write(mut tx: LinkTx, mut queue: mpsc::Receiver<Packet>) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, 256).await > 0 {
        if let Err(e) = super::to_router(&mut tx, &mut batch).await {
            error!(error = %e, "node connections can no longer publish");
            return;
        }
    }
}

/// Hands what the router forwards to the node connections it is for.
async fn hand_out(hub: Arc<Hub>, topics: Topics, mut rx: LinkRx) {
    loop {
        let first = match rx.next().await {
            Ok(n) => n,
            Err(e) => {
                error!(error = %e, "the broker ended the node hub's session");
                return;
            }
        };
        let mut unscheduled = false;
        let mut next = first;
        loop {
            match next.take() {
                Some(Notification::Forward(f)) => hub.deliver(&topics, f.publish),
                Some(Notification::Unschedule) => unscheduled = true,
                Some(Notification::Disconnect(..)) => {
                    warn!("the broker disconnected the node hub");
                    return;
                }
                // Acknowledgements of what nodes published.
                Some(_) | None => {}
            }
            match rx.next().now_or_never() {
                Some(Ok(n)) => next = n,
                Some(Err(e)) => {
                    error!(error = %e, "the broker ended the node hub's session");
                    return;
                }
                None => break,
            }
        }
        if unscheduled {
            if let Err(e) = rx.wake().await {
                error!(error = %e, "the broker is gone");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn hub() -> (Arc<Hub>, mpsc::Receiver<Packet>) {
        Hub::detached(8)
    }

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn publish(topic: &str) -> Publish {
        Publish::new(topic.to_string(), "{}".into(), false)
    }

    #[test]
    fn a_message_reaches_every_connection_of_its_node_and_no_other() {
        let (hub, _queue) = hub();
        let t = Topics::default();
        let a1 = hub.attach(&id("a"), "a-c1");
        let a2 = hub.attach(&id("a"), "a-watch");
        let b = hub.attach(&id("b"), "b-c1");
        hub.deliver(&t, publish("metalbus/v1/nodes/a/commands"));
        hub.deliver(&t, publish("metalbus/v1/nodes/b/receipts"));
        // Not a node's commands or receipts: nobody.
        hub.deliver(&t, publish("metalbus/v1/nodes/a/state"));
        hub.deliver(&t, publish("metalbus/v1/summary"));
        hub.deliver(&t, publish("metalbus/v1/nodes/../commands"));
        let topic = |p: Publish| String::from_utf8(p.topic.to_vec()).unwrap();
        assert_eq!(
            topic(a1.try_recv().unwrap()),
            "metalbus/v1/nodes/a/commands"
        );
        assert_eq!(
            topic(a2.try_recv().unwrap()),
            "metalbus/v1/nodes/a/commands"
        );
        assert_eq!(topic(b.try_recv().unwrap()), "metalbus/v1/nodes/b/receipts");
        assert!(a1.try_recv().is_none());
        assert!(b.try_recv().is_none());
    }

    #[tokio::test]
    async fn the_same_client_id_takes_over_and_leaving_frees_the_place() {
        let (hub, _queue) = hub();
        let old = hub.attach(&id("a"), "a-c1");
        let new = hub.attach(&id("a"), "a-c1");
        // The old connection's mailbox is closed: it ends.
        assert!(old.recv().await.is_none());
        assert_eq!(hub.connections(&id("a")), 1);
        // The old one leaving does not remove the new one.
        drop(old);
        assert_eq!(hub.connections(&id("a")), 1);
        drop(new);
        assert_eq!(hub.connections(&id("a")), 0);
        assert!(hub.lock().is_empty());
    }

    #[test]
    fn a_connection_that_is_behind_loses_messages_not_the_hub() {
        let (hub, _queue) = hub();
        let t = Topics::default();
        let slow = hub.attach(&id("a"), "a-c1");
        for _ in 0..PER_CONNECTION + 10 {
            hub.deliver(&t, publish("metalbus/v1/nodes/a/commands"));
        }
        let mut got = 0;
        while slow.try_recv().is_some() {
            got += 1;
        }
        assert_eq!(got, PER_CONNECTION);
    }

    #[tokio::test]
    async fn a_waiting_connection_wakes_for_its_message_and_holds_no_buffer_idle() {
        let (hub, _queue) = hub();
        let t = Topics::default();
        let a = hub.attach(&id("a"), "a-c1");
        let waiting = tokio::spawn(async move {
            let got = a.recv().await.map(|p| p.topic);
            // Emptied: the queue gave its buffer back.
            let idle = a.mailbox.queue().capacity();
            (got, idle)
        });
        tokio::task::yield_now().await;
        hub.deliver(&t, publish("metalbus/v1/nodes/a/commands"));
        let (got, idle) = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.unwrap(), "metalbus/v1/nodes/a/commands".as_bytes());
        assert_eq!(idle, 0);
    }

    #[tokio::test]
    async fn publishes_wait_for_the_router_in_order() {
        let (hub, mut queue) = hub();
        for n in 0..3 {
            hub.publish(publish(&format!("metalbus/v1/nodes/a/x{n}")))
                .await
                .unwrap();
        }
        for n in 0..3 {
            match queue.recv().await.unwrap() {
                Packet::Publish(p, _) => {
                    assert_eq!(p.topic, format!("metalbus/v1/nodes/a/x{n}").as_bytes())
                }
                other => panic!("{other:?}"),
            }
        }
        drop(queue);
        assert!(hub.publish(publish("metalbus/v1/nodes/a/x")).await.is_err());
    }
}
