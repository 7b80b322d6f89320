//! What the agent keeps across restarts in its state dir: the MQTT connection counter
//! (`conn`, DESIGN section 3) and its `session` id.
//!
//! Written atomically (temp file, fsync, rename), so a crash leaves the old or the new
//! state, never a torn file.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::Rng;
use serde::{Deserialize, Serialize};

const FILE: &str = "agent-state.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Persisted {
    session: String,
    conn: u64,
    /// The last report sequence number used in this session.
    #[serde(default)]
    seq: u64,
}

/// The agent's persisted counters.
#[derive(Debug)]
pub struct AgentState {
    path: PathBuf,
    data: Persisted,
}

impl AgentState {
    /// Loads the state from `dir`, creating the dir and a fresh session when absent.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating state dir {}", dir.display()))?;
        let path = dir.join(FILE);
        let data = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is corrupt; move it aside to start a new session",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted {
                session: new_session(),
                conn: 0,
                seq: 0,
            },
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let state = Self { path, data };
        state.save()?;
        Ok(state)
    }

    pub fn session(&self) -> &str {
        &self.data.session
    }

    /// The counter of the latest connection attempt.
    pub fn conn(&self) -> u64 {
        self.data.conn
    }

    /// Bumps and persists `conn` for a new connection attempt, and returns it.
    pub fn next_conn(&mut self) -> anyhow::Result<u64> {
        self.data.conn += 1;
        self.save()?;
        Ok(self.data.conn)
    }

    /// The next report sequence number (1, 2, 3, ... with no gaps), persisted before use.
    pub fn next_seq(&mut self) -> anyhow::Result<u64> {
        self.data.seq += 1;
        self.save()?;
        Ok(self.data.seq)
    }

    fn save(&self) -> anyhow::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(&self.data).unwrap_or_default())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().with_context(|| format!("writing {}", self.path.display()))
    }
}

fn new_session() -> String {
    let bytes: [u8; 12] = rand::thread_rng().gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_survives_restarts_and_session_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = AgentState::open(dir.path()).unwrap();
        assert_eq!(s.conn(), 0);
        assert_eq!(s.next_conn().unwrap(), 1);
        assert_eq!(s.next_conn().unwrap(), 2);
        let session = s.session().to_string();
        assert_eq!(session.len(), 24);
        drop(s);
        let mut again = AgentState::open(dir.path()).unwrap();
        assert_eq!(again.session(), session);
        assert_eq!(again.next_conn().unwrap(), 3);
        assert_eq!(again.next_seq().unwrap(), 1);
        assert_eq!(again.next_seq().unwrap(), 2);
        drop(again);
        let mut third = AgentState::open(dir.path()).unwrap();
        assert_eq!(third.next_seq().unwrap(), 3);
    }

    #[test]
    fn corrupt_state_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        let err = AgentState::open(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("corrupt"), "{err:#}");
    }

    #[test]
    fn sessions_differ_between_fresh_state_dirs() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        assert_ne!(
            AgentState::open(a.path()).unwrap().session(),
            AgentState::open(b.path()).unwrap().session()
        );
    }
}
