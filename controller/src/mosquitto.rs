//! An external Mosquitto whose logins bind each client to its node (DESIGN section 11):
//! the controller keeps a Mosquitto password file and ACL file in step with its
//! credentials and enrollment tokens, and asks Mosquitto to reload them.
//!
//! - Each enrolled node is a user named by its node id, with the password its agent
//!   derives from its key, so `%u` in the ACL really is the node.
//! - Each enrollment token is a user `metalbus-enroll.<id>` with a password derived from
//!   the token's secret, allowed only the enrollment topics.
//! - The controller is `metalbus-controller`, with a password it keeps in
//!   `DATA_DIR/broker.password`.
//!
//! Passwords are stored the way `mosquitto_passwd` does (`$7$`: PBKDF2-SHA512, 101
//! rounds, 12-byte salt), so Mosquitto 2.0 reads the file as its own.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use base64::Engine as _;
use metalbus_protocol::topic::{NodeTopic, Topics};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::acl::CONTROLLER_USER;
use crate::security::Keyring;

/// `mosquitto_passwd`'s PBKDF2 rounds.
const ROUNDS: u32 = 101;
/// Changes within this long are written together.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// The user name of an enrolling agent with token `id`.
pub fn enroll_user(id: &str) -> String {
    format!("{}.{id}", metalbus_link::ENROLL_USER)
}

/// One password file line, `user:$7$101$salt$hash`.
pub fn password_line(user: &str, password: &str, salt: &[u8]) -> String {
    let mut hash = [0u8; 64];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA512,
        NonZeroU32::new(ROUNDS).unwrap_or(NonZeroU32::MIN),
        salt,
        password.as_bytes(),
        &mut hash,
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    format!(
        "{user}:$7${ROUNDS}${}${}",
        b64.encode(salt),
        b64.encode(hash)
    )
}

/// The ACL: the controller everywhere, each enrollment user on the enrollment topics,
/// each node (`%u`) on its own topics.
pub fn acl_text(topics: &Topics, enroll_users: &[String]) -> String {
    let p = topics.prefix();
    let mut out = format!(
        "# Written by the Metalbus controller; do not edit (it is rewritten on every\n\
         # enrollment and revocation).\n\n\
         user {CONTROLLER_USER}\ntopic readwrite {p}/#\n\n"
    );
    for user in enroll_users {
        out.push_str(&format!(
            "user {user}\ntopic write {p}/nodes/+/enroll\ntopic read {p}/nodes/+/enrolled\n\n"
        ));
    }
    out.push_str("# Every other user is a node, confined to its own topics (%u = its node id).\n");
    for kind in NodeTopic::FROM_AGENT {
        out.push_str(&format!("pattern write {p}/nodes/%u/{kind}\n"));
    }
    for kind in [NodeTopic::Commands, NodeTopic::Receipts] {
        out.push_str(&format!("pattern read {p}/nodes/%u/{kind}\n"));
    }
    out
}

/// The lines to put in `mosquitto.conf`.
pub fn config_text(dir: &Path) -> String {
    format!(
        "# Metalbus: every client logs in, and each node reaches only its own topics.\n\
         # The controller keeps both files current ([broker] mosquitto_dir) and runs its\n\
         # [broker] reload_command (e.g. systemctl reload mosquitto) after each change.\n\
         allow_anonymous false\n\
         password_file {}\n\
         acl_file {}\n",
        dir.join("passwd").display(),
        dir.join("acl").display()
    )
}

/// Keeps the files in `dir` in step with the keyring.
pub struct Accounts {
    pub dir: PathBuf,
    pub topics: Topics,
    pub keys: Keyring,
    pub controller_password: String,
    /// Run after each write (program and arguments); none when empty.
    pub reload: Vec<String>,
}

impl Accounts {
    /// Writes both files now (so Mosquitto can start with them), then again after every
    /// keyring change, until `shutdown`.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut changes = self.keys.changes();
        loop {
            if let Err(e) = self.write() {
                warn!(error = %e, dir = %self.dir.display(), "could not write the Mosquitto accounts");
            } else {
                self.reload().await;
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                r = changes.changed() => if r.is_err() { return },
            }
            tokio::time::sleep(DEBOUNCE).await;
            changes.borrow_and_update();
        }
    }

    /// Both files, written to temporary names and renamed into place.
    pub fn write(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let rng = SystemRandom::new();
        let mut salt = [0u8; 12];
        let mut line = |user: &str, password: &str| -> anyhow::Result<String> {
            rng.fill(&mut salt)
                .map_err(|_| anyhow::anyhow!("no randomness"))?;
            Ok(password_line(user, password, &salt))
        };
        let mut passwd = vec![line(CONTROLLER_USER, &self.controller_password)?];
        let enroll = self.keys.enroll_passwords();
        let mut enroll_users = Vec::new();
        for (id, password) in &enroll {
            let user = enroll_user(id);
            passwd.push(line(&user, password)?);
            enroll_users.push(user);
        }
        for (id, key) in self.keys.all() {
            passwd.push(line(id.as_str(), &key.broker_password())?);
        }
        replace(
            &self.dir.join("passwd"),
            (passwd.join("\n") + "\n").as_bytes(),
        )?;
        replace(
            &self.dir.join("acl"),
            acl_text(&self.topics, &enroll_users).as_bytes(),
        )?;
        info!(dir = %self.dir.display(), nodes = passwd.len() - 1 - enroll.len(), "Mosquitto accounts written");
        Ok(())
    }

    async fn reload(&self) {
        let Some((program, args)) = self.reload.split_first() else {
            return;
        };
        match tokio::process::Command::new(program)
            .args(args)
            .status()
            .await
        {
            Ok(s) if s.success() => {}
            Ok(s) => {
                warn!(command = ?self.reload, status = %s, "the Mosquitto reload command failed")
            }
            Err(e) => {
                warn!(command = ?self.reload, error = %e, "the Mosquitto reload command did not run")
            }
        }
    }
}

/// Writes `path` whole (mode 0640: Mosquitto's group may read it).
fn replace(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    Ok(metalbus_link::files::write_atomic(path, bytes, 0o640)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_lines_are_what_mosquitto_passwd_writes() {
        // `mosquitto_passwd -b pw alice secret` (Mosquitto 2.0.11) wrote this line.
        let salt = base64::engine::general_purpose::STANDARD
            .decode("RPEu9UAzAmxprmnY")
            .unwrap();
        assert_eq!(
            password_line("alice", "secret", &salt),
            "alice:$7$101$RPEu9UAzAmxprmnY$ABmVBvbrVLtYLjRr+2SOsykITe0MhroPX12uC8Snawb6LsOfr4B288Zj7w3aRYlfQ0xJ4PqNNKGn1IOMKf8Mvg=="
        );
    }

    #[test]
    fn the_acl_binds_nodes_to_their_own_topics() {
        let acl = acl_text(&Topics::default(), &["metalbus-enroll.fleet".into()]);
        for line in [
            "user metalbus-controller",
            "topic readwrite metalbus/v1/#",
            "user metalbus-enroll.fleet",
            "topic write metalbus/v1/nodes/+/enroll",
            "topic read metalbus/v1/nodes/+/enrolled",
            "pattern write metalbus/v1/nodes/%u/status",
            "pattern read metalbus/v1/nodes/%u/commands",
        ] {
            assert!(acl.lines().any(|l| l == line), "missing {line:?}\n{acl}");
        }
        assert!(!acl.contains("pattern write metalbus/v1/nodes/%u/commands"));
        let conf = config_text(Path::new("/var/lib/metalbus/mosquitto"));
        assert!(conf.contains("allow_anonymous false"));
        assert!(conf.contains("password_file /var/lib/metalbus/mosquitto/passwd"));
    }
}
