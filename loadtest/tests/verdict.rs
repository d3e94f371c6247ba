//! A short, bounded flash sale against a real in-process server: the verdict passes, and a
//! deliberately wrong expectation (less stock than there is) fails it.

use std::time::Duration;

use stockd::auth::Role;
use stockd::config::Config;
use stockd::server::Server;
use stockd_loadtest::scenario::Mix;
use stockd_loadtest::{run, RunConfig, Scenario};
use stockd_protocol::{ChannelQuota, QuotaLimit, SkuLimits};

/// A server with authentication on, and an admin key for the harness.
async fn start_server(
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>, tempfile::TempDir, String) {
    start_server_with(|_| {}).await
}

async fn start_server_with(
    adjust: impl FnOnce(&mut Config),
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>, tempfile::TempDir, String) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.http.listen = "127.0.0.1:0".into();
    config.storage.data_dir = dir.path().to_path_buf();
    config.storage.segment_bytes = 1024 * 1024;
    adjust(&mut config);
    let server = Server::bind(config).await.expect("server starts");
    let addr = server.local_addr().expect("addr");
    let (_, key) = server.shared().keys.create("loadtest", Role::Admin, "test", 0).expect("key");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    (addr, stop, dir, key)
}

fn flash_sale(server: String, api_key: &str, assume_stock: Option<u64>) -> RunConfig {
    RunConfig {
        server,
        tls: None,
        api_key: api_key.to_string(),
        scenario: Scenario::FlashSale,
        connections: 8,
        in_flight: 2,
        batch: 1,
        rate: None,
        warmup: Duration::from_millis(200),
        duration: Duration::from_millis(1_500),
        requests_max: Some(40_000),
        skus: 2,
        stock: 300,
        ttl_ms: 500,
        confirm_share: 0.5,
        release_share: 0.3,
        lines_max: 1,
        mix: Mix { reserve: 1, confirm: 0, release: 0, query: 0 },
        buyers: 0,
        channels: Vec::new(),
        limits: SkuLimits::default(),
        assume_limits: None,
        prefix: format!("test{}", assume_stock.unwrap_or(0)),
        assume_stock,
        retention_ms: None,
        progress: false,
        seed: 7,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_flash_sale_passes_and_a_wrong_expectation_fails() {
    let (addr, stop, _dir, key) = start_server().await;
    let result = run(flash_sale(addr.to_string(), &key, None)).await.expect("run");
    assert!(result.verdict.passed, "{}", result.summary());
    assert!(result.ops > 1_000, "the run did real work: {}", result.summary());
    let granted = result.codes.iter().any(|c| c.op == "reserve" && c.code == "ok");
    let sold_out = result.codes.iter().any(|c| c.op == "reserve" && c.code == "insufficient_stock");
    assert!(granted && sold_out, "the sale sold out: {}", result.summary());
    // The report renders, with the verdict and both charts.
    let html = result.to_html();
    assert!(html.contains("Verdict: PASS") && html.matches("<svg").count() == 2);
    let json: serde_json::Value = serde_json::from_str(&result.to_json()).expect("valid JSON");
    assert_eq!(json["verdict"]["passed"], true);

    // The same sale judged against a smaller stock than the server really had must fail.
    let wrong = run(flash_sale(addr.to_string(), &key, Some(10))).await.expect("run");
    assert!(!wrong.verdict.passed, "{}", wrong.summary());
    let failed: Vec<&str> =
        wrong.verdict.checks.iter().filter(|c| !c.passed).map(|c| c.name.as_str()).collect();
    assert_eq!(failed, vec!["units granted within stock"], "{}", wrong.summary());
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_kept_and_looser_limits_than_assumed_fail_the_verdict() {
    let (addr, stop, _dir, key) = start_server().await;
    let limits = |max_per_buyer| SkuLimits {
        max_per_buyer,
        shared_pool: false,
        quotas: vec![ChannelQuota {
            channel: "live".into(),
            limit: QuotaLimit::BasisPoints(4_000),
        }],
    };
    let sale = |prefix: &str, set: SkuLimits, assumed: Option<SkuLimits>| RunConfig {
        buyers: 400,
        channels: vec!["live".into(), "web".into()],
        limits: set,
        assume_limits: assumed,
        prefix: prefix.into(),
        ..flash_sale(addr.to_string(), &key, None)
    };
    let result = run(sale("lim", limits(2), None)).await.expect("run");
    assert!(result.verdict.passed, "{}", result.summary());
    let names: Vec<&str> = result.verdict.checks.iter().map(|c| c.name.as_str()).collect();
    for check in ["per-buyer limit kept", "channel quotas kept", "channel use matches the clients"]
    {
        assert!(names.contains(&check), "{check} missing: {}", result.summary());
    }
    let limited = result.codes.iter().any(|c| c.code == "buyer_limit_exceeded");
    let fenced = result.codes.iter().any(|c| c.code == "channel_quota_exceeded");
    assert!(limited && fenced, "both limits were hit: {}", result.summary());

    // The server allows 20 per buyer; judged against 1 per buyer, the verdict must fail.
    let loose = run(sale("loose", limits(20), Some(limits(1)))).await.expect("run");
    let failed: Vec<&str> =
        loose.verdict.checks.iter().filter(|c| !c.passed).map(|c| c.name.as_str()).collect();
    assert_eq!(failed, vec!["per-buyer limit kept"], "{}", loose.summary());
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_longer_than_the_retention_passes_only_when_told_of_it() {
    // The server forgets finished reservations 200 ms after they finish; the run lasts 1.7 s,
    // so the first released ones are gone by the spot checks.
    let (addr, stop, _dir, key) = start_server_with(|config| {
        config.engine.retention_ms = 200;
        config.engine.sweep_interval_ms = 20;
    })
    .await;
    let sale = |prefix: &str, retention_ms| RunConfig {
        prefix: prefix.into(),
        retention_ms,
        ..flash_sale(addr.to_string(), &key, None)
    };
    let told = run(sale("told", Some(200))).await.expect("run");
    assert!(told.verdict.passed, "{}", told.summary());
    let naive = run(sale("naive", None)).await.expect("run");
    let failed: Vec<&str> =
        naive.verdict.checks.iter().filter(|c| !c.passed).map(|c| c.name.as_str()).collect();
    assert_eq!(failed, vec!["acknowledged reservations present"], "{}", naive.summary());
    let _ = stop.send(());
}

/// The `stockd-loadtest` binary as the README runs it, on one thread (the default) and on two:
/// it exits 0 with a passing verdict and writes its JSON result and HTML report. A thread
/// count of 0 is refused with a message that names the option.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_passes_a_bounded_sale_on_one_thread_and_on_two() {
    let (addr, stop, dir, key) = start_server().await;
    let binary = env!("CARGO_BIN_EXE_stockd-loadtest");
    for threads in ["1", "2"] {
        let json = dir.path().join(format!("result-{threads}.json"));
        let report = dir.path().join(format!("report-{threads}.html"));
        let output = tokio::process::Command::new(binary)
            .args(["flash-sale", "--server", &addr.to_string(), "--quiet", "--threads", threads])
            .args(["--connections", "8", "--warmup", "0.2", "--duration", "1", "--requests"])
            .args(["20000", "--prefix", &format!("bin{threads}"), "--json"])
            .arg(&json)
            .arg("--report")
            .arg(&report)
            .env("STOCKD_API_KEY", &key)
            .output()
            .await
            .expect("the binary runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "--threads {threads}: {stdout}\n{stderr}");
        assert!(stdout.contains("PASS"), "{stdout}");
        let result: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).expect("JSON written")).expect("JSON");
        assert_eq!(result["verdict"]["passed"], true, "{stdout}");
        assert_eq!(result["tls"], false);
        assert!(result["ops"].as_u64().is_some_and(|ops| ops > 100), "{stdout}");
        let html = std::fs::read_to_string(&report).expect("report written");
        assert!(html.contains("Verdict: PASS"), "--threads {threads}");
    }
    let refused = tokio::process::Command::new(binary)
        .args(["flash-sale", "--server", &addr.to_string(), "--threads", "0"])
        .output()
        .await
        .expect("the binary runs");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--threads"));
    let _ = stop.send(());
}

/// Against a server with TLS on, the binary runs the sale over TLS when given the server's
/// certificate (`--tls-ca`), and without it fails to connect, saying so, with exit status 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_over_tls_given_the_certificate() {
    let certs = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(names).expect("certificate");
    let (cert_file, key_file) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).expect("write cert");
    std::fs::write(&key_file, key_pair.serialize_pem()).expect("write key");
    let (addr, stop, dir, key) = start_server_with(|config| {
        config.tls.enabled = true;
        config.tls.cert_file = cert_file.clone();
        config.tls.key_file = key_file.clone();
    })
    .await;
    let sale = |extra: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_stockd-loadtest"));
        command
            .args(["flash-sale", "--server", &addr.to_string(), "--quiet", "--connections", "4"])
            .args(["--warmup", "0.1", "--duration", "1", "--requests", "5000", "--json"])
            .arg(dir.path().join("tls.json"))
            .arg("--report")
            .arg(dir.path().join("tls.html"))
            .args(extra)
            .env("STOCKD_API_KEY", &key)
            .env_remove("STOCKD_TLS_CA");
        command
    };
    let ca = cert_file.to_str().expect("utf-8 path");
    for extra in [vec!["--tls-ca", ca], vec!["--tls-ca", ca, "--in-flight", "4"]] {
        let output = sale(&extra).output().await.expect("the binary runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{extra:?}: {stdout}\n{stderr}");
        assert!(stdout.contains("PASS"), "{stdout}");
        assert!(stdout.contains(&format!("against {addr} over TLS")), "{stdout}");
        let json = std::fs::read(dir.path().join("tls.json")).expect("JSON written");
        let result: serde_json::Value = serde_json::from_slice(&json).expect("JSON");
        assert_eq!(result["tls"], true);
    }
    let plain = sale(&[]).output().await.expect("the binary runs");
    assert_eq!(plain.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&plain.stderr);
    assert!(stderr.contains(&format!("{addr}")), "{stderr}");
    let _ = stop.send(());
}
