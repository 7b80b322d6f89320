//! The MQTT link settings shared by the agent and the controller: broker URLs, client
//! options (packet limits, TLS with rustls + ring), and the reconnect backoff.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Once};
use std::time::Duration;

use rand::Rng;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// Largest MQTT packet either side sends or accepts. Inventories of big machines pass
/// rumqttc's 10 KiB default; the controller refuses payloads over 256 KiB itself, so this
/// limit only has to be comfortably above that (and above the 1 MiB garbage tests send).
pub const MAX_PACKET_BYTES: usize = 4 * 1024 * 1024;

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

/// Installs rustls' ring provider as the process default, once. No aws-lc-rs anywhere.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // An error means another provider is installed already; that one is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Why the TLS settings for an `mqtts://` broker cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("a broker CA file ({0}) is set but the broker URL {1} is plain mqtt://; use mqtts://")]
    CaWithoutTls(PathBuf, BrokerUrl),
    #[error("cannot read the broker CA file {0}: {1}")]
    CaUnreadable(PathBuf, String),
    #[error("the broker CA file {0} holds no usable PEM certificate")]
    CaEmpty(PathBuf),
    #[error("no usable root certificate found on this system for {0}; set a broker CA file")]
    NoSystemRoots(BrokerUrl),
    #[error("cannot set up TLS: {0}")]
    Setup(String),
}

/// Where the broker is and how to reach it: the URL and, for `mqtts://`, the TLS client
/// settings. Those are built once, when the process starts, so a bad CA file stops
/// start-up with a clear error instead of failing every reconnect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: BrokerUrl,
    tls: Option<Arc<ClientConfig>>,
}

impl Endpoint {
    /// `ca_file` is a PEM file of the CA certificates that sign the broker's certificate;
    /// without it an `mqtts://` broker is checked against the system's roots.
    pub fn new(url: BrokerUrl, ca_file: Option<&Path>) -> Result<Self, TlsError> {
        if !url.tls {
            if let Some(ca) = ca_file {
                return Err(TlsError::CaWithoutTls(ca.to_path_buf(), url));
            }
            return Ok(Self { url, tls: None });
        }
        let roots = match ca_file {
            Some(path) => file_roots(path)?,
            None => system_roots(&url)?,
        };
        install_crypto_provider();
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Setup(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        Ok(Self {
            url,
            tls: Some(Arc::new(config)),
        })
    }

    /// rumqttc options for `client_id`, with raised packet limits, a clean session and a
    /// 30 s keep-alive.
    pub fn options(&self, client_id: &str) -> MqttOptions {
        let mut opts = MqttOptions::new(client_id, self.url.host.clone(), self.url.port);
        opts.set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
        if let Some(tls) = &self.tls {
            opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        opts
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.url.fmt(f)
    }
}

fn file_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let unreadable =
        |e: &dyn fmt::Display| TlsError::CaUnreadable(path.to_path_buf(), e.to_string());
    let pem = std::fs::read(path).map_err(|e| unreadable(&e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(&e))?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsError::CaEmpty(path.to_path_buf()));
    }
    Ok(roots)
}

fn system_roots(url: &BrokerUrl) -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "skipping part of the system's root certificates");
    }
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(TlsError::NoSystemRoots(url.clone()));
    }
    Ok(roots)
}

/// Sends DISCONNECT, which makes the broker drop the Will, and drives the event loop until
/// it is written or `within` passes.
pub async fn disconnect(client: &AsyncClient, eventloop: &mut EventLoop, within: Duration) {
    if client.try_disconnect().is_err() {
        return;
    }
    let _ = tokio::time::timeout(within, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// Capped exponential backoff with jitter: the n-th delay is drawn uniformly from
/// `[d/2, d]` where `d = min(cap, base * 2^n)`. Jitter keeps a rack of agents that lost
/// the broker together from reconnecting in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The ceiling of the next delay, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay, and one step up.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + Duration::from_secs_f64(rng.gen::<f64>() * half.as_secs_f64())
    }

    /// Back to the shortest delay, after a successful connect.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

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
        ] {
            assert!(bad.parse::<BrokerUrl>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_inside_bounds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let ceilings: Vec<u128> = (0..7)
            .map(|_| {
                let c = b.ceiling();
                let d = b.next_delay(&mut rng);
                assert!(d >= c / 2 && d <= c, "{d:?} outside [{:?}, {c:?}]", c / 2);
                c.as_millis()
            })
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000, 1000]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
        // Many attempts never overflow.
        for _ in 0..100 {
            b.next_delay(&mut rng);
        }
        assert_eq!(b.ceiling(), Duration::from_secs(1));
    }

    #[test]
    fn jitter_spreads_agents_apart() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let delays: std::collections::BTreeSet<u128> = (0..20)
            .map(|_| Backoff::default().next_delay(&mut rng).as_micros())
            .collect();
        assert!(delays.len() > 15, "jitter produced too few distinct delays");
    }
}
