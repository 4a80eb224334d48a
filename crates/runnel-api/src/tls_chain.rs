//! The certificate chain GitLab presented, for jobs when no CA file is configured.
//!
//! The official runner hands a job the chain of the connection its job request came over (the
//! verified chain: the server's certificate, the intermediates, and the root the system trusts),
//! PEM-encoded, as `CI_SERVER_TLS_CA_FILE`, unless a CA file is configured (then the file's
//! contents). So a GitLab whose CA only the runner host's system store knows still works for the
//! job's git, whose trust store may differ (another image, another user).
//!
//! Here the runner's own TLS configuration wraps the platform verifier: after it accepted a
//! server, the certificates the server presented are kept; the root is then looked up in the
//! system store (by issuer name and signature), as it is not sent by servers as a rule.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// At most this many presented certificates are kept (a real chain has 2 to 4).
const MAX_CHAIN: usize = 16;

/// The chain of the last accepted server, shared by the verifier and the client.
#[derive(Debug, Default, Clone)]
pub(crate) struct ChainCapture {
    last: Arc<Mutex<Option<Vec<CertificateDer<'static>>>>>,
}

impl ChainCapture {
    /// The captured chain as PEM (leaf first, then the intermediates, then the trusted root
    /// when the system store has it), or `None` before any TLS connection was verified.
    pub(crate) fn pem(&self) -> Option<String> {
        let presented = self
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()?;
        let mut chain = presented;
        if let Some(root) = chain.last().and_then(|last| trusted_issuer(last)) {
            chain.push(root);
        }
        let mut seen = Vec::new();
        let mut out = String::new();
        for cert in chain {
            if seen.contains(&cert) {
                continue;
            }
            out.push_str(&pem_certificate(&cert));
            seen.push(cert);
        }
        Some(out.trim_end().to_owned())
    }
}

/// Wraps a verifier and remembers what the server presented once the inner one accepted it.
#[derive(Debug)]
struct CapturingVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    capture: ChainCapture,
}

impl ServerCertVerifier for CapturingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let chain = std::iter::once(end_entity)
            .chain(intermediates)
            .take(MAX_CHAIN)
            .map(|c| c.clone().into_owned())
            .collect();
        *self
            .capture
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(chain);
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// A TLS configuration like the one the HTTP client builds itself (system roots through the
/// platform verifier, HTTP/2 and 1.1), whose verifier records the accepted chain in `capture`,
/// with the client certificate of `cert_key` (PEM files) when given.
pub(crate) fn client_config(
    capture: &ChainCapture,
    cert_key: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, String> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let platform = rustls_platform_verifier::Verifier::new(Arc::clone(&provider))
        .map_err(|source| source.to_string())?;
    let verifier = CapturingVerifier {
        inner: Arc::new(platform),
        capture: capture.clone(),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| source.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match cert_key {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|error| format!("tls-cert-file {}: {error}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|error| format!("tls-key-file {}: {error}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|error| format!("tls-cert-file/tls-key-file: {error}"))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The certificate of the system store that issued `cert` (same name, valid signature), unless
/// `cert` is self-issued.
fn trusted_issuer(cert: &CertificateDer<'_>) -> Option<CertificateDer<'static>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    if parsed.issuer().as_raw() == parsed.subject().as_raw() {
        return None;
    }
    let native = rustls_native_certs::load_native_certs();
    native.certs.into_iter().find(|candidate| {
        x509_parser::parse_x509_certificate(candidate).is_ok_and(|(_, root)| {
            root.subject().as_raw() == parsed.issuer().as_raw()
                && parsed.verify_signature(Some(root.public_key())).is_ok()
        })
    })
}

/// One certificate as a PEM block.
fn pem_certificate(cert: &CertificateDer<'_>) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}
