//! Every operation and every business result code through the real server and the client.

use crate::common;

use bytes::Bytes;
use common::{test_config, TestServer, T0};
use stockd_protocol::{Line, Op, OpReply, ReservationState, Reserve, ResultCode};

fn reserve(id: &str, lines: &[(&str, u32)], ttl_ms: u32) -> Reserve {
    Reserve {
        id: Bytes::copy_from_slice(id.as_bytes()),
        ttl_ms,
        channel: "web".into(),
        customer: "c-42".into(),
        lines: lines
            .iter()
            .map(|(sku, qty)| Line::new(Bytes::copy_from_slice(sku.as_bytes()), *qty))
            .collect(),
    }
}

#[tokio::test]
async fn the_order_lifecycle() {
    let server = TestServer::start(test_config()).await;
    let client = server.client().await;
    assert_eq!(client.hello().version, 1);
    client.set_stock("tee", 10, None).await.expect("set");
    client.set_stock("cap", 5, None).await.expect("set");

    let reply =
        client.reserve(reserve("order-1", &[("tee", 2), ("cap", 1)], 60_000)).await.unwrap();
    assert_eq!((reply.code, reply.expires_at_ms), (ResultCode::Ok, T0 + 60_000));
    // A retry returns the original result; a different order under the same id is a conflict.
    let retry =
        client.reserve(reserve("order-1", &[("cap", 1), ("tee", 2)], 60_000)).await.unwrap();
    assert_eq!(retry, reply);
    let conflict = client.reserve(reserve("order-1", &[("tee", 3)], 60_000)).await.unwrap();
    assert_eq!(conflict.code, ResultCode::IdConflict);

    let info = client.query_reservation("order-1").await.unwrap().info.expect("found");
    assert_eq!(info.state, ReservationState::Held);
    assert_eq!((&info.channel[..], &info.customer[..]), (&b"web"[..], &b"c-42"[..]));

    let extended = client.extend("order-1", 120_000).await.unwrap();
    assert_eq!((extended.code, extended.expires_at_ms), (ResultCode::Ok, T0 + 120_000));

    // Partial confirm: one tee of two; the other goes back to stock.
    assert_eq!(
        client.confirm("order-1", vec![Line::new("tee", 1), Line::new("cap", 1)]).await.unwrap(),
        ResultCode::Ok
    );
    let tee = client.query_sku("tee").await.unwrap().info;
    assert_eq!((tee.on_hand, tee.reserved, tee.committed, tee.available), (10, 0, 1, 9));
    assert_eq!(client.release("order-1").await.unwrap(), ResultCode::AlreadyConfirmed);
    assert_eq!(client.ship("order-1").await.unwrap(), ResultCode::Ok);
    let tee = client.query_sku("tee").await.unwrap().info;
    assert_eq!((tee.on_hand, tee.committed, tee.available), (9, 0, 9));
    let state = client.query_reservation("order-1").await.unwrap().info.expect("kept").state;
    assert_eq!(state, ReservationState::Shipped);

    // Release path.
    client.reserve(reserve("order-2", &[("cap", 4)], 0)).await.unwrap();
    assert_eq!(client.release("order-2").await.unwrap(), ResultCode::Ok);
    assert_eq!(client.release("order-2").await.unwrap(), ResultCode::Ok, "idempotent");
    assert_eq!(client.confirm("order-2", vec![]).await.unwrap(), ResultCode::AlreadyReleased);
    assert_eq!(client.release("order-3").await.unwrap(), ResultCode::NotFound);
    assert_eq!(client.ship("order-2").await.unwrap(), ResultCode::AlreadyReleased);
    server.stop().await;
}

#[tokio::test]
async fn stock_rejections_name_the_failing_line() {
    let server = TestServer::start(test_config()).await;
    let client = server.client().await;
    client.set_stock("a", 3, None).await.unwrap();
    client.set_stock("b", 10, None).await.unwrap();
    client.set_safety_stock("b", 4).await.unwrap();

    let reply = client.reserve(reserve("o1", &[("a", 1), ("ghost", 1)], 0)).await.unwrap();
    assert_eq!((reply.code, reply.failed_line), (ResultCode::UnknownSku, Some(1)));
    let reply = client.reserve(reserve("o1", &[("b", 1), ("a", 4)], 0)).await.unwrap();
    assert_eq!((reply.code, reply.failed_line), (ResultCode::InsufficientStock, Some(1)));
    let reply = client.reserve(reserve("o1", &[("b", 7)], 0)).await.unwrap();
    assert_eq!((reply.code, reply.failed_line), (ResultCode::BelowSafetyStock, Some(0)));
    assert_eq!(client.reserve(reserve("o1", &[("b", 6)], 0)).await.unwrap().code, ResultCode::Ok);
    let b = client.query_sku("b").await.unwrap().info;
    assert!(b.paused, "safety stock reached pauses the SKU");
    let reply = client.reserve(reserve("o2", &[("b", 1)], 0)).await.unwrap();
    assert_eq!(reply.code, ResultCode::SkuPaused);
    // Nothing from the rejected attempts is held.
    assert_eq!(client.query_sku("a").await.unwrap().info.reserved, 0);
    // Stock arriving resumes selling.
    client.adjust_stock("b", 5, None).await.unwrap();
    assert_eq!(client.reserve(reserve("o2", &[("b", 1)], 0)).await.unwrap().code, ResultCode::Ok);
    server.stop().await;
}

#[tokio::test]
async fn stock_administration() {
    let server = TestServer::start(test_config()).await;
    let client = server.client().await;
    assert_eq!(client.query_sku("x").await.unwrap().code, ResultCode::UnknownSku);
    assert_eq!(client.adjust_stock("x", 1, None).await.unwrap().code, ResultCode::UnknownSku);
    assert_eq!(client.set_safety_stock("x", 1).await.unwrap().code, ResultCode::UnknownSku);
    assert_eq!(client.set_stock("x", 5, Some(1)).await.unwrap().code, ResultCode::ExpectedMismatch);
    assert_eq!(client.set_stock("x", 5, Some(0)).await.unwrap().code, ResultCode::Ok);
    let reply = client.adjust_stock("x", -2, Some(5)).await.unwrap();
    assert_eq!((reply.code, reply.info.on_hand), (ResultCode::Ok, 3));
    assert_eq!(
        client.adjust_stock("x", -2, Some(5)).await.unwrap().code,
        ResultCode::ExpectedMismatch
    );
    assert_eq!(client.adjust_stock("x", -4, None).await.unwrap().code, ResultCode::InvalidArgument);
    assert_eq!(client.query_sku("x").await.unwrap().info.on_hand, 3);
    server.stop().await;
}

#[tokio::test]
async fn holds_expire_exactly_and_the_sweep_frees_them() {
    let mut config = test_config();
    config.engine.sweep_interval_ms = 1;
    let server = TestServer::start(config).await;
    let client = server.client().await;
    client.set_stock("hot", 1, None).await.unwrap();
    assert_eq!(
        client.reserve(reserve("o1", &[("hot", 1)], 1_000)).await.unwrap().code,
        ResultCode::Ok
    );
    assert_eq!(
        client.reserve(reserve("o2", &[("hot", 1)], 0)).await.unwrap().code,
        ResultCode::InsufficientStock
    );

    server.shared.clock.advance_ms(999);
    assert_eq!(client.query_sku("hot").await.unwrap().info.reserved, 1);
    server.shared.clock.advance_ms(1);
    // At the deadline the hold stops counting at once, whether or not the sweep has run.
    assert_eq!(client.query_sku("hot").await.unwrap().info.available, 1);
    let info = client.query_reservation("o1").await.unwrap().info.expect("kept");
    assert_eq!(info.state, ReservationState::Expired);
    assert_eq!(client.confirm("o1", vec![]).await.unwrap(), ResultCode::Expired);
    assert_eq!(client.extend("o1", 1_000).await.unwrap().code, ResultCode::Expired);
    assert_eq!(client.reserve(reserve("o2", &[("hot", 1)], 0)).await.unwrap().code, ResultCode::Ok);

    // An idle server sweeps too: a hold that nobody touches is expired by the sweeper.
    client.set_stock("idle", 1, None).await.unwrap();
    client.reserve(reserve("o3", &[("idle", 1)], 10)).await.unwrap();
    server.shared.clock.advance_ms(10);
    let deadline = std::time::Instant::now() + common::WAIT;
    while server.shared.engine.due(server.shared.clock.now_ms(), 1).len() == 1 {
        assert!(std::time::Instant::now() < deadline, "the sweeper runs on an idle server");
        tokio::task::yield_now().await;
    }
    assert_eq!(
        server.shared.engine.query_sku(b"idle", server.shared.clock.now_ms()).info.reserved,
        0
    );
    server.stop().await;
}

#[tokio::test]
async fn batch_frames_carry_many_operations() {
    let server = TestServer::start(test_config()).await;
    let client = server.client().await;
    let mut ops = vec![Op::SetStock { sku: "b".into(), on_hand: 1_000, expected: None }];
    ops.extend((0..2_000).map(|i| Op::Reserve(reserve(&format!("b-{i}"), &[("b", 1)], 0))));
    ops.push(Op::QuerySku { sku: "b".into() });
    ops.push(Op::Ping);
    let replies = client.batch(ops).await.expect("batch");
    assert_eq!(replies.len(), 2_003);
    let granted = replies[1..2_001].iter().filter(|r| r.code().is_ok()).count();
    let refused =
        replies[1..2_001].iter().filter(|r| r.code() == ResultCode::InsufficientStock).count();
    assert_eq!((granted, refused), (1_000, 1_000));
    let OpReply::QuerySku(sku) = &replies[2_001] else { panic!("query reply") };
    assert_eq!((sku.info.reserved, sku.info.available), (1_000, 0));
    assert_eq!(replies[2_002], OpReply::Ping(ResultCode::Ok));
    server.stop().await;
}

#[tokio::test]
async fn invalid_arguments_are_refused() {
    let server = TestServer::start(test_config()).await;
    let client = server.client().await;
    client.set_stock("a", 3, None).await.unwrap();
    let reply = client.reserve(reserve("o", &[("a", 0)], 0)).await.unwrap();
    assert_eq!((reply.code, reply.failed_line), (ResultCode::InvalidArgument, Some(0)));
    assert_eq!(
        client.reserve(reserve("", &[("a", 1)], 0)).await.unwrap().code,
        ResultCode::InvalidArgument
    );
    let too_long = 60 * 60 * 1000 + 1;
    assert_eq!(
        client.reserve(reserve("o", &[("a", 1)], too_long)).await.unwrap().code,
        ResultCode::InvalidArgument
    );
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_idle_clients_and_finishes() {
    let server = TestServer::start(test_config()).await;
    let client = server.client().await;
    assert_eq!(client.ping().await.unwrap(), ResultCode::Ok);
    server.stop().await;
    let err = client.ping().await.expect_err("server is gone");
    assert!(err.is_retryable(), "{err}");
}

#[tokio::test]
async fn oversized_requests_are_refused_by_the_client_with_a_clear_error() {
    let server = TestServer::start(test_config()).await;
    let client = server.client().await;
    let long_id = "x".repeat(300);
    let err = client.reserve(reserve(&long_id, &[("a", 1)], 0)).await.expect_err("refused");
    assert!(matches!(err, stockd_protocol::ClientError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("reservation id of 300 bytes exceeds 64"), "{err}");
    let err = client.release("y".repeat(65)).await.expect_err("refused");
    assert!(err.to_string().contains("exceeds 64"), "{err}");
    // Nothing was sent; the connection is fine.
    assert_eq!(client.ping().await.unwrap(), ResultCode::Ok);
    server.stop().await;
}
