//! Broker URLs: `mqtt://HOST[:PORT]` and `mqtts://HOST[:PORT]`, with IPv6 in brackets.

use std::fmt;
use std::str::FromStr;

/// `mqtt://host[:port]` or `mqtts://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

/// Why a broker URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid broker URL {url:?}: {why} (expected mqtt://HOST:PORT or mqtts://HOST:PORT)")]
pub struct BrokerUrlError {
    url: String,
    why: String,
}

impl FromStr for BrokerUrl {
    type Err = BrokerUrlError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let fail = |why: &str| BrokerUrlError {
            url: url.to_string(),
            why: why.to_string(),
        };
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else {
            return Err(fail("unknown scheme"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('@') {
            return Err(fail("paths and credentials do not belong in the URL"));
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| fail("unclosed '['"))?;
            match after.strip_prefix(':') {
                Some(p) => (h, p.parse().map_err(|_| fail("bad port"))?),
                None if after.is_empty() => (h, default_port),
                None => return Err(fail("junk after ']'")),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, p.parse().map_err(|_| fail("bad port"))?),
                None => (rest, default_port),
            }
        };
        if host.is_empty() {
            return Err(fail("no host"));
        }
        if port == 0 {
            return Err(fail("port 0"));
        }
        Ok(BrokerUrl {
            tls,
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_broker_urls() {
        let cases = [
            ("mqtt://127.0.0.1:1883", false, "127.0.0.1", 1883),
            ("mqtt://broker", false, "broker", 1883),
            ("mqtts://broker.example", true, "broker.example", 8883),
            ("mqtts://broker:9999/", true, "broker", 9999),
            ("mqtt://[::1]:1884", false, "::1", 1884),
            ("mqtt://[::1]", false, "::1", 1883),
        ];
        for (url, tls, host, port) in cases {
            let u: BrokerUrl = url.parse().unwrap();
            assert_eq!((u.tls, u.host.as_str(), u.port), (tls, host, port), "{url}");
        }
        assert_eq!(
            "mqtt://[::1]:1884"
                .parse::<BrokerUrl>()
                .unwrap()
                .to_string(),
            "mqtt://[::1]:1884"
        );
    }

    #[test]
    fn refuses_bad_broker_urls() {
        for bad in [
            "",
            "tcp://h:1",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:99999",
            "mqtt://h:x",
            "mqtt://user:pw@h",
            "mqtt://h/topic",
            "mqtt://[::1",
            "127.0.0.1:1883",
            "mqtt://h:\u{ff11}\u{ff18}\u{ff18}\u{ff13}",
            "mqtt://h:-1",
            "mqtt://h:65536",
            "mqtt://[::1]:x",
            "mqtts://",
        ] {
            assert!(bad.parse::<BrokerUrl>().is_err(), "{bad:?}");
        }
        // A huge one is refused too, without a panic.
        let huge = format!("mqtt://{}:1883/x", "h".repeat(1 << 20));
        assert!(huge.parse::<BrokerUrl>().is_err());
        for multibyte in ["mqtt://\u{e4}\u{f6}\u{fc}:1883", "mqtt://\u{1F600}"] {
            // Parsed (the name resolves or not at connect time), never split mid-character.
            let _ = multibyte.parse::<BrokerUrl>();
        }
    }
}
