//! Matching an unknown agent to a pre-registered node (DESIGN section 8, seed 003): by
//! MAC (any inventory NIC), then by IP, then by hostname prefix. Records already claimed
//! are skipped; between several candidates of the same rule the newest registration
//! wins. Pure: the engine supplies the candidates and applies the result.

use std::collections::HashSet;
use std::net::IpAddr;

use metalbus_protocol::inventory::Inventory;
use metalbus_protocol::{NodeId, Timestamp};

/// What an operator said about a node before its agent appeared.
pub use metalbus_protocol::api::MatchHints as Hints;

/// A `registered` node that may be claimed.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub id: &'a NodeId,
    pub hints: &'a Hints,
    pub registered_at: Timestamp,
}

/// What an unknown agent told about itself (birth and inventory).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentFacts {
    pub macs: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub hostname: Option<String>,
}

impl AgentFacts {
    /// From the birth's hostname and, when it has arrived, the inventory.
    pub fn new(hostname: &str, inventory: Option<&Inventory>) -> Self {
        let mut facts = AgentFacts {
            hostname: Some(hostname.to_string()).filter(|h| !h.is_empty()),
            ..AgentFacts::default()
        };
        for nic in inventory.iter().flat_map(|i| &i.nics) {
            if let Some(mac) = &nic.mac {
                facts.macs.push(mac.to_ascii_lowercase());
            }
            facts.ips.extend(nic.ipv4.iter().copied().map(IpAddr::V4));
            facts.ips.extend(nic.ipv6.iter().copied().map(IpAddr::V6));
        }
        facts
    }
}

/// Which rule matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchedBy {
    /// The agent enrolled with the registration's own one-use token.
    Token,
    Mac,
    Ip,
    Hostname,
}

impl MatchedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchedBy::Token => "enrollment token",
            MatchedBy::Mac => "mac",
            MatchedBy::Ip => "ip",
            MatchedBy::Hostname => "hostname",
        }
    }
}

/// A matching rule: its name and its test of a record's hints.
type Rule<'a> = (MatchedBy, &'a dyn Fn(&Hints) -> bool);

/// The record `agent` claims, if any, and by which rule.
pub fn pick(
    candidates: &[Candidate<'_>],
    agent: &AgentFacts,
    claimed: &HashSet<NodeId>,
) -> Option<(NodeId, MatchedBy)> {
    let rules: [Rule<'_>; 3] = [
        (MatchedBy::Mac, &|h: &Hints| {
            h.mac
                .as_deref()
                .is_some_and(|m| agent.macs.iter().any(|a| a.eq_ignore_ascii_case(m)))
        }),
        (MatchedBy::Ip, &|h: &Hints| {
            h.ip.is_some_and(|ip| agent.ips.contains(&ip))
        }),
        (
            MatchedBy::Hostname,
            &|h: &Hints| match (&h.hostname, &agent.hostname) {
                (Some(prefix), Some(host)) => hostname_matches(prefix, host),
                _ => false,
            },
        ),
    ];
    for (by, matches) in rules {
        let newest = candidates
            .iter()
            .filter(|c| !claimed.contains(c.id) && matches(c.hints))
            .max_by(|a, b| {
                a.registered_at
                    .cmp(&b.registered_at)
                    // Same instant: a stable choice, the smaller id.
                    .then_with(|| b.id.cmp(a.id))
            });
        if let Some(c) = newest {
            return Some((c.id.clone(), by));
        }
    }
    None
}

/// `prefix` matches `hostname` when it is the whole hostname or is followed by `-` or
/// `.` in it (case-insensitive). A hostname shorter than the prefix never matches, and
/// `web-1` does not match `web-10`.
/// Compared as bytes: a prefix's length may fall inside a multibyte character of the
/// hostname (`web` against `w€b`), where a `str` cannot be split.
pub fn hostname_matches(prefix: &str, hostname: &str) -> bool {
    let (prefix, hostname) = (prefix.as_bytes(), hostname.as_bytes());
    if prefix.is_empty() || hostname.len() < prefix.len() {
        return false;
    }
    let (head, rest) = hostname.split_at(prefix.len());
    head.eq_ignore_ascii_case(prefix) && matches!(rest.first(), None | Some(b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn hints(mac: Option<&str>, ip: Option<&str>, hostname: Option<&str>) -> Hints {
        Hints {
            mac: mac.map(String::from),
            ip: ip.map(|i| i.parse().unwrap()),
            hostname: hostname.map(String::from),
        }
    }

    fn agent(macs: &[&str], ips: &[&str], hostname: &str) -> AgentFacts {
        AgentFacts {
            macs: macs.iter().map(|m| m.to_string()).collect(),
            ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
            hostname: Some(hostname.into()),
        }
    }

    /// Records (id, hints, registered at second n).
    fn pick_from(
        records: &[(&str, Hints, i64)],
        a: &AgentFacts,
        claimed: &[&str],
    ) -> Option<(String, MatchedBy)> {
        let ids: Vec<NodeId> = records.iter().map(|r| id(r.0)).collect();
        let candidates: Vec<Candidate<'_>> = records
            .iter()
            .zip(&ids)
            .map(|(r, id)| Candidate {
                id,
                hints: &r.1,
                registered_at: Timestamp::from_unix_millis(r.2 * 1000),
            })
            .collect();
        let claimed: HashSet<NodeId> = claimed.iter().map(|c| id(c)).collect();
        pick(&candidates, a, &claimed).map(|(id, by)| (id.to_string(), by))
    }

    #[test]
    fn success_by_hostname_prefix() {
        let records = [("r1", hints(None, None, Some("my-node")), 1)];
        let got = pick_from(&records, &agent(&[], &[], "my-node-k8s-worker"), &[]);
        assert_eq!(got, Some(("r1".into(), MatchedBy::Hostname)));
    }

    #[test]
    fn success_by_ip() {
        let records = [("r1", hints(None, Some("10.0.0.7"), None), 1)];
        let a = agent(&["aa:bb:cc:dd:ee:ff"], &["192.168.1.2", "10.0.0.7"], "x");
        assert_eq!(
            pick_from(&records, &a, &[]),
            Some(("r1".into(), MatchedBy::Ip))
        );
        let v6 = [("r6", hints(None, Some("fd00::7"), None), 1)];
        let a6 = agent(&[], &["fd00::7"], "x");
        assert_eq!(pick_from(&v6, &a6, &[]), Some(("r6".into(), MatchedBy::Ip)));
    }

    #[test]
    fn success_by_mac_on_any_nic_whatever_the_case() {
        let records = [("r1", hints(Some("AA:BB:CC:00:00:02"), None, None), 1)];
        let a = agent(&["aa:bb:cc:00:00:01", "aa:bb:cc:00:00:02"], &[], "x");
        assert_eq!(
            pick_from(&records, &a, &[]),
            Some(("r1".into(), MatchedBy::Mac))
        );
    }

    #[test]
    fn mac_beats_ip_beats_hostname_even_when_older() {
        let records = [
            ("by-host", hints(None, None, Some("web")), 30),
            ("by-ip", hints(None, Some("10.0.0.7"), None), 20),
            ("by-mac", hints(Some("aa:bb:cc:00:00:01"), None, None), 10),
        ];
        let a = agent(&["aa:bb:cc:00:00:01"], &["10.0.0.7"], "web-1");
        assert_eq!(
            pick_from(&records, &a, &[]),
            Some(("by-mac".into(), MatchedBy::Mac))
        );
        assert_eq!(
            pick_from(&records, &a, &["by-mac"]),
            Some(("by-ip".into(), MatchedBy::Ip))
        );
        assert_eq!(
            pick_from(&records, &a, &["by-mac", "by-ip"]),
            Some(("by-host".into(), MatchedBy::Hostname))
        );
    }

    #[test]
    fn no_candidates_no_match() {
        assert_eq!(pick_from(&[], &agent(&[], &[], "web-1"), &[]), None);
        let records = [(
            "r1",
            hints(Some("aa:bb:cc:00:00:09"), Some("10.0.0.9"), Some("db")),
            1,
        )];
        let a = agent(&["aa:bb:cc:00:00:01"], &["10.0.0.7"], "web-1");
        assert_eq!(pick_from(&records, &a, &[]), None);
    }

    #[test]
    fn hostname_prefix_rules() {
        assert!(hostname_matches("my-node", "my-node"), "exact");
        assert!(hostname_matches("my-node", "my-node-k8s-worker"), "prefix");
        assert!(
            hostname_matches("my-node", "my-node.rack1.example"),
            "domain"
        );
        assert!(hostname_matches("My-Node", "my-node-1"), "case");
        assert!(!hostname_matches("my-node", "my"), "a shorter hostname");
        assert!(!hostname_matches("my-node", "my-nodes"), "no separator");
        assert!(!hostname_matches("web-1", "web-10"), "web-1 is not web-10");
        assert!(
            !hostname_matches("my-node", "other-my-node"),
            "not a prefix"
        );
        assert!(!hostname_matches("", "anything"), "empty prefix");
        // A prefix whose length ends inside a multibyte character: no panic, no match.
        assert!(!hostname_matches("web", "w€b"));
        assert!(!hostname_matches("w€", "w€b"));
        assert!(hostname_matches("w€b", "w€b-1"));
        assert!(!hostname_matches("€", "é"));
    }

    #[test]
    fn a_record_claimed_by_another_is_skipped() {
        let records = [("r1", hints(None, None, Some("web")), 1)];
        let a = agent(&[], &[], "web-1");
        assert_eq!(pick_from(&records, &a, &["r1"]), None);
        assert_eq!(
            pick_from(&records, &a, &["r2"]),
            Some(("r1".into(), MatchedBy::Hostname)),
            "a claim on another record changes nothing"
        );
    }

    #[test]
    fn between_several_candidates_the_newest_registration_wins() {
        let records = [
            ("old", hints(None, None, Some("web")), 10),
            ("newest", hints(None, None, Some("web")), 30),
            ("middle", hints(None, None, Some("web")), 20),
        ];
        let a = agent(&[], &[], "web-7");
        assert_eq!(
            pick_from(&records, &a, &[]),
            Some(("newest".into(), MatchedBy::Hostname))
        );
        assert_eq!(
            pick_from(&records, &a, &["newest"]),
            Some(("middle".into(), MatchedBy::Hostname))
        );
        let tie = [
            ("b", hints(None, None, Some("web")), 5),
            ("a", hints(None, None, Some("web")), 5),
        ];
        assert_eq!(
            pick_from(&tie, &a, &[]),
            Some(("a".into(), MatchedBy::Hostname)),
            "a tie goes to the smaller id, every time"
        );
    }

    #[test]
    fn facts_come_from_the_birth_and_every_nic() {
        let inv: Inventory = serde_json::from_value(serde_json::json!({
            "hostname": "h", "system": {}, "cpu": {}, "memory": {}, "disks": [], "os": {},
            "nics": [
                {"name": "eno1", "mac": "AA:BB:CC:00:00:01", "ipv4": ["10.0.0.7"], "ipv6": ["fd00::7"]},
                {"name": "eno2", "mac": null}
            ]
        }))
        .unwrap();
        let f = AgentFacts::new("web-1", Some(&inv));
        assert_eq!(f.macs, vec!["aa:bb:cc:00:00:01"]);
        assert_eq!(
            f.ips,
            vec![
                "10.0.0.7".parse::<IpAddr>().unwrap(),
                "fd00::7".parse().unwrap()
            ]
        );
        assert_eq!(f.hostname.as_deref(), Some("web-1"));
        assert_eq!(AgentFacts::new("", None), AgentFacts::default());
    }
}
