//! One client connection: read bytes, decode every complete frame in the buffer, execute,
//! encode the replies into one buffer and write it with one call. Replies are written before
//! more is read, so a client that does not read its replies stops being served instead of
//! growing the server's memory.
//!
//! Frame errors that leave the stream in sync (bad body checksum, undecodable body, unknown
//! opcode) are answered with an `ERROR` frame carrying the request id, and the connection goes
//! on. Errors in a header (magic, version, checksum, size) or a missing handshake are answered
//! and the connection is closed. Nothing a connection sends affects another connection.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::codec::Decoder;
use tracing::debug;

use stockd_protocol::frame::RawFrame;
use stockd_protocol::{
    ErrorReply, FrameDecoder, Hello, HelloReply, Reply, Request, ResultCode, PROTOCOL_VERSION,
};

use super::{dispatch, Shared};
use crate::limits::{BATCH_OPS_MAX, CONNECTION_WRITE_BUFFER_BYTES_MAX, LINES_PER_RESERVATION_MAX};

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
    out: BytesMut,
}

pub(super) async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let mut decoder = FrameDecoder::new(shared.config.server.frame_body_bytes_max);
    let mut input = BytesMut::with_capacity(READ_BUFFER_BYTES);
    let mut conn = Connection {
        shared,
        peer,
        handshaken: false,
        out: BytesMut::with_capacity(READ_BUFFER_BYTES),
    };
    debug!(%peer, "connection opened");
    let why = 'conn: loop {
        let mut flow = Flow::Continue;
        while flow == Flow::Continue {
            match decoder.decode(&mut input) {
                Ok(Some(frame)) => flow = conn.frame(frame),
                Ok(None) => break,
                Err(e) => {
                    debug!(%peer, error = %e, "bad frame");
                    conn.error(e.request_id(), e.code(), e.to_string());
                    if e.is_fatal() {
                        flow = Flow::Close;
                    }
                }
            }
            if conn.out.len() >= CONNECTION_WRITE_BUFFER_BYTES_MAX {
                if let Err(e) = stream.write_all(&conn.out).await {
                    break 'conn format!("write failed: {e}");
                }
                conn.out.clear();
            }
        }
        if !conn.out.is_empty() {
            if let Err(e) = stream.write_all(&conn.out).await {
                break format!("write failed: {e}");
            }
            conn.out.clear();
        }
        if flow == Flow::Close {
            break "closed after a fatal error".to_string();
        }
        if input.capacity() - input.len() < 4096 {
            input.reserve(READ_BUFFER_BYTES);
        }
        tokio::select! {
            read = stream.read_buf(&mut input) => match read {
                Ok(0) if decoder.is_mid_frame(&input) => break "peer closed mid-frame".to_string(),
                Ok(0) => break "peer closed".to_string(),
                Ok(_) => {}
                Err(e) => break format!("read failed: {e}"),
            },
            _ = stop.changed() => break "server shutting down".to_string(),
        }
    };
    let _ = stream.shutdown().await;
    debug!(peer = %conn.peer, why, "connection closed");
}

impl Connection {
    fn error(&mut self, request_id: u64, code: ResultCode, message: String) {
        Reply::Error(ErrorReply { code, message }).encode(request_id, &mut self.out);
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
        let now_ms = self.shared.clock.now_ms();
        let engine = &self.shared.engine;
        let reply = match request {
            Request::Op(op) => Reply::Op(dispatch::execute(engine, op, now_ms)),
            Request::Batch(ops) => Reply::Batch(
                ops.into_iter().map(|op| dispatch::execute(engine, op, now_ms)).collect(),
            ),
            Request::Hello(_) => unreachable!("handled above"),
        };
        reply.encode(request_id, &mut self.out);
        Flow::Continue
    }

    fn hello(&mut self, request_id: u64, hello: &Hello) -> Flow {
        let config = &self.shared.config;
        let supported =
            hello.min_version <= PROTOCOL_VERSION && PROTOCOL_VERSION <= hello.max_version;
        // Any key is accepted (`auth.accept_any_key`, validated to be true at startup).
        let code = if supported { ResultCode::Ok } else { ResultCode::UnsupportedVersion };
        let reply = HelloReply {
            code,
            version: if supported { PROTOCOL_VERSION } else { 0 },
            frame_body_bytes_max: config.server.frame_body_bytes_max,
            batch_ops_max: BATCH_OPS_MAX,
            lines_max: LINES_PER_RESERVATION_MAX,
            server_time_ms: self.shared.clock.now_ms(),
        };
        Reply::Hello(reply).encode(request_id, &mut self.out);
        self.handshaken = supported;
        if supported {
            debug!(peer = %self.peer, client = %String::from_utf8_lossy(&hello.client_name), "handshake");
            Flow::Continue
        } else {
            Flow::Close
        }
    }
}
