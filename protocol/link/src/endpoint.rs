//! Where the broker is and how to reach it: the `Endpoint` (URL plus the TLS client
//! settings, with rustls and the ring provider), rumqttc options with the packet limits,
//! how long a connection attempt may take, and a clean disconnect.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use crate::BrokerUrl;

/// Largest MQTT packet either side sends or accepts. Inventories of big machines pass
/// rumqttc's 10 KiB default; the controller refuses payloads over 256 KiB itself, so this
/// limit only has to be comfortably above that (and above the 1 MiB garbage tests send).
pub const MAX_PACKET_BYTES: usize = 4 * 1024 * 1024;

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

    /// An `mqtts://` broker checked against the controller identity that `anchor`
    /// names (an enrollment token's anchor), or else the system's roots; a plain URL as
    /// it is. With a CA file, that file decides, as in [`Endpoint::new`].
    pub fn pinned(
        url: BrokerUrl,
        ca_file: Option<&Path>,
        anchor: [u8; 32],
    ) -> Result<Self, TlsError> {
        if !url.tls || ca_file.is_some() {
            return Self::new(url, ca_file);
        }
        install_crypto_provider();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = system_roots(&url).ok();
        let verifier = crate::pinned::Pinned::new(anchor, provider.clone(), roots);
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
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

/// Sets how long `eventloop` waits for the broker to accept its connection (the
/// [`crate::Reconnect`] policy decides it). rumqttc's "connection timeout" bounds the
/// whole attempt: the DNS lookup, the TCP connect, the TLS handshake, and CONNECT until
/// its CONNACK; past it `poll` returns `Network timeout` and the socket is dropped.
/// rumqttc counts it in whole seconds, so `wait` is rounded up, to 1 s at least. It also
/// bounds each flush of a write once connected (`Flush timeout`), so a connection made
/// after a long wait tolerates an equally slow broker while it lasts.
pub fn set_connack_wait(eventloop: &mut EventLoop, wait: Duration) {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    eventloop
        .network_options
        .set_connection_timeout(secs.max(1));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connack_wait_reaches_rumqttc_in_whole_seconds_rounded_up() {
        let url: BrokerUrl = "mqtt://127.0.0.1:1883".parse().unwrap();
        let endpoint = Endpoint::new(url, None).unwrap();
        let (_client, mut eventloop) = AsyncClient::new(endpoint.options("n1-c1"), 1);
        // rumqttc's default, which agents had before the policy.
        assert_eq!(eventloop.network_options.connection_timeout(), 5);
        for (wait_ms, secs) in [
            (0, 1),
            (1, 1),
            (1_000, 1),
            (1_001, 2),
            (5_000, 5),
            (60_000, 60),
        ] {
            set_connack_wait(&mut eventloop, Duration::from_millis(wait_ms));
            assert_eq!(
                eventloop.network_options.connection_timeout(),
                secs,
                "{wait_ms} ms"
            );
        }
    }
}
