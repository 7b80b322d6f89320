//! The controller's side of DESIGN section 11: its identity, the fleet enrollment token,
//! and the keyring of node keys that ingest checks proofs with and the bus seals
//! commands and receipts with.

use std::collections::HashMap;

use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use metalbus_protocol::enroll::EnrollToken;
use metalbus_protocol::proof::{self, hex, Identity, NodeKey};
use metalbus_protocol::topic::{NodeTopic, Topic, Topics};
use metalbus_protocol::{NodeId, Timestamp};
use redb::Durability;
use ring::rand::SystemRandom;
use tokio::sync::watch;

use crate::store::{EnrollTokenRecord, Store};

/// The controller identity's key file in the data dir.
pub const IDENTITY_FILE: &str = "identity.key";
/// The fleet enrollment token's file in the data dir.
pub const ENROLL_TOKEN_FILE: &str = "enroll.token";
/// The id of the fleet enrollment token made at first start.
pub const FLEET_TOKEN_ID: &str = "fleet";

/// Node keys by node id, and the ids of the enrollment tokens: written by the engine
/// (enrollment, revocation, new tokens), read by ingest (proofs), the bus (seals) and the
/// broker's front door (logins).
#[derive(Clone)]
pub struct Keyring(Arc<Shared>);

struct Shared {
    keys: RwLock<HashMap<NodeId, NodeKey>>,
    /// Enrollment token id → the MQTT password an agent enrolling with it presents.
    enroll_tokens: RwLock<HashMap<String, String>>,
    /// Bumped whenever a key is removed or replaced, so live connections can look again.
    revocations: watch::Sender<u64>,
    /// Bumped on every change (for whoever mirrors the accounts, e.g. a Mosquitto file).
    changes: watch::Sender<u64>,
}

impl Default for Keyring {
    fn default() -> Self {
        Self(Arc::new(Shared {
            keys: RwLock::default(),
            enroll_tokens: RwLock::default(),
            revocations: watch::channel(0).0,
            changes: watch::channel(0).0,
        }))
    }
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({} keys)", self.len())
    }
}

impl Keyring {
    pub fn get(&self, id: &NodeId) -> Option<NodeKey> {
        self.0.keys.read().ok()?.get(id).cloned()
    }

    pub fn set(&self, id: NodeId, key: NodeKey) {
        let before = match self.0.keys.write() {
            Ok(mut keys) => keys.insert(id, key.clone()),
            Err(_) => return,
        };
        if before.as_ref().is_some_and(|b| *b != key) {
            self.0.revocations.send_modify(|n| *n += 1);
        }
        if before.as_ref() != Some(&key) {
            self.0.changes.send_modify(|n| *n += 1);
        }
    }

    pub fn remove(&self, id: &NodeId) {
        let removed = match self.0.keys.write() {
            Ok(mut keys) => keys.remove(id).is_some(),
            Err(_) => false,
        };
        if removed {
            self.0.revocations.send_modify(|n| *n += 1);
            self.0.changes.send_modify(|n| *n += 1);
        }
    }

    /// Every node key.
    pub fn all(&self) -> Vec<(NodeId, NodeKey)> {
        self.0
            .keys
            .read()
            .map(|k| k.iter().map(|(i, k)| (i.clone(), k.clone())).collect())
            .unwrap_or_default()
    }

    /// Changes on every change to keys or enrollment tokens.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.0.changes.subscribe()
    }

    pub fn len(&self) -> usize {
        self.0.keys.read().map(|k| k.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Changes whenever a key is removed or replaced.
    pub fn revocations(&self) -> watch::Receiver<u64> {
        self.0.revocations.subscribe()
    }

    /// The enrollment tokens that exist now: id and MQTT password.
    pub fn set_enroll_tokens(&self, tokens: impl IntoIterator<Item = (String, String)>) {
        let tokens: HashMap<String, String> = tokens.into_iter().collect();
        if let Ok(mut known) = self.0.enroll_tokens.write() {
            if *known != tokens {
                *known = tokens;
                self.0.changes.send_modify(|n| *n += 1);
            }
        }
    }

    /// The MQTT password of enrollment token `id`, if it exists.
    pub fn enroll_password(&self, id: &str) -> Option<String> {
        self.0.enroll_tokens.read().ok()?.get(id).cloned()
    }

    /// Every enrollment token's id and MQTT password, by id.
    pub fn enroll_passwords(&self) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = self
            .0
            .enroll_tokens
            .read()
            .map(|k| k.iter().map(|(a, b)| (a.clone(), b.clone())).collect())
            .unwrap_or_default();
        all.sort();
        all
    }

    /// The payload to publish on `topic`: sealed with the node's key when it goes to an
    /// agent (commands, receipts); as it is otherwise. `None` when it goes to an agent
    /// whose key is unknown (revoked, never enrolled): it could not prove anything.
    pub fn outbound(&self, topics: &Topics, topic: &str, payload: Vec<u8>) -> Option<Vec<u8>> {
        match topics.parse(topic) {
            Ok(Topic::Node(id, NodeTopic::Commands | NodeTopic::Receipts)) => {
                let key = self.get(&id)?;
                proof::seal(&key, topic, &payload).ok()
            }
            _ => Some(payload),
        }
    }
}

/// Loads the controller identity from the data dir, creating it (0600) at first start.
pub fn load_identity(data_dir: &Path) -> anyhow::Result<Arc<Identity>> {
    let path = data_dir.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(der) => {
            private_file(&path)?;
            let identity = Identity::from_pkcs8(&der)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Ok(Arc::new(identity))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let der = Identity::generate_pkcs8(&SystemRandom::new()).map_err(anyhow::Error::msg)?;
            write_private(&path, &der)?;
            tracing::info!(path = %path.display(), "generated the controller identity");
            Ok(Arc::new(
                Identity::from_pkcs8(&der).map_err(anyhow::Error::msg)?,
            ))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// 32 random bytes, hex: a password that lives as long as the process.
pub fn random_secret() -> String {
    hex(&random_bytes())
}

/// 32 bytes from the thread's CSPRNG (ChaCha, seeded from the OS): for tokens, secrets
/// and passwords.
pub fn random_bytes() -> [u8; 32] {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes
}

/// The controller's password on an external broker whose accounts it keeps
/// (`DATA_DIR/broker.password`, 0600, made at first use).
pub fn broker_password(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("broker.password");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            private_file(&path)?;
            Ok(text.trim().to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let password = random_secret();
            write_private(&path, format!("{password}\n").as_bytes())?;
            Ok(password)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// A fresh identity that lives only in memory (tests, benchmarks).
pub fn ephemeral_identity() -> Arc<Identity> {
    let der = Identity::generate_pkcs8(&SystemRandom::new()).unwrap_or_default();
    Arc::new(Identity::from_pkcs8(&der).unwrap_or_else(|e| panic!("ephemeral identity: {e}")))
}

/// A new enrollment token and its record.
pub fn new_enroll_token(
    id: &str,
    anchor: [u8; 32],
    now: Timestamp,
    expires_at: Option<Timestamp>,
    max_uses: Option<u32>,
    node: Option<NodeId>,
) -> (EnrollToken, EnrollTokenRecord) {
    let secret = random_bytes();
    let token = EnrollToken {
        anchor,
        id: id.to_string(),
        secret,
    };
    let record = EnrollTokenRecord {
        secret: hex(&secret),
        created_at: now,
        expires_at,
        max_uses,
        uses: 0,
        node,
        registration: None,
    };
    (token, record)
}

/// On first start, creates the fleet enrollment token and writes `enroll.token` (0600).
/// Later starts check that the file still belongs to this controller and its store.
pub fn ensure_enroll_token(
    store: &mut Store,
    data_dir: &Path,
    identity: &Identity,
    now: Timestamp,
) -> anyhow::Result<bool> {
    let path = data_dir.join(ENROLL_TOKEN_FILE);
    let stored = store
        .enroll_tokens()?
        .into_iter()
        .find(|(id, _)| id == FLEET_TOKEN_ID);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            private_file(&path)?;
            let token: EnrollToken = text
                .parse()
                .with_context(|| format!("in {}", path.display()))?;
            anyhow::ensure!(
                token.anchor == identity.anchor(),
                "{} was made for another controller identity than {}; delete it to have a \
                 new one generated",
                path.display(),
                data_dir.join(IDENTITY_FILE).display()
            );
            let known = stored.is_some_and(|(_, r)| r.secret == hex(&token.secret));
            if !known {
                let record = EnrollTokenRecord {
                    secret: hex(&token.secret),
                    created_at: now,
                    expires_at: None,
                    max_uses: None,
                    uses: 0,
                    node: None,
                    registration: None,
                };
                store.write(Durability::Immediate, |tx| {
                    tx.put_enroll_token(&token.id, &record)
                })?;
                tracing::warn!(path = %path.display(), "the store did not know the enrollment token in the token file; registered it again");
            }
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (token, record) =
                new_enroll_token(FLEET_TOKEN_ID, identity.anchor(), now, None, None, None);
            store.write(Durability::Immediate, |tx| {
                tx.put_enroll_token(&token.id, &record)
            })?;
            write_private(&path, format!("{token}\n").as_bytes())?;
            Ok(true)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Refuses a secret file that others can read or that another user owns.
pub fn private_file(path: &Path) -> anyhow::Result<()> {
    Ok(metalbus_link::files::check_private(path)?)
}

/// Writes a secret file, 0600, synced.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    Ok(metalbus_link::files::write_private(path, bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_agent_bound_messages_are_sealed_and_only_for_known_nodes() {
        let ring = Keyring::default();
        let topics = Topics::default();
        let n1 = NodeId::new("n1").unwrap();
        ring.set(n1.clone(), NodeKey::from_bytes([1; 32]));
        let cmd = topics.node(&n1, NodeTopic::Commands);
        let sealed = ring.outbound(&topics, &cmd, b"{\"a\":1}".to_vec()).unwrap();
        assert_eq!(
            proof::open(&NodeKey::from_bytes([1; 32]), &cmd, &sealed),
            Ok(())
        );
        let state = topics.node(&n1, NodeTopic::State);
        assert_eq!(
            ring.outbound(&topics, &state, b"{\"a\":1}".to_vec()),
            Some(b"{\"a\":1}".to_vec())
        );
        let stranger = topics.node(&NodeId::new("n2").unwrap(), NodeTopic::Receipts);
        assert_eq!(
            ring.outbound(&topics, &stranger, b"{\"a\":1}".to_vec()),
            None
        );
        ring.remove(&n1);
        assert_eq!(ring.outbound(&topics, &cmd, b"{\"a\":1}".to_vec()), None);
    }
}
