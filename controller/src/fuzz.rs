//! Entry points for fuzzing the controller's own decoding of network bytes (issue 12):
//! ingest (behind the origin proof, which the `ingest` target can add) and the front
//! door's MQTT packet decoding and checks. The protocol's decoders have targets of their
//! own (`metalbus_protocol::fuzz`).
//!
//! `controller/fuzz/` runs them under libFuzzer; `cargo test` replays their corpus.

use metalbus_protocol::proof::{self, NodeKey};
use metalbus_protocol::topic::Topics;
use metalbus_protocol::{NodeId, MAX_COUNTER};

use crate::door;
use crate::ingest;
use crate::security::Keyring;

use metalbus_protocol::fuzz::Target;

/// The targets, by name (the file names under `controller/fuzz/fuzz_targets/`).
pub const TARGETS: [(&str, Target); 2] = [("ingest", ingest_message), ("mqtt_packet", mqtt_packet)];

const KINDS: [&str; 8] = [
    "status",
    "inventory",
    "metrics",
    "reports",
    "enroll",
    "commands",
    "rejects",
    "x/../status",
];

/// The first byte picks the topic kind (low bits) and whether the payload is sealed
/// with node n1's key (high bit), so the fuzzer reaches past the proof.
pub fn ingest_message(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let topic = format!(
        "metalbus/v1/nodes/n1/{}",
        KINDS[usize::from(pick) % KINDS.len()]
    );
    let key = NodeKey::from_bytes([3; 32]);
    let payload = match pick & 0x80 {
        0 => body.to_vec(),
        _ => proof::seal(&key, &topic, body).unwrap_or_else(|_| body.to_vec()),
    };
    let keys = Keyring::default();
    if let Ok(id) = NodeId::new("n1") {
        keys.set(id, key);
    }
    if let Err(r) = ingest::decode(&Topics::default(), &keys, &topic, &payload) {
        if let Some(place) = &r.place {
            assert!((1..=MAX_COUNTER).contains(&place.seq));
            assert!(!place.session.is_empty());
        }
    }
}

/// Bytes a client sends the front door after its CONNECT: decoded packet by packet, each
/// checked for a node and for a monitor, and what passes encoded again.
pub fn mqtt_packet(data: &[u8]) {
    door::fuzz_packets(data);
}

#[cfg(test)]
mod tests {
    use super::TARGETS;

    /// Replays every corpus and crash file under `controller/fuzz/` through its target.
    #[test]
    fn the_fuzz_corpus_replays_without_a_panic() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let replayed = metalbus_protocol::fuzz::replay(&root, &TARGETS);
        assert!(replayed >= TARGETS.len(), "only {replayed} inputs replayed");
    }
}
