//! Many clients against one server at once: exactly the stock is granted, never more, and
//! multi-line reserves taking SKUs in every order never deadlock.

use crate::common;

use std::collections::HashMap;

use bytes::Bytes;
use common::{test_config, TestServer, WAIT};
use stockd_protocol::{Client, Line, Reserve, ResultCode};

fn single(id: String, sku: &str, qty: u32) -> Reserve {
    Reserve {
        id: id.into(),
        ttl_ms: 0,
        channel: Bytes::new(),
        customer: Bytes::new(),
        lines: vec![Line::new(Bytes::copy_from_slice(sku.as_bytes()), qty)],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_sku_grants_exactly_its_stock() {
    const STOCK: u64 = 1_000;
    const CONNECTIONS: usize = 8;
    const TASKS_PER_CONNECTION: usize = 16;
    const ATTEMPTS_PER_TASK: usize = 25;
    let server = TestServer::start(test_config()).await;
    let admin = server.client().await;
    admin.set_stock("hot", STOCK, None).await.unwrap();

    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let client = server.client().await;
        for t in 0..TASKS_PER_CONNECTION {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut granted = 0u64;
                for a in 0..ATTEMPTS_PER_TASK {
                    let reply =
                        client.reserve(single(format!("{c}-{t}-{a}"), "hot", 1)).await.unwrap();
                    match reply.code {
                        ResultCode::Ok => granted += 1,
                        ResultCode::InsufficientStock => {}
                        other => panic!("unexpected {other}"),
                    }
                }
                granted
            }));
        }
    }
    let mut granted = 0;
    for task in tasks {
        granted += tokio::time::timeout(WAIT, task).await.expect("in time").expect("task");
    }
    let attempts = (CONNECTIONS * TASKS_PER_CONNECTION * ATTEMPTS_PER_TASK) as u64;
    assert!(attempts > STOCK * 3, "enough contention to oversell if it were possible");
    assert_eq!(granted, STOCK, "exactly the stock is granted");
    let info = admin.query_sku("hot").await.unwrap().info;
    assert_eq!((info.reserved, info.available), (STOCK, 0));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_line_reserves_in_every_order_never_deadlock_or_oversell() {
    const SKUS: usize = 6;
    const STOCK: u64 = 150;
    let server = TestServer::start(test_config()).await;
    let admin = server.client().await;
    for s in 0..SKUS {
        admin.set_stock(format!("s{s}"), STOCK, None).await.unwrap();
    }
    let clients: Vec<Client> = {
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(server.client().await);
        }
        clients
    };
    let mut tasks = Vec::new();
    for t in 0..32usize {
        let client = clients[t % clients.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut granted: HashMap<String, u64> = HashMap::new();
            for a in 0..40usize {
                // Lines name SKUs in a task-dependent order: forward, backward, interleaved.
                let first = (t + a) % SKUS;
                let second = (first + 1 + (t % (SKUS - 1))) % SKUS;
                let lines =
                    vec![Line::new(format!("s{first}"), 1), Line::new(format!("s{second}"), 2)];
                let reserve = Reserve {
                    id: format!("m-{t}-{a}").into(),
                    ttl_ms: 0,
                    channel: Bytes::new(),
                    customer: Bytes::new(),
                    lines: if t % 2 == 0 { lines } else { lines.into_iter().rev().collect() },
                };
                let reply = client.reserve(reserve).await.unwrap();
                if reply.code.is_ok() {
                    *granted.entry(format!("s{first}")).or_default() += 1;
                    *granted.entry(format!("s{second}")).or_default() += 2;
                } else {
                    assert_eq!(reply.code, ResultCode::InsufficientStock);
                }
            }
            granted
        }));
    }
    let mut granted: HashMap<String, u64> = HashMap::new();
    for task in tasks {
        let partial = tokio::time::timeout(WAIT, task).await.expect("no deadlock").expect("task");
        for (sku, qty) in partial {
            *granted.entry(sku).or_default() += qty;
        }
    }
    for s in 0..SKUS {
        let sku = format!("s{s}");
        let info = admin.query_sku(sku.clone()).await.unwrap().info;
        let seen = granted.get(&sku).copied().unwrap_or(0);
        assert!(seen <= STOCK, "{sku} oversold: {seen} > {STOCK}");
        assert_eq!(info.reserved, seen, "server and clients agree on {sku}");
    }
    server.stop().await;
}
