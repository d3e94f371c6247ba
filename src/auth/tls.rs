//! Optional TLS (rustls, TLS 1.2 and 1.3) for the TCP protocol and the HTTP side, with the
//! certificate chain and private key read from PEM files (`[tls]` in the configuration).
//!
//! A handshake must finish within the server's `frame_timeout_ms`; a client that speaks
//! plaintext to a TLS port fails the handshake and is closed without reaching the protocol.
//!
//! At start the certificate is checked the way a rustls client (stockd's CLI, its load test,
//! the protocol crate's `tls` feature) checks it, whatever name it connects by: a CA
//! certificate (`openssl req -x509` makes one unless told `basicConstraints=CA:FALSE`), an
//! expired or not yet valid one, or one whose extended key usage excludes servers is served,
//! but logged as a warning, since such clients will refuse it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::client::danger::ServerCertVerifier;
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::{self, CertificateError, OtherError, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
pub use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

/// Why the TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("tls.cert_file {path}: {problem}")]
    Cert { path: String, problem: String },
    #[error("tls.key_file {path}: {problem}")]
    Key { path: String, problem: String },
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(String),
}

/// Builds the acceptor from PEM files: the certificate chain (leaf first) and its private key
/// (PKCS#8, PKCS#1 or SEC1).
pub fn acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, TlsError> {
    let cert_error =
        |problem: String| TlsError::Cert { path: cert_file.display().to_string(), problem };
    let certs = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_error("no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| TlsError::Key {
        path: key_file.display().to_string(),
        problem: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    if let Some(problem) = refused_by_clients(&certs, &provider) {
        warn!(
            cert_file = %cert_file.display(),
            "the certificate {problem}: rustls clients, stockd's CLI and load test among them, \
             will refuse it (README \"Security\" shows how to make one they accept)"
        );
    }
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Why a rustls client would refuse the certificate chain `certs` (leaf first) whatever name
/// it connects by, trusting the chain's own certificates: `None` if it would not, or only for
/// a reason that depends on the client (its trust roots, the name it uses).
fn refused_by_clients(
    certs: &[CertificateDer<'static>],
    provider: &Arc<CryptoProvider>,
) -> Option<String> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(certs.iter().cloned());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .ok()?;
    // A name no certificate carries: the checks that matter here come before the name's.
    let name = ServerName::try_from("name-check.stockd.invalid").ok()?;
    let (leaf, chain) = certs.split_first()?;
    let error = verifier.verify_server_cert(leaf, chain, &name, &[], UnixTime::now()).err()?;
    let rustls::Error::InvalidCertificate(error) = error else { return None };
    Some(
        match error {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "has expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "is not valid yet"
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "is not for TLS servers (its extended key usage lacks serverAuth)"
            }
            CertificateError::Other(OtherError(other))
                if other.downcast_ref::<webpki::Error>()
                    == Some(&webpki::Error::CaUsedAsEndEntity) =>
            {
                "is a CA certificate (basicConstraints CA:TRUE), not a server's"
            }
            _ => return None,
        }
        .to_string(),
    )
}

/// Completes a server-side handshake within `timeout`.
pub async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, String> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
        Err(_) => Err("TLS handshake did not finish in time".into()),
    }
}

/// A listener for the HTTP side that hands over connections once their TLS handshake is
/// done. Handshakes run concurrently, so a slow client does not hold up others.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(
        listener: Arc<TcpListener>,
        acceptor: TlsAcceptor,
        timeout: Duration,
    ) -> TlsListener {
        let local = listener.local_addr().expect("a bound listener has an address");
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            debug!(error = %e, "http accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    () = tx.closed() => return,
                };
                let (tx, acceptor) = (tx.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match handshake(&acceptor, stream, timeout).await {
                        Ok(stream) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Err(why) => debug!(%peer, why, "http connection refused"),
                    }
                });
            }
        });
        TlsListener { ready, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accept task ended: nothing more will arrive.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(edit: impl FnOnce(&mut rcgen::CertificateParams)) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        edit(&mut params);
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("certificate").der().clone()
    }

    fn problem(cert: CertificateDer<'static>) -> Option<String> {
        refused_by_clients(&[cert], &Arc::new(rustls::crypto::ring::default_provider()))
    }

    #[test]
    fn certificates_clients_refuse_are_named() {
        assert_eq!(problem(certificate(|_| {})), None, "a plain server certificate");
        let ca = certificate(|p| p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained));
        assert!(problem(ca).is_some_and(|p| p.contains("CA certificate")));
        let expired = certificate(|p| {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        });
        assert_eq!(problem(expired).as_deref(), Some("has expired"));
        let client = certificate(|p| {
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        });
        assert!(problem(client).is_some_and(|p| p.contains("not for TLS servers")));
    }
}
