//! One client connection: read bytes, decode every complete frame in the buffer, execute,
//! wait until the log is durable up to every change those replies depend on, then encode the
//! replies into one buffer and write it with one call. Replies are written before more is read,
//! so a client that does not read its replies stops being served instead of growing the
//! server's memory. Many connections waiting at once share one `fdatasync` (group commit).
//!
//! If the log stops accepting writes (failure, or a full disk) before the changes become
//! durable, every state-changing reply in the round is turned into `read_only` and the reads
//! are sent as they are: nothing is acknowledged that is not durable, and no client hangs. A
//! change answered `read_only` may still become durable once space returns; retrying it with
//! the same reservation id is idempotent either way.
//!
//! Hostile or broken clients are bounded in time as well as memory: a frame must complete
//! within `frame_timeout_ms` of its first byte (slow-loris), replies must be accepted within
//! `write_timeout_ms` (a client that never reads), and an optional `idle_timeout_ms` closes
//! connections that send nothing.
//!
//! Authentication (README "Security"): with `auth.enabled`, the handshake must present a valid
//! API key, or it is answered `unauthorized` and the connection closed. Every operation is
//! checked against the key's role (`forbidden` otherwise), and before each frame the
//! connection notices a revocation of its key (one atomic load when nothing was revoked): the
//! frame is answered `unauthorized` and the connection closed. Operations beyond the
//! connection's rate (`server.connection_ops_per_second`) are answered `overloaded` without
//! being queued. Customer ids in replies are hidden from roles that do not see customers.
//!
//! Frame errors that leave the stream in sync (bad body checksum, undecodable body, unknown
//! opcode) are answered with an `ERROR` frame carrying the request id, and the connection goes
//! on. Errors in a header (magic, version, checksum, size) or a missing handshake are answered
//! and the connection is closed. Nothing a connection sends affects another connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use tracing::debug;

use stockd_protocol::frame::RawFrame;
use stockd_protocol::{
    ErrorReply, FrameDecoder, Hello, HelloReply, Op, OpReply, Opcode, Reply, Request, ResultCode,
    PROTOCOL_VERSION,
};

use super::{dispatch, Shared};
use crate::audit::NewEntry;
use crate::auth::{approvals, direct_limiter, DirectLimiter, Permission, Principal, HIDDEN};
use crate::engine::Command;
use crate::http::api::{apply_logged, Logged};
use crate::limits::{BATCH_OPS_MAX, CONNECTION_REPLIES_PER_ROUND_MAX, LINES_PER_RESERVATION_MAX};
use crate::wal::Health;

const READ_BUFFER_BYTES: usize = 64 * 1024;

/// What to do after a frame.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

struct Connection {
    shared: Arc<Shared>,
    peer: SocketAddr,
    handshaken: bool,
    /// Replies of this round, held until the log is durable enough to send them.
    replies: Vec<(u64, Reply)>,
    /// Who the handshake authenticated (`dev` with authentication off).
    principal: Principal,
    /// The key store's revocation count when the key was last checked.
    keys_generation: u64,
    limiter: Option<DirectLimiter>,
    /// Audit entries of this round's stock changes, written once the log is durable and
    /// before the replies.
    audits: Vec<NewEntry>,
}

pub(super) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut decoder = FrameDecoder::new(shared.config.server.frame_body_bytes_max);
    let mut input = BytesMut::with_capacity(READ_BUFFER_BYTES);
    let mut out = BytesMut::with_capacity(READ_BUFFER_BYTES);
    let server = &shared.config.server;
    let frame_timeout = Duration::from_millis(server.frame_timeout_ms);
    let write_timeout = Duration::from_millis(server.write_timeout_ms);
    let idle_timeout =
        (server.idle_timeout_ms > 0).then(|| Duration::from_millis(server.idle_timeout_ms));
    let limiter = direct_limiter(server.connection_ops_per_second);
    let mut conn = Connection {
        shared,
        peer,
        handshaken: false,
        replies: Vec::new(),
        principal: Principal::dev(),
        keys_generation: 0,
        limiter,
        audits: Vec::new(),
    };
    // When the frame now being received started arriving (or the connection went idle).
    let mut waiting_since = Instant::now();
    // One wait for shutdown for the connection's whole life, rather than a new one (and a new
    // registration with the watch) for every request.
    let stopped = stop.changed();
    tokio::pin!(stopped);
    debug!(%peer, "connection opened");
    conn.shared.metrics.connection_opened();
    let why = loop {
        let round_started = std::time::Instant::now();
        let mut flow = Flow::Continue;
        while flow == Flow::Continue && conn.replies.len() < CONNECTION_REPLIES_PER_ROUND_MAX {
            match decoder.decode(&mut input) {
                Ok(Some(frame)) => {
                    // A frame completed: the frame timer restarts for whatever follows it.
                    waiting_since = Instant::now();
                    flow = conn.frame(frame);
                }
                Ok(None) => break,
                Err(e) => {
                    debug!(%peer, error = %e, "bad frame");
                    conn.error(e.request_id(), e.code(), e.to_string());
                    if e.is_fatal() {
                        flow = Flow::Close;
                    }
                }
            }
        }
        // Stopped at the per-round cap: more complete frames may be buffered already.
        let capped = conn.replies.len() >= CONNECTION_REPLIES_PER_ROUND_MAX;
        if !conn.replies.is_empty() {
            let waiting = std::time::Instant::now();
            if conn.await_durability().await {
                conn.write_audit().await;
            } else {
                // Nothing of this round was acknowledged as applied: nothing to audit.
                conn.audits.clear();
            }
            let metrics = &conn.shared.metrics;
            metrics.commit_wait(waiting.elapsed());
            // Every request of the round waited from the round's start until now.
            let latency = round_started.elapsed();
            for (request_id, reply) in conn.replies.drain(..) {
                reply.encode(request_id, &mut out);
                metrics.request_latency(latency);
            }
            match tokio::time::timeout(write_timeout, stream.write_all(&out)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => break format!("write failed: {e}"),
                Err(_) => break "the client did not read its replies in time".to_string(),
            }
            out.clear();
        }
        if flow == Flow::Close {
            break "closed after a fatal error".to_string();
        }
        if capped {
            continue;
        }
        if input.capacity() - input.len() < 4096 {
            input.reserve(READ_BUFFER_BYTES);
        }
        let mid_frame = decoder.is_mid_frame(&input);
        let deadline = if mid_frame {
            Some(waiting_since + frame_timeout)
        } else {
            waiting_since = Instant::now();
            idle_timeout.map(|idle| waiting_since + idle)
        };
        let timer = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // Shutdown first, so a client that keeps sending cannot delay it.
            biased;
            _ = &mut stopped => break "server shutting down".to_string(),
            read = stream.read_buf(&mut input) => match read {
                Ok(0) if decoder.is_mid_frame(&input) => break "peer closed mid-frame".to_string(),
                Ok(0) => break "peer closed".to_string(),
                Ok(_) if !mid_frame => waiting_since = Instant::now(),
                Ok(_) => {}
                Err(e) => break format!("read failed: {e}"),
            },
            () = timer => break if mid_frame {
                "a frame did not arrive in time".to_string()
            } else {
                "idle for too long".to_string()
            },
        }
    };
    let _ = stream.shutdown().await;
    conn.shared.metrics.connection_closed();
    debug!(peer = %conn.peer, why, "connection closed");
}

impl Connection {
    fn error(&mut self, request_id: u64, code: ResultCode, message: String) {
        self.replies.push((request_id, Reply::Error(ErrorReply { code, message })));
    }

    /// Waits until every change these replies may depend on is durable; if the log stops
    /// accepting writes first, state-changing replies become `read_only` (and it returns
    /// false).
    async fn await_durability(&mut self) -> bool {
        let lsn = self.shared.wal.last_lsn();
        if self.shared.wal.durable(lsn).await.is_ok() {
            return true;
        }
        for (_, reply) in &mut self.replies {
            match reply {
                Reply::Op(op) => refuse_write(op),
                Reply::Batch(ops) => ops.iter_mut().for_each(refuse_write),
                Reply::Hello(_) | Reply::Error(_) => {}
            }
        }
        false
    }

    fn frame(&mut self, frame: RawFrame) -> Flow {
        let request_id = frame.header.request_id;
        let request = match Request::decode(frame.header.opcode, frame.body) {
            Ok(request) => request,
            Err(e) => {
                debug!(peer = %self.peer, error = %e, "undecodable request");
                self.error(request_id, e.code, e.message);
                return if self.handshaken { Flow::Continue } else { Flow::Close };
            }
        };
        let request = match request {
            Request::Hello(hello) => return self.hello(request_id, &hello),
            _ if !self.handshaken => {
                let message = "the first frame must be HELLO".to_string();
                self.error(request_id, ResultCode::HandshakeRequired, message);
                return Flow::Close;
            }
            request => request,
        };
        if !self.key_still_valid() {
            let message = "the API key was revoked".to_string();
            self.error(request_id, ResultCode::Unauthorized, message);
            return Flow::Close;
        }
        let now_ms = self.shared.clock.now_ms();
        let reply = match request {
            Request::Op(op) => match self.admit(1) {
                true => Reply::Op(self.execute(op, now_ms)),
                false => Reply::Op(self.overloaded(&op)),
            },
            Request::Batch(ops) => match self.admit(ops.len()) {
                true => {
                    let replies = ops.into_iter().map(|op| self.execute(op, now_ms)).collect();
                    Reply::Batch(replies)
                }
                false => Reply::Batch(ops.iter().map(|op| self.overloaded(op)).collect()),
            },
            Request::Hello(_) => unreachable!("handled above"),
        };
        self.replies.push((request_id, reply));
        Flow::Continue
    }

    /// Whether the connection's key is still valid (always, with authentication off).
    fn key_still_valid(&mut self) -> bool {
        let keys = &self.shared.keys;
        let generation = keys.generation();
        if generation == self.keys_generation || !self.shared.auth_enabled() {
            return true;
        }
        self.keys_generation = generation;
        keys.is_active(&self.principal.key_id)
    }

    /// Takes `ops` operations from the connection's rate allowance.
    fn admit(&self, ops: usize) -> bool {
        let Some(limiter) = &self.limiter else { return true };
        let ops = u32::try_from(ops).ok().and_then(std::num::NonZeroU32::new);
        ops.is_none_or(|n| matches!(limiter.check_n(n), Ok(Ok(()))))
    }

    fn overloaded(&self, op: &Op) -> OpReply {
        self.refused(op.opcode(), ResultCode::Overloaded)
    }

    fn refused(&self, opcode: Opcode, code: ResultCode) -> OpReply {
        self.shared.metrics.operation(opcode, code);
        OpReply::refused(opcode, code)
    }

    /// Writes the round's audit entries (the changes are durable by now). A failure is logged
    /// and makes the audit log refuse every later change; the replies stay true (applied).
    async fn write_audit(&mut self) {
        if self.audits.is_empty() {
            return;
        }
        let entries = std::mem::take(&mut self.audits);
        let key = Some(self.principal.key_id.to_string());
        let shared = self.shared.clone();
        let written = tokio::task::spawn_blocking(move || shared.audit.append_all(entries, key))
            .await
            .expect("an audit append does not panic");
        if let Err(e) = written {
            tracing::error!(peer = %self.peer, error = %e, "audit entries of durable changes lost");
        }
    }

    /// Executes one operation if the key's role allows it.
    fn execute(&mut self, op: Op, now_ms: u64) -> OpReply {
        let shared = &*self.shared;
        let permission = Permission::of_op(&op);
        if !self.principal.allows(permission) {
            return self.refused(op.opcode(), ResultCode::Forbidden);
        }
        if matches!(permission, Permission::Sync | Permission::Stock) {
            return self.administer(op, now_ms);
        }
        let mut reply = dispatch::execute(shared, op, now_ms);
        if let OpReply::QueryReservation(found) = &mut reply {
            match &mut found.info {
                Some(info)
                    if !info.customer.is_empty() && !self.principal.role.sees_customers() =>
                {
                    info.customer = Bytes::from_static(HIDDEN.as_bytes());
                }
                _ => {}
            }
        }
        reply
    }

    /// A stock or limits change: refused if it needs a second admin's approval (which cannot
    /// wait on this protocol) or the audit log cannot take it; otherwise applied like an HTTP
    /// change (`apply_logged`) and audited with the same before and after.
    fn administer(&mut self, op: Op, now_ms: u64) -> OpReply {
        let shared = self.shared.clone();
        let opcode = op.opcode();
        if shared.audit.check().is_err() || shared.wal.health() != Health::Ok {
            return self.refused(opcode, ResultCode::ReadOnly);
        }
        let command = Command::from_op(op).expect("a stock change is a command");
        if shared.auth_enabled() {
            let config = &shared.config.approval;
            if let Some(why) = approvals::dangerous(&shared.engine, config, &command, now_ms) {
                debug!(peer = %self.peer, why, "refused: needs approval over HTTP");
                return self.refused(opcode, ResultCode::Forbidden);
            }
        }
        let Logged { reply: applied, views, lsn } = apply_logged(&shared, &command, now_ms);
        shared.metrics.operation(opcode, applied.code);
        // A failed append shows when the round waits for durability: the reply becomes
        // `read_only` and the round's audit entries are dropped.
        if let (Some((before, after)), Some(Ok(lsn))) = (views, lsn) {
            let target = match command.touches() {
                crate::engine::Touches::Sku(sku) => String::from_utf8_lossy(sku).into_owned(),
                _ => String::new(),
            };
            self.audits.push(NewEntry {
                at_ms: now_ms,
                actor: self.principal.name.to_string(),
                action: opcode.name(),
                target,
                reason: "binary protocol".into(),
                before,
                after,
                lsn,
            });
        }
        let mut reply = OpReply::refused(opcode, applied.code);
        *reply.sku_reply_mut().expect("a stock change answers a SKU reply") = applied;
        reply
    }

    fn hello(&mut self, request_id: u64, hello: &Hello) -> Flow {
        let config = &self.shared.config;
        let supported =
            hello.min_version <= PROTOCOL_VERSION && PROTOCOL_VERSION <= hello.max_version;
        let authenticated = match self.shared.auth_enabled() {
            false => Ok(Principal::dev()),
            true => {
                // Read the generation first: a revocation racing this check is seen later.
                self.keys_generation = self.shared.keys.generation();
                self.shared.keys.authenticate(&hello.api_key)
            }
        };
        let code = match &authenticated {
            _ if !supported => ResultCode::UnsupportedVersion,
            Err(why) => {
                debug!(peer = %self.peer, %why, "handshake refused");
                ResultCode::Unauthorized
            }
            Ok(_) => ResultCode::Ok,
        };
        let accepted = code.is_ok();
        let reply = HelloReply {
            code,
            version: if accepted { PROTOCOL_VERSION } else { 0 },
            frame_body_bytes_max: config.server.frame_body_bytes_max,
            batch_ops_max: BATCH_OPS_MAX,
            lines_max: LINES_PER_RESERVATION_MAX,
            server_time_ms: self.shared.clock.now_ms(),
        };
        self.replies.push((request_id, Reply::Hello(reply)));
        self.handshaken = accepted;
        if let (true, Ok(principal)) = (accepted, authenticated) {
            let client = String::from_utf8_lossy(&hello.client_name);
            debug!(peer = %self.peer, %client, key = %principal.key_id, "handshake");
            self.principal = principal;
            Flow::Continue
        } else {
            Flow::Close
        }
    }
}

/// Turns the reply of a state-changing operation into `read_only`.
fn refuse_write(reply: &mut OpReply) {
    let opcode = reply.opcode();
    if !opcode.is_read_only() {
        *reply = OpReply::refused(opcode, ResultCode::ReadOnly);
    }
}
