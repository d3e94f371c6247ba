//! Locations, incoming stock and preorders through the real server: location choice by
//! priority, a named location, splitting, every rejection code, confirm and ship acting on the
//! allocated locations, preorders up to their cap, receiving, and all of it surviving a restart.

use crate::common;

use bytes::Bytes;
use common::{test_config, TestServer};
use stockd_protocol::{
    Allocation, Client, Line, LocationInfo, Reserve, ReserveAt, ReserveAtReply, ResultCode,
};

fn order(id: &str, lines: &[(&str, u32)]) -> Reserve {
    Reserve {
        id: Bytes::copy_from_slice(id.as_bytes()),
        ttl_ms: 60_000,
        channel: Bytes::new(),
        customer: Bytes::new(),
        lines: lines
            .iter()
            .map(|(sku, qty)| Line::new(Bytes::copy_from_slice(sku.as_bytes()), *qty))
            .collect(),
    }
}

async fn reserve_at(
    client: &Client,
    id: &str,
    lines: &[(&str, u32)],
    location: &str,
    split: bool,
) -> ReserveAtReply {
    let location = Bytes::copy_from_slice(location.as_bytes());
    client.reserve_at(ReserveAt { reserve: order(id, lines), location, split }).await.unwrap()
}

fn at(line: u16, location: &str, qty: u32) -> Allocation {
    Allocation { line, location: Bytes::copy_from_slice(location.as_bytes()), qty }
}

/// (location, on_hand, reserved, committed, available) of every location, in choice order.
async fn locations(client: &Client, sku: &'static str) -> Vec<(String, u64, u64, u64, u64)> {
    let reply = client.query_locations(sku).await.unwrap();
    assert!(reply.code.is_ok(), "{reply:?}");
    let row = |l: &LocationInfo| {
        let id = String::from_utf8_lossy(&l.location).into_owned();
        (id, l.on_hand, l.reserved, l.committed, l.available)
    };
    reply.locations.iter().map(row).collect()
}

/// A SKU stocked in three warehouses: `east` (priority 1, 2 units), `north` (priority 1,
/// 1 unit, after `east` by id) and `west` (priority 2, 5 units).
async fn stocked(client: &Client) {
    for (location, on_hand, priority) in [("west", 5, 2), ("east", 2, 1), ("north", 1, 1)] {
        let reply = client.set_location("tee", location, on_hand, priority, None).await.unwrap();
        assert!(reply.code.is_ok(), "{reply:?}");
    }
    assert_eq!(client.query_sku("tee").await.unwrap().info.on_hand, 8);
}

#[tokio::test]
async fn lines_go_to_the_first_location_that_can_serve_them_or_are_split() {
    let server = TestServer::start(test_config()).await;
    let client = server.client().await;
    stocked(&client).await;
    let order_of =
        |rows: Vec<(String, u64, u64, u64, u64)>| rows.into_iter().map(|r| r.0).collect::<Vec<_>>();
    assert_eq!(order_of(locations(&client, "tee").await), ["east", "north", "west"]);

    // 2 fit in east (first by priority, then id).
    let first = reserve_at(&client, "o1", &[("tee", 2)], "", false).await;
    assert_eq!(first.reply.code, ResultCode::Ok);
    assert_eq!(first.allocations, [at(0, "east", 2)]);
    // 3 fit nowhere but west, whose priority is lowest.
    let second = reserve_at(&client, "o2", &[("tee", 3)], "", false).await;
    assert_eq!(second.allocations, [at(0, "west", 3)]);
    // 3 more: no single location has them (north 1, west 2); without split that is refused,
    // with split it takes north then west.
    let refused = reserve_at(&client, "o3", &[("tee", 3)], "", false).await;
    assert_eq!(
        (refused.reply.code, refused.reply.failed_line),
        (ResultCode::InsufficientStock, Some(0))
    );
    assert!(refused.allocations.is_empty());
    let split = reserve_at(&client, "o3", &[("tee", 3)], "", true).await;
    assert_eq!(split.reply.code, ResultCode::Ok);
    assert_eq!(split.allocations, [at(0, "north", 1), at(0, "west", 2)]);
    // A retry returns the original allocations, whatever placement it asks for.
    let retry = reserve_at(&client, "o3", &[("tee", 3)], "east", false).await;
    assert_eq!(retry, split);
    assert_eq!(
        locations(&client, "tee").await,
        [("east".into(), 2, 2, 0, 0), ("north".into(), 1, 1, 0, 0), ("west".into(), 5, 5, 0, 0)]
    );
    // Sold out everywhere: the SKU's own check says so first.
    let plain = client.reserve(order("o4", &[("tee", 1)])).await.unwrap();
    assert_eq!(plain.code, ResultCode::InsufficientStock);
    server.stop().await;
}

#[tokio::test]
async fn a_named_location_serves_the_whole_line_or_nothing() {
    let server = TestServer::start(test_config()).await;
    let client = server.client().await;
    stocked(&client).await;
    client.set_stock("cap", 5, None).await.unwrap();

    let west = reserve_at(&client, "o1", &[("tee", 4)], "west", false).await;
    assert_eq!(west.allocations, [at(0, "west", 4)]);
    // East has 2: a line of 3 there is refused although the SKU has 4 more elsewhere.
    let short = reserve_at(&client, "o2", &[("tee", 3)], "east", false).await;
    assert_eq!(
        (short.reply.code, short.reply.failed_line),
        (ResultCode::InsufficientStock, Some(0))
    );
    let nowhere = reserve_at(&client, "o2", &[("cap", 1), ("tee", 1)], "south", false).await;
    // `cap` has no locations at all, so naming one is as unknown as `south` on `tee`.
    assert_eq!(
        (nowhere.reply.code, nowhere.reply.failed_line),
        (ResultCode::UnknownLocation, Some(0))
    );
    // Nothing of a refused order is held.
    assert_eq!(client.query_sku("tee").await.unwrap().info.reserved, 4);
    assert_eq!(client.query_sku("cap").await.unwrap().info.reserved, 0);
    // A SKU without locations is reserved as usual, with no allocation reported.
    let mixed = reserve_at(&client, "o3", &[("cap", 2), ("tee", 1)], "", false).await;
    assert_eq!(mixed.reply.code, ResultCode::Ok);
    assert_eq!(mixed.allocations, [at(1, "east", 1)]);
    server.stop().await;
}

#[tokio::test]
async fn stock_commands_refuse_what_would_mix_located_and_unlocated_stock() {
    let server = TestServer::start(test_config()).await;
    let client = server.client().await;
    stocked(&client).await;
    assert_eq!(client.set_stock("tee", 3, None).await.unwrap().code, ResultCode::LocationRequired);
    assert_eq!(
        client.adjust_stock("tee", 1, None).await.unwrap().code,
        ResultCode::LocationRequired
    );
    let delivery = client.set_incoming("tee", "", "po-1", 5, 0).await.unwrap();
    assert_eq!(delivery.code, ResultCode::LocationRequired);
    let elsewhere = client.set_incoming("tee", "south", "po-1", 5, 0).await.unwrap();
    assert_eq!(elsewhere.code, ResultCode::UnknownLocation);
    let adjust = client.adjust_location("tee", "south", 1, None).await.unwrap();
    assert_eq!(adjust.code, ResultCode::UnknownLocation);
    let below = client.adjust_location("tee", "east", -3, None).await.unwrap();
    assert_eq!(below.code, ResultCode::InvalidArgument);
    let stale = client.adjust_location("tee", "east", -1, Some(7)).await.unwrap();
    assert_eq!(stale.code, ResultCode::ExpectedMismatch);
    let fine = client.adjust_location("tee", "east", -1, Some(2)).await.unwrap();
    assert_eq!((fine.code, fine.info.on_hand), (ResultCode::Ok, 7));
    assert_eq!(
        client.adjust_location("nope", "east", 1, None).await.unwrap().code,
        ResultCode::UnknownSku
    );

    // A SKU with unlocated stock cannot get locations until that stock is gone.
    client.set_stock("cap", 5, None).await.unwrap();
    let conflict = client.set_location("cap", "east", 5, 0, None).await.unwrap();
    assert_eq!((conflict.code, conflict.info.on_hand), (ResultCode::LocationConflict, 5));
    client.set_stock("cap", 0, None).await.unwrap();
    assert!(client.set_location("cap", "east", 5, 0, None).await.unwrap().code.is_ok());
    assert_eq!(
        client.set_location("cap", "", 5, 0, None).await.unwrap().code,
        ResultCode::InvalidArgument
    );
    server.stop().await;
}

#[tokio::test]
async fn confirm_keeps_the_first_allocated_units_and_ship_takes_them_from_there() {
    let server = TestServer::start(test_config()).await;
    let client = server.client().await;
    stocked(&client).await;
    // West keeps 1 after this; then 4 split across east (2), north (1) and west (1).
    assert_eq!(
        reserve_at(&client, "o0", &[("tee", 4)], "west", false).await.reply.code,
        ResultCode::Ok
    );
    let split = reserve_at(&client, "o1", &[("tee", 4)], "", true).await;
    assert_eq!(split.allocations, [at(0, "east", 2), at(0, "north", 1), at(0, "west", 1)]);
    // Confirm 3: east 2 and north 1 are committed, west's unit goes back.
    assert!(client.confirm("o1", vec![Line::new("tee", 3)]).await.unwrap().is_ok());
    assert_eq!(
        locations(&client, "tee").await,
        [("east".into(), 2, 0, 2, 0), ("north".into(), 1, 0, 1, 0), ("west".into(), 5, 4, 0, 1)]
    );
    assert!(client.ship("o1").await.unwrap().is_ok());
    assert_eq!(
        locations(&client, "tee").await,
        [("east".into(), 0, 0, 0, 0), ("north".into(), 0, 0, 0, 0), ("west".into(), 5, 4, 0, 1)]
    );
    assert_eq!(client.query_sku("tee").await.unwrap().info.on_hand, 5);
    server.stop().await;
}

#[tokio::test]
async fn preorders_sell_incoming_stock_up_to_the_cap_and_receiving_moves_it_on_hand() {
    let server = TestServer::start(test_config()).await;
    let client = server.client().await;
    client.set_stock("lamp", 2, None).await.unwrap();
    // Incoming stock is shown but not sold without preorders.
    let delivery = client.set_incoming("lamp", "", "po-9", 10, 1_700_100_000_000).await.unwrap();
    assert_eq!((delivery.code, delivery.info.available), (ResultCode::Ok, 2));
    assert_eq!(
        client.set_incoming("lamp", "east", "po-9", 1, 0).await.unwrap().code,
        ResultCode::UnknownLocation
    );
    assert_eq!(
        client.set_incoming("lamp", "", "", 1, 0).await.unwrap().code,
        ResultCode::InvalidArgument
    );
    let three = client.reserve(order("o1", &[("lamp", 3)])).await.unwrap();
    assert_eq!(three.code, ResultCode::InsufficientStock);

    // Preorders up to 4 beyond the 2 on hand.
    let preorder = client.set_preorder("lamp", 4).await.unwrap();
    assert_eq!((preorder.code, preorder.info.available), (ResultCode::Ok, 6));
    assert!(client.reserve(order("o1", &[("lamp", 5)])).await.unwrap().code.is_ok());
    let over = client.reserve(order("o2", &[("lamp", 2)])).await.unwrap();
    assert_eq!(over.code, ResultCode::InsufficientStock);
    assert!(client.reserve(order("o2", &[("lamp", 1)])).await.unwrap().code.is_ok());
    let query = client.query_locations("lamp").await.unwrap();
    assert_eq!((query.preorder_max, query.preordered), (4, 4));
    assert_eq!(query.incoming.len(), 1);
    assert_eq!((query.incoming[0].qty, query.incoming[0].eta_ms), (10, 1_700_100_000_000));

    // Receiving 3 of the delivery: 5 on hand, 7 incoming, room 4: 9 sellable, 6 taken.
    let received = client.receive_incoming("lamp", "", "po-9", 3).await.unwrap();
    assert_eq!(
        (received.code, received.info.on_hand, received.info.available),
        (ResultCode::Ok, 5, 3)
    );
    assert_eq!(
        client.receive_incoming("lamp", "", "po-9", 8).await.unwrap().code,
        ResultCode::InvalidArgument
    );
    assert_eq!(
        client.receive_incoming("lamp", "", "po-0", 1).await.unwrap().code,
        ResultCode::NotFound
    );
    // The rest (0 = all): 12 on hand, nothing incoming, no room left.
    let rest = client.receive_incoming("lamp", "", "po-9", 0).await.unwrap();
    assert_eq!((rest.info.on_hand, rest.info.available), (12, 6));
    let query = client.query_locations("lamp").await.unwrap();
    assert_eq!((query.preordered, query.incoming.len()), (0, 0));
    assert_eq!(client.set_preorder("nope", 1).await.unwrap().code, ResultCode::UnknownSku);
    server.stop().await;
}

#[tokio::test]
async fn locations_deliveries_and_allocations_survive_a_restart() {
    let config = test_config();
    let server = TestServer::start(config.clone()).await;
    let client = server.client().await;
    stocked(&client).await;
    client.set_incoming("tee", "west", "po-1", 6, 1_700_100_000_000).await.unwrap();
    client.set_preorder("tee", 3).await.unwrap();
    let split = reserve_at(&client, "o1", &[("tee", 9)], "", true).await;
    assert_eq!(split.reply.code, ResultCode::Ok, "{split:?}");
    let before =
        (client.query_locations("tee").await.unwrap(), client.query_sku("tee").await.unwrap());
    drop(client);
    server.stop().await;

    let server = TestServer::start(config).await;
    let client = server.client().await;
    let after =
        (client.query_locations("tee").await.unwrap(), client.query_sku("tee").await.unwrap());
    assert_eq!(after, before);
    // The recovered allocations still drive confirm: releasing gives every unit back.
    assert!(client.release("o1").await.unwrap().is_ok());
    let rows = locations(&client, "tee").await;
    assert!(rows.iter().all(|r| r.2 == 0), "{rows:?}");
    server.stop().await;
}
