//! Agent configuration: built-in defaults, then the TOML file, then flags (STYLE rule 8).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use metalbus_protocol::status::Status;
use serde::Deserialize;

pub use metalbus_link::LogFormat;
use metalbus_link::{duration, BrokerUrl};

/// The default config file; read only when it exists.
pub const DEFAULT_CONFIG: &str = "/etc/metalbus/agent.toml";

/// The agent's settings, fully resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub broker: BrokerUrl,
    /// PEM file of the CA certificates that sign an `mqtts://` broker's certificate; the
    /// system's roots when unset.
    pub broker_ca: Option<PathBuf>,
    /// Overrides the derived node id (DESIGN section 2).
    pub node_id: Option<String>,
    /// Where the agent keeps its connection counter and session.
    pub state_dir: PathBuf,
    /// The only place job scripts are run from.
    pub steps_dir: PathBuf,
    pub metrics_interval: Duration,
    /// Unreceipted reports are sent again after this long (DESIGN section 4).
    pub resend_after: Duration,
    pub prefix: String,
    /// Root under which `/sys`, `/proc` and `/etc` are read.
    pub root: PathBuf,
    pub log_format: LogFormat,
    /// What the agent runs for a `reboot` command: a program and its arguments (no
    /// shell). Empty: reboot commands are refused.
    pub reboot_command: Vec<String>,
    /// What the agent runs for a `poweroff` command; empty refuses them.
    pub poweroff_command: Vec<String>,
    /// The enrollment token itself (flag or `METALBUS_ENROLL_TOKEN`; never in a file
    /// that others might read).
    pub enroll_token: Option<String>,
    /// A file holding the enrollment token.
    pub enroll_token_file: Option<PathBuf>,
}

impl AgentConfig {
    /// The enrollment token, when one is configured; a malformed one is an error.
    pub fn enroll_token(&self) -> anyhow::Result<Option<metalbus_protocol::enroll::EnrollToken>> {
        if let Some(text) = &self.enroll_token {
            return Ok(Some(text.parse().context("in --enroll-token")?));
        }
        self.enroll_token_file
            .as_deref()
            .map(crate::credential::read_token)
            .transpose()
    }
}

/// The default power actions.
pub fn default_reboot_command() -> Vec<String> {
    vec!["systemctl".into(), "reboot".into()]
}

pub fn default_poweroff_command() -> Vec<String> {
    vec!["systemctl".into(), "poweroff".into()]
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            broker: BrokerUrl {
                tls: false,
                host: "127.0.0.1".into(),
                port: 1883,
            },
            broker_ca: None,
            node_id: None,
            state_dir: PathBuf::from("/var/lib/metalbus-agent"),
            steps_dir: PathBuf::from("/etc/metalbus/steps.d"),
            metrics_interval: Duration::from_secs(15),
            resend_after: Duration::from_secs(5),
            prefix: metalbus_protocol::DEFAULT_PREFIX.into(),
            root: PathBuf::from("/"),
            log_format: LogFormat::Text,
            reboot_command: default_reboot_command(),
            poweroff_command: default_poweroff_command(),
            enroll_token: None,
            enroll_token_file: None,
        }
    }
}

/// The file's keys; every one optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    pub broker: Option<String>,
    pub broker_ca: Option<PathBuf>,
    pub node_id: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub steps_dir: Option<PathBuf>,
    #[serde(default, with = "duration::option")]
    pub metrics_interval: Option<Duration>,
    #[serde(default, with = "duration::option")]
    pub resend_after: Option<Duration>,
    pub prefix: Option<String>,
    pub root: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    pub reboot_command: Option<Vec<String>>,
    pub poweroff_command: Option<Vec<String>>,
    pub enroll_token_file: Option<PathBuf>,
}

impl AgentFile {
    /// Reads `path`. A missing file is an error only when `required`.
    pub fn load(path: &Path, required: bool) -> anyhow::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Self::default())
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        toml::from_str(&text).with_context(|| format!("in config file {}", path.display()))
    }

    /// Lays the file's values over `cfg`.
    pub fn apply(self, cfg: &mut AgentConfig) -> anyhow::Result<()> {
        if let Some(b) = self.broker {
            cfg.broker = b.parse()?;
        }
        set(&mut cfg.broker_ca, self.broker_ca.map(Some));
        set(&mut cfg.node_id, self.node_id.map(Some));
        set(&mut cfg.state_dir, self.state_dir);
        set(&mut cfg.steps_dir, self.steps_dir);
        set(&mut cfg.metrics_interval, self.metrics_interval);
        set(&mut cfg.resend_after, self.resend_after);
        set(&mut cfg.prefix, self.prefix);
        set(&mut cfg.root, self.root);
        set(&mut cfg.log_format, self.log_format);
        set(&mut cfg.reboot_command, self.reboot_command);
        set(&mut cfg.poweroff_command, self.poweroff_command);
        set(&mut cfg.enroll_token_file, self.enroll_token_file.map(Some));
        Ok(())
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

/// Checks values that parse but cannot work.
pub fn check(cfg: &AgentConfig) -> anyhow::Result<()> {
    if cfg.metrics_interval < Duration::from_millis(100) {
        anyhow::bail!(
            "metrics_interval {} is too short; use at least 100ms",
            humantime::format_duration(cfg.metrics_interval)
        );
    }
    // Every birth announces it, and the controller refuses a birth with more than this:
    // the node would never come online.
    let longest = Duration::from_secs(u64::from(Status::MAX_METRICS_INTERVAL_S));
    if cfg.metrics_interval > longest {
        anyhow::bail!(
            "metrics_interval {} is too long; use at most {}",
            humantime::format_duration(cfg.metrics_interval),
            humantime::format_duration(longest)
        );
    }
    if cfg.resend_after < Duration::from_millis(100) {
        anyhow::bail!("resend_after must be at least 100ms");
    }
    metalbus_protocol::topic::Topics::new(cfg.prefix.clone())?;
    for (key, argv) in [
        ("reboot_command", &cfg.reboot_command),
        ("poweroff_command", &cfg.poweroff_command),
    ] {
        if argv.first().is_some_and(|p| p.trim().is_empty()) {
            anyhow::bail!("{key} must start with a program name (or be [] to refuse the command)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_values_override_defaults() {
        let file: AgentFile = toml::from_str(
            r#"broker = "mqtt://10.0.0.1:1884"
               node_id = "n1"
               metrics_interval = "5s"
               state_dir = "/tmp/x"
               log_format = "json""#,
        )
        .unwrap();
        let mut cfg = AgentConfig::default();
        file.apply(&mut cfg).unwrap();
        assert_eq!(cfg.broker.to_string(), "mqtt://10.0.0.1:1884");
        assert_eq!(cfg.node_id.as_deref(), Some("n1"));
        assert_eq!(cfg.metrics_interval, Duration::from_secs(5));
        assert_eq!(cfg.state_dir, PathBuf::from("/tmp/x"));
        assert_eq!(cfg.log_format, LogFormat::Json);
        assert_eq!(cfg.root, PathBuf::from("/"));
    }

    #[test]
    fn typos_and_bad_values_are_named() {
        let err = toml::from_str::<AgentFile>("brokr = \"mqtt://h\"").unwrap_err();
        assert!(err.to_string().contains("brokr"), "{err}");
        let err = toml::from_str::<AgentFile>("metrics_interval = \"often\"").unwrap_err();
        assert!(err.to_string().contains("often"), "{err}");
        let mut cfg = AgentConfig::default();
        let bad = AgentFile {
            broker: Some("http://x".into()),
            ..AgentFile::default()
        };
        assert!(bad.apply(&mut cfg).is_err());
        cfg.metrics_interval = Duration::from_millis(1);
        assert!(check(&cfg).is_err());
    }

    /// Found by the `agent_config` fuzz target (`agent/fuzz/artifacts/agent_config/`).
    #[test]
    fn a_metrics_interval_the_controller_refuses_is_refused() {
        let mut cfg = AgentConfig {
            metrics_interval: Duration::from_secs(24 * 3600),
            ..AgentConfig::default()
        };
        check(&cfg).unwrap();
        cfg.metrics_interval = Duration::from_secs(2 * 24 * 3600);
        let err = check(&cfg).unwrap_err().to_string();
        assert_eq!(err, "metrics_interval 2days is too long; use at most 1day");
    }

    #[test]
    fn the_shipped_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/agent.toml");
        let mut cfg = AgentConfig::default();
        AgentFile::load(&path, true)
            .unwrap()
            .apply(&mut cfg)
            .unwrap();
        check(&cfg).unwrap();
        assert_eq!(cfg.state_dir, PathBuf::from("/var/lib/metalbus-agent"));
    }

    #[test]
    fn power_commands_default_to_systemctl_and_take_an_argv() {
        let cfg = AgentConfig::default();
        assert_eq!(cfg.reboot_command, ["systemctl", "reboot"]);
        assert_eq!(cfg.poweroff_command, ["systemctl", "poweroff"]);
        let file: AgentFile = toml::from_str(
            r#"reboot_command = ["/usr/local/bin/reboot-host", "--now", "two words"]
               poweroff_command = []"#,
        )
        .unwrap();
        let mut cfg = AgentConfig::default();
        file.apply(&mut cfg).unwrap();
        check(&cfg).unwrap();
        assert_eq!(
            cfg.reboot_command,
            ["/usr/local/bin/reboot-host", "--now", "two words"]
        );
        assert!(cfg.poweroff_command.is_empty(), "[] disables poweroff");
        // A shell string is not an argv: refused by type, with the key named.
        let err = toml::from_str::<AgentFile>(r#"reboot_command = "systemctl reboot""#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("reboot_command"), "{err}");
        let err = toml::from_str::<AgentFile>(r#"reboot_cmd = ["x"]"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("reboot_cmd"), "{err}");
        cfg.reboot_command = vec![" ".into()];
        assert!(check(&cfg).is_err());
    }

    #[test]
    fn missing_file_is_fine_unless_required() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope.toml");
        assert!(AgentFile::load(&p, false).is_ok());
        assert!(AgentFile::load(&p, true).is_err());
    }
}
