//! An async client: one TCP connection, many requests in flight (pipelining), batch frames,
//! typed replies, and a small pool that reconnects and retries idempotent operations with the
//! same reservation id.
//!
//! A writer task coalesces every queued request into one socket write; a reader task matches
//! replies to requests by request id. In-flight requests are bounded by a semaphore, so a slow
//! server applies backpressure to callers instead of growing queues.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::codec::FramedRead;

use crate::code::ResultCode;
use crate::frame::FrameDecoder;
use crate::limits::FRAME_BODY_BYTES_MAX;
use crate::message::{
    Confirm, ExtendReply, Hello, HelloReply, LimitsReply, Line, LocationsReply, Op, OpReply,
    Opcode, Reply, Request, ReservationReply, Reserve, ReserveAt, ReserveAtReply, ReserveReply,
    SkuLimits, SkuReply,
};
use crate::PROTOCOL_VERSION;

/// Errors of the client. Business outcomes are never errors: they are result codes in replies.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("i/o error")]
    Io(#[from] std::io::Error),
    #[error("connection closed: {0}")]
    Closed(String),
    #[error("server refused the request: {code}: {message}")]
    Server { code: ResultCode, message: String },
    #[error("handshake refused: {0}")]
    Handshake(ResultCode),
    #[error("protocol violation by the server: {0}")]
    Protocol(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("request not sent: {0}")]
    Invalid(crate::message::DecodeError),
}

impl ClientError {
    /// True when the request may not have reached the server and can be retried on a new
    /// connection (with the same id, so the retry is idempotent).
    pub fn is_retryable(&self) -> bool {
        matches!(self, ClientError::Io(_) | ClientError::Closed(_) | ClientError::Timeout(_))
    }
}

/// Connection settings.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub api_key: Bytes,
    pub client_name: Bytes,
    /// Requests in flight on one connection; further calls wait.
    pub in_flight_max: usize,
    pub connect_timeout: Duration,
    /// Bound on the wait for any one reply.
    pub request_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            api_key: Bytes::new(),
            client_name: Bytes::from_static(b"stockd-client"),
            in_flight_max: 4096,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }
}

type ReplySender = oneshot::Sender<Result<Reply, ClientError>>;

struct Outgoing {
    request_id: u64,
    request: Request,
    reply: ReplySender,
}

/// Replies awaited, and why the connection closed once it has.
#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, ReplySender>,
    closed: Option<String>,
}

struct Inner {
    tx: mpsc::Sender<Outgoing>,
    next_request_id: AtomicU64,
    in_flight: Semaphore,
    pending: Arc<Mutex<Pending>>,
    hello: HelloReply,
    request_timeout: Duration,
}

/// A pipelined connection to a stockd server. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects and performs the `HELLO` handshake.
    pub async fn connect(
        addr: impl ToSocketAddrs,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let stream = tokio::time::timeout(options.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout(options.connect_timeout))??;
        stream.set_nodelay(true)?;
        Client::over(stream, options).await
    }

    /// Completes the handshake over an already connected stream (for example a TLS stream
    /// from `tokio-rustls`; the protocol is the same inside).
    pub async fn over<S>(stream: S, options: ClientOptions) -> Result<Client, ClientError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(stream);
        let pending = Arc::new(Mutex::new(Pending::default()));
        let (tx, rx) = mpsc::channel(options.in_flight_max.max(1));
        tokio::spawn(write_loop(write, rx, pending.clone()));
        tokio::spawn(read_loop(
            FramedRead::new(read, FrameDecoder::new(FRAME_BODY_BYTES_MAX)),
            pending.clone(),
        ));

        let mut inner = Inner {
            tx,
            next_request_id: AtomicU64::new(1),
            in_flight: Semaphore::new(options.in_flight_max.max(1)),
            pending,
            hello: unanswered_hello(),
            request_timeout: options.request_timeout,
        };
        inner.hello = accept_hello(send(&inner, hello_request(&options)).await?)?;
        Ok(Client { inner: Arc::new(inner) })
    }

    /// What the server announced in the handshake (version, limits, clock).
    pub fn hello(&self) -> &HelloReply {
        &self.inner.hello
    }

    /// Sends any request and waits for its reply.
    pub async fn request(&self, request: Request) -> Result<Reply, ClientError> {
        send(&self.inner, request).await
    }

    /// Sends one operation. A frame-level `ERROR` reply becomes [`ClientError::Server`].
    pub async fn call(&self, op: Op) -> Result<OpReply, ClientError> {
        let opcode = op.opcode();
        op_reply(opcode, self.request(Request::Op(op)).await?)
    }

    /// Sends many operations in one batch frame; one reply per operation, in order.
    pub async fn batch(&self, ops: Vec<Op>) -> Result<Vec<OpReply>, ClientError> {
        let count = ops.len();
        batch_replies(count, self.request(Request::Batch(ops)).await?)
    }

    pub async fn ping(&self) -> Result<ResultCode, ClientError> {
        Ok(self.call(Op::Ping).await?.code())
    }

    pub async fn reserve(&self, reserve: Reserve) -> Result<ReserveReply, ClientError> {
        match self.call(Op::Reserve(reserve)).await? {
            OpReply::Reserve(reply) => Ok(reply),
            other => Err(unexpected_op(&other)),
        }
    }

    /// Reserves from a named location, or lets the server choose (and optionally split); the
    /// reply lists the locations each line was taken from.
    pub async fn reserve_at(&self, reserve: ReserveAt) -> Result<ReserveAtReply, ClientError> {
        match self.call(Op::ReserveAt(reserve)).await? {
            OpReply::ReserveAt(reply) => Ok(reply),
            other => Err(unexpected_op(&other)),
        }
    }

    /// Confirms a hold; an empty `lines` confirms every line in full.
    pub async fn confirm(
        &self,
        id: impl Into<Bytes>,
        lines: Vec<Line>,
    ) -> Result<ResultCode, ClientError> {
        Ok(self.call(Op::Confirm(Confirm { id: id.into(), lines })).await?.code())
    }

    pub async fn release(&self, id: impl Into<Bytes>) -> Result<ResultCode, ClientError> {
        Ok(self.call(Op::Release { id: id.into() }).await?.code())
    }

    pub async fn extend(
        &self,
        id: impl Into<Bytes>,
        ttl_ms: u32,
    ) -> Result<ExtendReply, ClientError> {
        match self.call(Op::Extend { id: id.into(), ttl_ms }).await? {
            OpReply::Extend(reply) => Ok(reply),
            other => Err(unexpected_op(&other)),
        }
    }

    pub async fn ship(&self, id: impl Into<Bytes>) -> Result<ResultCode, ClientError> {
        Ok(self.call(Op::Ship { id: id.into() }).await?.code())
    }

    pub async fn set_stock(
        &self,
        sku: impl Into<Bytes>,
        on_hand: u64,
        expected: Option<u64>,
    ) -> Result<SkuReply, ClientError> {
        sku_reply(self.call(Op::SetStock { sku: sku.into(), on_hand, expected }).await?)
    }

    pub async fn adjust_stock(
        &self,
        sku: impl Into<Bytes>,
        delta: i64,
        expected: Option<u64>,
    ) -> Result<SkuReply, ClientError> {
        sku_reply(self.call(Op::AdjustStock { sku: sku.into(), delta, expected }).await?)
    }

    pub async fn set_safety_stock(
        &self,
        sku: impl Into<Bytes>,
        safety_stock: u64,
    ) -> Result<SkuReply, ClientError> {
        sku_reply(self.call(Op::SetSafetyStock { sku: sku.into(), safety_stock }).await?)
    }

    /// Replaces a SKU's per-buyer limit and channel quotas (`SkuLimits::default()` removes
    /// them).
    pub async fn set_limits(
        &self,
        sku: impl Into<Bytes>,
        limits: SkuLimits,
    ) -> Result<SkuReply, ClientError> {
        sku_reply(self.call(Op::SetLimits { sku: sku.into(), limits }).await?)
    }

    /// Sets one location's physical count and priority (creating the SKU and the location if
    /// new); `expected` checks the location's current count.
    pub async fn set_location(
        &self,
        sku: impl Into<Bytes>,
        location: impl Into<Bytes>,
        on_hand: u64,
        priority: u32,
        expected: Option<u64>,
    ) -> Result<SkuReply, ClientError> {
        let (sku, location) = (sku.into(), location.into());
        sku_reply(self.call(Op::SetLocation { sku, location, on_hand, priority, expected }).await?)
    }

    /// Adds `delta` to one location's physical count.
    pub async fn adjust_location(
        &self,
        sku: impl Into<Bytes>,
        location: impl Into<Bytes>,
        delta: i64,
        expected: Option<u64>,
    ) -> Result<SkuReply, ClientError> {
        let (sku, location) = (sku.into(), location.into());
        sku_reply(self.call(Op::AdjustLocation { sku, location, delta, expected }).await?)
    }

    /// Records, replaces or (with `qty` 0) removes an incoming delivery.
    pub async fn set_incoming(
        &self,
        sku: impl Into<Bytes>,
        location: impl Into<Bytes>,
        reference: impl Into<Bytes>,
        qty: u64,
        eta_ms: u64,
    ) -> Result<SkuReply, ClientError> {
        let (sku, location, reference) = (sku.into(), location.into(), reference.into());
        sku_reply(self.call(Op::SetIncoming { sku, location, reference, qty, eta_ms }).await?)
    }

    /// Moves `qty` units (0 = all) of an incoming delivery into `on_hand`.
    pub async fn receive_incoming(
        &self,
        sku: impl Into<Bytes>,
        location: impl Into<Bytes>,
        reference: impl Into<Bytes>,
        qty: u64,
    ) -> Result<SkuReply, ClientError> {
        let (sku, location, reference) = (sku.into(), location.into(), reference.into());
        sku_reply(self.call(Op::ReceiveIncoming { sku, location, reference, qty }).await?)
    }

    /// Allows selling up to `preorder_max` units beyond `on_hand` against incoming stock.
    pub async fn set_preorder(
        &self,
        sku: impl Into<Bytes>,
        preorder_max: u64,
    ) -> Result<SkuReply, ClientError> {
        sku_reply(self.call(Op::SetPreorder { sku: sku.into(), preorder_max }).await?)
    }

    /// Deletes a SKU no open reservation names (`sku_in_use` otherwise: held, or confirmed and
    /// not shipped).
    /// The reply has its counters just before. Needs the ops or admin role; refused
    /// (`forbidden`) where deletions need a second admin's approval, which only the HTTP API
    /// can wait for.
    pub async fn delete_sku(&self, sku: impl Into<Bytes>) -> Result<SkuReply, ClientError> {
        sku_reply(self.call(Op::DeleteSku { sku: sku.into() }).await?)
    }

    /// A SKU's locations, incoming deliveries and preorder allowance.
    pub async fn query_locations(
        &self,
        sku: impl Into<Bytes>,
    ) -> Result<LocationsReply, ClientError> {
        match self.call(Op::QueryLocations { sku: sku.into() }).await? {
            OpReply::QueryLocations(reply) => Ok(reply),
            other => Err(unexpected_op(&other)),
        }
    }

    /// A SKU's limits, each quota's allocation and use, and the pool.
    pub async fn query_limits(&self, sku: impl Into<Bytes>) -> Result<LimitsReply, ClientError> {
        match self.call(Op::QueryLimits { sku: sku.into() }).await? {
            OpReply::QueryLimits(reply) => Ok(reply),
            other => Err(unexpected_op(&other)),
        }
    }

    pub async fn query_sku(&self, sku: impl Into<Bytes>) -> Result<SkuReply, ClientError> {
        sku_reply(self.call(Op::QuerySku { sku: sku.into() }).await?)
    }

    pub async fn query_reservation(
        &self,
        id: impl Into<Bytes>,
    ) -> Result<ReservationReply, ClientError> {
        match self.call(Op::QueryReservation { id: id.into() }).await? {
            OpReply::QueryReservation(reply) => Ok(reply),
            other => Err(unexpected_op(&other)),
        }
    }
}

fn sku_reply(reply: OpReply) -> Result<SkuReply, ClientError> {
    match reply {
        OpReply::SetStock(r)
        | OpReply::AdjustStock(r)
        | OpReply::SetSafetyStock(r)
        | OpReply::SetLimits(r)
        | OpReply::SetLocation(r)
        | OpReply::AdjustLocation(r)
        | OpReply::SetIncoming(r)
        | OpReply::ReceiveIncoming(r)
        | OpReply::SetPreorder(r)
        | OpReply::DeleteSku(r)
        | OpReply::QuerySku(r) => Ok(r),
        other => Err(unexpected_op(&other)),
    }
}

/// The `HELLO` request a connection opens with.
pub(crate) fn hello_request(options: &ClientOptions) -> Request {
    Request::Hello(Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        api_key: options.api_key.clone(),
        client_name: options.client_name.clone(),
    })
}

/// What a client holds as the server's `HELLO` reply before the handshake has completed.
pub(crate) fn unanswered_hello() -> HelloReply {
    HelloReply {
        code: ResultCode::Ok,
        version: 0,
        frame_body_bytes_max: 0,
        batch_ops_max: 0,
        lines_max: 0,
        server_time_ms: 0,
    }
}

/// The server's answer to the handshake, if it accepted it.
pub(crate) fn accept_hello(reply: Reply) -> Result<HelloReply, ClientError> {
    match reply {
        Reply::Hello(hello) if hello.code.is_ok() => Ok(hello),
        Reply::Hello(hello) => Err(ClientError::Handshake(hello.code)),
        Reply::Error(e) => Err(ClientError::Server { code: e.code, message: e.message }),
        other => Err(unexpected(&other)),
    }
}

/// The reply to one operation; a frame-level `ERROR` becomes [`ClientError::Server`].
pub(crate) fn op_reply(opcode: Opcode, reply: Reply) -> Result<OpReply, ClientError> {
    match reply {
        Reply::Op(reply) if reply.opcode() == opcode => Ok(reply),
        Reply::Error(e) => Err(ClientError::Server { code: e.code, message: e.message }),
        other => Err(unexpected(&other)),
    }
}

/// The replies to a batch of `count` operations.
pub(crate) fn batch_replies(count: usize, reply: Reply) -> Result<Vec<OpReply>, ClientError> {
    match reply {
        Reply::Batch(replies) if replies.len() == count => Ok(replies),
        Reply::Error(e) => Err(ClientError::Server { code: e.code, message: e.message }),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(reply: &Reply) -> ClientError {
    ClientError::Protocol(format!("unexpected reply {:?}", reply.opcode()))
}

fn unexpected_op(reply: &OpReply) -> ClientError {
    ClientError::Protocol(format!("unexpected reply {:?}", reply.opcode()))
}

async fn send(inner: &Inner, request: Request) -> Result<Reply, ClientError> {
    request.check_limits().map_err(ClientError::Invalid)?;
    let _permit = inner.in_flight.acquire().await.map_err(|_| closed("client dropped"))?;
    let request_id = inner.next_request_id.fetch_add(1, Ordering::Relaxed);
    let (reply_tx, reply_rx) = oneshot::channel();
    inner
        .tx
        .send(Outgoing { request_id, request, reply: reply_tx })
        .await
        .map_err(|_| closed("writer stopped"))?;
    match tokio::time::timeout(inner.request_timeout, reply_rx).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) => Err(closed("reply channel dropped")),
        Err(_) => {
            inner.pending.lock().expect("pending lock").waiting.remove(&request_id);
            Err(ClientError::Timeout(inner.request_timeout))
        }
    }
}

fn closed(why: &str) -> ClientError {
    ClientError::Closed(why.to_string())
}

/// Fails every waiting request and refuses new ones.
fn close_all(pending: &Mutex<Pending>, why: String) {
    let waiting = {
        let mut pending = pending.lock().expect("pending lock");
        pending.closed.get_or_insert(why.clone());
        std::mem::take(&mut pending.waiting)
    };
    for (_, reply) in waiting {
        let _ = reply.send(Err(ClientError::Closed(why.clone())));
    }
}

/// Bytes gathered into one write before it is sent.
const WRITE_COALESCE_BYTES_MAX: usize = 256 * 1024;

async fn write_loop<W: AsyncWrite + Unpin>(
    mut write: W,
    mut rx: mpsc::Receiver<Outgoing>,
    pending: Arc<Mutex<Pending>>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(out) = next.take() {
            {
                let mut pending = pending.lock().expect("pending lock");
                if let Some(why) = &pending.closed {
                    let _ = out.reply.send(Err(ClientError::Closed(why.clone())));
                } else {
                    pending.waiting.insert(out.request_id, out.reply);
                    out.request.encode(out.request_id, &mut buf);
                }
            }
            if buf.len() < WRITE_COALESCE_BYTES_MAX {
                next = rx.try_recv().ok();
            }
        }
        if let Err(e) = write.write_all(&buf).await {
            close_all(&pending, format!("write failed: {e}"));
            return;
        }
        buf.clear();
    }
    let _ = write.shutdown().await;
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut frames: FramedRead<R, FrameDecoder>,
    pending: Arc<Mutex<Pending>>,
) {
    let why = loop {
        let frame = match frames.next().await {
            None => break "server closed the connection".to_string(),
            Some(Err(e)) => break format!("bad frame from server: {e}"),
            Some(Ok(frame)) => frame,
        };
        let reply = Reply::decode(&frame.header, frame.body)
            .map_err(|e| ClientError::Protocol(e.to_string()));
        // An ERROR frame with request id 0 concerns the connection itself (the server could not
        // trust a request's header): it fails everything in flight.
        if let Ok(Reply::Error(e)) = &reply {
            if frame.header.request_id == 0 {
                break format!("server error: {}: {}", e.code, e.message);
            }
        }
        let waiter = pending.lock().expect("pending lock").waiting.remove(&frame.header.request_id);
        if let Some(waiter) = waiter {
            let _ = waiter.send(reply);
        }
    };
    close_all(&pending, why);
}

/// A fixed set of connections used round-robin. A connection that fails is replaced on next use,
/// and operations that are safe to repeat are retried with the same content, so a reserve retry
/// returns the original result instead of reserving twice.
pub struct Pool {
    addr: String,
    options: ClientOptions,
    slots: Vec<tokio::sync::Mutex<Option<Client>>>,
    next: AtomicUsize,
    retries: u32,
}

impl Pool {
    /// A pool of `size` lazily opened connections to `addr`, retrying up to `retries` times.
    pub fn new(addr: impl Into<String>, size: usize, retries: u32, options: ClientOptions) -> Pool {
        Pool {
            addr: addr.into(),
            options,
            slots: (0..size.max(1)).map(|_| tokio::sync::Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            retries,
        }
    }

    async fn client(&self, slot: usize) -> Result<Client, ClientError> {
        let mut slot = self.slots[slot].lock().await;
        if let Some(client) = slot.as_ref() {
            if !client.inner.tx.is_closed() {
                return Ok(client.clone());
            }
        }
        let client = Client::connect(self.addr.as_str(), self.options.clone()).await?;
        *slot = Some(client.clone());
        Ok(client)
    }

    async fn forget(&self, slot: usize) {
        *self.slots[slot].lock().await = None;
    }

    /// Sends one operation, retrying on connection failures when the operation is idempotent.
    /// A relative stock adjustment without an expected value is never retried: it could apply twice.
    pub async fn call(&self, op: Op) -> Result<OpReply, ClientError> {
        let repeatable = !matches!(op, Op::AdjustStock { expected: None, .. });
        let mut attempt = 0;
        loop {
            let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
            let result = match self.client(slot).await {
                Ok(client) => client.call(op.clone()).await,
                Err(e) => Err(e),
            };
            match result {
                Err(e) if e.is_retryable() && repeatable && attempt < self.retries => {
                    self.forget(slot).await;
                    tokio::time::sleep(Duration::from_millis(10u64 << attempt.min(6))).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}
