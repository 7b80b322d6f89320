//! Entry points for fuzzing the controller's own decoding of outside bytes (issue 12):
//! ingest (behind the origin proof, which the `ingest` target can add), the front
//! door's MQTT packet decoding and checks, the config file `serve` reads, and the HTTP
//! API's request bodies. The protocol's decoders have targets of their own
//! (`metalbus_protocol::fuzz`).
//!
//! `controller/fuzz/` runs them under libFuzzer; `cargo test` replays their corpus.

use std::fmt::Debug;

use axum::response::IntoResponse;
use metalbus_protocol::api::{
    ManageRequest, NodeUpdateRequest, RegisterRequest, StateChange, TokenRequest,
};
use metalbus_protocol::enroll::{valid_token_id, EnrollToken};
use metalbus_protocol::proof::{self, NodeKey};
use metalbus_protocol::topic::Topics;
use metalbus_protocol::{NodeId, Timestamp, MAX_COUNTER};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::admin::{NewToken, MAX_TOKEN_TTL};
use crate::api::error::ApiError;
use crate::api::{extract, lifecycle};
use crate::config::{ControllerConfig, ControllerFile};
use crate::door;
use crate::ingest;
use crate::security::Keyring;

use metalbus_protocol::fuzz::Target;

/// The targets, by name (the file names under `controller/fuzz/fuzz_targets/`).
pub const TARGETS: [(&str, Target); 4] = [
    ("ingest", ingest_message),
    ("mqtt_packet", mqtt_packet),
    ("config", config_file),
    ("http_body", http_body),
];

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

/// The config file as `metalbus serve --config FILE` takes it: text (the loader's
/// `read_to_string` refuses bytes that are not UTF-8), then everything `serve` does
/// before it opens anything; a refusal's message is made as the daemon prints it. What
/// passes has plans the agent takes.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match resolve(text) {
        Err(e) => {
            let _ = format!("{e:#}");
        }
        Ok(cfg) => {
            for name in cfg.plans.keys() {
                let plan = cfg
                    .pick_plan(Some(name))
                    .expect("a configured plan is found");
                assert_eq!(plan.validate(), Ok(()));
            }
            assert_eq!(cfg.deprovision_plan().validate(), Ok(()));
            let _ = cfg.pick_plan(None);
        }
    }
}

/// `ControllerFile::load` after the read, `apply` over the defaults, then `serve::run`'s
/// own checks.
fn resolve(text: &str) -> anyhow::Result<ControllerConfig> {
    let file: ControllerFile = toml::from_str(text)?;
    let mut cfg = ControllerConfig::default();
    file.apply(&mut cfg)?;
    cfg.check()?;
    Topics::new(cfg.prefix.clone())?;
    Ok(cfg)
}

/// Every API route that reads a request body, as `API_ROUTES` names it, with what reads
/// it; the `http_body` target's first byte picks one.
pub const BODY_ROUTES: [(&str, &str, Target); 6] = [
    ("post", "/api/v1/nodes", register_body),
    ("post", "/api/v1/campaigns", campaign_body),
    ("patch", "/api/v1/nodes/{node}", update_body),
    ("patch", "/api/v1/nodes/{node}/state", state_body),
    ("post", "/api/v1/nodes/{node}/manage", manage_body),
    ("post", "/api/v1/tokens", token_body),
];

/// The POST routes whose handlers read no body (whatever is sent is ignored).
pub const BODYLESS_ROUTES: [&str; 9] = [
    "/api/v1/nodes/{node}/unmanage",
    "/api/v1/campaigns/{id}/pause",
    "/api/v1/campaigns/{id}/resume",
    "/api/v1/campaigns/{id}/cancel",
    "/api/v1/nodes/{node}/retry",
    "/api/v1/nodes/{node}/reboot",
    "/api/v1/nodes/{node}/poweroff",
    "/api/v1/nodes/{node}/wake",
    "/api/v1/nodes/{node}/revoke",
];

/// A request body for the route the first byte picks: decoded as its handler's
/// extractor decodes it, then checked as the handler checks it before the engine.
pub fn http_body(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let (_, _, decode) = BODY_ROUTES[usize::from(pick) % BODY_ROUTES.len()];
    decode(body);
}

/// What `ApiJson` does once the content type is right: axum's decoding, and the 400
/// made from its refusal.
fn api_json<T: DeserializeOwned>(body: &[u8]) -> Option<T> {
    match axum::Json::<T>::from_bytes(body) {
        Ok(axum::Json(value)) => Some(value),
        Err(e) => {
            refused(ApiError::BadRequest(e.body_text()));
            None
        }
    }
}

/// The answer a refused body gets.
fn refused(e: ApiError) {
    let _ = e.into_response();
}

/// A body the API reads is one the CLI can send: it encodes, and decodes to itself.
fn round_trips<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) {
    let json = serde_json::to_vec(value).expect("a decoded body encodes");
    let back: T = serde_json::from_slice(&json).expect("and decodes again");
    assert_eq!(&back, value);
}

/// `POST /nodes`: the hints are checked; checked hints check again to themselves.
fn register_body(body: &[u8]) {
    let Some(req) = api_json::<RegisterRequest>(body) else {
        return;
    };
    round_trips(&req);
    match lifecycle::registration(req) {
        Err(e) => refused(e),
        Ok(reg) => {
            let hints = reg.hints;
            let again = RegisterRequest {
                name: reg.name,
                mac: hints.mac.clone(),
                ip: hints.ip.map(|ip| ip.to_string()),
                hostname: hints.hostname.clone(),
                labels: reg.labels,
                group: reg.group,
                enroll_token: false,
            };
            assert_eq!(again.hints(), Ok(hints));
        }
    }
}

/// `PATCH /nodes/{node}`: the handler checks nothing itself (the engine checks names
/// and labels).
fn update_body(body: &[u8]) {
    if let Some(req) = api_json::<NodeUpdateRequest>(body) {
        round_trips(&req);
    }
}

/// `PATCH /nodes/{node}/state`: only the caller's role depends on it.
fn state_body(body: &[u8]) {
    if let Some(req) = api_json::<StateChange>(body) {
        round_trips(&req);
    }
}

/// `POST /nodes/{node}/manage`: an optional body (`OptionalJson`).
fn manage_body(body: &[u8]) {
    match extract::optional_json::<ManageRequest>(body) {
        Ok(req) => round_trips(&req),
        Err(e) => refused(e),
    }
}

/// `POST /campaigns`: a request that passes its checks has numbers in range and a
/// selector the node filter takes (or refuses with a message).
fn campaign_body(body: &[u8]) {
    use metalbus_protocol::campaign::{CampaignRequest, MAX_CONCURRENT, MAX_NODES};
    let Some(req) = api_json::<CampaignRequest>(body) else {
        return;
    };
    round_trips(&req);
    match req.check() {
        Err(e) => refused(ApiError::BadRequest(e)),
        Ok(()) => {
            assert!(req
                .max_concurrent
                .is_none_or(|n| (1..=MAX_CONCURRENT).contains(&n)));
            assert!(req
                .max_per_minute
                .is_none_or(|n| (1..=MAX_CONCURRENT).contains(&n)));
            assert!(req.abort.failure_ratio.is_none_or(|r| r > 0.0 && r <= 1.0));
            assert!(req.selector.nodes.len() <= MAX_NODES);
            assert!(req.selector.has_filters() == req.selector.nodes.is_empty());
            if let Err(e) = crate::api::nodes::NodeFilter::from_selector(&req.selector) {
                refused(ApiError::BadRequest(e));
            }
        }
    }
}

/// `POST /tokens`: what passes makes a token whose text the agent reads back, with an
/// expiry the API can write.
fn token_body(body: &[u8]) {
    let Some(req) = api_json::<TokenRequest>(body) else {
        return;
    };
    round_trips(&req);
    match NewToken::check(req) {
        Err(e) => refused(e),
        Ok(NewToken::Api { name, .. }) => {
            assert!((1..=64).contains(&name.len()));
            assert!(!name.chars().any(char::is_control));
        }
        Ok(NewToken::Enroll { name, ttl, .. }) => {
            assert!(valid_token_id(&name));
            let token = EnrollToken {
                anchor: [1; 32],
                id: name,
                secret: [2; 32],
            };
            assert_eq!(token.to_string().parse::<EnrollToken>(), Ok(token));
            if let Some(ttl) = ttl {
                assert!(ttl <= MAX_TOKEN_TTL);
                let expires = Timestamp::from_unix_millis(1_767_225_600_000).plus(ttl);
                assert_eq!(Timestamp::parse(&expires.to_string()), Ok(expires));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{BODYLESS_ROUTES, BODY_ROUTES, TARGETS};

    /// The `http_body` target covers every route that takes a body: a new POST, PUT or
    /// PATCH route is listed in `BODY_ROUTES` or `BODYLESS_ROUTES` before this passes.
    #[test]
    fn every_route_with_a_body_is_fuzzed() {
        for (method, path) in crate::api::API_ROUTES {
            if !matches!(*method, "post" | "put" | "patch") {
                continue;
            }
            let fuzzed = BODY_ROUTES.iter().any(|(m, p, _)| m == method && p == path);
            assert!(
                fuzzed || BODYLESS_ROUTES.contains(path),
                "{method} {path} is not in BODY_ROUTES or BODYLESS_ROUTES"
            );
        }
        for (method, path, _) in BODY_ROUTES {
            assert!(
                crate::api::API_ROUTES.contains(&(method, path)),
                "{method} {path}"
            );
        }
    }

    /// Replays every corpus and crash file under `controller/fuzz/` through its target.
    #[test]
    fn the_fuzz_corpus_replays_without_a_panic() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let replayed = metalbus_protocol::fuzz::replay(&root, &TARGETS);
        assert!(replayed >= TARGETS.len(), "only {replayed} inputs replayed");
    }
}
