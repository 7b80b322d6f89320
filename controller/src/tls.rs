//! TLS for the embedded broker and the HTTP API (DESIGN section 11): the certificate from
//! `[tls]`, or one issued by the controller's own CA. Either is kept current while the
//! controller runs ([`Certificates`]): an issued one is issued again 30 days before it
//! ends, and `[tls]` files are read again when they change, at the next handshake, so
//! neither a long uptime nor a certificate rotation needs a restart.
//!
//! The CA's key is the controller identity (Ed25519, `identity.key`), so the anchor every
//! enrollment token carries (the SHA-256 of that public key) pins this CA: an agent
//! checks the broker's certificate against it without any CA file copied by hand. The CA
//! certificate is kept in `DATA_DIR/tls/ca.pem` for other clients (the CLI, curl,
//! monitoring tools); the server certificate and its key live only in memory.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ED25519,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use time::OffsetDateTime;

use crate::config::TlsFiles;

/// Where the CA certificate is kept.
pub fn ca_file(data_dir: &Path) -> PathBuf {
    data_dir.join("tls").join("ca.pem")
}

/// The CA's parameters: the same at every start, so certificates issued by an earlier
/// start still chain to the stored CA certificate.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Metalbus controller CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2125, 1, 1);
    params
}

fn identity_key(identity_pkcs8: &[u8]) -> anyhow::Result<KeyPair> {
    KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(identity_pkcs8.to_vec()),
        &PKCS_ED25519,
    )
    .context("the controller identity cannot sign certificates")
}

/// The TLS settings both listeners serve.
pub fn server_config(
    data_dir: &Path,
    identity_pkcs8: &[u8],
    files: &TlsFiles,
    listening: &[SocketAddr],
) -> anyhow::Result<Arc<ServerConfig>> {
    metalbus_link::install_crypto_provider();
    let source = match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => Source::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ => Source::Issued {
            data_dir: data_dir.to_path_buf(),
            identity_pkcs8: identity_pkcs8.to_vec(),
            names: files.names.clone(),
            listening: listening.to_vec(),
        },
    };
    let certificates = Certificates::new(source, Arc::new(OffsetDateTime::now_utc))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(certificates));
    Ok(Arc::new(config))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How long an issued server certificate is valid.
const VALID_FOR: time::Duration = time::Duration::days(365);
/// How long before its end an issued certificate is replaced.
const RENEW_BEFORE: time::Duration = time::Duration::days(30);
/// After a failed renewal or reload, how long the current certificate is served before
/// the next try (the failure is logged once per try).
const RETRY_AFTER: time::Duration = time::Duration::minutes(1);

/// Where the certificate comes from.
enum Source {
    /// Issued by the controller's CA for these names and addresses.
    Issued {
        data_dir: PathBuf,
        identity_pkcs8: Vec<u8>,
        names: Vec<String>,
        listening: Vec<SocketAddr>,
    },
    /// `[tls] cert_file` and `key_file`.
    Files { cert: PathBuf, key: PathBuf },
}

/// What is served now, and when to look again.
struct Current {
    key: Arc<CertifiedKey>,
    /// An issued certificate's end.
    not_after: Option<OffsetDateTime>,
    /// The files' modification times when they were read.
    stamps: Option<(SystemTime, SystemTime)>,
    /// No new try before this (after a failure).
    quiet_until: Option<OffsetDateTime>,
}

/// The certificate both listeners present, renewed or reloaded at a handshake when due.
pub struct Certificates {
    source: Source,
    current: RwLock<Current>,
    now: Arc<dyn Fn() -> OffsetDateTime + Send + Sync>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the identity key.
        let source = match &self.source {
            Source::Issued { .. } => "issued",
            Source::Files { .. } => "files",
        };
        f.debug_struct("Certificates")
            .field("source", &source)
            .finish()
    }
}

impl Certificates {
    /// The first certificate, or why there is none (which stops the start).
    fn new(
        source: Source,
        now: Arc<dyn Fn() -> OffsetDateTime + Send + Sync>,
    ) -> anyhow::Result<Self> {
        let current = make(&source, now())?;
        Ok(Self {
            source,
            current: RwLock::new(current),
            now,
        })
    }

    /// The certificate to present, renewed or reloaded first when due.
    fn serve(&self) -> Option<Arc<CertifiedKey>> {
        let now = (self.now)();
        if self.due(now) {
            self.refresh(now);
        }
        self.current.read().ok().map(|c| c.key.clone())
    }

    fn due(&self, now: OffsetDateTime) -> bool {
        self.current
            .read()
            .is_ok_and(|current| self.due_for(&current, now))
    }

    fn due_for(&self, current: &Current, now: OffsetDateTime) -> bool {
        if current.quiet_until.is_some_and(|t| now < t) {
            return false;
        }
        match &self.source {
            Source::Issued { .. } => current
                .not_after
                .is_some_and(|end| now + RENEW_BEFORE >= end),
            Source::Files { cert, key } => stamps(cert, key).ok() != current.stamps,
        }
    }

    fn refresh(&self, now: OffsetDateTime) {
        let Ok(mut current) = self.current.write() else {
            return;
        };
        // Handshakes at the same moment: the first to get here renews, once.
        if !self.due_for(&current, now) {
            return;
        }
        match make(&self.source, now) {
            Ok(fresh) => {
                match &self.source {
                    Source::Issued { .. } => tracing::info!(
                        until = %fresh.not_after.map(|t| t.to_string()).unwrap_or_default(),
                        "issued a new TLS certificate before the old one ends"
                    ),
                    Source::Files { cert, .. } => {
                        tracing::info!(cert = %cert.display(), "the TLS certificate files changed: serving the new certificate")
                    }
                }
                *current = fresh;
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "keeping the current TLS certificate; trying again in a minute");
                current.quiet_until = Some(now + RETRY_AFTER);
            }
        }
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.serve()
    }
}

/// The files' modification times.
fn stamps(cert: &Path, key: &Path) -> std::io::Result<(SystemTime, SystemTime)> {
    Ok((
        std::fs::metadata(cert)?.modified()?,
        std::fs::metadata(key)?.modified()?,
    ))
}

/// A certificate from `source`, as of `now`.
fn make(source: &Source, now: OffsetDateTime) -> anyhow::Result<Current> {
    let (chain, key, not_after, stamped) = match source {
        Source::Files { cert, key } => {
            let stamped = stamps(cert, key).ok();
            let (chain, key) = load(cert, key)?;
            (chain, key, None, stamped)
        }
        Source::Issued {
            data_dir,
            identity_pkcs8,
            names,
            listening,
        } => {
            let (chain, key, end) = issue(data_dir, identity_pkcs8, names, listening, now)?;
            (chain, key, Some(end), None)
        }
    };
    let key = CertifiedKey::from_der(chain, key, &provider())
        .context("the TLS certificate and key do not match")?;
    Ok(Current {
        key: Arc::new(key),
        not_after,
        stamps: stamped,
        quiet_until: None,
    })
}

fn load(
    cert: &Path,
    key: &Path,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading tls.cert_file {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing tls.cert_file {}", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "tls.cert_file {} holds no certificate",
        cert.display()
    );
    crate::security::private_file(key)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading tls.key_file {}", key.display()))?;
    Ok((chain, key))
}

/// The CA certificate (written once), and a server certificate valid from `now`, with
/// its end.
fn issue(
    data_dir: &Path,
    identity_pkcs8: &[u8],
    extra_names: &[String],
    listening: &[SocketAddr],
    now: OffsetDateTime,
) -> anyhow::Result<(
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
    OffsetDateTime,
)> {
    let ca_key = identity_key(identity_pkcs8)?;
    let ca_path = ca_file(data_dir);
    let ca_der = match std::fs::read(&ca_path) {
        Ok(pem) => CertificateDer::from_pem_slice(&pem)
            .with_context(|| format!("parsing {}", ca_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let cert = ca_params()
                .self_signed(&ca_key)
                .context("making the CA certificate")?;
            let dir = data_dir.join("tls");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::write(&ca_path, cert.pem())
                .with_context(|| format!("writing {}", ca_path.display()))?;
            tracing::info!(path = %ca_path.display(), "made the controller's TLS CA");
            cert.der().clone()
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", ca_path.display())),
    };
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "Metalbus controller");
    params.subject_alt_names = names(extra_names, listening)?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + VALID_FOR;
    let server_key = KeyPair::generate().context("making the server key")?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let cert = params
        .signed_by(&server_key, &issuer)
        .context("issuing the server certificate")?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    Ok((vec![cert.der().clone(), ca_der], key, now + VALID_FOR))
}

/// localhost, loopback, this host's name, the specific listen addresses, and `extra`.
fn names(extra: &[String], listening: &[SocketAddr]) -> anyhow::Result<Vec<SanType>> {
    let mut dns = vec!["localhost".to_string()];
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .to_string();
    if !host.is_empty() {
        dns.push(host);
    }
    let mut ips: Vec<IpAddr> = vec![
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ];
    ips.extend(
        listening
            .iter()
            .map(SocketAddr::ip)
            .filter(|ip| !ip.is_unspecified()),
    );
    for name in extra {
        match name.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(name.clone()),
        }
    }
    let mut out = Vec::new();
    for d in dns {
        if !out
            .iter()
            .any(|s| matches!(s, SanType::DnsName(n) if n.as_str() == d))
        {
            out.push(SanType::DnsName(d.clone().try_into().with_context(
                || format!("{d:?} is not a DNS name for a certificate"),
            )?));
        }
    }
    for ip in ips {
        if !out.contains(&SanType::IpAddress(ip)) {
            out.push(SanType::IpAddress(ip));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use metalbus_protocol::proof::Identity;

    #[test]
    fn the_issued_chain_is_pinned_by_the_identity_anchor() {
        let dir = tempfile::tempdir().unwrap();
        let der = Identity::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let identity = Identity::from_pkcs8(&der).unwrap();
        let addr: SocketAddr = "127.0.0.1:8883".parse().unwrap();
        let now = OffsetDateTime::now_utc();
        let (chain, _, _) =
            issue(dir.path(), &der, &["mgmt.example".into()], &[addr], now).unwrap();
        assert_eq!(chain.len(), 2);
        // The CA in the chain carries the identity's public key.
        let anchor = webpki::anchor_from_trusted_cert(&chain[1]).unwrap();
        assert!(anchor
            .subject_public_key_info
            .ends_with(&identity.public_key()));
        // A second start reuses the stored CA and issues a new server certificate.
        let (again, _, _) = issue(dir.path(), &der, &[], &[addr], now).unwrap();
        assert_eq!(again[1], chain[1]);
        assert_ne!(again[0], chain[0]);
        assert!(ca_file(dir.path()).exists());
    }

    /// A clock the test moves: seconds after a fixed start.
    fn clock() -> (
        Arc<std::sync::atomic::AtomicI64>,
        Arc<dyn Fn() -> OffsetDateTime + Send + Sync>,
    ) {
        let offset = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let read = offset.clone();
        let start = OffsetDateTime::now_utc();
        let now = Arc::new(move || {
            start + time::Duration::seconds(read.load(std::sync::atomic::Ordering::SeqCst))
        });
        (offset, now)
    }

    fn days(n: i64) -> i64 {
        n * 86_400
    }

    #[test]
    fn an_issued_certificate_is_issued_again_30_days_before_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let der = Identity::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let (offset, now) = clock();
        let certs = Certificates::new(
            Source::Issued {
                data_dir: dir.path().to_path_buf(),
                identity_pkcs8: der.clone(),
                names: vec![],
                listening: vec!["127.0.0.1:8883".parse().unwrap()],
            },
            now,
        )
        .unwrap();
        let first = certs.serve().unwrap();
        offset.store(days(334), std::sync::atomic::Ordering::SeqCst);
        assert!(
            Arc::ptr_eq(&first, &certs.serve().unwrap()),
            "31 days left: kept"
        );
        offset.store(days(336), std::sync::atomic::Ordering::SeqCst);
        let second = certs.serve().unwrap();
        assert_ne!(first.cert[0], second.cert[0], "29 days left: issued again");
        // Same CA, so agents that pinned it go on trusting the new one.
        assert_eq!(first.cert[1], second.cert[1]);
        assert!(Arc::ptr_eq(&second, &certs.serve().unwrap()), "once");
    }

    /// A self-signed certificate and its key, as PEM files.
    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (dir.join("server.pem"), dir.join("server.key"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        (c, k)
    }

    /// Moves both files' modification time forward, as a rewrite a second later would.
    fn touch(files: &[&Path], secs: u64) {
        for f in files {
            let when = SystemTime::now() + std::time::Duration::from_secs(secs);
            std::fs::File::options()
                .write(true)
                .open(f)
                .unwrap()
                .set_modified(when)
                .unwrap();
        }
    }

    #[test]
    fn changed_certificate_files_are_served_at_the_next_handshake_and_a_broken_pair_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "one.example");
        let (offset, now) = clock();
        let certs = Certificates::new(
            Source::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            now,
        )
        .unwrap();
        let first = certs.serve().unwrap();
        assert!(
            Arc::ptr_eq(&first, &certs.serve().unwrap()),
            "unchanged: kept"
        );

        // Half-way through a rotation: a new certificate with the old key.
        let old_key = std::fs::read(&key).unwrap();
        write_pair(dir.path(), "two.example");
        std::fs::write(&key, &old_key).unwrap();
        touch(&[&cert, &key], 10);
        assert!(
            Arc::ptr_eq(&first, &certs.serve().unwrap()),
            "a mismatched pair is not served"
        );

        // The rotation completes; the next try is a minute after the failure.
        write_pair(dir.path(), "two.example");
        touch(&[&cert, &key], 20);
        assert!(
            Arc::ptr_eq(&first, &certs.serve().unwrap()),
            "quiet for a minute"
        );
        offset.store(61, std::sync::atomic::Ordering::SeqCst);
        let second = certs.serve().unwrap();
        assert_ne!(first.cert[0], second.cert[0]);
    }
}
