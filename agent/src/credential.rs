//! The agent's node credential (DESIGN section 11): the node key from enrollment and the
//! controller identity it enrolled with, kept in `state_dir/credential.json` (0600).
//! With it the agent needs no token on later starts.

use std::path::{Path, PathBuf};

use anyhow::Context;
use metalbus_protocol::enroll::EnrollToken;
use metalbus_protocol::proof::{decode_hex, hex, NodeKey, KEY_BYTES};
use metalbus_protocol::{NodeId, Timestamp};
use serde::{Deserialize, Serialize};

const FILE: &str = "credential.json";

/// What enrollment gave this node.
#[derive(Debug, Clone)]
pub struct Credential {
    pub node_id: NodeId,
    pub key: NodeKey,
    /// The controller's identity public key.
    pub identity: [u8; KEY_BYTES],
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    node_id: NodeId,
    key: String,
    identity: String,
    enrolled_at: Timestamp,
}

/// Where the credential lives in a state dir.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// The stored credential, `None` when the node has not enrolled yet. A file that others
/// can read, or that does not parse, stops start-up with a clear error.
pub fn load(state_dir: &Path) -> anyhow::Result<Option<Credential>> {
    let path = path(state_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    metalbus_link::files::check_private(&path).map_err(|e| {
        anyhow::anyhow!(
            "{e}; it holds this node's key: if others may have read it, revoke the node \
             (metalbus nodes revoke) and enroll again"
        )
    })?;
    let disk: OnDisk =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let bad = |what: &str| anyhow::anyhow!("{}: {what} is not 64 hex digits", path.display());
    Ok(Some(Credential {
        node_id: disk.node_id,
        key: NodeKey::from_hex(&disk.key).ok_or_else(|| bad("key"))?,
        identity: decode_hex::<KEY_BYTES>(&disk.identity).ok_or_else(|| bad("identity"))?,
    }))
}

/// Writes the credential (0600, synced, then renamed into place).
pub fn save(state_dir: &Path, cred: &Credential) -> anyhow::Result<()> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let body = serde_json::to_vec_pretty(&OnDisk {
        node_id: cred.node_id.clone(),
        key: cred.key.to_hex(),
        identity: hex(&cred.identity),
        enrolled_at: Timestamp::from(std::time::SystemTime::now()),
    })?;
    Ok(metalbus_link::files::write_private(
        &path(state_dir),
        &body,
    )?)
}

/// The anchor of the controller this agent trusts: the one it enrolled with, or else the
/// one its enrollment token names. It pins the broker's TLS certificate. The token is
/// read only when the agent is not enrolled yet, so an enrolled agent starts after its
/// token file has been deleted (as the docs advise).
pub fn anchor(
    state_dir: &Path,
    token: impl FnOnce() -> anyhow::Result<Option<EnrollToken>>,
) -> anyhow::Result<Option<[u8; KEY_BYTES]>> {
    Ok(match load(state_dir)? {
        Some(cred) => Some(metalbus_protocol::proof::anchor_of(&cred.identity)),
        None => token()?.map(|t| t.anchor),
    })
}

/// Reads an enrollment token from a file (the controller's `enroll.token`, or one from
/// `metalbus tokens create --enroll`).
pub fn read_token(path: &Path) -> anyhow::Result<EnrollToken> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the enrollment token file {}", path.display()))?;
    text.parse()
        .with_context(|| format!("in the enrollment token file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_saved_credential_loads_back_and_a_loose_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let cred = Credential {
            node_id: NodeId::new("n1").unwrap(),
            key: NodeKey::from_bytes([3; 32]),
            identity: [4; 32],
        };
        save(dir.path(), &cred).unwrap();
        let mode = std::fs::metadata(path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = load(dir.path()).unwrap().unwrap();
        assert_eq!(
            (back.node_id, back.key, back.identity),
            (cred.node_id, cred.key, cred.identity)
        );
        std::fs::set_permissions(path(dir.path()), std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("readable by others"), "{err}");
        std::fs::set_permissions(path(dir.path()), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(path(dir.path()), b"{\"node_id\":\"n1\",\"key\":\"zz\"}").unwrap();
        assert!(load(dir.path()).is_err());
    }

    #[test]
    fn an_enrolled_agent_never_reads_its_deleted_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("enroll.token");
        let read = || read_token(&gone).map(Some);
        let err = anchor(dir.path(), read).unwrap_err();
        assert!(format!("{err:#}").contains("enroll.token"), "{err:#}");
        let cred = Credential {
            node_id: NodeId::new("n1").unwrap(),
            key: NodeKey::from_bytes([3; 32]),
            identity: [4; 32],
        };
        save(dir.path(), &cred).unwrap();
        let pinned = anchor(dir.path(), read).unwrap();
        assert_eq!(pinned, Some(metalbus_protocol::proof::anchor_of(&[4; 32])));
    }
}
