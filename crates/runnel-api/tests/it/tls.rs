//! TLS: extra CA file, client certificates, and errors naming the files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use runnel_api::{ApiError, Client, ClientConfig, RetryPolicy};
use runnel_types::RunnerToken;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::support::{Reply, TestServer};

/// A CA, a server certificate for 127.0.0.1, and a client certificate, all as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca_der: CertificateDer<'static>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
}

impl Pki {
    fn new() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "runnel test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().unwrap();
        let server_params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();

        let client_key = KeyPair::generate().unwrap();
        let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        client_params
            .distinguished_name
            .push(DnType::CommonName, "runnel test client");
        let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("client.pem"), client_cert.pem()).unwrap();
        std::fs::write(dir.path().join("client.key"), client_key.serialize_pem()).unwrap();
        Self {
            dir,
            ca_der: ca_cert.der().clone(),
            server_chain: vec![server_cert.der().clone()],
            server_key: PrivateKeyDer::try_from(server_key.serialize_der()).unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A TLS server that requires a client certificate signed by the CA.
    async fn server(&self) -> TestServer {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.server_chain.clone(), self.server_key.clone_key())
            .unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let listener = TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        };
        TestServer::start_on(listener, addr).await
    }
}

struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else {
                continue;
            };
            // Failed handshakes are what some tests expect; wait for the next client.
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

fn config(server: &TestServer) -> ClientConfig {
    ClientConfig {
        url: format!("https://{}", server.addr),
        retry: RetryPolicy::never(),
        ..ClientConfig::default()
    }
}

async fn unregister(client: &Client) -> Result<(), ApiError> {
    client.unregister_runner(&RunnerToken::new("glrt-x")).await
}

#[tokio::test]
async fn mutual_tls_with_a_private_ca_works() {
    let pki = Pki::new();
    let server = pki.server().await;
    server.reply(Reply::status(204));
    let client = Client::new(ClientConfig {
        tls_ca_file: Some(pki.path("ca.pem")),
        tls_cert_file: Some(pki.path("client.pem")),
        tls_key_file: Some(pki.path("client.key")),
        ..config(&server)
    })
    .unwrap();
    unregister(&client).await.unwrap();
    assert_eq!(server.only_request().path, "/api/v4/runners");
}

#[tokio::test]
async fn an_untrusted_server_is_refused() {
    let pki = Pki::new();
    let server = pki.server().await;
    let client = Client::new(ClientConfig {
        tls_cert_file: Some(pki.path("client.pem")),
        tls_key_file: Some(pki.path("client.key")),
        ..config(&server)
    })
    .unwrap();
    let error = unregister(&client).await.unwrap_err();
    assert!(matches!(error, ApiError::Transport { .. }), "{error:?}");
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn a_server_wanting_a_client_certificate_refuses_us_without_one() {
    let pki = Pki::new();
    let server = pki.server().await;
    let client = Client::new(ClientConfig {
        tls_ca_file: Some(pki.path("ca.pem")),
        ..config(&server)
    })
    .unwrap();
    let error = unregister(&client).await.unwrap_err();
    assert!(matches!(error, ApiError::Transport { .. }), "{error:?}");
    assert!(server.requests().is_empty());
}

fn client_error(config: ClientConfig) -> ApiError {
    let error = Client::new(config).unwrap_err();
    assert!(error.is_client_error(), "{error:?}");
    error
}

fn shown(error: &ApiError, dir: &Path) -> String {
    error
        .to_string()
        .replace(&dir.display().to_string(), "[DIR]")
}

#[test]
fn tls_file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let base = ClientConfig {
        url: "https://gitlab.example.com".to_owned(),
        ..ClientConfig::default()
    };

    let missing = client_error(ClientConfig {
        tls_ca_file: Some(dir.path().join("missing.pem")),
        ..base.clone()
    });
    insta::assert_snapshot!(shown(&missing, dir.path()), @"failed to read tls-ca-file `[DIR]/missing.pem`");

    let bad_identity = client_error(ClientConfig {
        tls_cert_file: Some(garbage.clone()),
        tls_key_file: Some(garbage.clone()),
        ..base.clone()
    });
    insta::assert_snapshot!(shown(&bad_identity, dir.path()), @"failed to load tls-cert-file/tls-key-file `[DIR]/garbage.pem`");

    let half = client_error(ClientConfig {
        tls_key_file: Some(garbage.clone()),
        ..base.clone()
    });
    insta::assert_snapshot!(shown(&half, dir.path()), @"`tls-cert-file` and `tls-key-file` must be set together (only `[DIR]/garbage.pem` is set)");
}
