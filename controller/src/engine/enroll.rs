//! Enrollment and credentials (DESIGN section 11): an agent's sealed request becomes a
//! node key, committed with the token's use count, then put on the keyring and answered
//! with a reply signed by the controller identity.
//!
//! A node's credential is confirmed by the first message proven with it. Until then the
//! same token may enroll the node again (the answer may have been lost), but only with a
//! request newer than the one that made it, so a replayed request cannot swap the key.
//! After that, only `metalbus nodes revoke` frees the node id.

use std::collections::HashMap;
use std::sync::Arc;

use metalbus_protocol::enroll::{self, EnrollRequest, EnrollToken};
use metalbus_protocol::event::EventReason;
use metalbus_protocol::lifecycle::NodeState;
use metalbus_protocol::proof::{decode_hex, Identity, NodeKey, KEY_BYTES};
use metalbus_protocol::status::OfflineReason;
use metalbus_protocol::topic::NodeTopic;
use metalbus_protocol::{NodeId, Timestamp};
use tracing::{info, warn};

use super::batch::{Batch, TokenReplyTo};
use super::{CallError, Engine, KeyChange};
use crate::publish::{Delivery, Outbound};
use crate::security::Keyring;
use crate::store::{CredentialRecord, EnrollTokenRecord, Store, StoreError};
use crate::telemetry::Limit;

/// Longest hostname an enrollment request may carry (it is logged): a birth's.
const MAX_HOSTNAME: usize = metalbus_protocol::status::Status::MAX_HOSTNAME;

/// The engine's copy of the tokens and credentials, and the keyring it feeds.
pub(super) struct Credentials {
    identity: Arc<Identity>,
    pub(super) keyring: Keyring,
    tokens: HashMap<String, EnrollTokenRecord>,
    creds: HashMap<NodeId, CredentialRecord>,
    /// The newest request time each node enrolled with (in memory: a restart keeps the
    /// stored credential's `enrolled_at` as the floor).
    last_request: HashMap<NodeId, Timestamp>,
}

impl Credentials {
    pub(super) fn new(identity: Arc<Identity>, keyring: Keyring) -> Self {
        Self {
            identity,
            keyring,
            tokens: HashMap::new(),
            creds: HashMap::new(),
            last_request: HashMap::new(),
        }
    }

    /// Replaces the copy with what the store holds, and the keyring with its keys.
    pub(super) fn reload(&mut self, store: &Store) -> Result<(), StoreError> {
        self.tokens = store.enroll_tokens()?.into_iter().collect();
        self.publish_tokens();
        self.creds.clear();
        for (id, cred) in store.credentials()? {
            let Ok(id) = NodeId::new(id.clone()) else {
                warn!(node = %id, "a stored credential has a bad node id; ignored");
                continue;
            };
            if cred.revoked_at.is_none() {
                match NodeKey::from_hex(&cred.key) {
                    Some(key) => self.keyring.set(id.clone(), key),
                    None => {
                        warn!(node = %id, "a stored credential is unreadable; that node must enroll again");
                        continue;
                    }
                }
            }
            self.creds.insert(id, cred);
        }
        Ok(())
    }

    /// A new enrollment token (committed by the caller's batch).
    pub(super) fn add_token(&mut self, id: String, record: EnrollTokenRecord) {
        self.tokens.insert(id, record);
        self.publish_tokens();
    }

    fn remove_token(&mut self, id: &str) -> bool {
        let had = self.tokens.remove(id).is_some();
        self.publish_tokens();
        had
    }

    /// Tells the keyring (the broker's logins) which tokens exist, with the password an
    /// agent enrolling with each presents.
    fn publish_tokens(&self) {
        let anchor = self.identity.anchor();
        self.keyring
            .set_enroll_tokens(self.tokens.iter().filter_map(|(id, record)| {
                let secret = decode_hex::<KEY_BYTES>(&record.secret)?;
                let token = EnrollToken {
                    anchor,
                    id: id.clone(),
                    secret,
                };
                Some((id.clone(), token.broker_password()))
            }));
    }

    #[cfg(test)]
    pub(super) fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The pre-registration node `id` claims, from the token it enrolled with.
    pub(super) fn claim(&self, id: &NodeId) -> Option<&NodeId> {
        self.creds
            .get(id)
            .filter(|c| c.revoked_at.is_none())?
            .registration
            .as_ref()
    }

    /// Marks a credential confirmed by its first proven message.
    pub(super) fn heard(&mut self, id: &NodeId, batch: &mut Batch) {
        if let Some(cred) = self.creds.get_mut(id) {
            if !cred.confirmed && cred.revoked_at.is_none() {
                cred.confirmed = true;
                batch.credentials.push((id.clone(), Some(cred.clone())));
            }
        }
    }
}

impl Engine {
    /// An enrollment request on `{p}/nodes/{id}/enroll`.
    pub(super) fn on_enroll(
        &mut self,
        id: &NodeId,
        payload: &[u8],
        now: Timestamp,
        batch: &mut Batch,
    ) {
        let topic = self.cfg.topics.node(id, NodeTopic::Enroll);
        let request: EnrollRequest = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => {
                warn!(node = %id, error = %e, "malformed enrollment request ignored");
                return;
            }
        };
        let nonce = request.nonce.clone();
        match self.decide_enrollment(id, &topic, payload, request, now, batch) {
            Ok((key, reply)) => {
                batch.keys.push((id.clone(), Some(key)));
                self.answer_enrollment(id, &reply, batch);
            }
            Err(why) => {
                warn!(node = %id, reason = %why, "enrollment refused");
                let reply = enroll::refusal(&nonce, &self.credentials.identity.public_key(), why);
                self.answer_enrollment(id, &reply, batch);
            }
        }
    }

    fn decide_enrollment(
        &mut self,
        id: &NodeId,
        topic: &str,
        payload: &[u8],
        request: EnrollRequest,
        now: Timestamp,
        batch: &mut Batch,
    ) -> Result<(NodeKey, enroll::EnrollReply), String> {
        if request.hostname.len() > MAX_HOSTNAME {
            return Err(format!("hostname is over {MAX_HOSTNAME} bytes"));
        }
        if id.as_str().starts_with(enroll::RESERVED_ID_PREFIX) {
            return Err(format!(
                "node ids starting with {:?} are reserved",
                enroll::RESERVED_ID_PREFIX
            ));
        }
        let creds = &mut self.credentials;
        let Some(record) = creds.tokens.get(&request.token_id).cloned() else {
            return Err("unknown enrollment token".into());
        };
        let Some(secret) = decode_hex::<KEY_BYTES>(&record.secret) else {
            return Err("the enrollment token is damaged in the store".into());
        };
        let token = EnrollToken {
            anchor: creds.identity.anchor(),
            id: request.token_id.clone(),
            secret,
        };
        if enroll::check_request(&token, topic, payload).is_err() {
            return Err("the request is not sealed with the token's secret".into());
        }
        if record.expires_at.is_some_and(|at| at <= now) {
            return Err(format!("enrollment token {} has expired", token.id));
        }
        if let Some(node) = &record.node {
            if node != id {
                return Err(format!("enrollment token {} is for node {node}", token.id));
            }
        }
        let existing = creds.creds.get(id);
        let again = match existing {
            None => false,
            Some(cred) if cred.revoked_at.is_some() => {
                let revoked = cred.revoked_at.unwrap_or(now);
                if record.created_at <= revoked {
                    return Err(format!(
                        "node {id} was revoked at {revoked}; enroll it again with a token made \
                         after that (metalbus tokens create --enroll)"
                    ));
                }
                false
            }
            Some(cred) if !cred.confirmed && cred.token == token.id => true,
            Some(_) => {
                return Err(format!(
                    "node {id} is already enrolled; an operator must revoke it first \
                     (metalbus nodes revoke {id})"
                ))
            }
        };
        let floor = creds
            .last_request
            .get(id)
            .copied()
            .or(existing.map(|c| c.enrolled_at))
            .filter(|_| again);
        if again && floor.is_some_and(|f| request.ts <= f) {
            return Err("a replayed or out-of-date enrollment request".into());
        }
        if !again && record.max_uses.is_some_and(|max| record.uses >= max) {
            return Err(format!("enrollment token {} has been used up", token.id));
        }
        let max_waiting = self.cfg.controller.max_waiting_nodes;
        if !again && record.registration.is_none() && self.waiting_nodes() >= max_waiting {
            batch.counts.limit(Limit::WaitingNodes);
            return Err(format!(
                "{max_waiting} enrolled nodes are waiting for an operator ([enroll] \
                 max_waiting_nodes); manage, register or retire some, or revoke the ones \
                 that are not yours (metalbus nodes revoke NODE)"
            ));
        }
        let creds = &mut self.credentials;
        let rng = ring::rand::SystemRandom::new();
        let (reply, key) = enroll::accept(&rng, &token, id, &request, &creds.identity.public_key())
            .map_err(|e| e.to_string())?;
        if !again {
            let mut used = record.clone();
            used.uses += 1;
            creds.tokens.insert(token.id.clone(), used.clone());
            batch.enroll_tokens.push((token.id.clone(), Some(used)));
        }
        let cred = CredentialRecord {
            key: key.to_hex(),
            token: token.id.clone(),
            enrolled_at: now,
            confirmed: false,
            revoked_at: None,
            registration: record.registration.clone(),
        };
        creds.creds.insert(id.clone(), cred.clone());
        creds.last_request.insert(id.clone(), request.ts);
        batch.credentials.push((id.clone(), Some(cred)));
        batch.durable = true;
        info!(node = %id, token = %token.id, hostname = %request.hostname, "node enrolled");
        Ok((key, reply))
    }

    /// Enrolled nodes no operator has taken on: a live credential not made for a
    /// registration whose node has not been born yet or is still `discovered`.
    fn waiting_nodes(&self) -> usize {
        let nodes = &self.fleet.nodes;
        self.credentials
            .creds
            .iter()
            .filter(|(id, c)| {
                c.revoked_at.is_none()
                    && c.registration.is_none()
                    && nodes
                        .get(*id)
                        .is_none_or(|n| n.state == NodeState::Discovered)
            })
            .count()
    }

    /// A token or credential change from an operator: refused at once, or answered
    /// after the batch commits.
    pub(super) fn on_keys(
        &mut self,
        change: KeyChange,
        reply: TokenReplyTo,
        now: Timestamp,
        batch: &mut Batch,
    ) {
        match self.change_keys(change, now, batch) {
            Ok(()) => {
                batch.token_replies.push(reply);
                batch.durable = true;
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    fn change_keys(
        &mut self,
        change: KeyChange,
        now: Timestamp,
        batch: &mut Batch,
    ) -> Result<(), CallError> {
        match change {
            KeyChange::ApiToken { hash, record } => {
                self.name_free(&record.name, batch)?;
                batch.tokens.push((hash, record));
            }
            KeyChange::EnrollToken { id, record } => {
                self.name_free(&id, batch)?;
                self.credentials.add_token(id.clone(), record.clone());
                batch.enroll_tokens.push((id, Some(record)));
            }
            KeyChange::RevokeToken { name } => {
                let api: Vec<String> = self
                    .store
                    .tokens()
                    .map_err(|e| CallError::Store(e.to_string()))?
                    .into_iter()
                    .filter(|(_, t)| t.name == name)
                    .map(|(hash, _)| hash)
                    .collect();
                let enroll = self.credentials.remove_token(&name);
                if api.is_empty() && !enroll {
                    return Err(CallError::Missing(format!("no token named {name:?}")));
                }
                if enroll {
                    batch.enroll_tokens.push((name.clone(), None));
                }
                batch.deleted_tokens.extend(api);
                info!(token = %name, "token revoked");
            }
            KeyChange::RevokeNode { id, user } => {
                let Some(cred) = self
                    .credentials
                    .creds
                    .get_mut(&id)
                    .filter(|c| c.revoked_at.is_none())
                else {
                    return Err(CallError::Conflict(format!(
                        "node {id} has no credential to revoke"
                    )));
                };
                cred.revoked_at = Some(now);
                let cred = cred.clone();
                self.credentials.last_request.remove(&id);
                batch.credentials.push((id.clone(), Some(cred)));
                batch.keys.push((id.clone(), None));
                let by = user.as_deref().unwrap_or("an operator");
                warn!(node = %id, by, "node credential revoked");
                if let Some(before) = self.fleet.nodes.get(&id).cloned() {
                    let mut after = before.clone();
                    after.online = false;
                    after.offline_reason = Some(OfflineReason::Revoked);
                    batch.controller(&id, now).warning(
                        EventReason::CredentialRevoked,
                        format!(
                            "credential revoked by {by}; the agent is cut off until it enrolls \
                             again with a new token"
                        ),
                    );
                    self.replace(before, after, now, batch);
                }
            }
        }
        Ok(())
    }

    /// Token names are unique across both kinds (so `tokens revoke NAME` is one token).
    fn name_free(&self, name: &str, batch: &Batch) -> Result<(), CallError> {
        let taken = self.credentials.tokens.contains_key(name)
            || batch.tokens.iter().any(|(_, t)| t.name == name)
            || self
                .store
                .tokens()
                .map_err(|e| CallError::Store(e.to_string()))?
                .iter()
                .any(|(_, t)| t.name == name);
        if taken {
            return Err(CallError::Conflict(format!(
                "a token named {name:?} exists already"
            )));
        }
        Ok(())
    }

    /// Signs and queues an enrollment answer (published after the commit).
    fn answer_enrollment(&mut self, id: &NodeId, reply: &enroll::EnrollReply, batch: &mut Batch) {
        let topic = self.cfg.topics.node(id, NodeTopic::Enrolled);
        let signed = serde_json::to_vec(reply)
            .map_err(|e| e.to_string())
            .and_then(|body| {
                self.credentials
                    .identity
                    .sign(&topic, &body)
                    .map_err(|e| e.to_string())
            });
        match signed {
            Ok(payload) => batch.outbound.push(Outbound {
                topic,
                payload,
                delivery: Delivery::AtLeastOnce,
                retain: false,
            }),
            Err(e) => warn!(node = %id, error = %e, "an enrollment answer could not be signed"),
        }
    }
}

#[cfg(test)]
mod tests;
