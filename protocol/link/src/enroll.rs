//! The agent's side of enrollment over MQTT (DESIGN section 11): connect, send a sealed
//! request on `{p}/nodes/{id}/enroll`, wait for the controller's signed answer on
//! `{p}/nodes/{id}/enrolled`, derive the node key. The exchange itself is pure
//! ([`metalbus_protocol::enroll`]); this is the I/O around it, shared by the agent, its
//! simulator and the end-to-end tests.

use std::time::Duration;

use metalbus_protocol::enroll::{Attempt, EnrollError, EnrollToken};
use metalbus_protocol::proof::{NodeKey, KEY_BYTES};
use metalbus_protocol::topic::{NodeTopic, Topics};
use metalbus_protocol::{NodeId, Timestamp};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{Backoff, Endpoint};

/// How long the first attempt waits for the controller's answer; each attempt that
/// gets none waits twice as long, up to [`MAX_ANSWER_WAIT`]. A fixed wait made a
/// controller that was busy with a fleet enrolling at once (10,000 agents: answers
/// after up to 20 s) busier: each attempt that gave up came back as a new request, and
/// the answer to the old one was wasted.
const ANSWER_WAIT: Duration = Duration::from_secs(10);
const MAX_ANSWER_WAIT: Duration = Duration::from_secs(60);

/// One attempt's number and how long it waits for an answer.
#[derive(Debug, Clone, Copy)]
struct Try {
    no: u64,
    wait: Duration,
}

impl Try {
    /// Attempt `no`, after `unanswered` attempts in a row that got no answer.
    fn new(no: u64, unanswered: u32) -> Self {
        Try {
            no,
            wait: crate::backoff::doubled(ANSWER_WAIT, unanswered, MAX_ANSWER_WAIT),
        }
    }
}

/// The outcome of a successful enrollment.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub key: NodeKey,
    /// The controller's identity public key (its SHA-256 is the token's anchor).
    pub identity: [u8; KEY_BYTES],
}

/// What one attempt ended with.
enum Outcome {
    Done(Enrolled),
    Refused(String),
    /// Connected and asked, but no answer came within the attempt's wait.
    Unanswered(String),
    Retry(String),
    Shutdown,
}

/// Enrolls `node` with `token`, retrying with backoff until it works or `shutdown` turns
/// true (`None`). A refusal by the controller is logged and retried more slowly: the
/// operator may fix it (a new token, a revoked credential) without restarting the agent.
pub async fn enroll(
    endpoint: &Endpoint,
    topics: &Topics,
    node: &NodeId,
    hostname: &str,
    token: &EnrollToken,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Enrolled> {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let (mut no, mut unanswered) = (0u64, 0u32);
    loop {
        if *shutdown.borrow() {
            return None;
        }
        no += 1;
        let this = Try::new(no, unanswered);
        let outcome = attempt(endpoint, topics, node, hostname, token, this, shutdown).await;
        if let Outcome::Unanswered(_) = &outcome {
            unanswered = unanswered.saturating_add(1);
        }
        let delay = match outcome {
            Outcome::Done(done) => {
                info!(%node, token = %token.id, "enrolled with the controller");
                return Some(done);
            }
            Outcome::Shutdown => return None,
            Outcome::Refused(why) => {
                warn!(%node, token = %token.id, reason = %why, "the controller refused to enroll this node");
                backoff.ceiling()
            }
            Outcome::Retry(why) | Outcome::Unanswered(why) => {
                let d = backoff.next_delay(&mut rand::thread_rng());
                warn!(%node, error = %why, retry_in = ?d, "enrollment attempt failed");
                d
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return None,
        }
    }
}

async fn attempt(
    endpoint: &Endpoint,
    topics: &Topics,
    node: &NodeId,
    hostname: &str,
    token: &EnrollToken,
    this: Try,
    shutdown: &mut watch::Receiver<bool>,
) -> Outcome {
    let rng = ring::rand::SystemRandom::new();
    let attempt = match Attempt::new(
        &rng,
        token,
        hostname.to_string(),
        Timestamp::from(std::time::SystemTime::now()),
    ) {
        Ok(a) => a,
        Err(e) => return Outcome::Retry(e.to_string()),
    };
    let request_topic = topics.node(node, NodeTopic::Enroll);
    let reply_topic = topics.node(node, NodeTopic::Enrolled);
    let payload = match attempt.payload(token, &request_topic) {
        Ok(p) => p,
        Err(e) => return Outcome::Retry(e.to_string()),
    };
    let mut opts = endpoint.options(&format!("{node}-enroll-{}", this.no));
    opts.set_credentials(token.broker_user(), token.broker_password());
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    let deadline = tokio::time::Instant::now() + this.wait;
    let outcome = loop {
        let event = tokio::select! {
            _ = shutdown.changed() => break Outcome::Shutdown,
            _ = tokio::time::sleep_until(deadline) => {
                break Outcome::Unanswered(format!("no answer from the controller within {:?}", this.wait))
            }
            e = eventloop.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let _ = client.try_subscribe(reply_topic.clone(), QoS::AtLeastOnce);
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                let _ = client.try_publish(
                    request_topic.clone(),
                    QoS::AtLeastOnce,
                    false,
                    payload.clone(),
                );
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == reply_topic => {
                // An answer to another attempt, or one not signed by our controller,
                // leaves this attempt waiting for the real one.
                let reply = match attempt.check(token, &reply_topic, &p.payload) {
                    Ok(reply) => reply,
                    Err(EnrollError::Refused(why)) => break Outcome::Refused(why),
                    Err(e) => {
                        warn!(%node, error = %e, "ignored an enrollment answer");
                        continue;
                    }
                };
                match attempt.finish(token, node, &reply) {
                    Ok((key, identity)) => break Outcome::Done(Enrolled { key, identity }),
                    Err(e) => break Outcome::Retry(e.to_string()),
                }
            }
            Ok(_) => {}
            Err(rumqttc::ConnectionError::ConnectionRefused(
                code @ (rumqttc::ConnectReturnCode::BadUserNamePassword
                | rumqttc::ConnectReturnCode::NotAuthorized),
            )) => {
                break Outcome::Refused(format!(
                    "the broker refused the enrollment login ({code:?}): the token is unknown, \
                     revoked, or its secret is wrong"
                ))
            }
            Err(e) => break Outcome::Retry(format!("broker: {e}")),
        }
    };
    crate::disconnect(&client, &mut eventloop, Duration::from_millis(500)).await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_unanswered_attempt_doubles_the_next_wait_up_to_a_minute() {
        let waits: Vec<u64> = (0..7).map(|n| Try::new(1, n).wait.as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 60, 60, 60, 60]);
        // Endless silence never overflows.
        assert_eq!(Try::new(u64::MAX, u32::MAX).wait, MAX_ANSWER_WAIT);
    }
}
