//! A client for one request at a time on a connection of its own: the calling task encodes the
//! request, writes it and reads the reply itself. No background tasks, channels or reply
//! table, so a request costs one write and (usually) one read on the caller's task, where
//! [`Client`](crate::Client) hands each request to a writer task and each reply back from a
//! reader task. Made for callers that wait for every reply before sending the next request
//! (a checkout worker, the load test's `--in-flight 1`); use `Client` to pipeline or to share
//! a connection between tasks.
//!
//! After an I/O error, a timeout or a protocol violation the connection's state is unknown (a
//! late reply could be taken for the next request's), so every later request fails with
//! [`ClientError::Closed`]; connect again. A retried reserve with the same id is idempotent.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_util::codec::Decoder;

use crate::client::{accept_hello, batch_replies, hello_request, op_reply, unanswered_hello};
use crate::frame::FrameDecoder;
use crate::limits::FRAME_BODY_BYTES_MAX;
use crate::message::{HelloReply, Op, OpReply, Reply, Request};
use crate::{ClientError, ClientOptions};

const BUFFER_BYTES: usize = 8 * 1024;

/// One connection, one request at a time. See the module documentation.
pub struct SerialClient<S = TcpStream> {
    stream: S,
    decoder: FrameDecoder,
    input: BytesMut,
    output: BytesMut,
    next_request_id: u64,
    hello: HelloReply,
    request_timeout: Duration,
    /// Why the connection can no longer be used, once it cannot.
    broken: Option<String>,
}

impl SerialClient<TcpStream> {
    /// Connects and performs the `HELLO` handshake. `options.in_flight_max` is ignored (one).
    pub async fn connect(
        addr: impl ToSocketAddrs,
        options: ClientOptions,
    ) -> Result<SerialClient<TcpStream>, ClientError> {
        let stream = tokio::time::timeout(options.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout(options.connect_timeout))??;
        stream.set_nodelay(true)?;
        SerialClient::over(stream, options).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> SerialClient<S> {
    /// Completes the handshake over an already connected stream (TLS, for example).
    pub async fn over(stream: S, options: ClientOptions) -> Result<SerialClient<S>, ClientError> {
        let mut client = SerialClient {
            stream,
            decoder: FrameDecoder::new(FRAME_BODY_BYTES_MAX),
            input: BytesMut::with_capacity(BUFFER_BYTES),
            output: BytesMut::with_capacity(BUFFER_BYTES),
            next_request_id: 1,
            hello: unanswered_hello(),
            request_timeout: options.request_timeout,
            broken: None,
        };
        client.hello = accept_hello(client.request(hello_request(&options)).await?)?;
        Ok(client)
    }

    /// What the server announced in the handshake (version, limits, clock).
    pub fn hello(&self) -> &HelloReply {
        &self.hello
    }

    /// Sends any request and waits for its reply, at most the request timeout.
    pub async fn request(&mut self, request: Request) -> Result<Reply, ClientError> {
        if let Some(why) = &self.broken {
            return Err(ClientError::Closed(why.clone()));
        }
        request.check_limits().map_err(ClientError::Invalid)?;
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        self.output.clear();
        request.encode(request_id, &mut self.output);
        let timeout = self.request_timeout;
        let result = match tokio::time::timeout(timeout, self.exchange(request_id)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout(timeout)),
        };
        if let Err(e) = &result {
            self.broken = Some(format!("an earlier request failed: {e}"));
        }
        result
    }

    /// Sends one operation. A frame-level `ERROR` reply becomes [`ClientError::Server`].
    pub async fn call(&mut self, op: Op) -> Result<OpReply, ClientError> {
        let opcode = op.opcode();
        op_reply(opcode, self.request(Request::Op(op)).await?)
    }

    /// Sends many operations in one batch frame; one reply per operation, in order.
    pub async fn batch(&mut self, ops: Vec<Op>) -> Result<Vec<OpReply>, ClientError> {
        let count = ops.len();
        batch_replies(count, self.request(Request::Batch(ops)).await?)
    }

    /// Writes the encoded request and reads until its reply is complete.
    async fn exchange(&mut self, request_id: u64) -> Result<Reply, ClientError> {
        self.stream.write_all(&self.output).await?;
        loop {
            let frame = self
                .decoder
                .decode(&mut self.input)
                .map_err(|e| ClientError::Protocol(format!("bad frame from server: {e}")))?;
            if let Some(frame) = frame {
                let reply = Reply::decode(&frame.header, frame.body)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                return match (frame.header.request_id, reply) {
                    (id, reply) if id == request_id => Ok(reply),
                    // An ERROR about the connection itself: the server could not trust a header.
                    (0, Reply::Error(e)) => {
                        Err(ClientError::Closed(format!("server error: {}: {}", e.code, e.message)))
                    }
                    (id, _) => Err(ClientError::Protocol(format!(
                        "reply to request {id}, expected {request_id}"
                    ))),
                };
            }
            self.input.reserve(BUFFER_BYTES);
            if self.stream.read_buf(&mut self.input).await? == 0 {
                return Err(ClientError::Closed("server closed the connection".into()));
            }
        }
    }
}
