//! Client-side TLS, for servers started with `[tls] enabled = true` (feature `tls`).
//!
//! The server's certificate is checked against the certificates of one PEM file: the server's
//! own self-signed certificate, or the CA that signed it. The name checked is the host of the
//! server's address unless another is given (a certificate for `localhost` reached at
//! `127.0.0.1` needs `localhost`). Connections are a [`Stream`], plain TCP or TLS over it, so
//! one client type serves both:
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use stockd_protocol::tls::{connect, Tls};
//! use stockd_protocol::{Client, ClientOptions};
//! let tls = Tls::from_pem_file("server-cert.pem".as_ref(), "localhost")?;
//! let options = ClientOptions::default();
//! let stream = connect("127.0.0.1:7878", Some(&tls), options.connect_timeout).await?;
//! let client = Client::over(stream, options).await?;
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;

use crate::client::ClientError;

/// A connection to the server: plain TCP, or TLS over TCP.
pub type Stream = Either<TcpStream, TlsStream<TcpStream>>;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read certificates from {path}: {error}")]
    Read { path: String, error: String },
    #[error("{0} holds no PEM certificate")]
    NoCertificate(String),
    #[error("{path}: certificate not usable as a trust root: {error}")]
    BadCertificate { path: String, error: String },
    #[error("{0:?} is not a valid server name (a DNS name or an IP address)")]
    BadName(String),
    #[error("TLS setup: {0}")]
    Rustls(String),
}

/// What a TLS client trusts and which name it expects the server's certificate to carry.
#[derive(Clone)]
pub struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Tls {
    /// Trusts the certificates in the PEM file `ca_file` and expects `server_name`.
    pub fn from_pem_file(ca_file: &Path, server_name: &str) -> Result<Tls, TlsSetupError> {
        let path = ca_file.display().to_string();
        let read = |error: &dyn std::fmt::Display| TlsSetupError::Read {
            path: path.clone(),
            error: error.to_string(),
        };
        let mut roots = RootCertStore::empty();
        for certificate in CertificateDer::pem_file_iter(ca_file).map_err(|e| read(&e))? {
            let certificate = certificate.map_err(|e| read(&e))?;
            roots.add(certificate).map_err(|e| TlsSetupError::BadCertificate {
                path: path.clone(),
                error: e.to_string(),
            })?;
        }
        if roots.is_empty() {
            return Err(TlsSetupError::NoCertificate(path));
        }
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|_| TlsSetupError::BadName(server_name.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls { connector: TlsConnector::from(Arc::new(config)), name })
    }

    /// The TLS a command line asks for: none without `ca_file`, else trusting it and expecting
    /// `server_name`, or by default the host of `server`.
    pub fn from_options(
        ca_file: Option<&Path>,
        server_name: Option<&str>,
        server: &str,
    ) -> Result<Option<Tls>, TlsSetupError> {
        ca_file.map(|ca| Tls::from_pem_file(ca, server_name.unwrap_or(host_of(server)))).transpose()
    }

    /// The name the server's certificate must carry.
    pub fn server_name(&self) -> String {
        self.name.to_str().into_owned()
    }
}

/// How a connection to `server` is made, for messages: the address, and over TLS the name
/// checked.
pub fn describe(server: &str, tls: Option<&Tls>) -> String {
    match tls {
        None => server.to_string(),
        Some(tls) => format!("{server} over TLS as {}", tls.server_name()),
    }
}

/// The host part of a `host:port` address (`[::1]:7878` gives `::1`), the name a
/// certificate is checked against by default.
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Connects to `addr` within `timeout`, over TLS when `tls` is given.
pub async fn connect(
    addr: impl ToSocketAddrs,
    tls: Option<&Tls>,
    timeout: Duration,
) -> Result<Stream, ClientError> {
    let connecting = async {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok::<Stream, ClientError>(match tls {
            None => Either::Left(stream),
            Some(tls) => Either::Right(tls.connector.connect(tls.name.clone(), stream).await?),
        })
    };
    tokio::time::timeout(timeout, connecting).await.map_err(|_| ClientError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_name_is_the_host_of_the_address() {
        assert_eq!(host_of("127.0.0.1:7878"), "127.0.0.1");
        assert_eq!(host_of("localhost:7878"), "localhost");
        assert_eq!(host_of("[::1]:7878"), "::1");
        assert_eq!(host_of("stock.internal"), "stock.internal");
    }

    #[test]
    fn a_missing_or_empty_file_is_a_clear_error() {
        let missing = Tls::from_options(Some(Path::new("/nonexistent/ca.pem")), None, "h:1");
        let message = missing.expect_err("no file").to_string();
        assert!(message.starts_with("cannot read certificates from /nonexistent/ca.pem"));
        let dir = std::env::temp_dir().join(format!("stockd-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let message = Tls::from_pem_file(&empty, "localhost").expect_err("empty").to_string();
        assert_eq!(message, format!("{} holds no PEM certificate", empty.display()));
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert!(Tls::from_options(None, None, "h:1").expect("no TLS").is_none());
    }
}
