//! Every bad-input path of the wire protocol against the real server: each gets a clear error
//! frame (or a clean close), and never disturbs another connection.

use crate::common;

use bytes::{BufMut, BytesMut};
use common::{crc32c_reference, hello, ping_frame, test_config, Raw, TestServer};
use stockd_protocol::frame::{encode_frame, HEADER_BYTES};
use stockd_protocol::limits::{ID_BYTES_MAX, LINES_PER_RESERVATION_MAX};
use stockd_protocol::{
    Hello, Line, Op, OpReply, Opcode, Reply, Request, Reserve, ResultCode, PROTOCOL_VERSION,
};

fn error_code(reply: Option<(stockd_protocol::Header, Reply)>) -> (u64, ResultCode) {
    match reply {
        Some((header, Reply::Error(e))) => (header.request_id, e.code),
        other => panic!("expected an ERROR frame, got {other:?}"),
    }
}

fn refix_header_crc(buf: &mut BytesMut) {
    let crc = crc32c_reference(&buf[..28]);
    buf[28..32].copy_from_slice(&crc.to_le_bytes());
}

async fn expect_closed(raw: &mut Raw) {
    assert!(raw.recv().await.is_none(), "server closes the connection");
}

#[tokio::test]
async fn bad_magic_is_answered_and_closed() {
    let server = TestServer::start(test_config()).await;
    let mut raw = Raw::handshaken(server.addr).await;
    let mut frame = ping_frame(5);
    frame[0..4].copy_from_slice(b"HTTP");
    raw.send(&frame).await;
    assert_eq!(error_code(raw.recv().await), (0, ResultCode::Malformed));
    expect_closed(&mut raw).await;
    server.stop().await;
}

#[tokio::test]
async fn wrong_version_is_answered_and_closed() {
    let server = TestServer::start(test_config()).await;
    let mut raw = Raw::handshaken(server.addr).await;
    let mut frame = ping_frame(6);
    frame[4..6].copy_from_slice(&2u16.to_le_bytes());
    refix_header_crc(&mut frame);
    raw.send(&frame).await;
    assert_eq!(error_code(raw.recv().await), (6, ResultCode::UnsupportedVersion));
    expect_closed(&mut raw).await;
    server.stop().await;
}

#[tokio::test]
async fn hello_without_a_common_version_is_refused() {
    let server = TestServer::start(test_config()).await;
    let mut raw = Raw::connect(server.addr).await;
    let hello = Request::Hello(Hello {
        min_version: PROTOCOL_VERSION + 1,
        max_version: PROTOCOL_VERSION + 3,
        api_key: "k".into(),
        client_name: "future".into(),
    });
    raw.send_request(1, &hello).await;
    match raw.recv().await {
        Some((_, Reply::Hello(h))) => assert_eq!(h.code, ResultCode::UnsupportedVersion),
        other => panic!("expected a HELLO reply, got {other:?}"),
    }
    expect_closed(&mut raw).await;
    server.stop().await;
}

#[tokio::test]
async fn oversized_frame_is_refused_before_it_is_read() {
    let mut config = test_config();
    config.server.frame_body_bytes_max = 2048;
    let server = TestServer::start(config).await;
    let mut raw = Raw::handshaken(server.addr).await;
    // Exactly at the limit is accepted (and answered: the body is garbage for a ping).
    let mut at_limit = BytesMut::new();
    encode_frame(&mut at_limit, Opcode::Ping as u8, 0, 7, |b| b.put_bytes(0, 2048));
    raw.send(&at_limit).await;
    assert_eq!(error_code(raw.recv().await), (7, ResultCode::Malformed));
    // One byte over: only the header is sent; the server refuses without waiting for the body.
    let mut over = BytesMut::new();
    encode_frame(&mut over, Opcode::Ping as u8, 0, 8, |b| b.put_bytes(0, 2049));
    raw.send(&over[..HEADER_BYTES]).await;
    assert_eq!(error_code(raw.recv().await), (8, ResultCode::TooLarge));
    expect_closed(&mut raw).await;
    server.stop().await;
}

#[tokio::test]
async fn truncated_frame_then_close_gets_no_reply() {
    let server = TestServer::start(test_config()).await;
    let mut raw = Raw::handshaken(server.addr).await;
    let frame = ping_frame(9);
    raw.send(&frame[..frame.len() - 1]).await;
    tokio::io::AsyncWriteExt::shutdown(&mut raw.stream).await.expect("half-close");
    expect_closed(&mut raw).await;
    // The server is unharmed.
    let client = server.client().await;
    assert_eq!(client.ping().await.expect("ping"), ResultCode::Ok);
    server.stop().await;
}

#[tokio::test]
async fn recoverable_errors_keep_the_connection() {
    let server = TestServer::start(test_config()).await;
    let mut raw = Raw::handshaken(server.addr).await;

    // Unknown opcode.
    let mut frame = BytesMut::new();
    encode_frame(&mut frame, 0x6e, 0, 10, |_| {});
    raw.send(&frame).await;
    assert_eq!(error_code(raw.recv().await), (10, ResultCode::UnknownOpcode));

    // Body checksum mismatch.
    let mut frame = BytesMut::new();
    Request::Op(Op::QuerySku { sku: "abc".into() }).encode(11, &mut frame);
    let last = frame.len() - 1;
    frame[last] ^= 0x55;
    raw.send(&frame).await;
    assert_eq!(error_code(raw.recv().await), (11, ResultCode::Malformed));

    // A body that does not decode (trailing bytes after a ping).
    let mut frame = BytesMut::new();
    encode_frame(&mut frame, Opcode::Ping as u8, 0, 12, |b| b.put_u8(1));
    raw.send(&frame).await;
    assert_eq!(error_code(raw.recv().await), (12, ResultCode::Malformed));

    // Non-zero reserved header bytes.
    let mut frame = ping_frame(13);
    frame[24] = 1;
    refix_header_crc(&mut frame);
    raw.send(&frame).await;
    assert_eq!(error_code(raw.recv().await), (13, ResultCode::Malformed));

    // An id over the limit and too many lines are `too_large`.
    let long_id = Reserve {
        id: vec![b'x'; ID_BYTES_MAX + 1].into(),
        ttl_ms: 0,
        channel: "".into(),
        customer: "".into(),
        lines: vec![Line::new("a", 1)],
    };
    let mut frame = BytesMut::new();
    encode_frame(&mut frame, Opcode::Reserve as u8, 0, 14, |b| Op::Reserve(long_id).encode_body(b));
    raw.send(&frame).await;
    assert_eq!(error_code(raw.recv().await), (14, ResultCode::TooLarge));
    let many_lines = Reserve {
        id: "r".into(),
        ttl_ms: 0,
        channel: "".into(),
        customer: "".into(),
        lines: (0..=LINES_PER_RESERVATION_MAX).map(|i| Line::new(format!("s{i}"), 1)).collect(),
    };
    raw.send_request(15, &Request::Op(Op::Reserve(many_lines))).await;
    assert_eq!(error_code(raw.recv().await), (15, ResultCode::TooLarge));

    // After all that, the connection still works.
    raw.send(&ping_frame(16)).await;
    match raw.recv().await {
        Some((header, Reply::Op(OpReply::Ping(ResultCode::Ok)))) => {
            assert_eq!(header.request_id, 16)
        }
        other => panic!("expected a ping reply, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn requests_before_the_handshake_are_refused() {
    let server = TestServer::start(test_config()).await;
    let mut raw = Raw::connect(server.addr).await;
    raw.send(&ping_frame(3)).await;
    assert_eq!(error_code(raw.recv().await), (3, ResultCode::HandshakeRequired));
    expect_closed(&mut raw).await;
    server.stop().await;
}

#[tokio::test]
async fn a_bad_connection_does_not_disturb_another() {
    let server = TestServer::start(test_config()).await;
    let client = server.client().await;
    client.set_stock("sku", 1_000, None).await.expect("set stock");
    // A good client keeps many pipelined requests in flight while bad ones come and go.
    let good = {
        let client = client.clone();
        tokio::spawn(async move {
            let calls = (0..500).map(|i| {
                let client = client.clone();
                async move {
                    let reserve = Reserve {
                        id: format!("order-{i}").into(),
                        ttl_ms: 0,
                        channel: "".into(),
                        customer: "".into(),
                        lines: vec![Line::new("sku", 1)],
                    };
                    client.reserve(reserve).await.expect("reserve").code
                }
            });
            futures::future::join_all(calls).await
        })
    };
    for garbage in [&b"GET / HTTP/1.1\r\n\r\n"[..], &[0xff; 64][..], &hello_then_garbage()[..]] {
        let mut raw = Raw::connect(server.addr).await;
        raw.send(garbage).await;
        // A stray client closes its side; a frame shorter than a header can only end that way.
        tokio::io::AsyncWriteExt::shutdown(&mut raw.stream).await.expect("half-close");
        while raw.recv().await.is_some() {}
    }
    let codes = good.await.expect("good client task");
    assert_eq!(codes.len(), 500);
    assert!(codes.iter().all(|code| *code == ResultCode::Ok), "{codes:?}");
    assert_eq!(client.query_sku("sku").await.expect("query").info.reserved, 500);
    server.stop().await;
}

fn hello_then_garbage() -> Vec<u8> {
    let mut buf = BytesMut::new();
    hello().encode(1, &mut buf);
    buf.extend_from_slice(&[0x53, 0x54, 0x4b, 0x44, 0, 0, 0, 0]);
    buf.extend_from_slice(&[0xaa; 40]);
    buf.to_vec()
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_with_overloaded() {
    let mut config = test_config();
    config.server.connections_max = 2;
    let server = TestServer::start(config).await;
    let first = server.client().await;
    let _second = server.client().await;
    let mut third = Raw::connect(server.addr).await;
    assert_eq!(error_code(third.recv().await), (0, ResultCode::Overloaded));
    expect_closed(&mut third).await;
    // The admitted connections are still served.
    assert_eq!(first.ping().await.expect("ping"), ResultCode::Ok);
    server.stop().await;
}
