//! Test harness: a real server on 127.0.0.1:0 in this process, a pipelined client, and a raw
//! connection for sending hand-made (and broken) frames.

#![allow(dead_code)]

pub mod marketplace;

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::Value;
use std::time::Duration;

use bytes::BytesMut;
use stockd::clock::Clock;
use stockd::config::Config;
use stockd::server::{Server, Shared};
use stockd_protocol::frame::Header;
use stockd_protocol::{
    Client, ClientOptions, FrameDecoder, Hello, Reply, Request, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::codec::Decoder;

/// The start of time for manual clocks in tests.
pub const T0: u64 = 1_700_000_000_000;

/// Bound on any single wait in a test, so a broken server fails the test instead of hanging it.
pub const WAIT: Duration = Duration::from_secs(10);

/// A configuration for tests: an ephemeral port and a fresh temporary data directory (kept
/// alive by the returned guard).
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.http.listen = "127.0.0.1:0".into();
    config.engine.shards = 16;
    config.storage.segment_bytes = 1024 * 1024;
    // Most tests are about other things: no keys (tests/it/security.rs turns this back on).
    config.auth.enabled = false;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir").keep();
    config.storage.data_dir = dir;
    config
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub shared: Arc<Shared>,
    pub config: Config,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    pub async fn start(config: Config) -> TestServer {
        TestServer::start_with_clock(config, Clock::manual(T0)).await
    }

    pub async fn start_with_clock(config: Config, clock: Clock) -> TestServer {
        let server = Server::bind_with_clock(config.clone(), clock).await.expect("server starts");
        TestServer::run(server, config)
    }

    pub fn run(server: Server, config: Config) -> TestServer {
        let addr = server.local_addr().expect("local addr");
        let http_addr = server.http_addr().expect("http addr");
        let shared = server.shared();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        TestServer { addr, http_addr, shared, config, stop: Some(stop), task }
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr, ClientOptions::default()).await.expect("client connects")
    }

    /// Triggers a graceful shutdown and waits for the server to finish.
    pub async fn stop(mut self) {
        let _ = self.stop.take().expect("running").send(());
        let result = tokio::time::timeout(WAIT, &mut self.task).await;
        result.expect("server stops in time").expect("server task").expect("server result");
    }
}

/// A connection speaking raw frames.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Raw { stream, buf: BytesMut::new(), decoder: FrameDecoder::new(u32::MAX) }
    }

    /// Connects and completes the handshake.
    pub async fn handshaken(addr: SocketAddr) -> Raw {
        let mut raw = Raw::connect(addr).await;
        raw.send_request(1, &hello()).await;
        match raw.recv().await {
            Some((_, Reply::Hello(h))) => assert!(h.code.is_ok(), "handshake accepted"),
            other => panic!("expected a HELLO reply, got {other:?}"),
        }
        raw
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    pub async fn send_request(&mut self, request_id: u64, request: &Request) {
        let mut buf = BytesMut::new();
        request.encode(request_id, &mut buf);
        self.send(&buf).await;
    }

    /// The next reply frame, or `None` once the server has closed the connection.
    pub async fn recv(&mut self) -> Option<(Header, Reply)> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(frame) = self.decoder.decode(&mut self.buf).expect("valid reply frame")
                {
                    let reply = Reply::decode(&frame.header, frame.body).expect("decodable reply");
                    return Some((frame.header, reply));
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("a reply or a close within the wait bound")
    }
}

/// A minimal HTTP/1.1 GET over a real TCP connection: (status, content type, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    http_request(addr, "GET", path, None).await
}

/// A minimal HTTP/1.1 request over a real TCP connection, with an optional JSON body:
/// (status, content type, body).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> (u16, String, String) {
    http_request_as(addr, None, method, path, json).await
}

/// Like [`http_request`], presenting an API key (`Authorization: Bearer`).
pub async fn http_request_as(
    addr: SocketAddr,
    key: Option<&str>,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect http");
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(key) = key {
        request.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    if let Some(body) = json {
        request.push_str("Content-Type: application/json\r\n");
        request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    } else {
        request.push_str("\r\n");
    }
    stream.write_all(request.as_bytes()).await.expect("send request");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("http response in time")
        .expect("read response");
    let response = String::from_utf8(response).expect("utf-8 response");
    let (head, body) = response.split_once("\r\n\r\n").expect("headers end");
    let status = head.split_whitespace().nth(1).expect("status").parse().expect("numeric status");
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let lower = l.to_ascii_lowercase();
                lower.strip_prefix(name).map(|v| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let body =
        if header("transfer-encoding:") == "chunked" { dechunk(body) } else { body.to_string() };
    (status, header("content-type:"), body)
}

/// The payload of a chunked HTTP body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// A whole `PING` frame.
pub fn ping_frame(request_id: u64) -> BytesMut {
    let mut buf = BytesMut::new();
    Request::Op(stockd_protocol::Op::Ping).encode(request_id, &mut buf);
    buf
}

/// CRC32C from an independent, table-free implementation, so tests do not trust the code under
/// test to build the broken frames and files they feed it.
pub fn crc32c_reference(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}

pub fn hello() -> Request {
    Request::Hello(Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        api_key: "test".into(),
        client_name: "raw".into(),
    })
}

/// The real `stockd` binary, started on 127.0.0.1:0 with a data directory.
pub struct Daemon {
    pub child: std::process::Child,
    pub addr: String,
    /// The HTTP side's address.
    pub http: String,
    /// Every line the daemon logged so far (standard error).
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Daemon {
    pub fn start(data_dir: &std::path::Path) -> Daemon {
        Daemon::start_with(data_dir, &[])
    }

    /// Starts the daemon with extra `serve` arguments, authentication off.
    pub fn start_with(data_dir: &std::path::Path, extra: &[&str]) -> Daemon {
        let extra: Vec<&str> = ["--no-auth"].into_iter().chain(extra.iter().copied()).collect();
        Daemon::spawn(data_dir, &extra, std::process::Stdio::null())
    }

    /// Starts the daemon with authentication on (the default); its standard output is piped
    /// (`child.stdout`).
    pub fn start_secure(data_dir: &std::path::Path) -> Daemon {
        Daemon::spawn(data_dir, &[], std::process::Stdio::piped())
    }

    fn spawn(data_dir: &std::path::Path, extra: &[&str], stdout: std::process::Stdio) -> Daemon {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let mut child = Command::new(env!("CARGO_BIN_EXE_stockd"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .env_remove("STOCKD_CONFIG")
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn stockd");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = log.clone();
        // Drain stderr for the daemon's whole life so its logging never blocks.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                kept.lock().expect("log lock").push(line.clone());
                if let Some(http) = line.split("dashboard=http://").nth(1) {
                    let _ = tx.send(("http", http.trim().trim_end_matches('/').to_string()));
                }
                if let Some(addr) = line.split("addr=").nth(1) {
                    let _ = tx.send(("tcp", addr.trim().to_string()));
                }
            }
        });
        let (mut addr, mut http) = (None, None);
        while addr.is_none() || http.is_none() {
            let (kind, value) =
                rx.recv_timeout(Duration::from_secs(30)).expect("server logs its addresses");
            *(if kind == "tcp" { &mut addr } else { &mut http }) = Some(value);
        }
        let (addr, http) = (addr.expect("logged"), http.expect("logged"));
        Daemon { child, addr, http, log }
    }

    /// Sends a signal to the daemon (only the process this test started).
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    pub fn wait(&mut self) -> Option<i32> {
        self.child.wait().expect("wait").code()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Only if a test failed before stopping it: stop the process this test started.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A JSON API call: the status and the parsed body (which must be JSON).
pub async fn call(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    call_as(addr, None, method, path, body).await
}

/// Like [`call`], presenting an API key.
pub async fn call_as(
    addr: SocketAddr,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    let (status, content_type, text) =
        http_request_as(addr, key, method, path, body.as_deref()).await;
    assert!(content_type.starts_with("application/json"), "{path}: {content_type} {text}");
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}")))
}

pub async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    call(addr, "GET", path, None).await
}

/// Asserts a JSON error with this status and code.
pub fn refused(reply: (u16, Value), status: u16, code: &str) -> String {
    assert_eq!((reply.0, reply.1["code"].as_str()), (status, Some(code)), "{}", reply.1);
    let message = reply.1["message"].as_str().expect("an error has a message");
    assert!(!message.is_empty());
    message.to_string()
}
