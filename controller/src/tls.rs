//! TLS for the embedded broker and the HTTP API (DESIGN section 11): the certificate from
//! `[tls]`, or one issued at every start by the controller's own CA.
//!
//! The CA's key is the controller identity (Ed25519, `identity.key`), so the anchor every
//! enrollment token carries (the SHA-256 of that public key) pins this CA: an agent
//! checks the broker's certificate against it without any CA file copied by hand. The CA
//! certificate is kept in `DATA_DIR/tls/ca.pem` for other clients (the CLI, curl,
//! monitoring tools); the server certificate and its key live only in memory.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ED25519,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;

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
    let (chain, key) = match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => load(cert, key)?,
        _ => issue(data_dir, identity_pkcs8, &files.names, listening)?,
    };
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("the TLS certificate and key do not match")?;
    Ok(Arc::new(config))
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

/// The CA certificate (written once), and a server certificate for this start.
fn issue(
    data_dir: &Path,
    identity_pkcs8: &[u8],
    extra_names: &[String],
    listening: &[SocketAddr],
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
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
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(365);
    let server_key = KeyPair::generate().context("making the server key")?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let cert = params
        .signed_by(&server_key, &issuer)
        .context("issuing the server certificate")?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    Ok((vec![cert.der().clone(), ca_der], key))
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
        let (chain, _) = issue(dir.path(), &der, &["mgmt.example".into()], &[addr]).unwrap();
        assert_eq!(chain.len(), 2);
        // The CA in the chain carries the identity's public key.
        let anchor = webpki::anchor_from_trusted_cert(&chain[1]).unwrap();
        assert!(anchor
            .subject_public_key_info
            .ends_with(&identity.public_key()));
        // A second start reuses the stored CA and issues a new server certificate.
        let (again, _) = issue(dir.path(), &der, &[], &[addr]).unwrap();
        assert_eq!(again[1], chain[1]);
        assert_ne!(again[0], chain[0]);
        assert!(ca_file(dir.path()).exists());
    }
}
