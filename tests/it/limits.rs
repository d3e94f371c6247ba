//! Flash-sale limits through the real server: per-buyer limits, channel quotas (fixed, share,
//! shared pool), live changes recounting what is already reserved, every rejection code, and
//! limits surviving a restart.

use crate::common;

use bytes::Bytes;
use common::{test_config, TestServer};
use stockd_protocol::{
    ChannelQuota, Client, Line, QuotaLimit, Reserve, ReserveReply, ResultCode, SkuLimits,
};

fn order(id: &str, channel: &str, customer: &str, lines: &[(&str, u32)]) -> Reserve {
    Reserve {
        id: Bytes::copy_from_slice(id.as_bytes()),
        ttl_ms: 60_000,
        channel: Bytes::copy_from_slice(channel.as_bytes()),
        customer: Bytes::copy_from_slice(customer.as_bytes()),
        lines: lines
            .iter()
            .map(|(sku, qty)| Line::new(Bytes::copy_from_slice(sku.as_bytes()), *qty))
            .collect(),
    }
}

fn quota(channel: &str, limit: QuotaLimit) -> ChannelQuota {
    ChannelQuota { channel: Bytes::copy_from_slice(channel.as_bytes()), limit }
}

async fn try_reserve(client: &Client, order: Reserve) -> (ResultCode, Option<u16>) {
    let reply: ReserveReply = client.reserve(order).await.expect("a reply");
    (reply.code, reply.failed_line)
}

#[tokio::test]
async fn at_most_n_per_buyer_with_the_allowance_back_on_release() {
    let server = TestServer::start(test_config()).await;
    let client = server.client().await;
    client.set_stock("drop", 100, None).await.unwrap();
    client.set_stock("tee", 100, None).await.unwrap();
    let limits = SkuLimits { max_per_buyer: 2, ..SkuLimits::default() };
    assert!(client.set_limits("drop", limits.clone()).await.unwrap().code.is_ok());

    assert_eq!(
        try_reserve(&client, order("o1", "", "alice", &[("drop", 1)])).await,
        (ResultCode::Ok, None)
    );
    // The second line breaks alice's limit; nothing of the order is held.
    let over = order("o2", "", "alice", &[("tee", 5), ("drop", 2)]);
    assert_eq!(try_reserve(&client, over).await, (ResultCode::BuyerLimitExceeded, Some(1)));
    assert_eq!(client.query_sku("tee").await.unwrap().info.reserved, 0);
    assert_eq!(
        try_reserve(&client, order("o3", "", "bob", &[("drop", 2)])).await,
        (ResultCode::Ok, None)
    );
    // Confirmed units keep counting; released ones give the allowance back.
    assert!(client.confirm("o1", vec![]).await.unwrap().is_ok());
    assert_eq!(
        try_reserve(&client, order("o4", "", "alice", &[("drop", 2)])).await,
        (ResultCode::BuyerLimitExceeded, Some(0))
    );
    assert_eq!(
        try_reserve(&client, order("o5", "", "alice", &[("drop", 1)])).await,
        (ResultCode::Ok, None)
    );
    assert!(client.release("o5").await.unwrap().is_ok());
    assert_eq!(
        try_reserve(&client, order("o6", "", "alice", &[("drop", 1)])).await,
        (ResultCode::Ok, None)
    );
    // A limited SKU needs the customer's id.
    assert_eq!(
        try_reserve(&client, order("o7", "", "", &[("drop", 1)])).await,
        (ResultCode::InvalidArgument, Some(0))
    );
    // Stock rules come first.
    assert_eq!(
        try_reserve(&client, order("o8", "", "carol", &[("drop", 101)])).await,
        (ResultCode::InsufficientStock, Some(0))
    );
    let limits_now = client.query_limits("drop").await.unwrap();
    assert_eq!(limits_now.limits, limits);
    server.stop().await;
}

#[tokio::test]
async fn channel_quotas_ring_fence_stock() {
    let server = TestServer::start(test_config()).await;
    let client = server.client().await;
    client.set_stock("drop", 100, None).await.unwrap();
    client.set_safety_stock("drop", 10).await.unwrap();
    // 90 sellable: 40 % (36) for the livestream, 20 units for the app, 34 in the pool.
    let limits = SkuLimits {
        max_per_buyer: 0,
        shared_pool: false,
        quotas: vec![
            quota("live", QuotaLimit::BasisPoints(4_000)),
            quota("app", QuotaLimit::Units(20)),
        ],
    };
    client.set_limits("drop", limits).await.unwrap();
    assert_eq!(
        try_reserve(&client, order("l1", "live", "", &[("drop", 36)])).await,
        (ResultCode::Ok, None)
    );
    assert_eq!(
        try_reserve(&client, order("l2", "live", "", &[("drop", 1)])).await,
        (ResultCode::ChannelQuotaExceeded, Some(0))
    );
    // The web shop (no quota) sells from the pool only.
    assert_eq!(
        try_reserve(&client, order("w1", "web", "", &[("drop", 34)])).await,
        (ResultCode::Ok, None)
    );
    assert_eq!(
        try_reserve(&client, order("w2", "", "", &[("drop", 1)])).await,
        (ResultCode::ChannelQuotaExceeded, Some(0))
    );
    assert_eq!(
        try_reserve(&client, order("a1", "app", "", &[("drop", 20)])).await,
        (ResultCode::Ok, None)
    );
    let split = client.query_limits("drop").await.unwrap();
    let uses: Vec<(&[u8], u64, u64)> =
        split.channels.iter().map(|c| (&c.channel[..], c.allocation, c.used)).collect();
    assert_eq!(uses, [(&b"app"[..], 20, 20), (b"live", 36, 36)], "quotas sorted by channel");
    assert_eq!((split.pool, split.pool_used), (34, 34));
    // Released units go back to their channel.
    client.release("l1").await.unwrap();
    assert_eq!(
        try_reserve(&client, order("l3", "live", "", &[("drop", 36)])).await,
        (ResultCode::Ok, None)
    );

    // Quotas change live: with a shared pool the livestream may overflow into the pool
    // (refilled by the web shop's release), but never into the app's unused allocation.
    client.release("w1").await.unwrap();
    client.release("a1").await.unwrap();
    let shared = SkuLimits {
        max_per_buyer: 0,
        shared_pool: true,
        quotas: vec![
            quota("live", QuotaLimit::BasisPoints(4_000)),
            quota("app", QuotaLimit::Units(20)),
        ],
    };
    client.set_limits("drop", shared).await.unwrap();
    assert_eq!(
        try_reserve(&client, order("l4", "live", "", &[("drop", 20)])).await,
        (ResultCode::Ok, None)
    );
    assert_eq!(
        try_reserve(&client, order("w3", "web", "", &[("drop", 15)])).await,
        (ResultCode::ChannelQuotaExceeded, Some(0)),
        "34 available, but only 14 left in the pool"
    );
    assert_eq!(
        try_reserve(&client, order("w4", "web", "", &[("drop", 14)])).await,
        (ResultCode::Ok, None)
    );
    let info = client.query_sku("drop").await.unwrap().info;
    assert_eq!((info.reserved, info.available), (70, 20), "the app's 20 stay ring-fenced");
    assert_eq!(
        try_reserve(&client, order("a2", "app", "", &[("drop", 20)])).await,
        (ResultCode::Ok, None)
    );
    let info = client.query_sku("drop").await.unwrap().info;
    assert_eq!((info.reserved, info.available), (90, 0), "never past the sellable stock");
    server.stop().await;
}

#[tokio::test]
async fn bad_limits_are_refused_and_limits_survive_a_restart() {
    let config = test_config();
    let server = TestServer::start(config.clone()).await;
    let client = server.client().await;
    client.set_stock("drop", 10, None).await.unwrap();
    let twice = SkuLimits {
        quotas: vec![quota("live", QuotaLimit::Units(1)), quota("live", QuotaLimit::Units(2))],
        ..SkuLimits::default()
    };
    assert_eq!(client.set_limits("drop", twice).await.unwrap().code, ResultCode::InvalidArgument);
    let share = SkuLimits {
        quotas: vec![quota("live", QuotaLimit::BasisPoints(10_001))],
        ..SkuLimits::default()
    };
    assert_eq!(client.set_limits("drop", share).await.unwrap().code, ResultCode::InvalidArgument);
    let fine = SkuLimits {
        max_per_buyer: 3,
        shared_pool: true,
        quotas: vec![quota("live", QuotaLimit::BasisPoints(5_000))],
    };
    let unknown = client.set_limits("nope", fine.clone()).await.unwrap();
    assert_eq!(unknown.code, ResultCode::UnknownSku);
    assert_eq!(client.query_limits("nope").await.unwrap().code, ResultCode::UnknownSku);
    client.set_limits("drop", fine.clone()).await.unwrap();
    client.reserve(order("o1", "live", "alice", &[("drop", 3)])).await.unwrap();
    let before = client.query_limits("drop").await.unwrap();
    drop(client);
    server.stop().await;

    let server = TestServer::start(config).await;
    let client = server.client().await;
    let after = client.query_limits("drop").await.unwrap();
    assert_eq!(after, before);
    assert_eq!((after.limits.clone(), after.channels[0].used), (fine, 3));
    let again = client.reserve(order("o2", "live", "alice", &[("drop", 1)])).await.unwrap();
    assert_eq!(again.code, ResultCode::BuyerLimitExceeded, "alice's use was recovered");
    // Removing the limits.
    client.set_limits("drop", SkuLimits::default()).await.unwrap();
    let free = client.reserve(order("o3", "", "", &[("drop", 1)])).await.unwrap();
    assert_eq!(free.code, ResultCode::Ok);
    server.stop().await;
}
