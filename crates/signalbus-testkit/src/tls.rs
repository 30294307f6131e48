//! TLS in front of the shared plain servers (feature `tls`): their configuration is never
//! changed, so a test makes a CA of its own (rcgen), writes its certificate where the client
//! under test can be told to trust it, and runs a TLS-terminating proxy to the plain server.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig, crypto::ring};

/// A CA made for one test, and a server certificate it signed for `127.0.0.1` and
/// `localhost`. `ca.pem` (and, with client certificates, `client.pem` and `client.key`) are
/// written to the directory given.
pub struct TestCa {
    ca: CertifiedIssuer<'static, KeyPair>,
    server_cert: CertificateDer<'static>,
    server_key: Vec<u8>,
    dir: PathBuf,
}

impl TestCa {
    /// Make the CA and the server certificate; writes `dir/ca.pem`.
    pub fn new(dir: &Path) -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "signalbus test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

        let server_key = KeyPair::generate().unwrap();
        let mut server_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        server_params.subject_alt_names = vec![
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::DnsName("localhost".try_into().unwrap()),
        ];
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server_params.signed_by(&server_key, &ca).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        TestCa {
            server_cert: CertificateDer::from(server_cert.der().to_vec()),
            server_key: server_key.serialize_der(),
            ca,
            dir: dir.to_owned(),
        }
    }

    /// The CA's certificate file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A server configuration with the server certificate, asking no client certificate.
    pub fn server(&self) -> ServerConfig {
        ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![self.server_cert.clone()], self.key())
            .unwrap()
    }

    /// A server configuration that requires a client certificate of this CA; writes one, as
    /// `client.pem` and `client.key`.
    pub fn server_requiring_clients(&self) -> ServerConfig {
        let client_key = KeyPair::generate().unwrap();
        let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        client_params
            .distinguished_name
            .push(DnType::CommonName, "signalbus test client");
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client_params.signed_by(&client_key, &self.ca).unwrap();
        std::fs::write(self.dir.join("client.pem"), client_cert.pem()).unwrap();
        std::fs::write(self.dir.join("client.key"), client_key.serialize_pem()).unwrap();

        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let provider = Arc::new(ring::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .unwrap();
        ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.server_cert.clone()], self.key())
            .unwrap()
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()))
    }
}

/// Accept TLS with `config` on a free port of 127.0.0.1 and forward each connection's plain
/// stream to `upstream` (e.g. `127.0.0.1:6379`); returns the port. Runs until the test's
/// runtime ends; a refused handshake (an untrusted CA, no client certificate) just closes.
pub async fn proxy(config: ServerConfig, upstream: &str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let upstream = upstream.to_owned();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let mut plain = tokio::net::TcpStream::connect(&upstream)
                    .await
                    .unwrap_or_else(|e| panic!("nothing answers on {upstream}: {e}"));
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    port
}
