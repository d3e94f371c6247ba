//! HTTP while the server starts. The HTTP port is bound before the state is recovered, which
//! takes seconds with millions of reservations, and meanwhile it answers `/healthz` with 200
//! (the process is alive: a liveness probe must not kill it in the middle of a long recovery)
//! and `/readyz` and everything else with 503 and the JSON error `{"code": "recovering", ...}`.
//! Once the state is recovered these answers stop, and connections wait in the socket's
//! backlog until the full router serves the same socket ([`spawn_serve`]): the port never
//! closes in between, and nothing is answered `recovering` after recovery.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::api::ApiError;
use crate::auth::tls::TlsListener;

/// One bound socket that several servers accept from in turn (an `axum` listener).
#[derive(Clone)]
struct SharedListener(Arc<TcpListener>);

impl axum::serve::Listener for SharedListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok(accepted) => return accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    debug!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// Serves `router` on `listener` (through TLS when `tls` is given, with the handshake timeout)
/// until `stopped` completes and the requests being answered are done.
pub fn spawn_serve(
    listener: Arc<TcpListener>,
    tls: Option<(TlsAcceptor, Duration)>,
    router: Router,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<std::io::Result<()>> {
    match tls {
        Some((acceptor, timeout)) => {
            let listener = TlsListener::new(listener, acceptor, timeout);
            let serve = axum::serve(listener, router).with_graceful_shutdown(stopped);
            tokio::spawn(async move { serve.await })
        }
        None => {
            let serve =
                axum::serve(SharedListener(listener), router).with_graceful_shutdown(stopped);
            tokio::spawn(async move { serve.await })
        }
    }
}

/// The HTTP answers of a starting server, until [`Starting::stop`] (or drop).
pub struct Starting {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Starting {
    /// Serves the starting answers on `listener` (through TLS when `tls` is given, with the
    /// handshake timeout).
    pub fn start(listener: Arc<TcpListener>, tls: Option<(TlsAcceptor, Duration)>) -> Starting {
        let recovering = || async {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "recovering",
                "the server is starting: it is recovering its state from the data directory",
            )
        };
        let router = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(recovering))
            .fallback(recovering);
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = async move {
            let _ = stopped.await;
        };
        let task = spawn_serve(listener, tls, router, stopped);
        Starting { stop: Some(stop), task }
    }

    /// Stops accepting, and lets requests being answered finish (for up to a second).
    pub async fn stop(mut self) {
        drop(self.stop.take());
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.task).await;
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        self.task.abort();
    }
}
