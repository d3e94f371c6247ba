//! Hostile and broken clients: slow-loris, a client that never reads its replies, idle
//! connections by the thousand, batches at and over the limit. The server stays bounded and
//! keeps serving everyone else.

use crate::common;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{ping_frame, test_config, Daemon, Raw, TestServer, WAIT};
use stockd_protocol::limits::BATCH_OPS_MAX;
use stockd_protocol::{Client, ClientOptions, Op, OpReply, Reply, Request, ResultCode};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn a_slow_loris_client_is_disconnected_before_its_frame_completes() {
    let mut config = test_config();
    config.server.frame_timeout_ms = 300;
    let server = TestServer::start(config).await;
    let mut raw = Raw::handshaken(server.addr).await;
    let frame = ping_frame(2);
    let (mut read, mut write) = raw.stream.into_split();
    // One byte every 100 ms: the whole frame would take 3.2 s.
    let dribble = tokio::spawn(async move {
        for byte in frame.iter() {
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let started = Instant::now();
    let mut sink = Vec::new();
    let read_all = tokio::io::AsyncReadExt::read_to_end(&mut read, &mut sink);
    let _ = tokio::time::timeout(WAIT, read_all).await.expect("the server closes the connection");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(250), "closed by the frame timeout ({elapsed:?})");
    assert!(elapsed < Duration::from_millis(3_000), "before the frame completed ({elapsed:?})");
    assert!(sink.is_empty(), "no reply to a frame that never completed");
    dribble.abort();
    // Everyone else is served.
    assert_eq!(server.client().await.ping().await.unwrap(), ResultCode::Ok);
    raw = Raw::handshaken(server.addr).await;
    raw.send(&ping_frame(3)).await;
    assert!(matches!(raw.recv().await, Some((_, Reply::Op(OpReply::Ping(ResultCode::Ok))))));
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_never_reads_is_disconnected_and_others_keep_being_served() {
    let mut config = test_config();
    config.server.write_timeout_ms = 300;
    let server = TestServer::start(config).await;
    let raw = Raw::handshaken(server.addr).await;
    let (mut read, mut write) = raw.stream.into_split();
    // Pipeline far more requests than socket buffers hold, and never read a reply.
    let mut flood = BytesMut::new();
    for id in 0..400_000u64 {
        Request::Op(Op::Ping).encode(id + 10, &mut flood);
    }
    let flooding = tokio::spawn(async move {
        let _ = write.write_all(&flood).await; // fails once the server gives up
    });
    // Meanwhile, a well-behaved client gets normal service.
    let client = server.client().await;
    let started = Instant::now();
    for _ in 0..100 {
        assert_eq!(client.ping().await.unwrap(), ResultCode::Ok);
    }
    assert!(started.elapsed() < Duration::from_secs(2), "normal latency: {:?}", started.elapsed());
    tokio::time::timeout(WAIT, flooding)
        .await
        .expect("the server stops reading the flood")
        .unwrap();
    // The server closed the connection: reading drains what was sent, then ends.
    let mut replies = Vec::new();
    let drained = tokio::io::AsyncReadExt::read_to_end(&mut read, &mut replies);
    let _ = tokio::time::timeout(WAIT, drained).await.expect("the connection ends");
    assert!(replies.len() < 400_000 * 33, "not every request was answered");
    assert_eq!(client.ping().await.unwrap(), ResultCode::Ok);
    server.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed_only_when_configured() {
    let mut config = test_config();
    config.server.idle_timeout_ms = 300;
    let server = TestServer::start(config).await;
    let mut raw = Raw::handshaken(server.addr).await;
    let started = Instant::now();
    assert!(raw.recv().await.is_none(), "an idle connection is closed");
    assert!(started.elapsed() >= Duration::from_millis(250));
    server.stop().await;
}

#[tokio::test]
async fn batches_at_and_just_over_the_limit() {
    let server = TestServer::start(test_config()).await;
    let client = server.client().await;
    let replies = client.batch(vec![Op::Ping; BATCH_OPS_MAX as usize]).await.expect("at the limit");
    assert_eq!(replies.len(), BATCH_OPS_MAX as usize);
    // One over: the client refuses to send it, and the server refuses it when sent anyway.
    let over = vec![Op::Ping; BATCH_OPS_MAX as usize + 1];
    match client.batch(over.clone()).await {
        Err(stockd_protocol::ClientError::Invalid(e)) => assert_eq!(e.code, ResultCode::TooLarge),
        other => panic!("expected the client to refuse, got {other:?}"),
    }
    let mut raw = Raw::handshaken(server.addr).await;
    raw.send_request(5, &Request::Batch(over)).await;
    match raw.recv().await {
        Some((header, Reply::Error(e))) => {
            assert_eq!((header.request_id, e.code), (5, ResultCode::TooLarge))
        }
        other => panic!("expected too_large from the server, got {other:?}"),
    }
    raw.send(&ping_frame(6)).await;
    assert!(matches!(raw.recv().await, Some((_, Reply::Op(OpReply::Ping(ResultCode::Ok))))));
    assert_eq!(client.ping().await.unwrap(), ResultCode::Ok, "the connection survives");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections() {
    let count: usize = std::env::var("STOCKD_IDLE_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let config_path = dir.path().join("stockd.toml");
    std::fs::write(&config_path, format!("[server]\nconnections_max = {}\n", count + 10)).unwrap();
    let data = dir.path().join("data");
    let daemon = Daemon::start_with(&data, &["--config", config_path.to_str().unwrap()]);
    let rss_before = rss_kib(daemon.child.id());
    let mut idle = Vec::with_capacity(count);
    for _ in 0..count {
        let client = Client::connect(daemon.addr.as_str(), ClientOptions::default()).await;
        idle.push(client.expect("an idle connection is accepted"));
    }
    let client = Client::connect(daemon.addr.as_str(), ClientOptions::default()).await.unwrap();
    let started = Instant::now();
    for _ in 0..100 {
        assert_eq!(client.ping().await.unwrap(), ResultCode::Ok);
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(2), "normal latency beside {count} idle: {elapsed:?}");
    // The idle connections are alive, not just accepted.
    for client in idle.iter().step_by(1_000) {
        assert_eq!(client.ping().await.unwrap(), ResultCode::Ok);
    }
    // Memory stays bounded: an idle connection costs buffers of a few KiB, not a frame's worth.
    let grown = rss_kib(daemon.child.id()).saturating_sub(rss_before);
    let per_connection = grown * 1024 / count as u64;
    eprintln!("{count} idle connections: server RSS +{grown} KiB ({per_connection} bytes each)");
    assert!(per_connection < 32 * 1024, "{per_connection} bytes per idle connection");
}

/// The resident memory of a process, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("a number of KiB")
}

#[tokio::test]
async fn a_flood_beyond_the_connection_limit_is_refused_cleanly_and_the_limit_recovers() {
    const LIMIT: usize = 20;
    const FLOOD: usize = 300;
    let mut config = test_config();
    config.server.connections_max = LIMIT;
    let server = TestServer::start(config).await;
    // A burst of connections, in order: the server admits in accept order.
    let mut admitted = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        admitted.push(Raw::connect(server.addr).await);
    }
    let refused = admitted.split_off(LIMIT);
    for mut raw in refused {
        // Told why, then closed: nothing half-open is left behind.
        match raw.recv().await {
            Some((header, Reply::Error(e))) => {
                assert_eq!((header.request_id, e.code), (0, ResultCode::Overloaded))
            }
            other => panic!("expected overloaded, got {other:?}"),
        }
        assert!(raw.recv().await.is_none(), "a refused connection is closed");
    }
    // The admitted connections are served normally.
    for (i, raw) in admitted.iter_mut().enumerate() {
        raw.send_request(1, &common::hello()).await;
        assert!(matches!(raw.recv().await, Some((_, Reply::Hello(_)))));
        raw.send(&ping_frame(100 + i as u64)).await;
        assert!(matches!(raw.recv().await, Some((_, Reply::Op(OpReply::Ping(ResultCode::Ok))))));
    }
    // Closing them gives the places back: a new client is admitted once the server has seen
    // the closes (it learns of them asynchronously, so a first attempt may still be refused).
    drop(admitted);
    let deadline = Instant::now() + WAIT;
    let client = loop {
        match Client::connect(server.addr, ClientOptions::default()).await {
            Ok(client) => break client,
            Err(_) if Instant::now() < deadline => tokio::task::yield_now().await,
            Err(e) => panic!("the places never came back: {e}"),
        }
    };
    assert_eq!(client.ping().await.unwrap(), ResultCode::Ok);
    server.stop().await;
}
