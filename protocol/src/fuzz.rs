//! Entry points for fuzzing every decoder that takes bytes from outside (issue 12).
//!
//! `protocol/fuzz/` runs them under libFuzzer (`cargo +nightly fuzz run TARGET`), and
//! `cargo test` replays their corpus through the same functions (the test below), so a
//! crash once found stays found. Each takes arbitrary bytes and must never panic.

use crate::command::{Command, CommandId};
use crate::controller::Receipt;
use crate::enroll::EnrollToken;
use crate::inventory::Inventory;
use crate::metrics::MetricsSample;
use crate::proof::{self, NodeKey};
use crate::report::Report;
use crate::status::Status;
use crate::topic::Topics;
use crate::{NodeId, Timestamp};

/// A fuzz target: takes any bytes, and panics only on a bug.
pub type Target = fn(&[u8]);

/// The targets, by name (the file names under `protocol/fuzz/fuzz_targets/`).
pub const TARGETS: [(&str, Target); 4] = [
    ("agent_message", agent_message),
    ("controller_message", controller_message),
    ("text", text),
    ("proof", sealed),
];

/// What an agent sends: the first byte picks the topic kind, the rest is the payload.
/// Decoded, validated, and (when valid) written back and read again unchanged.
pub fn agent_message(data: &[u8]) {
    let Some((&kind, payload)) = data.split_first() else {
        return;
    };
    match kind % 4 {
        0 => {
            if let Ok(s) = serde_json::from_slice::<Status>(payload) {
                if s.validate().is_ok() {
                    let again = s.to_json().expect("a valid status encodes");
                    let back: Status = serde_json::from_slice(&again).expect("and decodes");
                    assert_eq!(back.conn(), s.conn());
                }
            }
        }
        1 => {
            if let Ok(i) = serde_json::from_slice::<Inventory>(payload) {
                let _ = i.validate();
            }
        }
        2 => {
            if let Ok(m) = serde_json::from_slice::<MetricsSample>(payload) {
                let _ = m.validate();
            }
        }
        _ => {
            if let Ok(mut r) = serde_json::from_slice::<Report>(payload) {
                let _ = r.validate();
                // Fitting makes any report with a sound place one the controller takes.
                r.fit();
                let placeable = (1..=crate::MAX_COUNTER).contains(&r.seq)
                    && (1..=crate::MAX_SESSION_BYTES).contains(&r.session.len());
                if placeable {
                    assert_eq!(r.validate(), Ok(()));
                }
            }
        }
    }
}

/// What the controller sends an agent (a hostile broker may send anything).
pub fn controller_message(data: &[u8]) {
    if let Ok(c) = serde_json::from_slice::<Command>(data) {
        let _ = c.validate();
        let _ = c.command_id.is_valid();
    }
    let _ = serde_json::from_slice::<Receipt>(data);
}

/// Short texts from the network: timestamps, ids, topics, tokens.
pub fn text(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = Timestamp::parse(s) {
        let again = Timestamp::parse(&t.to_string()).expect("a printed timestamp parses");
        assert_eq!(again, t);
    }
    if let Ok(id) = NodeId::new(s) {
        assert_eq!(id.as_str(), s);
    }
    let _ = CommandId::new(s);
    let _ = Topics::default().parse(s);
    let _ = s.parse::<EnrollToken>();
}

/// A sealed payload: opening never panics, and sealing then opening always holds.
pub fn sealed(data: &[u8]) {
    let key = NodeKey::from_bytes([7; 32]);
    let topic = "metalbus/v1/nodes/n1/reports";
    let _ = proof::open(&key, topic, data);
    if let Ok(s) = proof::seal(&key, topic, data) {
        assert_eq!(proof::open(&key, topic, &s), Ok(()));
        assert!(proof::open(&key, "metalbus/v1/nodes/n2/reports", &s).is_err());
    }
}

/// Runs every corpus and crash file under `root/{corpus,artifacts}/TARGET/` through its
/// target, for the `cargo test` replay of each crate's fuzz corpus; the number run.
pub fn replay(root: &std::path::Path, targets: &[(&str, Target)]) -> usize {
    let mut replayed = 0;
    for (name, target) in targets {
        for dir in ["corpus", "artifacts"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                continue;
            };
            for entry in entries.flatten() {
                if let Ok(bytes) = std::fs::read(entry.path()) {
                    target(&bytes);
                    replayed += 1;
                }
            }
        }
    }
    replayed
}

#[cfg(test)]
mod tests {
    use super::{replay, TARGETS};

    #[test]
    fn the_fuzz_corpus_replays_without_a_panic() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let replayed = replay(&root, &TARGETS);
        assert!(replayed >= TARGETS.len(), "only {replayed} inputs replayed");
    }
}
