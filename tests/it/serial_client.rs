//! The one-request-at-a-time client (`SerialClient`): against the real server, and against
//! hand-made servers on 127.0.0.1 that misbehave (a reply to another request, no reply, a
//! closed connection), after which the client must refuse to go on instead of matching a late
//! reply to the wrong request.

use crate::common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{test_config, TestServer, WAIT};
use stockd_protocol::{
    ClientError, ClientOptions, FrameDecoder, HelloReply, Line, Op, OpReply, Reply, Request,
    Reserve, ResultCode, SerialClient,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::codec::Decoder;

fn reserve(id: &str, sku: &str, qty: u32) -> Op {
    Op::Reserve(Reserve {
        id: Bytes::copy_from_slice(id.as_bytes()),
        ttl_ms: 0,
        channel: Bytes::new(),
        customer: Bytes::new(),
        lines: vec![Line::new(Bytes::copy_from_slice(sku.as_bytes()), qty)],
    })
}

#[tokio::test]
async fn a_serial_client_reserves_batches_and_queries_through_the_real_server() {
    let server = TestServer::start(test_config()).await;
    let mut client = SerialClient::connect(server.addr, ClientOptions::default()).await.unwrap();
    assert_eq!(client.hello().version, 1);
    let set = client.call(Op::SetStock { sku: "tee".into(), on_hand: 3, expected: None });
    assert_eq!(set.await.unwrap().code(), ResultCode::Ok);
    assert_eq!(client.call(reserve("o-1", "tee", 2)).await.unwrap().code(), ResultCode::Ok);
    let replies = client.batch(vec![reserve("o-2", "tee", 1), reserve("o-3", "tee", 1)]).await;
    let codes: Vec<ResultCode> = replies.unwrap().iter().map(OpReply::code).collect();
    assert_eq!(codes, [ResultCode::Ok, ResultCode::InsufficientStock]);
    match client.call(Op::QuerySku { sku: "tee".into() }).await.unwrap() {
        OpReply::QuerySku(reply) => {
            assert_eq!(reply.code, ResultCode::Ok);
            assert_eq!((reply.info.reserved, reply.info.available), (3, 0));
        }
        other => panic!("unexpected reply {other:?}"),
    }
    // A request over the protocol's limits is refused before it is sent; the connection is fine.
    let err = client.call(reserve(&"x".repeat(65), "tee", 1)).await.expect_err("too long");
    assert!(matches!(err, ClientError::Invalid(_)), "{err}");
    assert_eq!(client.call(Op::Ping).await.unwrap().code(), ResultCode::Ok);
    // The same reservations, seen through the pipelined client.
    let other = server.client().await;
    let found = other.query_reservation("o-2").await.unwrap();
    assert!(found.info.is_some(), "the batch's reserve is stored");
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn a_serial_client_fails_cleanly_when_the_server_goes_away() {
    let server = TestServer::start(test_config()).await;
    let mut client = SerialClient::connect(server.addr, ClientOptions::default()).await.unwrap();
    assert_eq!(client.call(Op::Ping).await.unwrap().code(), ResultCode::Ok);
    server.stop().await;
    let err = client.call(Op::Ping).await.expect_err("server is gone");
    assert!(err.is_retryable(), "{err}");
    let again = client.call(Op::Ping).await.expect_err("still gone");
    assert!(matches!(again, ClientError::Closed(_)), "{again}");
}

/// A server that completes the handshake, then answers each request with `answer`, which is
/// given the request's id and returns the frames to send (none: stay silent).
async fn fake_server(answer: fn(u64) -> Option<BytesMut>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut decoder = FrameDecoder::new(u32::MAX);
        let mut input = BytesMut::new();
        loop {
            let frame = match decoder.decode(&mut input).unwrap() {
                Some(frame) => frame,
                None => match stream.read_buf(&mut input).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                },
            };
            let request_id = frame.header.request_id;
            let out = match Request::decode(frame.header.opcode, frame.body).unwrap() {
                Request::Hello(_) => Some(hello_reply(request_id)),
                _ => answer(request_id),
            };
            if let Some(out) = out {
                stream.write_all(&out).await.unwrap();
            }
        }
    });
    addr
}

fn hello_reply(request_id: u64) -> BytesMut {
    let mut out = BytesMut::new();
    let hello = HelloReply {
        code: ResultCode::Ok,
        version: 1,
        frame_body_bytes_max: 1 << 20,
        batch_ops_max: 1000,
        lines_max: 100,
        server_time_ms: 0,
    };
    Reply::Hello(hello).encode(request_id, &mut out);
    out
}

async fn connect(addr: std::net::SocketAddr, request_timeout: Duration) -> SerialClient {
    let options = ClientOptions { request_timeout, ..ClientOptions::default() };
    SerialClient::connect(addr, options).await.expect("handshake")
}

#[tokio::test]
async fn a_reply_to_another_request_is_a_protocol_error_and_ends_the_connection() {
    let addr = fake_server(|request_id| {
        let mut out = BytesMut::new();
        Reply::Op(OpReply::Ping(ResultCode::Ok)).encode(request_id + 7, &mut out);
        Some(out)
    })
    .await;
    let mut client = connect(addr, WAIT).await;
    let err = client.call(Op::Ping).await.expect_err("wrong request id");
    assert!(matches!(&err, ClientError::Protocol(why) if why.contains("expected")), "{err}");
    let again = client.call(Op::Ping).await.expect_err("the connection is not trusted");
    assert!(matches!(&again, ClientError::Closed(why) if why.contains("earlier")), "{again}");
}

#[tokio::test]
async fn a_reply_that_never_comes_times_out_and_a_late_one_is_never_taken_for_the_next() {
    let addr = fake_server(|_| None).await;
    let mut client = connect(addr, Duration::from_millis(200)).await;
    let err = client.call(Op::Ping).await.expect_err("no reply");
    assert!(matches!(err, ClientError::Timeout(_)), "{err}");
    assert!(err.is_retryable());
    let again = client.call(Op::Ping).await.expect_err("broken after a timeout");
    assert!(matches!(again, ClientError::Closed(_)), "{again}");
}

#[tokio::test]
async fn a_connection_error_from_the_server_fails_the_request_with_its_reason() {
    let addr = fake_server(|_| {
        let mut out = BytesMut::new();
        let error = stockd_protocol::ErrorReply {
            code: ResultCode::InvalidArgument,
            message: "bad header".into(),
        };
        Reply::Error(error).encode(0, &mut out);
        Some(out)
    })
    .await;
    let mut client = connect(addr, WAIT).await;
    let err = client.call(Op::Ping).await.expect_err("connection-level error");
    assert!(matches!(&err, ClientError::Closed(why) if why.contains("bad header")), "{err}");
    // A silent server that closes: the handshake itself fails with a clear error.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closer = tokio::spawn(async move { drop(listener.accept().await.unwrap()) });
    let err = SerialClient::connect(addr, ClientOptions::default()).await.err().expect("refused");
    assert!(err.is_retryable(), "{err}");
    closer.await.unwrap();
}
