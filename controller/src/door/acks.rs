//! A monitor's acknowledgements, handed to the router in the order it forwarded.
//!
//! rumqttd's router takes the acknowledgements of what it forwarded to a session only in
//! that order: one out of order ends the session (`Outgoing::register_ack`, "out of order
//! ack"). The door acknowledges for a monitor what it drops (a monitor never receives
//! `commands` or `receipts`, even under `#`), so those acknowledgements and the client's
//! own are put in order here: each waits until everything forwarded before it is
//! acknowledged. Before this, the first command to any node ended every monitor
//! subscribed to `#`.

use std::collections::VecDeque;

use rumqttd::protocol::{Packet, PubAck, PubAckReason};

/// Most QoS 1 messages a monitor may leave unacknowledged: the router's own window
/// (`max_inflight_count` in `broker.rs`) is smaller, so only a router gone wrong
/// reaches it.
const MAX_UNACKED: usize = 4096;

/// The router's QoS 1 forwards to one monitor connection, oldest first, and whether
/// each is acknowledged yet.
#[derive(Default)]
pub struct Acks {
    order: VecDeque<(u16, bool)>,
}

impl Acks {
    /// The router forwarded `pkid`; `dropped` when the door kept it from the client and
    /// so acknowledges it itself.
    pub fn forwarded(&mut self, pkid: u16, dropped: bool) -> Result<(), String> {
        if self.order.len() >= MAX_UNACKED {
            return Err("too many messages unacknowledged".into());
        }
        self.order.push_back((pkid, dropped));
        Ok(())
    }

    /// The client acknowledged `pkid`. One that was not forwarded, or is acknowledged
    /// already, is ignored: passed on, it would end the session.
    pub fn acked(&mut self, pkid: u16) {
        if let Some(entry) = self.order.iter_mut().find(|(p, done)| *p == pkid && !done) {
            entry.1 = true;
        }
    }

    /// Moves the acknowledgements the router may take now, in its order, to `batch`.
    pub fn release(&mut self, batch: &mut Vec<Packet>) {
        while let Some(&(pkid, true)) = self.order.front() {
            self.order.pop_front();
            let reason = PubAckReason::Success;
            batch.push(Packet::PubAck(PubAck { pkid, reason }, None));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn released(acks: &mut Acks) -> Vec<u16> {
        let mut batch = Vec::new();
        acks.release(&mut batch);
        batch
            .into_iter()
            .map(|p| match p {
                Packet::PubAck(a, _) => a.pkid,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_dropped_message_is_acknowledged_after_what_came_before_it() {
        let mut acks = Acks::default();
        acks.forwarded(8, false).unwrap();
        acks.forwarded(9, false).unwrap();
        acks.forwarded(10, true).unwrap(); // a command, under `#`
        acks.forwarded(11, false).unwrap();
        assert!(
            released(&mut acks).is_empty(),
            "8 and 9 are the client's to ack"
        );
        acks.acked(9);
        assert!(released(&mut acks).is_empty(), "9 waits for 8");
        acks.acked(8);
        assert_eq!(released(&mut acks), [8, 9, 10]);
        acks.acked(11);
        assert_eq!(released(&mut acks), [11]);
        assert!(released(&mut acks).is_empty());
    }

    #[test]
    fn unknown_and_repeated_acks_are_ignored() {
        let mut acks = Acks::default();
        acks.acked(3);
        assert!(released(&mut acks).is_empty());
        acks.forwarded(3, false).unwrap();
        acks.forwarded(4, false).unwrap();
        acks.acked(4);
        acks.acked(4);
        acks.acked(77);
        assert!(released(&mut acks).is_empty());
        acks.acked(3);
        assert_eq!(released(&mut acks), [3, 4]);
        // A packet id the router uses again after it wrapped around.
        acks.forwarded(3, false).unwrap();
        acks.acked(3);
        assert_eq!(released(&mut acks), [3]);
    }

    #[test]
    fn a_router_that_never_gets_its_acks_is_bounded() {
        let mut acks = Acks::default();
        for n in 0..MAX_UNACKED {
            acks.forwarded(n as u16, false).unwrap();
        }
        assert!(acks.forwarded(0, true).is_err());
    }
}
