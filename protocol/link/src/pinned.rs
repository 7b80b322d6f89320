//! A TLS server check pinned to the controller's identity (DESIGN section 11): the
//! broker's chain must include a CA certificate whose public key hashes to the anchor
//! (the SHA-256 in every enrollment token), and the server certificate must chain to it.
//! Certificates from the system's roots are accepted too when they verify normally (an
//! external broker with a public certificate), so the token is all an agent needs either
//! way.
//!
//! The server name is not checked against a pinned CA: only the controller holds that
//! CA's key, so any certificate it issued is the controller's, whatever name the agent
//! used to reach it (an IP, a DNS alias, a NAT address).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo's contents: the algorithm
/// (1.3.101.112) and the bit string header; the 32 key bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00, 0, 0,
];

#[derive(Debug)]
pub struct Pinned {
    anchor: [u8; 32],
    provider: Arc<CryptoProvider>,
    /// Normal verification against the system's roots, when there are any.
    fallback: Option<Arc<WebPkiServerVerifier>>,
}

impl Pinned {
    pub fn new(
        anchor: [u8; 32],
        provider: Arc<CryptoProvider>,
        roots: Option<RootCertStore>,
    ) -> Self {
        let fallback = roots.and_then(|r| {
            WebPkiServerVerifier::builder_with_provider(Arc::new(r), provider.clone())
                .build()
                .ok()
        });
        Self {
            anchor,
            provider,
            fallback,
        }
    }

    /// Whether `cert` is a CA certificate with the pinned Ed25519 key.
    fn is_pinned(&self, cert: &CertificateDer<'_>) -> bool {
        let Ok(anchor) = webpki::anchor_from_trusted_cert(cert) else {
            return false;
        };
        let spki: &[u8] = anchor.subject_public_key_info.as_ref();
        spki.len() == 10 + 32
            && spki[..10] == ED25519_SPKI_PREFIX[..10]
            && ring::digest::digest(&ring::digest::SHA256, &spki[10..]).as_ref() == self.anchor
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if let Some(ca) = intermediates.iter().find(|c| self.is_pinned(c)) {
            let anchor = webpki::anchor_from_trusted_cert(ca)
                .map_err(|e| Error::General(format!("the pinned CA: {e}")))?;
            let cert = webpki::EndEntityCert::try_from(end_entity)
                .map_err(|e| Error::General(format!("the broker's certificate: {e}")))?;
            cert.verify_for_usage(
                self.provider.signature_verification_algorithms.all,
                &[anchor],
                &[],
                now,
                webpki::KeyUsage::server_auth(),
                None,
                None,
            )
            .map_err(|e| {
                Error::General(format!(
                    "the broker's certificate does not chain to the pinned controller CA: {e}"
                ))
            })?;
            return Ok(ServerCertVerified::assertion());
        }
        const NOT_OURS: &str =
            "the broker's certificate is not from the controller this agent enrolled with";
        match &self.fallback {
            Some(v) => v
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
                .map_err(|e| {
                    Error::General(format!(
                        "{NOT_OURS}, nor trusted by the system's roots ({e})"
                    ))
                }),
            None => Err(Error::General(NOT_OURS.into())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
