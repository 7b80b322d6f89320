//! Origin proof for MQTT payloads (DESIGN section 11): who made a message, checked on any
//! broker.
//!
//! A sealed payload is the JSON object the sender meant, with one last member appended:
//! `{...,"proof":"<64 hex>"}` (HMAC-SHA256 with the node's key, between the agent and the
//! controller) or `{...,"sig":"<128 hex>"}` (Ed25519 with the controller's identity key,
//! on enrollment replies). The code covers the topic and the exact bytes of the object
//! as it was before the member was appended, so there is nothing to canonicalize: the
//! receiver cuts the fixed-length suffix off, puts the closing brace back and checks.
//! Monitoring tools see ordinary JSON with one more field, which they may ignore.
//!
//! Pure: bytes and keys in, bytes or a refusal out. Randomness comes in as a parameter.

use std::fmt;

use ring::hmac;
use ring::signature::{self, Ed25519KeyPair, KeyPair};

/// Length in bytes of a node key, an identity public key and an anchor.
pub const KEY_BYTES: usize = 32;

const PROOF_PREFIX: &[u8] = b",\"proof\":\"";
const SIG_PREFIX: &[u8] = b",\"sig\":\"";
const PROOF_HEX: usize = 64;
const SIG_HEX: usize = 128;

/// Why a payload's proof does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("the payload carries no proof (it must end with ,\"proof\":\"<64 hex>\"}})")]
    Missing,
    #[error("the payload carries no signature (it must end with ,\"sig\":\"<128 hex>\"}})")]
    MissingSignature,
    #[error("the proof does not match: not made with this node's key, or the message was changed")]
    Mismatch,
    #[error("the signature does not verify with the controller's identity key")]
    BadSignature,
    #[error("the payload is not a JSON object to seal")]
    NotAnObject,
}

/// A node's secret key, shared by that node's agent and the controller only.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeKey([u8; KEY_BYTES]);

impl NodeKey {
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        Self(bytes)
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        decode_hex::<KEY_BYTES>(text).map(Self)
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// The MQTT password the node presents to a broker: derived from the key, so the key
    /// itself never crosses the wire, and the same on every connect.
    pub fn broker_password(&self) -> String {
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &self.0),
            b"metalbus broker password v1",
        );
        hex(tag.as_ref())
    }

    fn hmac(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.0)
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeKey(..)")
    }
}

/// The HMAC over `topic` and `body`, the object before the proof member.
fn mac_context(key: &hmac::Key, topic: &str, body_without_brace: &[u8]) -> hmac::Context {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(&(topic.len() as u32).to_be_bytes());
    ctx.update(topic.as_bytes());
    ctx.update(body_without_brace);
    ctx.update(b"}");
    ctx
}

/// The object's bytes without the closing brace, ready for a member to be appended.
fn open_object(body: &[u8]) -> Result<&[u8], ProofError> {
    let body = body.trim_ascii_end();
    match (body.first(), body.last()) {
        (Some(b'{'), Some(b'}')) if body.len() > 2 => Ok(&body[..body.len() - 1]),
        _ => Err(ProofError::NotAnObject),
    }
}

/// Appends `,"<field>":"<hex>"}` to an open object.
fn append(open: &[u8], prefix: &[u8], code: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(open.len() + prefix.len() + code.len() * 2 + 2);
    out.extend_from_slice(open);
    out.extend_from_slice(prefix);
    out.extend_from_slice(hex(code).as_bytes());
    out.extend_from_slice(b"\"}");
    out
}

/// Splits a sealed payload into the open object it covers and the hex code.
fn split<'a>(payload: &'a [u8], prefix: &[u8], hex_len: usize) -> Option<(&'a [u8], &'a [u8])> {
    let suffix = prefix.len() + hex_len + 2;
    if payload.len() < suffix + 2 || !payload.ends_with(b"\"}") {
        return None;
    }
    let cut = payload.len() - suffix;
    let (open, tail) = payload.split_at(cut);
    if !tail.starts_with(prefix) || open.first() != Some(&b'{') {
        return None;
    }
    Some((open, &tail[prefix.len()..prefix.len() + hex_len]))
}

/// Seals a JSON object for `topic` with a node key.
pub fn seal(key: &NodeKey, topic: &str, body: &[u8]) -> Result<Vec<u8>, ProofError> {
    let open = open_object(body)?;
    let tag = mac_context(&key.hmac(), topic, open).sign();
    Ok(append(open, PROOF_PREFIX, tag.as_ref()))
}

/// Checks a payload sealed with `key` for `topic`. The payload, proof member included,
/// is then read as ordinary JSON (unknown members are ignored).
pub fn open(key: &NodeKey, topic: &str, payload: &[u8]) -> Result<(), ProofError> {
    let (open, code) = split(payload, PROOF_PREFIX, PROOF_HEX).ok_or(ProofError::Missing)?;
    let code = decode_hex::<32>(std::str::from_utf8(code).map_err(|_| ProofError::Missing)?)
        .ok_or(ProofError::Missing)?;
    let want = mac_context(&key.hmac(), topic, open).sign();
    // Compared without an early exit, so timing does not tell how much of it matched.
    let diff = want
        .as_ref()
        .iter()
        .zip(code.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff == 0 {
        Ok(())
    } else {
        Err(ProofError::Mismatch)
    }
}

/// True when the payload ends with a proof member (whether or not it holds).
pub fn is_sealed(payload: &[u8]) -> bool {
    split(payload, PROOF_PREFIX, PROOF_HEX).is_some()
}

/// The controller's identity: an Ed25519 key pair. Its public key's SHA-256 is the
/// anchor that enrollment tokens carry.
pub struct Identity(Ed25519KeyPair);

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity(anchor {})", hex(&self.anchor()))
    }
}

impl Identity {
    /// A new identity as PKCS#8 bytes, to be stored.
    pub fn generate_pkcs8(rng: &dyn ring::rand::SecureRandom) -> Result<Vec<u8>, String> {
        Ed25519KeyPair::generate_pkcs8(rng)
            .map(|doc| doc.as_ref().to_vec())
            .map_err(|_| "cannot generate an Ed25519 key".to_string())
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        Ed25519KeyPair::from_pkcs8(der)
            .map(Self)
            .map_err(|e| format!("not an Ed25519 PKCS#8 key: {e}"))
    }

    pub fn public_key(&self) -> [u8; KEY_BYTES] {
        let mut out = [0; KEY_BYTES];
        out.copy_from_slice(self.0.public_key().as_ref());
        out
    }

    pub fn anchor(&self) -> [u8; KEY_BYTES] {
        anchor_of(&self.public_key())
    }

    /// Signs a JSON object for `topic`.
    pub fn sign(&self, topic: &str, body: &[u8]) -> Result<Vec<u8>, ProofError> {
        let open = open_object(body)?;
        let sig = self.0.sign(&signed_bytes(topic, open));
        Ok(append(open, SIG_PREFIX, sig.as_ref()))
    }
}

/// The anchor of an identity public key: its SHA-256.
pub fn anchor_of(public_key: &[u8; KEY_BYTES]) -> [u8; KEY_BYTES] {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
    let mut out = [0; KEY_BYTES];
    out.copy_from_slice(digest.as_ref());
    out
}

fn signed_bytes(topic: &str, open: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(4 + topic.len() + open.len() + 1);
    msg.extend_from_slice(&(topic.len() as u32).to_be_bytes());
    msg.extend_from_slice(topic.as_bytes());
    msg.extend_from_slice(open);
    msg.push(b'}');
    msg
}

/// Checks a payload signed by the identity whose public key is `public_key`.
pub fn verify_signed(
    public_key: &[u8; KEY_BYTES],
    topic: &str,
    payload: &[u8],
) -> Result<(), ProofError> {
    let (open, code) = split(payload, SIG_PREFIX, SIG_HEX).ok_or(ProofError::MissingSignature)?;
    let sig =
        decode_hex::<64>(std::str::from_utf8(code).map_err(|_| ProofError::MissingSignature)?)
            .ok_or(ProofError::MissingSignature)?;
    signature::UnparsedPublicKey::new(&signature::ED25519, public_key)
        .verify(&signed_bytes(topic, open), &sig)
        .map_err(|_| ProofError::BadSignature)
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// Exactly `N` bytes of hex (either case), or `None`.
pub fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.as_bytes();
    if text.len() != N * 2 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> NodeKey {
        NodeKey::from_bytes([7; 32])
    }

    #[test]
    fn hmac_is_rfc_4231_hmac_sha256() {
        // RFC 4231 test case 2, through the same ring primitive the proof uses.
        let k = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        let tag = hmac::sign(&k, b"what do ya want for nothing?");
        assert_eq!(
            hex(tag.as_ref()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_known_vector_seals_to_known_bytes() {
        // The proof of `{"a":1}` on topic "t" with key 07..07: HMAC-SHA256 over
        // 00000001 "t" `{"a":1}`. Fixed here so a change of the format cannot go unseen.
        let sealed = seal(&key(), "t", br#"{"a":1}"#).unwrap();
        let mut msg = vec![0, 0, 0, 1, b't'];
        msg.extend_from_slice(br#"{"a":1}"#);
        let want = hmac::sign(&key().hmac(), &msg);
        assert_eq!(
            String::from_utf8(sealed.clone()).unwrap(),
            format!(r#"{{"a":1,"proof":"{}"}}"#, hex(want.as_ref()))
        );
        assert_eq!(open(&key(), "t", &sealed), Ok(()));
        let v: serde_json::Value = serde_json::from_slice(&sealed).unwrap();
        assert_eq!(v["a"], 1);
    }

    #[test]
    fn any_change_breaks_the_proof() {
        let sealed = seal(
            &key(),
            "metalbus/v1/nodes/a/status",
            br#"{"online":true,"conn":7}"#,
        )
        .unwrap();
        assert_eq!(open(&key(), "metalbus/v1/nodes/a/status", &sealed), Ok(()));
        // Another node's topic, another topic kind, another key.
        assert_eq!(
            open(&key(), "metalbus/v1/nodes/b/status", &sealed),
            Err(ProofError::Mismatch)
        );
        assert_eq!(
            open(&key(), "metalbus/v1/nodes/a/inventory", &sealed),
            Err(ProofError::Mismatch)
        );
        assert_eq!(
            open(
                &NodeKey::from_bytes([8; 32]),
                "metalbus/v1/nodes/a/status",
                &sealed
            ),
            Err(ProofError::Mismatch)
        );
        // Every single byte flipped.
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(
                open(&key(), "metalbus/v1/nodes/a/status", &bad).is_err(),
                "flipping byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn unsealed_and_malformed_payloads_are_refused_without_panics() {
        let t = "t";
        for payload in [
            &b""[..],
            b"{}",
            br#"{"a":1}"#,
            br#"{"proof":"00"}"#,
            b"\"}",
            br#","proof":"0000000000000000000000000000000000000000000000000000000000000000"}"#,
            br#"{"a":1,"proof":"zz00000000000000000000000000000000000000000000000000000000000000"}"#,
            "{\"a\":\"€\",\"proof\":\"€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€\"}"
                .as_bytes(),
        ] {
            assert!(open(&key(), t, payload).is_err(), "{payload:?}");
        }
        assert_eq!(seal(&key(), t, b"[1]"), Err(ProofError::NotAnObject));
        assert_eq!(seal(&key(), t, b"{}"), Err(ProofError::NotAnObject));
    }

    #[test]
    fn identity_signatures_verify_and_resist_changes() {
        let rng = ring::rand::SystemRandom::new();
        let id = Identity::from_pkcs8(&Identity::generate_pkcs8(&rng).unwrap()).unwrap();
        let signed = id.sign("x/enrolled", br#"{"ok":true}"#).unwrap();
        assert_eq!(
            verify_signed(&id.public_key(), "x/enrolled", &signed),
            Ok(())
        );
        assert_eq!(
            verify_signed(&id.public_key(), "y/enrolled", &signed),
            Err(ProofError::BadSignature)
        );
        let other = Identity::from_pkcs8(&Identity::generate_pkcs8(&rng).unwrap()).unwrap();
        assert_eq!(
            verify_signed(&other.public_key(), "x/enrolled", &signed),
            Err(ProofError::BadSignature)
        );
        assert_eq!(
            verify_signed(&id.public_key(), "x/enrolled", br#"{"ok":true}"#),
            Err(ProofError::MissingSignature)
        );
        assert_eq!(anchor_of(&id.public_key()), id.anchor());
    }

    #[test]
    fn ed25519_matches_rfc_8032_test_1() {
        // RFC 8032 section 7.1, TEST 1: empty message.
        let public =
            decode_hex::<32>("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
                .unwrap();
        let sig = decode_hex::<64>(
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        )
        .unwrap();
        assert!(
            signature::UnparsedPublicKey::new(&signature::ED25519, &public)
                .verify(b"", &sig)
                .is_ok()
        );
    }

    #[test]
    fn hex_round_trips_and_refuses_junk() {
        assert_eq!(hex(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(decode_hex::<3>("00ABff"), Some([0, 0xab, 0xff]));
        assert_eq!(decode_hex::<3>("00abf"), None);
        assert_eq!(decode_hex::<1>("g0"), None);
        assert_eq!(decode_hex::<1>("é"), None);
        assert_eq!(key().broker_password().len(), 64);
        assert_ne!(
            key().broker_password(),
            NodeKey::from_bytes([8; 32]).broker_password()
        );
    }
}
