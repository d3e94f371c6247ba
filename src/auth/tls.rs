//! Optional TLS (rustls, TLS 1.2 and 1.3) for the TCP protocol and the HTTP side, with the
//! certificate chain and private key read from PEM files (`[tls]` in the configuration).
//!
//! A handshake must finish within the server's `frame_timeout_ms`; a client that speaks
//! plaintext to a TLS port fails the handshake and is closed without reaching the protocol.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;
pub use tokio_rustls::TlsAcceptor;
use tracing::debug;

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
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
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
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor, timeout: Duration) -> TlsListener {
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
