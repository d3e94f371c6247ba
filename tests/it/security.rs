//! Security (README "Security"): API keys and roles on both protocols, revocation on open
//! connections, hidden customer ids, the audit trail of keys and changes with the key that
//! made them, two-person approval, rate limits, TLS, and the real binary's first start (the
//! bootstrap key is printed once and stored nowhere in clear).

use crate::common;

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::Bytes;
use common::{test_config, TestServer, T0, WAIT};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use stockd::auth::{Permission, Role};
use stockd::clock::Clock;
use stockd::config::Config;
use stockd::http::guard::ROUTES;
use stockd_protocol::{Client, ClientError, ClientOptions, Line, Op, OpReply, Reserve, ResultCode};

fn reserve(id: &str, customer: &str) -> Reserve {
    Reserve {
        id: Bytes::from(id.to_string()),
        ttl_ms: 0,
        channel: Bytes::new(),
        customer: Bytes::from(customer.to_string()),
        lines: vec![Line::new(Bytes::from_static(b"S1"), 1)],
    }
}

fn secure_config() -> Config {
    let mut config = test_config();
    config.auth.enabled = true;
    config
}

/// A server with authentication on and one key per role (plus a second admin, `admin2`).
async fn secure_server(config: Config) -> (TestServer, HashMap<&'static str, String>) {
    let server = TestServer::start(config).await;
    let mut keys = HashMap::new();
    for role in Role::ALL {
        let (_, key) = server.shared.keys.create(role.name(), role, "test", T0).expect("key");
        keys.insert(role.name(), key);
    }
    let (_, key) = server.shared.keys.create("admin2", Role::Admin, "test", T0).expect("key");
    keys.insert("admin2", key);
    (server, keys)
}

fn options(key: &str) -> ClientOptions {
    ClientOptions { api_key: Bytes::from(key.to_string()), ..ClientOptions::default() }
}

async fn connect(addr: SocketAddr, key: &str) -> Client {
    Client::connect(addr, options(key)).await.expect("handshake accepted")
}

/// One HTTP request with an optional bearer key: (status, JSON body or Null).
async fn http(
    addr: SocketAddr,
    key: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new().request(method, format!("http://{addr}{path}"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response =
        tokio::time::timeout(WAIT, request.send()).await.expect("in time").expect("sent");
    let status = response.status();
    if path.starts_with("/api/v1/events") && status == StatusCode::OK {
        return (status, Value::Null); // a stream: the status is what matters
    }
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn set_stock(client: &Client, sku: &str, on_hand: u64) {
    let reply = client.set_stock(Bytes::from(sku.to_string()), on_hand, None).await.expect("sent");
    assert_eq!(reply.code, ResultCode::Ok);
}

#[tokio::test]
async fn every_role_against_every_http_endpoint() {
    let (server, keys) = secure_server(secure_config()).await;
    let addr = server.http_addr;
    let concrete = |pattern: &str| {
        pattern
            .replace("{sku}", "S1")
            .replace("{location}", "L1")
            .replace("{reference}", "R1")
            .replace("{id}", "x1")
            .replace("{name}", "shop")
            .replace("{order}", "o1")
    };
    let mut checked = 0;
    for (method, pattern, class) in ROUTES {
        let path = concrete(pattern);
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let body = (method != Method::GET).then(|| json!({}));
        let Some(permission) = class else {
            // Public: no key needed (the answer may still be an error of its own).
            let (status, _) = http(addr, None, method.clone(), &path, body.clone()).await;
            assert_ne!(status, StatusCode::UNAUTHORIZED, "{method} {path} is public");
            continue;
        };
        let (status, reply) = http(addr, None, method.clone(), &path, body.clone()).await;
        assert_eq!(
            (status, reply["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("unauthorized")),
            "{method} {path} without a key"
        );
        let (status, _) = http(addr, Some("sk_wrong"), method.clone(), &path, body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} with a wrong key");
        for role in Role::ALL {
            let key = &keys[role.name()];
            let (status, reply) = http(addr, Some(key), method.clone(), &path, body.clone()).await;
            if role.allows(*permission) {
                assert!(
                    status != StatusCode::FORBIDDEN && status != StatusCode::UNAUTHORIZED,
                    "{} may {method} {path}: {status} {reply}",
                    role.name()
                );
            } else {
                assert_eq!(
                    (status, reply["code"].as_str()),
                    (StatusCode::FORBIDDEN, Some("forbidden")),
                    "{} may not {method} {path}",
                    role.name()
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 40 * 5, "every protected endpoint was tried with every role: {checked}");
    server.stop().await;
}

#[tokio::test]
async fn every_role_against_every_protocol_operation_class() {
    let (server, keys) = secure_server(secure_config()).await;
    let admin = connect(server.addr, &keys["admin"]).await;
    set_stock(&admin, "S1", 1_000).await;
    let sku = || Bytes::from_static(b"S1");
    for role in Role::ALL {
        let client = connect(server.addr, &keys[role.name()]).await;
        let id = format!("order-{}", role.name());
        let ops = [
            (Permission::Read, Op::QuerySku { sku: sku() }),
            (Permission::Read, Op::Ping),
            (Permission::Checkout, Op::Reserve(reserve(&id, ""))),
            (Permission::Checkout, Op::Release { id: Bytes::from(id) }),
            (Permission::Sync, Op::SetStock { sku: sku(), on_hand: 1_000, expected: None }),
            (Permission::Stock, Op::AdjustStock { sku: sku(), delta: 1, expected: None }),
            (Permission::Stock, Op::SetSafetyStock { sku: sku(), safety_stock: 0 }),
        ];
        for (permission, op) in ops {
            let shown = format!("{} {op:?}", role.name());
            let code = client.call(op).await.expect("answered").code();
            if role.allows(permission) {
                assert_ne!(code, ResultCode::Forbidden, "{shown}");
            } else {
                assert_eq!(code, ResultCode::Forbidden, "{shown}");
            }
        }
    }
    // Without a key, or with a wrong one, the handshake is refused.
    for key in ["", "sk_0000000000000000_0000", "not even a key"] {
        match Client::connect(server.addr, options(key)).await {
            Err(ClientError::Handshake(code)) => assert_eq!(code, ResultCode::Unauthorized),
            other => panic!("{key:?}: {:?}", other.map(|_| "connected")),
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn a_revoked_key_is_refused_on_connections_already_open() {
    let (server, keys) = secure_server(secure_config()).await;
    let http_addr = server.http_addr;
    let checkout = connect(server.addr, &keys["checkout"]).await;
    assert_eq!(checkout.ping().await.expect("ping"), ResultCode::Ok);
    let (_, listed) =
        http(http_addr, Some(&keys["admin"]), Method::GET, "/api/v1/keys", None).await;
    let id = listed["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["role"] == "checkout")
        .expect("the checkout key")["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert!(!listed.to_string().contains(&keys["checkout"]), "a listing never shows keys");
    let body = json!({ "actor": "alice", "reason": "laptop lost" });
    let path = format!("/api/v1/keys/{id}/revoke");
    let (status, revoked) =
        http(http_addr, Some(&keys["admin"]), Method::POST, &path, Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert!(revoked["revoked_ms"].is_u64());
    // The open connection's next request is refused and the connection closed.
    match checkout.ping().await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ResultCode::Unauthorized),
        other => panic!("expected unauthorized, got {other:?}"),
    }
    assert!(checkout.ping().await.is_err(), "the connection is closed");
    match Client::connect(server.addr, options(&keys["checkout"])).await {
        Err(ClientError::Handshake(ResultCode::Unauthorized)) => {}
        other => panic!("{:?}", other.map(|_| "connected")),
    }
    let (status, reply) =
        http(http_addr, Some(&keys["checkout"]), Method::GET, "/api/v1/status", None).await;
    assert_eq!(
        (status, reply["message"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("the API key was revoked"))
    );
    // Other keys are not affected.
    let ops = connect(server.addr, &keys["ops"]).await;
    assert_eq!(ops.ping().await.expect("ping"), ResultCode::Ok);
    server.stop().await;
}

#[tokio::test]
async fn customer_ids_are_hidden_from_roles_that_do_not_serve_customers() {
    let (server, keys) = secure_server(secure_config()).await;
    let admin = connect(server.addr, &keys["admin"]).await;
    set_stock(&admin, "S1", 10).await;
    let checkout = connect(server.addr, &keys["checkout"]).await;
    let reply = checkout.reserve(reserve("o-1", "buyer-4711")).await.expect("reserve");
    assert_eq!(reply.code, ResultCode::Ok);

    for (role, visible) in [("readonly", false), ("sync", false), ("ops", true), ("checkout", true)]
    {
        let key = Some(keys[role].as_str());
        for path in ["/api/v1/skus/S1", "/api/v1/reservations/o-1"] {
            let (status, reply) = http(server.http_addr, key, Method::GET, path, None).await;
            assert_eq!(status, StatusCode::OK, "{role} {path}");
            let text = reply.to_string();
            assert_eq!(text.contains("buyer-4711"), visible, "{role} {path}: {text}");
            assert_eq!(text.contains("[hidden]"), !visible, "{role} {path}: {text}");
        }
        let client = connect(server.addr, &keys[role]).await;
        let found = client.query_reservation(Bytes::from_static(b"o-1")).await.expect("query");
        let customer = found.info.expect("found").customer;
        let expected: &[u8] = if visible { b"buyer-4711" } else { b"[hidden]" };
        assert_eq!(&customer[..], expected, "{role} over TCP");
    }
    let (status, _) = http(
        server.http_addr,
        Some(&keys["readonly"]),
        Method::GET,
        "/api/v1/tickets?customer=buyer-4711",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no probing by customer either");
    server.stop().await;
}

/// Audit entries of one action, newest first.
async fn audited(addr: SocketAddr, key: &str, query: &str) -> Vec<Value> {
    let path = format!("/api/v1/audit?{query}");
    let (status, reply) = http(addr, Some(key), Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    reply["entries"].as_array().expect("entries").clone()
}

fn key_id(key: &str) -> String {
    key.split('_').nth(1).expect("sk_<id>_<secret>").to_string()
}

#[tokio::test]
async fn keys_and_changes_are_audited_with_the_key_that_made_them() {
    let (server, keys) = secure_server(secure_config()).await;
    let addr = server.http_addr;
    let admin = &keys["admin"];
    let body =
        json!({ "name": "web shop", "role": "checkout", "actor": "alice", "reason": "new shop" });
    let (status, created) = http(addr, Some(admin), Method::POST, "/api/v1/keys", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let new_key = created["key"].as_str().expect("the key, once").to_string();
    let new_id = created["id"].as_str().expect("id").to_string();
    assert_eq!(key_id(&new_key), new_id);
    connect(server.addr, &new_key).await; // usable at once

    let entries = audited(addr, admin, "action=key_create").await;
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    assert_eq!(
        (entry["key"].as_str(), entry["actor"].as_str()),
        (Some(key_id(admin).as_str()), Some("alice"))
    );
    assert_eq!(
        entry["after"],
        json!({ "id": new_id, "name": "web shop", "role": "checkout", "revoked_ms": null })
    );
    assert!(!entry.to_string().contains(&new_key[20..]), "no secret in the audit log");

    let path = format!("/api/v1/keys/{new_id}/revoke");
    let body = json!({ "actor": "alice", "reason": "shop closed" });
    assert_eq!(
        http(addr, Some(admin), Method::POST, &path, Some(body.clone())).await.0,
        StatusCode::OK
    );
    let (status, again) = http(addr, Some(admin), Method::POST, &path, Some(body)).await;
    assert_eq!((status, again["code"].as_str()), (StatusCode::CONFLICT, Some("already_revoked")));
    let entry = &audited(addr, admin, "action=key_revoke").await[0];
    assert_eq!(entry["before"]["revoked_ms"], Value::Null);
    assert_eq!(entry["after"]["revoked_ms"], json!(T0));

    // A stock change names the ops key; the actor filter finds it by key id.
    let ops = &keys["ops"];
    let body = json!({ "on_hand": 50, "actor": "bob", "reason": "count" });
    assert_eq!(
        http(addr, Some(ops), Method::PUT, "/api/v1/skus/S1/stock", Some(body)).await.0,
        StatusCode::OK
    );
    let body = json!({ "delta": -5, "actor": "bob", "reason": "broken" });
    assert_eq!(
        http(addr, Some(ops), Method::POST, "/api/v1/skus/S1/adjustments", Some(body)).await.0,
        StatusCode::OK
    );
    // So does one over the binary protocol (the key's name is the actor there).
    let tcp = connect(server.addr, ops).await;
    let reply = tcp.adjust_stock(Bytes::from_static(b"S1"), 7, None).await.expect("adjust");
    assert_eq!(reply.code, ResultCode::Ok);
    let entries = audited(addr, &keys["readonly"], &format!("actor={}", key_id(ops))).await;
    assert_eq!(entries.len(), 3);
    let on_hand = |e: &Value| (e["before"]["on_hand"].as_u64(), e["after"]["on_hand"].as_u64());
    let first = (entries[0]["action"].as_str(), entries[0]["actor"].as_str());
    assert_eq!(first, (Some("adjust_stock"), Some("ops")));
    assert_eq!(entries[0]["reason"], "binary protocol");
    assert_eq!(on_hand(&entries[0]), (Some(45), Some(52)));
    assert_eq!(entries[1]["action"], "adjust_stock");
    assert_eq!(on_hand(&entries[1]), (Some(50), Some(45)));
    assert_eq!(entries[2]["action"], "set_stock");
    assert_eq!(entries[2]["before"]["on_hand"].as_u64(), Some(0));
    server.stop().await;
}

#[tokio::test]
async fn dangerous_changes_wait_for_a_second_admin() {
    let mut config = secure_config();
    config.approval.expiry_ms = 60_000;
    let (server, keys) = secure_server(config).await;
    let addr = server.http_addr;
    let on_hand = |sku: &'static str| {
        let engine = &server.shared.engine;
        move || engine.query_sku(sku.as_bytes(), T0).info.on_hand
    };
    let admin = connect(server.addr, &keys["admin"]).await;
    set_stock(&admin, "S1", 5_000).await;

    // Over the protocol, where nothing can wait: refused.
    let ops_tcp = connect(server.addr, &keys["ops"]).await;
    let reply = ops_tcp.adjust_stock(Bytes::from_static(b"S1"), -2_000, None).await.expect("sent");
    assert_eq!(reply.code, ResultCode::Forbidden);
    let reply = ops_tcp.adjust_stock(Bytes::from_static(b"S1"), -10, None).await.expect("sent");
    assert_eq!(reply.code, ResultCode::Ok, "small changes need no approval");

    // Over HTTP: pending, nothing changed.
    let body = json!({ "delta": -2_000, "actor": "bob", "reason": "write-off" });
    let (status, reply) =
        http(addr, Some(&keys["ops"]), Method::POST, "/api/v1/skus/S1/adjustments", Some(body))
            .await;
    assert_eq!(
        (status, reply["code"].as_str()),
        (StatusCode::ACCEPTED, Some("approval_required")),
        "{reply}"
    );
    let approval = reply["approval"]["id"].as_str().expect("id").to_string();
    assert_eq!(on_hand("S1")(), 4_990);
    let (_, listed) = http(addr, Some(&keys["ops"]), Method::GET, "/api/v1/approvals", None).await;
    assert_eq!(listed["pending"][0]["id"], approval.as_str());

    let decision = json!({ "actor": "carol", "note": "checked" });
    let path = format!("/api/v1/approvals/{approval}/approve");
    let (status, _) =
        http(addr, Some(&keys["ops"]), Method::POST, &path, Some(decision.clone())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "ops cannot approve");
    let (status, reply) =
        http(addr, Some(&keys["admin"]), Method::POST, &path, Some(decision.clone())).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["result"]["applied"], 1);
    assert_eq!(on_hand("S1")(), 2_990);

    // An admin cannot approve their own request; a second admin can.
    let body = json!({ "on_hand": 0, "actor": "alice", "reason": "recall" });
    let (status, reply) =
        http(addr, Some(&keys["admin"]), Method::PUT, "/api/v1/skus/S1/stock", Some(body)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    let path =
        format!("/api/v1/approvals/{}/approve", reply["approval"]["id"].as_str().expect("id"));
    let (status, reply) =
        http(addr, Some(&keys["admin"]), Method::POST, &path, Some(decision.clone())).await;
    assert_eq!(
        (status, reply["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "{reply}"
    );
    assert_eq!(on_hand("S1")(), 2_990);
    let (status, _) =
        http(addr, Some(&keys["admin2"]), Method::POST, &path, Some(decision.clone())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(on_hand("S1")(), 0);

    // Zeroing many SKUs at once in bulk waits too; an expired request cannot be approved.
    for n in 0..21 {
        set_stock(&admin, &format!("B{n}"), 3).await;
    }
    let items: Vec<Value> = (0..21)
        .map(|n| json!({ "op": "set_stock", "sku": format!("B{n}"), "on_hand": 0 }))
        .collect();
    let body = json!({ "actor": "bob", "reason": "season end", "items": items });
    let (status, reply) =
        http(addr, Some(&keys["ops"]), Method::POST, "/api/v1/bulk", Some(body)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    assert_eq!(on_hand("B0")(), 3);
    let path =
        format!("/api/v1/approvals/{}/approve", reply["approval"]["id"].as_str().expect("id"));
    server.shared.clock.advance_ms(60_000);
    let (status, reply) =
        http(addr, Some(&keys["admin"]), Method::POST, &path, Some(decision)).await;
    assert_eq!((status, reply["code"].as_str()), (StatusCode::GONE, Some("expired")), "{reply}");
    assert_eq!(on_hand("B0")(), 3);

    let actions: Vec<String> = audited(addr, &keys["admin"], "limit=100")
        .await
        .iter()
        .filter_map(|e| {
            e["action"].as_str().filter(|a| a.starts_with("approval_")).map(String::from)
        })
        .collect();
    assert_eq!(
        actions,
        [
            "approval_expire",
            "approval_request",
            "approval_approve",
            "approval_request",
            "approval_approve",
            "approval_request"
        ]
    );
    let changes = audited(addr, &keys["admin"], "action=adjust_stock&target=S1").await;
    let reason = changes[0]["reason"].as_str().expect("reason");
    assert!(reason.starts_with("write-off (approved by admin in ap_"), "{reason}");
    server.stop().await;
}

/// Deleting a SKU waits for a second admin (the default rule), is refused while the SKU is in
/// use, and once applied leaves the SKU unknown, audited with what it had.
#[tokio::test]
async fn deleting_a_sku_waits_for_a_second_admin() {
    let (server, keys) = secure_server(secure_config()).await;
    let addr = server.http_addr;
    let admin = connect(server.addr, &keys["admin"]).await;
    set_stock(&admin, "S1", 7).await;
    let checkout = connect(server.addr, &keys["checkout"]).await;
    let reply = checkout.reserve(reserve("o-1", "buyer")).await.expect("reserve");
    assert_eq!(reply.code, ResultCode::Ok);

    // Over the protocol: refused, since it cannot wait for approval; checkout may not at all.
    let reply = admin.delete_sku(Bytes::from_static(b"S1")).await.expect("sent");
    assert_eq!(reply.code, ResultCode::Forbidden);
    let reply = checkout.delete_sku(Bytes::from_static(b"S1")).await.expect("sent");
    assert_eq!(reply.code, ResultCode::Forbidden);

    let request = |key: &str| {
        let body = json!({ "actor": "bob", "reason": "discontinued" });
        let key = key.to_string();
        async move { http(addr, Some(&key), Method::DELETE, "/api/v1/skus/S1", Some(body)).await }
    };
    let (status, reply) = request(&keys["checkout"]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{reply}");
    let (status, reply) = request(&keys["ops"]).await;
    assert_eq!(
        (status, reply["code"].as_str()),
        (StatusCode::ACCEPTED, Some("approval_required")),
        "{reply}"
    );
    assert_eq!(reply["approval"]["why"], "deletes the SKU");
    let approve = |reply: &Value, key: &str| {
        let id = reply["approval"]["id"].as_str().expect("id").to_string();
        let decision = json!({ "actor": "carol", "note": "checked" });
        let path = format!("/api/v1/approvals/{id}/approve");
        let key = key.to_string();
        async move { http(addr, Some(&key), Method::POST, &path, Some(decision)).await }
    };
    // Approved while o-1 still holds a unit: refused as in use, nothing deleted.
    let (status, result) = approve(&reply, &keys["admin"]).await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(result["result"]["refused"], 1, "{result}");
    assert_eq!(result["result"]["results"][0]["code"], "sku_in_use", "{result}");
    assert_eq!(server.shared.engine.query_sku(b"S1", T0).code, ResultCode::Ok);

    assert_eq!(checkout.release(Bytes::from_static(b"o-1")).await.expect("sent"), ResultCode::Ok);
    let (status, reply) = request(&keys["admin"]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    let (status, result) = approve(&reply, &keys["admin2"]).await;
    assert_eq!((status, &result["result"]["applied"]), (StatusCode::OK, &json!(1)), "{result}");
    assert_eq!(server.shared.engine.query_sku(b"S1", T0).code, ResultCode::UnknownSku);
    let reply = checkout.reserve(reserve("o-2", "buyer")).await.expect("reserve");
    assert_eq!(reply.code, ResultCode::UnknownSku);
    let (status, reply) =
        http(addr, Some(&keys["readonly"]), Method::GET, "/api/v1/skus/S1", None).await;
    assert_eq!((status, reply["code"].as_str()), (StatusCode::NOT_FOUND, Some("unknown_sku")));

    let audited = audited(addr, &keys["admin"], "action=delete_sku").await;
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(audited[0]["target"], "S1");
    assert_eq!(audited[0]["before"]["on_hand"], 7);
    assert_eq!(audited[0]["after"]["on_hand"], 0);
    server.stop().await;
}

/// Pending requests come back after a restart with everything approving them needs (a single
/// change, and a bulk request with an item refused up front), apply once when approved, and
/// never come back once approved, rejected or expired; a request that expired while the
/// server was down is audited as expired.
#[tokio::test]
async fn pending_approvals_survive_restarts_and_apply_once() {
    let mut config = secure_config();
    config.approval.expiry_ms = 60_000;
    let (server, keys) = secure_server(config.clone()).await;
    let admin = connect(server.addr, &keys["admin"]).await;
    set_stock(&admin, "S1", 5_000).await;
    for n in 0..21 {
        set_stock(&admin, &format!("B{n}"), 3).await;
    }
    drop(admin);
    let request = |server: &TestServer, path: &'static str, method: Method, body: Value| {
        let (addr, key) = (server.http_addr, keys["ops"].clone());
        async move {
            let (status, reply) = http(addr, Some(&key), method, path, Some(body)).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
            reply["approval"]["id"].as_str().expect("id").to_string()
        }
    };
    let write_off = json!({ "delta": -2_000, "actor": "bob", "reason": "write-off" });
    let single = request(&server, "/api/v1/skus/S1/adjustments", Method::POST, write_off).await;
    let mut items: Vec<Value> = (0..21)
        .map(|n| json!({ "op": "set_stock", "sku": format!("B{n}"), "on_hand": 0 }))
        .collect();
    items.push(json!({ "op": "adjust_stock", "sku": "B0", "delta": 0 }));
    let season = json!({ "actor": "bob", "reason": "season end", "items": items });
    let bulk = request(&server, "/api/v1/bulk", Method::POST, season.clone()).await;
    let dropped = request(&server, "/api/v1/bulk", Method::POST, season.clone()).await;
    let decision = json!({ "actor": "carol", "note": "checked" });
    let path = format!("/api/v1/approvals/{dropped}/reject");
    let (status, reply) =
        http(server.http_addr, Some(&keys["admin"]), Method::POST, &path, Some(decision.clone()))
            .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    server.stop().await;

    let server = TestServer::start_with_clock(config.clone(), Clock::manual(T0 + 1_000)).await;
    let addr = server.http_addr;
    let pending = |addr: SocketAddr, key: String| async move {
        let (_, listed) = http(addr, Some(&key), Method::GET, "/api/v1/approvals", None).await;
        let ids = listed["pending"].as_array().expect("pending").iter();
        ids.map(|p| p["id"].as_str().expect("id").to_string()).collect::<Vec<_>>()
    };
    // (Listed oldest first, then by id: both were made at T0.)
    let mut expected = vec![single.clone(), bulk.clone()];
    expected.sort();
    assert_eq!(pending(addr, keys["ops"].clone()).await, expected);
    let on_hand = |server: &TestServer, sku: &str| {
        server.shared.engine.query_sku(sku.as_bytes(), T0 + 1_000).info.on_hand
    };
    assert_eq!((on_hand(&server, "S1"), on_hand(&server, "B7")), (5_000, 3), "nothing applied");
    let approve = |id: &str, key: &str| {
        let path = format!("/api/v1/approvals/{id}/approve");
        let (key, body) = (key.to_string(), decision.clone());
        async move { http(addr, Some(&key), Method::POST, &path, Some(body)).await }
    };
    let (status, reply) = approve(&single, &keys["admin"]).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["result"]["applied"], 1);
    let (status, reply) = approve(&bulk, &keys["admin2"]).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(
        (reply["result"]["applied"].as_u64(), reply["result"]["refused"].as_u64()),
        (Some(21), Some(1))
    );
    assert_eq!((on_hand(&server, "S1"), on_hand(&server, "B7")), (3_000, 0));
    let (status, _) = approve(&single, &keys["admin2"]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "an approval applies once");
    let late = request(
        &server,
        "/api/v1/skus/S1/adjustments",
        Method::POST,
        json!({
            "delta": -2_500, "actor": "bob", "reason": "second write-off"
        }),
    )
    .await;
    server.stop().await;

    // Back after the expiry: nothing pending, S1 untouched, the expiry audited.
    let server = TestServer::start_with_clock(config, Clock::manual(T0 + 120_000)).await;
    assert!(pending(server.http_addr, keys["ops"].clone()).await.is_empty());
    assert_eq!(on_hand(&server, "S1"), 3_000);
    let expired = audited(server.http_addr, &keys["admin"], "action=approval_expire").await;
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0]["target"], late.as_str());
    server.stop().await;
}

#[tokio::test]
async fn rate_limits_answer_overloaded_instead_of_queueing() {
    let mut config = secure_config();
    config.auth.http_requests_per_second = 5;
    config.server.connection_ops_per_second = 8192;
    let (server, keys) = secure_server(config).await;
    let mut refused = 0;
    for _ in 0..50 {
        let (status, reply) =
            http(server.http_addr, Some(&keys["readonly"]), Method::GET, "/api/v1/status", None)
                .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(reply["code"], "overloaded");
            refused += 1;
        }
    }
    assert!(
        refused >= 30,
        "at 5 per second, most of 50 back-to-back requests are refused: {refused}"
    );
    // Another key has its own allowance.
    let (status, _) =
        http(server.http_addr, Some(&keys["ops"]), Method::GET, "/api/v1/status", None).await;
    assert_eq!(status, StatusCode::OK);

    let client = connect(server.addr, &keys["readonly"]).await;
    let mut overloaded = 0;
    for _ in 0..5 {
        let replies = client.batch(vec![Op::Ping; 8192]).await.expect("batch");
        let codes: Vec<ResultCode> = replies.iter().map(OpReply::code).collect();
        assert!(codes.iter().all(|c| *c == codes[0]), "a batch is admitted or refused whole");
        if codes[0] == ResultCode::Overloaded {
            overloaded += 1;
        }
    }
    assert!(overloaded >= 1, "five full batches exceed 8192 operations per second");
    server.stop().await;
}

/// A self-signed certificate for localhost and 127.0.0.1, written as PEM files.
fn certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(names).expect("certificate");
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).expect("write cert");
    std::fs::write(&key_file, key_pair.serialize_pem()).expect("write key");
    (cert_file, key_file, cert.pem())
}

#[tokio::test]
async fn tls_serves_both_protocols_and_refuses_plaintext() {
    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls::{self, pki_types::ServerName, ClientConfig, RootCertStore};
    let mut config = secure_config();
    let (cert_file, key_file, cert_pem) = certificate(&config.storage.data_dir);
    config.tls.enabled = true;
    config.tls.cert_file = cert_file;
    config.tls.key_file = key_file;
    let (server, keys) = secure_server(config).await;

    let mut roots = RootCertStore::empty();
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes());
    roots.add(der.expect("pem")).expect("root");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let stream = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let stream = connector.connect(name, stream).await.expect("TLS handshake");
    let client = Client::over(stream, options(&keys["admin"])).await.expect("protocol handshake");
    set_stock(&client, "S1", 7).await;
    assert_eq!(client.query_sku(Bytes::from_static(b"S1")).await.expect("query").info.on_hand, 7);

    // A plaintext client gets no protocol answer: the TLS handshake fails and it is closed.
    match Client::connect(server.addr, options(&keys["admin"])).await {
        Err(e) => assert!(!matches!(e, ClientError::Handshake(_)), "{e}"),
        Ok(_) => panic!("a plaintext client was served on a TLS port"),
    }

    let https = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).expect("cert"))
        .build()
        .expect("client");
    let url = format!("https://localhost:{}/api/v1/skus/S1", server.http_addr.port());
    let reply = https.get(&url).bearer_auth(&keys["readonly"]).send().await.expect("https");
    assert_eq!(reply.status(), StatusCode::OK);
    let plain = format!("http://{}/healthz", server.http_addr);
    let refused = tokio::time::timeout(WAIT, reqwest::get(&plain)).await.expect("in time");
    assert!(refused.is_err(), "plain HTTP on the TLS port is refused");
    server.stop().await;
}

/// The `stockd` CLI reaches a TLS server when told which certificate to trust: over the binary
/// protocol (`--tls-ca`, checking the certificate's IP address or, with `--tls-server-name`,
/// its DNS name) and over HTTPS. Without the certificate, or with a name the certificate does
/// not carry, it refuses to talk, and says why.
#[tokio::test]
async fn the_cli_talks_tls_when_given_the_certificate() {
    let mut config = secure_config();
    let (cert_file, key_file, _) = certificate(&config.storage.data_dir);
    config.tls.enabled = true;
    config.tls.cert_file = cert_file.clone();
    config.tls.key_file = key_file;
    let (server, keys) = secure_server(config).await;
    let cli = |args: Vec<String>| async move {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_stockd"))
            .args(&args)
            .env_remove("STOCKD_API_KEY")
            .env_remove("STOCKD_TLS_CA")
            .output()
            .await
            .expect("run stockd");
        let out = String::from_utf8_lossy(&output.stdout).to_string();
        (output.status.code(), out + &String::from_utf8_lossy(&output.stderr))
    };
    let ca = cert_file.to_str().expect("utf-8 path").to_string();
    let protocol = |extra: &[&str]| {
        let mut args = vec!["ping".to_string(), "--server".into(), server.addr.to_string()];
        args.extend(["--api-key".to_string(), keys["readonly"].clone()]);
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    let (code, out) = cli(protocol(&["--tls-ca", &ca])).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("ok protocol_version=1"), "{out}");
    let (code, out) = cli(protocol(&["--tls-ca", &ca, "--tls-server-name", "localhost"])).await;
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = cli(protocol(&["--tls-ca", &ca, "--tls-server-name", "shop.example"])).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("over TLS as shop.example"), "{out}");
    let (code, out) = cli(protocol(&[])).await;
    assert_eq!(code, Some(1), "a plaintext client is not served: {out}");
    let (code, out) = cli(protocol(&["--tls-ca", "/nonexistent/ca.pem"])).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("cannot read certificates from /nonexistent/ca.pem"), "{out}");
    // Deleting needs approval, which only HTTP can wait for: the CLI says where to go.
    let server_addr = server.addr.to_string();
    let delete = ["stock", "delete", "S9", "--server", &server_addr, "--api-key", &keys["admin"]];
    let delete: Vec<String> =
        delete.iter().chain(&["--tls-ca", &ca]).map(|a| a.to_string()).collect();
    let (code, out) = cli(delete).await;
    assert_eq!(code, Some(3), "{out}");
    assert!(out.starts_with("forbidden\n") && out.contains("DELETE /api/v1/skus/S9"), "{out}");

    let https = format!("https://localhost:{}", server.http_addr.port());
    let keys_list = |extra: &[&str]| {
        let mut args: Vec<String> = ["keys", "list", "--http", &https, "--api-key", &keys["admin"]]
            .iter()
            .map(|a| a.to_string())
            .collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    let (code, out) = cli(keys_list(&["--tls-ca", &ca])).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("admin2"), "{out}");
    let (code, out) = cli(keys_list(&[])).await;
    assert_eq!(code, Some(1), "an unknown certificate is refused: {out}");
    assert!(out.contains("cannot reach"), "{out}");
    server.stop().await;
}

#[test]
fn the_first_start_prints_an_admin_key_once_and_stores_it_nowhere() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let mut daemon = common::Daemon::start_secure(dir.path());
    let stdout = daemon.child.stdout.take().expect("stdout");
    let bootstrap = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix("STOCKD_API_KEY=").map(String::from))
        .expect("the bootstrap key is printed");
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_stockd"))
            .args(args)
            .env_remove("STOCKD_API_KEY")
            .output()
            .expect("run stockd");
        let text = String::from_utf8(output.stdout).expect("utf-8");
        (output.status.code(), text, String::from_utf8_lossy(&output.stderr).to_string())
    };
    let http = daemon.http.clone();
    let (code, created, _) = cli(&[
        "keys",
        "create",
        "--role",
        "checkout",
        "--name",
        "web",
        "--http",
        &http,
        "--api-key",
        &bootstrap,
    ]);
    assert_eq!(code, Some(0), "{created}");
    let checkout = created.trim().to_string();
    assert!(checkout.starts_with("sk_"), "{checkout}");
    let (code, listed, _) = cli(&["keys", "list", "--http", &http, "--api-key", &checkout]);
    assert_eq!(code, Some(3), "only admins list keys: {listed}");
    assert!(listed.starts_with("forbidden:"), "{listed}");
    let (code, listed, _) = cli(&["keys", "list", "--http", &http, "--api-key", &bootstrap]);
    assert_eq!(code, Some(0));
    assert!(listed.contains("bootstrap") && listed.contains("web"), "{listed}");
    // Offline management is refused while the server holds the data directory.
    let data_dir = dir.path().to_str().expect("utf-8 path");
    let (code, _, err) = cli(&["keys", "list", "--offline", "--data-dir", data_dir]);
    assert_ne!(code, Some(0));
    assert!(err.contains("stop the server"), "{err}");

    daemon.signal("-TERM");
    assert_eq!(daemon.wait(), Some(0));
    let (code, listed, _) = cli(&["keys", "list", "--offline", "--data-dir", data_dir]);
    assert_eq!(code, Some(0));
    assert_eq!(listed.lines().count(), 2, "{listed}");
    // Neither clear key is in any file of the data directory, nor in the log.
    for entry in std::fs::read_dir(dir.path()).expect("dir") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("read");
        for key in [&bootstrap, &checkout] {
            let found = bytes.windows(key.len()).any(|w| w == key.as_bytes());
            assert!(!found, "{} holds a clear key", path.display());
        }
    }
    let log = daemon.log.lock().expect("log").join("\n");
    assert!(log.contains("created admin key `bootstrap`"), "the log says a key was made");
    assert!(!log.contains(&bootstrap) && !log.contains(&checkout), "no clear key in the log");
}
