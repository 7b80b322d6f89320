//! Entry points for fuzzing what the agent reads from outside besides the broker (issue
//! 12): its config file. What it reads from the broker has targets in the protocol
//! crate (`metalbus_protocol::fuzz`).
//!
//! `agent/fuzz/` runs them under libFuzzer; `cargo test` replays their corpus.

use metalbus_protocol::fuzz::Target;
use metalbus_protocol::status::{Birth, Status};
use metalbus_protocol::Timestamp;

use crate::collectors::identity;
use crate::config::{self, AgentConfig, AgentFile};

/// The targets, by name (the file names under `agent/fuzz/fuzz_targets/`).
pub const TARGETS: [(&str, Target); 1] = [("agent_config", config_file)];

/// The config file as `metalbus-agent run --config FILE` takes it: text (the loader's
/// `read_to_string` refuses bytes that are not UTF-8), then everything the agent does
/// with it before it touches the disk or the network; a refusal's message is made as
/// the agent prints it. What passes makes a birth the controller takes.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match resolve(text) {
        Err(e) => {
            let _ = format!("{e:#}");
        }
        Ok(cfg) => {
            // The birth announces the metrics interval, filled as `Core::publish_birth`
            // fills it: the controller must take it, or the node never comes online.
            let birth = Status::Birth(Birth {
                conn: 1,
                session: "0".repeat(32),
                agent_version: env!("CARGO_PKG_VERSION").to_string(),
                hostname: "host".to_string(),
                boot_id: None,
                metrics_interval_s: u32::try_from(cfg.metrics_interval.as_secs().max(1))
                    .unwrap_or(u32::MAX),
                ts: Timestamp::from_unix_millis(0),
                node_id: None,
                protocol: metalbus_protocol::PROTOCOL_VERSION,
            });
            assert_eq!(birth.validate(), Ok(()));
        }
    }
}

/// `AgentFile::load` after the read, `apply` over the defaults, then `Agent::prepare`'s
/// check and, when the file sets one, its node id.
fn resolve(text: &str) -> anyhow::Result<AgentConfig> {
    let file: AgentFile = toml::from_str(text)?;
    let mut cfg = AgentConfig::default();
    file.apply(&mut cfg)?;
    config::check(&cfg)?;
    if let Some(id) = cfg.node_id.as_deref() {
        identity::node_id(Some(id), &cfg.root)?;
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::TARGETS;

    /// Replays every corpus and crash file under `agent/fuzz/` through its target.
    #[test]
    fn the_fuzz_corpus_replays_without_a_panic() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let replayed = metalbus_protocol::fuzz::replay(&root, &TARGETS);
        assert!(replayed >= TARGETS.len(), "only {replayed} inputs replayed");
    }
}
