//! Enrollment (DESIGN section 11): how an agent with nothing but a token gets its own node
//! key from the controller, over any broker, hostile ones included.
//!
//! 1. The token (`MB1:<anchor>:<id>:<secret>`) names the controller's identity by the
//!    SHA-256 of its public key (the anchor, as kubeadm's CA hash and k3s' `K10<hash>::`
//!    join tokens do), and carries a token id and a secret.
//! 2. The agent makes an X25519 key pair and sends an [`EnrollRequest`] on
//!    `{p}/nodes/{id}/enroll`, sealed with the token's secret as the HMAC key: the
//!    broker sees the id, never the secret.
//! 3. The controller checks the seal and the token, makes its own X25519 key pair, and
//!    answers an [`EnrollReply`] on `{p}/nodes/{id}/enrolled`, signed with its identity.
//! 4. Both sides derive the node key from the X25519 shared secret with HKDF-SHA256. The
//!    key never crosses the wire; the agent checks the reply's signature against the
//!    anchor before it trusts anything in it.
//!
//! Pure: randomness comes in as a parameter, nothing is read or written here.

use std::fmt;
use std::str::FromStr;

use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::hkdf;
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

use crate::proof::{self, decode_hex, hex, NodeKey, ProofError, KEY_BYTES};
use crate::{NodeId, Timestamp};

/// The token's version tag.
const TOKEN_TAG: &str = "MB1";
/// Longest token id.
pub const MAX_TOKEN_ID: usize = 64;
/// How an enrolling agent's MQTT user name starts; the token id follows.
pub const ENROLL_USER_PREFIX: &str = "metalbus-enroll.";
/// Node ids that start with this are reserved (broker user names of Metalbus itself).
pub const RESERVED_ID_PREFIX: &str = "metalbus-";

/// What an enrollment token carries.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollToken {
    /// SHA-256 of the controller's identity public key.
    pub anchor: [u8; KEY_BYTES],
    /// Names the token in the controller's store (and in `metalbus tokens list`).
    pub id: String,
    pub secret: [u8; KEY_BYTES],
}

impl EnrollToken {
    /// The HMAC key that seals an enrollment request.
    pub fn seal_key(&self) -> NodeKey {
        NodeKey::from_bytes(self.secret)
    }

    /// The MQTT user name an agent enrolling with this token logs in with.
    pub fn broker_user(&self) -> String {
        format!("{ENROLL_USER_PREFIX}{}", self.id)
    }

    /// The MQTT password that goes with [`EnrollToken::broker_user`]: derived from the
    /// secret, which itself is never sent.
    pub fn broker_password(&self) -> String {
        self.seal_key().broker_password()
    }
}

impl fmt::Debug for EnrollToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EnrollToken({}, ..)", self.id)
    }
}

impl fmt::Display for EnrollToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_TAG}:{}:{}:{}",
            hex(&self.anchor),
            self.id,
            hex(&self.secret)
        )
    }
}

/// Why a token does not parse. Never echoes the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an enrollment token: {0} (expected MB1:<64 hex anchor>:<id>:<64 hex secret>)")]
pub struct TokenError(&'static str);

/// A token id: the characters of a node id, so it is safe in topics, logs and files.
pub fn valid_token_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_TOKEN_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

impl FromStr for EnrollToken {
    type Err = TokenError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut parts = text.trim().split(':');
        if parts.next() != Some(TOKEN_TAG) {
            return Err(TokenError("it does not start with MB1:"));
        }
        let anchor = parts
            .next()
            .and_then(decode_hex::<KEY_BYTES>)
            .ok_or(TokenError("the anchor is not 64 hex digits"))?;
        let id = parts
            .next()
            .filter(|id| valid_token_id(id))
            .ok_or(TokenError("the token id is missing or malformed"))?
            .to_string();
        let secret = parts
            .next()
            .and_then(decode_hex::<KEY_BYTES>)
            .ok_or(TokenError("the secret is not 64 hex digits"))?;
        if parts.next().is_some() {
            return Err(TokenError("it has too many parts"));
        }
        Ok(Self { anchor, id, secret })
    }
}

/// Agent → controller, on `{p}/nodes/{id}/enroll`, sealed with the token's secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub token_id: String,
    /// The agent's X25519 public key, hex.
    pub agent_key: String,
    /// 16 random bytes, hex: salts the key derivation and names this attempt.
    pub nonce: String,
    pub hostname: String,
    pub ts: Timestamp,
}

/// Controller → agent, on `{p}/nodes/{id}/enrolled`, signed with the controller identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollReply {
    /// The request's nonce: which attempt this answers.
    pub nonce: String,
    /// The controller's identity public key, hex; its SHA-256 is the token's anchor.
    pub identity: String,
    /// The controller's X25519 public key for this enrollment, hex; absent on refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_key: Option<String>,
    /// Why the enrollment was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why an enrollment step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrollError {
    #[error("the reply's signature: {0}")]
    Proof(#[from] ProofError),
    #[error("the reply's identity key does not match the token's anchor (not our controller)")]
    WrongIdentity,
    #[error("the reply answers another enrollment attempt")]
    OtherAttempt,
    #[error("the controller refused the enrollment: {0}")]
    Refused(String),
    #[error("malformed enrollment message: {0}")]
    Malformed(String),
    #[error("key agreement failed")]
    Agreement,
}

/// An agent's enrollment attempt in flight: its private key lives only here.
pub struct Attempt {
    private: EphemeralPrivateKey,
    pub request: EnrollRequest,
}

impl Attempt {
    /// A fresh attempt: new key pair, new nonce.
    pub fn new(
        rng: &dyn SecureRandom,
        token: &EnrollToken,
        hostname: String,
        now: Timestamp,
    ) -> Result<Self, EnrollError> {
        let private =
            EphemeralPrivateKey::generate(&X25519, rng).map_err(|_| EnrollError::Agreement)?;
        let public = private
            .compute_public_key()
            .map_err(|_| EnrollError::Agreement)?;
        let mut nonce = [0u8; 16];
        rng.fill(&mut nonce).map_err(|_| EnrollError::Agreement)?;
        Ok(Self {
            private,
            request: EnrollRequest {
                token_id: token.id.clone(),
                agent_key: hex(public.as_ref()),
                nonce: hex(&nonce),
                hostname,
                ts: now,
            },
        })
    }

    /// The sealed request payload for `topic`.
    pub fn payload(&self, token: &EnrollToken, topic: &str) -> Result<Vec<u8>, EnrollError> {
        let body =
            serde_json::to_vec(&self.request).map_err(|e| EnrollError::Malformed(e.to_string()))?;
        Ok(proof::seal(&token.seal_key(), topic, &body)?)
    }

    /// Checks a reply: signed by the identity the token pins, for this attempt, and not
    /// a refusal. The attempt stays usable when the reply is someone else's.
    pub fn check(
        &self,
        token: &EnrollToken,
        topic: &str,
        payload: &[u8],
    ) -> Result<EnrollReply, EnrollError> {
        let reply: EnrollReply =
            serde_json::from_slice(payload).map_err(|e| EnrollError::Malformed(e.to_string()))?;
        let identity = decode_hex::<KEY_BYTES>(&reply.identity)
            .ok_or_else(|| EnrollError::Malformed("identity is not 64 hex digits".into()))?;
        if proof::anchor_of(&identity) != token.anchor {
            return Err(EnrollError::WrongIdentity);
        }
        proof::verify_signed(&identity, topic, payload)?;
        if reply.nonce != self.request.nonce {
            return Err(EnrollError::OtherAttempt);
        }
        if let Some(error) = reply.error {
            return Err(EnrollError::Refused(error));
        }
        Ok(reply)
    }

    /// Derives the node key from a checked reply. Consumes the attempt: the private key
    /// is used once. Returns the key and the controller's identity public key.
    pub fn finish(
        self,
        token: &EnrollToken,
        node: &NodeId,
        reply: &EnrollReply,
    ) -> Result<(NodeKey, [u8; KEY_BYTES]), EnrollError> {
        let identity = decode_hex::<KEY_BYTES>(&reply.identity)
            .ok_or_else(|| EnrollError::Malformed("identity is not 64 hex digits".into()))?;
        let peer = reply
            .controller_key
            .as_deref()
            .and_then(decode_hex::<KEY_BYTES>)
            .ok_or_else(|| EnrollError::Malformed("controller_key is missing".into()))?;
        let nonce = decode_hex::<16>(&self.request.nonce).ok_or(EnrollError::Agreement)?;
        let key = agreement::agree_ephemeral(
            self.private,
            &UnparsedPublicKey::new(&X25519, peer),
            |shared| derive(shared, &nonce, node, &token.anchor),
        )
        .map_err(|_| EnrollError::Agreement)??;
        Ok((key, identity))
    }
}

/// The controller's side: checks a request's seal with the token's secret, then agrees
/// on a key. Returns the reply body (to be signed) and the node key.
pub fn accept(
    rng: &dyn SecureRandom,
    token: &EnrollToken,
    node: &NodeId,
    request: &EnrollRequest,
    identity_public: &[u8; KEY_BYTES],
) -> Result<(EnrollReply, NodeKey), EnrollError> {
    let peer = decode_hex::<KEY_BYTES>(&request.agent_key)
        .ok_or_else(|| EnrollError::Malformed("agent_key is not 64 hex digits".into()))?;
    let nonce = decode_hex::<16>(&request.nonce)
        .ok_or_else(|| EnrollError::Malformed("nonce is not 32 hex digits".into()))?;
    let private =
        EphemeralPrivateKey::generate(&X25519, rng).map_err(|_| EnrollError::Agreement)?;
    let public = private
        .compute_public_key()
        .map_err(|_| EnrollError::Agreement)?;
    let key = agreement::agree_ephemeral(private, &UnparsedPublicKey::new(&X25519, peer), |s| {
        derive(s, &nonce, node, &token.anchor)
    })
    .map_err(|_| EnrollError::Agreement)??;
    Ok((
        EnrollReply {
            nonce: request.nonce.clone(),
            identity: hex(identity_public),
            controller_key: Some(hex(public.as_ref())),
            error: None,
        },
        key,
    ))
}

/// A refusal, to be signed like an acceptance.
pub fn refusal(request_nonce: &str, identity_public: &[u8; KEY_BYTES], why: String) -> EnrollReply {
    EnrollReply {
        nonce: request_nonce.chars().take(32).collect(),
        identity: hex(identity_public),
        controller_key: None,
        error: Some(why),
    }
}

/// Checks that a request payload was sealed with the token's secret.
pub fn check_request(token: &EnrollToken, topic: &str, payload: &[u8]) -> Result<(), ProofError> {
    proof::open(&token.seal_key(), topic, payload)
}

/// HKDF-SHA256 over the X25519 output, salted with the nonce, bound to the node id and
/// the controller's anchor.
fn derive(
    shared: &[u8],
    nonce: &[u8; 16],
    node: &NodeId,
    anchor: &[u8; KEY_BYTES],
) -> Result<NodeKey, EnrollError> {
    struct Len;
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            KEY_BYTES
        }
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, nonce).extract(shared);
    let info: [&[u8]; 4] = [
        b"metalbus node key v1\0",
        node.as_str().as_bytes(),
        b"\0",
        anchor,
    ];
    let okm = prk.expand(&info, Len).map_err(|_| EnrollError::Agreement)?;
    let mut out = [0u8; KEY_BYTES];
    okm.fill(&mut out).map_err(|_| EnrollError::Agreement)?;
    Ok(NodeKey::from_bytes(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proof::Identity;
    use ring::rand::SystemRandom;

    /// The agent's two steps in one.
    fn complete(
        attempt: Attempt,
        token: &EnrollToken,
        topic: &str,
        payload: &[u8],
    ) -> Result<(NodeKey, [u8; KEY_BYTES]), EnrollError> {
        let reply = attempt.check(token, topic, payload)?;
        attempt.finish(token, &node(), &reply)
    }

    fn node() -> NodeId {
        NodeId::new("n1").unwrap()
    }

    fn setup() -> (SystemRandom, Identity, EnrollToken) {
        let rng = SystemRandom::new();
        let id = Identity::from_pkcs8(&Identity::generate_pkcs8(&rng).unwrap()).unwrap();
        let token = EnrollToken {
            anchor: id.anchor(),
            id: "fleet".into(),
            secret: [9; 32],
        };
        (rng, id, token)
    }

    fn controller_answers(
        rng: &SystemRandom,
        id: &Identity,
        token: &EnrollToken,
        req_topic: &str,
        payload: &[u8],
        reply_topic: &str,
    ) -> (Vec<u8>, NodeKey) {
        check_request(token, req_topic, payload).unwrap();
        let request: EnrollRequest = serde_json::from_slice(payload).unwrap();
        let (reply, key) = accept(rng, token, &node(), &request, &id.public_key()).unwrap();
        let signed = id
            .sign(reply_topic, &serde_json::to_vec(&reply).unwrap())
            .unwrap();
        (signed, key)
    }

    #[test]
    fn both_sides_derive_the_same_key_and_nobody_else_can() {
        let (rng, id, token) = setup();
        let attempt =
            Attempt::new(&rng, &token, "h".into(), Timestamp::from_unix_millis(0)).unwrap();
        let payload = attempt.payload(&token, "p/nodes/n1/enroll").unwrap();
        // The secret never appears in what the broker carries.
        assert!(!String::from_utf8_lossy(&payload).contains(&hex(&token.secret)));
        let (reply, controller_key) = controller_answers(
            &rng,
            &id,
            &token,
            "p/nodes/n1/enroll",
            &payload,
            "p/nodes/n1/enrolled",
        );
        let (agent_key, identity) =
            complete(attempt, &token, "p/nodes/n1/enrolled", &reply).unwrap();
        assert_eq!(agent_key, controller_key);
        assert_eq!(identity, id.public_key());
        // A second attempt gets another key.
        let again = Attempt::new(&rng, &token, "h".into(), Timestamp::from_unix_millis(0)).unwrap();
        let p2 = again.payload(&token, "p/nodes/n1/enroll").unwrap();
        let (_, k2) = controller_answers(
            &rng,
            &id,
            &token,
            "p/nodes/n1/enroll",
            &p2,
            "p/nodes/n1/enrolled",
        );
        assert_ne!(k2, controller_key);
    }

    #[test]
    fn a_request_without_the_secret_is_refused() {
        let (rng, _, token) = setup();
        let attempt =
            Attempt::new(&rng, &token, "h".into(), Timestamp::from_unix_millis(0)).unwrap();
        let forged = EnrollToken {
            secret: [1; 32],
            ..token.clone()
        };
        let payload = attempt.payload(&forged, "p/nodes/n1/enroll").unwrap();
        assert_eq!(
            check_request(&token, "p/nodes/n1/enroll", &payload),
            Err(ProofError::Mismatch)
        );
        // Replayed onto another node's topic.
        let payload = attempt.payload(&token, "p/nodes/n1/enroll").unwrap();
        assert!(check_request(&token, "p/nodes/n2/enroll", &payload).is_err());
    }

    #[test]
    fn a_reply_from_another_controller_or_for_another_attempt_is_refused() {
        let (rng, id, token) = setup();
        let impostor = Identity::from_pkcs8(&Identity::generate_pkcs8(&rng).unwrap()).unwrap();
        let attempt =
            Attempt::new(&rng, &token, "h".into(), Timestamp::from_unix_millis(0)).unwrap();
        let payload = attempt.payload(&token, "t/enroll").unwrap();
        let (_, _) = controller_answers(&rng, &id, &token, "t/enroll", &payload, "t/enrolled");
        let request: EnrollRequest = serde_json::from_slice(&payload).unwrap();
        let (reply, _) = accept(&rng, &token, &node(), &request, &impostor.public_key()).unwrap();
        let signed = impostor
            .sign("t/enrolled", &serde_json::to_vec(&reply).unwrap())
            .unwrap();
        assert_eq!(
            complete(attempt, &token, "t/enrolled", &signed).err(),
            Some(EnrollError::WrongIdentity)
        );
        // The right identity, but a reply to an earlier attempt.
        let old = Attempt::new(&rng, &token, "h".into(), Timestamp::from_unix_millis(0)).unwrap();
        let newer = Attempt::new(&rng, &token, "h".into(), Timestamp::from_unix_millis(0)).unwrap();
        let p = old.payload(&token, "t/enroll").unwrap();
        let (signed, _) = controller_answers(&rng, &id, &token, "t/enroll", &p, "t/enrolled");
        assert_eq!(
            complete(newer, &token, "t/enrolled", &signed).err(),
            Some(EnrollError::OtherAttempt)
        );
        // A refusal is reported as such.
        let a = Attempt::new(&rng, &token, "h".into(), Timestamp::from_unix_millis(0)).unwrap();
        let r = refusal(&a.request.nonce, &id.public_key(), "token expired".into());
        let signed = id
            .sign("t/enrolled", &serde_json::to_vec(&r).unwrap())
            .unwrap();
        assert_eq!(
            complete(a, &token, "t/enrolled", &signed).err(),
            Some(EnrollError::Refused("token expired".into()))
        );
    }

    #[test]
    fn tokens_round_trip_and_malformed_ones_are_refused() {
        let (_, _, token) = setup();
        let text = token.to_string();
        assert!(text.starts_with("MB1:"));
        assert_eq!(text.parse::<EnrollToken>().unwrap(), token);
        assert_eq!(format!("{token:?}"), "EnrollToken(fleet, ..)");
        let anchor = hex(&token.anchor);
        for bad in [
            String::new(),
            "MB2:x:y:z".into(),
            format!("MB1:{anchor}:fleet"),
            format!("MB1:{anchor}:Fleet!:{}", hex(&[0; 32])),
            format!("MB1:{anchor}::{}", hex(&[0; 32])),
            format!("MB1:{anchor}:fleet:{}:extra", hex(&[0; 32])),
            format!("MB1:{}:fleet:{}", &anchor[..60], hex(&[0; 32])),
            format!("MB1:{anchor}:fleet:{}", "é".repeat(32)),
            format!("MB1:{anchor}:{}:{}", "a".repeat(65), hex(&[0; 32])),
        ] {
            let err = bad.parse::<EnrollToken>().unwrap_err();
            assert!(!err.to_string().contains(&hex(&[0; 32])), "{err}");
        }
        // Surrounding whitespace (a token file's newline) is fine.
        assert_eq!(format!("{text}\n").parse::<EnrollToken>().unwrap(), token);
    }
}
