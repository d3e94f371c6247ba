//! The TCP server: accepts connections up to the configured limit, serves each on its own task,
//! runs the expiry sweeper, and shuts down gracefully: on the shutdown signal it stops
//! accepting, lets every connection answer the requests it has already received, and returns
//! once they have closed (or the grace period ends).

mod connection;
mod dispatch;
pub mod durability;
mod sweeper;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use stockd_protocol::{ErrorReply, Reply, ResultCode};

use crate::auth::tls::{self, TlsAcceptor};
use crate::clock::Clock;
use crate::config::Config;
use crate::engine::Engine;
use crate::http::starting::{spawn_serve, Starting};
use crate::limits::REFUSE_WRITE_TIMEOUT_MS;
use crate::wal::{recover, DirLock, DirStorage, RecoverOptions, RecoveryError, Storage, Wal};

pub use dispatch::execute;

/// State shared by every connection.
pub struct Shared {
    pub engine: Engine,
    pub clock: Clock,
    pub config: Config,
    pub wal: Wal,
    pub storage: Arc<dyn Storage>,
    /// LSN of the newest snapshot, updated by the snapshotter (subscribe to wait for one).
    pub snapshot_lsn: watch::Sender<u64>,
    /// When this process last wrote a snapshot (its start time before the first one).
    pub snapshot_at_ms: std::sync::atomic::AtomicU64,
    pub metrics: crate::metrics::Metrics,
    /// When this process started serving (UTC milliseconds).
    pub started_ms: u64,
    /// The audit log of administrative changes.
    pub audit: crate::audit::AuditLog,
    /// Order sync with the configured sales channels.
    pub sync: crate::sync::OrderSync,
    /// Alert rules, open alerts and their history.
    pub alerts: crate::alerting::Alerting,
    /// API keys (hashed) and their roles.
    pub keys: crate::auth::KeyStore,
    /// Dangerous changes waiting for a second admin's approval.
    pub approvals: crate::auth::approvals::Approvals<crate::http::approvals::Deferred>,
    /// HTTP requests per key and second (`auth.http_requests_per_second`).
    pub http_limiter: Option<crate::auth::KeyedLimiter>,
}

impl Shared {
    /// Whether callers must present API keys (`auth.enabled`).
    pub fn auth_enabled(&self) -> bool {
        self.config.auth.enabled
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("data directory {path}: {source}")]
    DataDir { path: String, source: io::Error },
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error("cannot start the log writer: {0}")]
    Wal(io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("data directory {path}: {source}")]
    Locked { path: String, source: io::Error },
    #[error(transparent)]
    Tls(#[from] crate::auth::tls::TlsError),
}

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    http_listener: Arc<TcpListener>,
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
    /// Held until `run` returns (a real data directory only).
    lock: Option<DirLock>,
}

impl Server {
    /// Recovers the state from the configured data directory and binds the listen address
    /// (port 0 picks a free port).
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        Server::bind_with_clock(config, Clock::system()).await
    }

    /// Like [`Server::bind`] with a given clock (tests use a manual one).
    pub async fn bind_with_clock(config: Config, clock: Clock) -> Result<Server, StartError> {
        let path = config.storage.data_dir.clone();
        let shown = path.display().to_string();
        let lock = DirLock::acquire(&path)
            .map_err(|source| StartError::Locked { path: shown.clone(), source })?;
        let storage = DirStorage::open(&path)
            .map_err(|source| StartError::DataDir { path: shown, source })?;
        let mut server = Server::bind_with(config, clock, Arc::new(storage)).await?;
        server.lock = Some(lock);
        Ok(server)
    }

    /// Like [`Server::bind`] with a given clock and storage (tests inject faults).
    pub async fn bind_with(
        config: Config,
        clock: Clock,
        storage: Arc<dyn Storage>,
    ) -> Result<Server, StartError> {
        // HTTP first: while the state is recovered (seconds with millions of reservations),
        // `/healthz` answers and `/readyz` says it is recovering.
        let tls = match config.tls.enabled {
            true => Some(crate::auth::tls::acceptor(&config.tls.cert_file, &config.tls.key_file)?),
            false => None,
        };
        let http_addr = config.http_addr();
        let http_listener = Arc::new(
            TcpListener::bind(http_addr)
                .await
                .map_err(|source| StartError::Listen { addr: http_addr, source })?,
        );
        let handshake_timeout = Duration::from_millis(config.server.frame_timeout_ms);
        let starting = Starting::start(
            http_listener.clone(),
            tls.clone().map(|acceptor| (acceptor, handshake_timeout)),
        );
        if let Ok(http) = http_listener.local_addr() {
            info!(%http, "recovering the state; /readyz answers 503 until it is done");
        }
        let recovered = {
            let (storage, engine_config) = (storage.clone(), config.engine_config());
            tokio::task::spawn_blocking(move || {
                recover(&*storage, &engine_config, RecoverOptions::default())
            })
            .await
            .expect("recovery does not panic")?
        };
        if let Some(truncated) = &recovered.truncated {
            warn!(%truncated, "the log ended with a torn write, which was never acknowledged");
        }
        clock.not_before(recovered.max_now_ms);
        let audit = crate::audit::AuditLog::open(&*storage)?;
        let sync = crate::sync::OrderSync::open(&config, &*storage)?;
        let alerts = crate::alerting::Alerting::open(&config.alerting, &*storage)?;
        let keys = crate::auth::KeyStore::open(&*storage)?;
        let approvals = crate::auth::approvals::Approvals::open(&*storage)?;
        if !config.auth.enabled {
            warn!(
                "authentication is OFF (auth.enabled = false / --no-auth): every caller is an \
                 admin; for development only"
            );
        }
        let http_limiter = crate::auth::keyed_limiter(config.auth.http_requests_per_second);
        let tail = recovered.tail(&*storage)?;
        let wal =
            Wal::start(storage.clone(), config.wal_config(), tail).map_err(StartError::Wal)?;
        let addr = config.listen_addr();
        let listener =
            TcpListener::bind(addr).await.map_err(|source| StartError::Listen { addr, source })?;
        let started_ms = clock.now_ms();
        let shared = Shared {
            engine: recovered.engine,
            clock,
            config,
            wal,
            storage,
            snapshot_lsn: watch::Sender::new(recovered.snapshot_lsn),
            snapshot_at_ms: std::sync::atomic::AtomicU64::new(started_ms),
            metrics: crate::metrics::Metrics::new(),
            started_ms,
            audit,
            sync,
            alerts,
            keys,
            approvals,
            http_limiter,
        };
        // Ready: from now on HTTP connections wait in the socket's backlog until `run` serves
        // the full router.
        starting.stop().await;
        Ok(Server { listener, http_listener, shared: Arc::new(shared), tls, lock: None })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The address of the HTTP endpoints.
    pub fn http_addr(&self) -> io::Result<SocketAddr> {
        self.http_listener.local_addr()
    }

    /// The shared state, for in-process inspection (tests, embedding).
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serves until `shutdown` completes, then shuts down gracefully.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let Server { listener, http_listener, shared, tls, lock } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let permits = Arc::new(Semaphore::new(shared.config.server.connections_max));
        let mut connections = JoinSet::new();
        let sweeper = tokio::spawn(sweeper::run(shared.clone(), stop_rx.clone()));
        let mut modules = JoinSet::new();
        modules.spawn(crate::alerting::run(shared.clone(), stop_rx.clone()));
        for channel in &shared.sync.channels {
            modules.spawn(crate::sync::channel::run(
                channel.clone(),
                shared.clone(),
                stop_rx.clone(),
            ));
        }
        let (stop_snapshots, snapshot_stop_rx) = crossbeam_channel::bounded::<()>(1);
        let snapshotter = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("stockd-snapshot".into())
                .spawn(move || durability::snapshot_loop(shared, snapshot_stop_rx))?
        };
        let http_addr = http_listener.local_addr()?;
        info!(dashboard = %format!("http://{http_addr}/"), "http: dashboard, /api/v1, /metrics");
        let (sampler, first) = {
            let shared = shared.clone();
            tokio::task::spawn_blocking(move || crate::http::sampler::Sampler::start(&shared))
                .await
                .expect("the first sample does not panic")
        };
        let (samples_tx, samples_rx) = watch::channel(Arc::new(first));
        let sampler = tokio::spawn(sampler.run(shared.clone(), samples_tx, stop_rx.clone()));
        let http = {
            let mut stop = stop_rx.clone();
            let router = crate::http::router(shared.clone(), samples_rx);
            let stopped = async move {
                let _ = stop.changed().await;
            };
            let timeout = Duration::from_millis(shared.config.server.frame_timeout_ms);
            let tls = tls.as_ref().map(|acceptor| (acceptor.clone(), timeout));
            spawn_serve(http_listener, tls, router, stopped)
        };
        info!(addr = %listener.local_addr()?, "stockd listening");
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => match permits.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let _ = stream.set_nodelay(true);
                            let (shared, stop) = (shared.clone(), stop_rx.clone());
                            let tls = tls.clone();
                            connections.spawn(async move {
                                match tls {
                                    None => connection::serve(stream, peer, shared, stop).await,
                                    Some(acceptor) => {
                                        let timeout = Duration::from_millis(
                                            shared.config.server.frame_timeout_ms,
                                        );
                                        match tls::handshake(&acceptor, stream, timeout).await {
                                            Ok(stream) => {
                                                connection::serve(stream, peer, shared, stop).await
                                            }
                                            Err(why) => debug!(%peer, why, "connection refused"),
                                        }
                                    }
                                }
                                drop(permit);
                            });
                        }
                        Err(_) => {
                            debug!(%peer, "connection limit reached, refusing");
                            // A TLS client could not read a plaintext reason: just close.
                            if tls.is_none() {
                                tokio::spawn(refuse(stream));
                            }
                        }
                    },
                    Err(e) => {
                        // Out of file descriptors or a similar transient failure: back off
                        // briefly instead of spinning on accept.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(listener);
        info!(open = connections.len(), "shutting down: answering in-flight requests");
        let _ = stop_tx.send(true);
        let grace = Duration::from_millis(shared.config.server.shutdown_grace_ms);
        let drained =
            tokio::time::timeout(grace, async { while connections.join_next().await.is_some() {} })
                .await;
        if drained.is_err() {
            warn!(open = connections.len(), "grace period over, closing remaining connections");
            connections.abort_all();
        }
        let _ = sweeper.await;
        // A channel round may be waiting on a slow marketplace: give the modules the grace
        // period, then stop them where they are (their state is journaled step by step).
        let finished =
            tokio::time::timeout(grace, async { while modules.join_next().await.is_some() {} })
                .await;
        if finished.is_err() {
            warn!("companion modules still busy after the grace period: stopped");
            modules.abort_all();
        }
        // The sampler's end closes the dashboards' event streams, so the HTTP server can finish.
        let _ = sampler.await;
        let _ = http.await;
        drop(stop_snapshots);
        let _ = tokio::task::spawn_blocking(move || {
            let _ = snapshotter.join();
            let last_lsn = *shared.snapshot_lsn.borrow();
            durability::final_snapshot(&shared, last_lsn);
        })
        .await;
        info!("stockd stopped");
        drop(lock);
        Ok(())
    }
}

/// Tells a connection over the limit why it is closed, without waiting long for it.
async fn refuse(mut stream: TcpStream) {
    let mut buf = BytesMut::new();
    let reply =
        ErrorReply { code: ResultCode::Overloaded, message: "connection limit reached".into() };
    Reply::Error(reply).encode(0, &mut buf);
    let timeout = Duration::from_millis(REFUSE_WRITE_TIMEOUT_MS);
    let _ = tokio::time::timeout(timeout, async {
        stream.write_all(&buf).await?;
        stream.shutdown().await
    })
    .await;
}
