//! End-to-end test of the dashboard in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver` packages, driven over WebDriver with fantoccini): the page loads from a
//! real server, shows the seeded SKUs' counters, updates live after a reserve made through the
//! TCP client, searches, applies an adjustment through its form, shows the sales channels
//! (one failing) and the open alerts, acknowledges one, and rejects a change waiting for
//! approval (approving it takes an admin key, which the page says). A screenshot is saved as
//! `target/tmp/dashboard.png` (and to `$STOCKD_SCREENSHOT` when set).
//!
//! Without chromedriver the test says so and passes, unless `STOCKD_REQUIRE_BROWSER=1` (set by
//! `.ci/run`, which installs the browser), where a missing browser fails it.

use crate::common;
use crate::common::marketplace::Marketplace;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use common::{test_config, TestServer};
use fantoccini::wd::TimeoutConfiguration;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use stockd::clock::Clock;
use stockd::config::ChannelConfig;
use stockd_protocol::{ChannelQuota, Line, QuotaLimit, Reserve, SkuLimits};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Bound on each wait for the page to show something.
const PAGE_WAIT: Duration = Duration::from_secs(20);

fn chromedriver() -> Option<PathBuf> {
    let path = std::env::var_os("CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"));
    path.exists().then_some(path)
}

/// The chromedriver this test started, in a process group of its own with the browser it
/// launches: dropping it (also when the test fails) kills that group, so no browser outlives
/// the test.
struct Driver {
    child: Child,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = self.child.id().and_then(|pid| rustix::process::Pid::from_raw(pid as i32));
        if let Some(group) = group {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }
}

/// Starts chromedriver on a free loopback port; returns the process and its URL.
async fn start_chromedriver(path: &PathBuf) -> (Driver, String) {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        probe.local_addr().expect("port").port()
    };
    let mut child = Command::new(path)
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let ready = async {
        while let Some(line) = lines.next_line().await.expect("read chromedriver output") {
            if line.contains("started successfully") {
                return;
            }
        }
        panic!("chromedriver exited before it was ready");
    };
    tokio::time::timeout(PAGE_WAIT, ready).await.expect("chromedriver ready in time");
    // Keep draining its output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (Driver { child }, format!("http://127.0.0.1:{port}"))
}

async fn open_browser(webdriver: &str, profile: &std::path::Path) -> Client {
    let mut capabilities = serde_json::Map::new();
    let args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
    ];
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    capabilities.insert("goog:chromeOptions".into(), json!({ "binary": binary, "args": args }));
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(webdriver)
        .await
        .expect("a browser session");
    let timeouts = TimeoutConfiguration::new(Some(PAGE_WAIT), Some(PAGE_WAIT), None);
    client.update_timeouts(timeouts).await.expect("timeouts set");
    client
}

/// Waits, without polling, until the element matching `css` has exactly the text `expected`:
/// a MutationObserver in the page answers as soon as the DOM shows it. Fails with what the
/// page showed instead when the script timeout passes.
async fn wait_text(browser: &Client, css: &str, expected: &str) {
    let script = r#"
        const [css, expected, done] = arguments;
        const text = () => { const e = document.querySelector(css); return e ? e.textContent : null; };
        if (text() === expected) { done(true); return; }
        const observer = new MutationObserver(() => {
            if (text() === expected) { observer.disconnect(); done(true); }
        });
        observer.observe(document.body, { subtree: true, childList: true, characterData: true });
    "#;
    let waited = browser.execute_async(script, vec![json!(css), json!(expected)]).await;
    if let Err(e) = waited {
        let shown = browser
            .execute(
                "const e = document.querySelector(arguments[0]); return e && e.textContent;",
                vec![json!(css)],
            )
            .await
            .unwrap_or(Value::Null);
        panic!("{css} never showed {expected:?} (it shows {shown}): {e}");
    }
}

/// Waits, without polling, until nothing matches `css` (as [`wait_text`] waits for a text).
async fn wait_gone(browser: &Client, css: &str) {
    let script = r#"
        const [css, done] = arguments;
        if (!document.querySelector(css)) { done(true); return; }
        const observer = new MutationObserver(() => {
            if (!document.querySelector(css)) { observer.disconnect(); done(true); }
        });
        observer.observe(document.body, { subtree: true, childList: true });
    "#;
    let waited = browser.execute_async(script, vec![json!(css)]).await;
    assert!(waited.is_ok(), "{css} is still shown: {waited:?}");
}

/// The text of the element matching `css`, read in one step: the page redraws the channel
/// rows after every update, so an element found first may be gone when asked for its text.
async fn text_now(browser: &Client, css: &str) -> String {
    let script = "const e = document.querySelector(arguments[0]); return e && e.textContent;";
    let text = browser.execute(script, vec![json!(css)]).await.expect("script runs");
    text.as_str().unwrap_or_else(|| panic!("nothing matches {css}")).to_string()
}

/// Clicks the element matching `css` in one step (found and clicked in the page, for the same
/// reason as [`text_now`]).
async fn click_now(browser: &Client, css: &str) {
    let script = "const e = document.querySelector(arguments[0]); if (e) e.click(); return !!e;";
    let clicked = browser.execute(script, vec![json!(css)]).await.expect("script runs");
    assert_eq!(clicked, json!(true), "nothing matches {css}");
}

fn cell(sku: &str, field: &str) -> String {
    format!("tr[data-sku=\"{sku}\"] td[data-field=\"{field}\"]")
}

#[tokio::test]
async fn the_dashboard_shows_the_stock_and_updates_live() {
    let Some(driver) = chromedriver() else {
        let required = std::env::var("STOCKD_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
        assert!(!required, "STOCKD_REQUIRE_BROWSER=1 but chromedriver is not installed");
        eprintln!("skipped: no chromedriver (apt-get install chromium chromium-driver)");
        return;
    };
    // Two sales channels on fake marketplaces (real HTTP servers on 127.0.0.1): "shop" syncs,
    // "mall" is down, so its pulls fail.
    let shop = Marketplace::start().await;
    let mall = Marketplace::start().await;
    mall.market.lock().fail_pulls = true;
    let mut config = test_config();
    config.http.sample_interval_ms = 100;
    config.auth.enabled = true;
    config.alerting.disk_free_bytes_min = 0;
    for (name, market) in [("shop", &shop), ("mall", &mall)] {
        config.channels.push(ChannelConfig { poll_interval_ms: 3_600_000, ..market.channel(name) });
    }
    let server = TestServer::start_with_clock(config, Clock::system()).await;
    let keys = &server.shared.keys;
    let (_, admin) = keys.create("test", stockd::auth::Role::Admin, "test", 0).expect("key");
    let (_, ops) = keys.create("browser", stockd::auth::Role::Ops, "test", 0).expect("key");
    let options = stockd_protocol::ClientOptions {
        api_key: Bytes::from(admin.clone()),
        ..stockd_protocol::ClientOptions::default()
    };
    let client =
        stockd_protocol::Client::connect(server.addr, options).await.expect("client connects");
    client.set_stock("BOARD-A", 100, None).await.unwrap();
    client.set_stock("BOARD-B", 50, None).await.unwrap();
    client.set_safety_stock("BOARD-B", 50).await.unwrap();
    let live = ChannelQuota { channel: Bytes::from_static(b"live"), limit: QuotaLimit::Units(40) };
    let limits = SkuLimits { max_per_buyer: 10, shared_pool: false, quotas: vec![live] };
    client.set_limits("BOARD-A", limits).await.unwrap();
    for n in 0..30 {
        client.set_stock(format!("FILLER-{n:02}"), 10, None).await.unwrap();
    }

    let (chromedriver, webdriver) = start_chromedriver(&driver).await;
    let profile = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("profile dir");
    let browser = open_browser(&webdriver, profile.path()).await;
    let page = format!("http://{}/", server.http_addr);
    browser.goto(&page).await.expect("the dashboard loads");
    assert_eq!(browser.title().await.unwrap(), "stockd");
    // Authentication is on: the page asks for a key before it shows anything.
    wait_text(&browser, "#live-text", "no key").await;
    let login = browser.find(Locator::Css("#login input[name=key]")).await.unwrap();
    login.send_keys(&ops).await.unwrap();
    browser.find(Locator::Css("#login button")).await.unwrap().click().await.unwrap();
    wait_text(&browser, "#state", "accepting writes").await;
    wait_text(&browser, "#live-text", "live").await;
    wait_text(&browser, "#skus", "32").await;

    // The whole board, in id order.
    let sort = browser.find(Locator::Css("#sort")).await.unwrap();
    sort.select_by_value("id").await.unwrap();
    wait_text(&browser, &cell("BOARD-A", "available"), "100").await;
    wait_text(&browser, &cell("BOARD-A", "on_hand"), "100").await;
    wait_text(&browser, &cell("BOARD-B", "state"), "paused").await;
    wait_text(&browser, &cell("BOARD-B", "safety_stock"), "50").await;
    wait_text(&browser, "#paused-skus", "1").await;

    // A reserve through the binary protocol shows up without reloading the page.
    let reserve = Reserve {
        id: Bytes::from_static(b"order-1"),
        ttl_ms: 0,
        channel: Bytes::from_static(b"live"),
        customer: Bytes::from_static(b"buyer-1"),
        lines: vec![Line::new(Bytes::from_static(b"BOARD-A"), 7)],
    };
    assert!(client.reserve(reserve).await.unwrap().code.is_ok());
    wait_text(&browser, &cell("BOARD-A", "available"), "93").await;
    wait_text(&browser, &cell("BOARD-A", "unshipped"), "7").await;
    wait_text(&browser, "#holds-open", "1").await;

    // Search narrows the board.
    let search = browser.find(Locator::Css("#search")).await.unwrap();
    search.send_keys("BOARD-B").await.unwrap();
    wait_text(&browser, "#rows tr:first-child td[data-field=\"sku\"]", "BOARD-B").await;
    wait_text(&browser, "#matched", "1 matching").await;
    search.clear().await.unwrap();
    search.send_keys("BOARD-A").await.unwrap();
    wait_text(&browser, "#rows tr:first-child td[data-field=\"sku\"]", "BOARD-A").await;
    wait_text(&browser, "#matched", "1 matching").await;

    // The SKU detail lists the hold, and its form adjusts the stock (audited).
    browser.find(Locator::Css(&cell("BOARD-A", "sku"))).await.unwrap().click().await.unwrap();
    wait_text(&browser, "#detail-holds-count", "1").await;
    wait_text(&browser, "#detail-holds tr:first-child td:first-child", "order-1").await;
    wait_text(&browser, "#detail-quotas tr[data-channel=\"live\"] td:nth-child(4)", "7").await;
    wait_text(&browser, "#detail-quotas tr[data-channel=\"live\"] td:nth-child(3)", "40").await;
    let form = browser.find(Locator::Css("#adjust")).await.unwrap();
    for (name, value) in [("delta", "-3"), ("reason", "damaged"), ("actor", "browser-test")] {
        let input = form.find(Locator::Css(&format!("input[name=\"{name}\"]"))).await.unwrap();
        input.send_keys(value).await.unwrap();
    }
    // The setup above was audited too (changes over the protocol are): the next entry is ours.
    let (_, newest) = crate::common::call_as(
        server.http_addr,
        Some(&admin),
        "GET",
        "/api/v1/audit?limit=1",
        None,
    )
    .await;
    let next = newest["entries"][0]["seq"].as_u64().expect("setup audited") + 1;
    form.find(Locator::Css("button[type=\"submit\"]")).await.unwrap().click().await.unwrap();
    wait_text(&browser, "#adjust-result", &format!("done: on hand now 97 (audit #{next})")).await;
    wait_text(&browser, &cell("BOARD-A", "available"), "90").await;
    assert_eq!(client.query_sku("BOARD-A").await.unwrap().info.on_hand, 97);

    // A SKU kept in two warehouses shows its locations and incoming delivery.
    client.set_location("BOARD-L", "east", 6, 1, None).await.unwrap();
    client.set_location("BOARD-L", "west", 4, 2, None).await.unwrap();
    client.set_incoming("BOARD-L", "west", "PO-42", 25, 1_900_000_000_000).await.unwrap();
    search.clear().await.unwrap();
    search.send_keys("BOARD-L").await.unwrap();
    wait_text(&browser, &cell("BOARD-L", "on_hand"), "10").await;
    browser.find(Locator::Css(&cell("BOARD-L", "sku"))).await.unwrap().click().await.unwrap();
    wait_text(&browser, "#detail-locations tr[data-location=\"west\"] td:nth-child(6)", "25").await;
    wait_text(&browser, "#detail-locations tr[data-location=\"east\"] td:nth-child(3)", "6").await;
    wait_text(&browser, "#detail-incoming tr:first-child td:first-child", "PO-42").await;

    // Most active first: BOARD-A is the only SKU that took holds. (Clearing a field fires no
    // input event, so the search is typed anew.)
    search.clear().await.unwrap();
    search.send_keys("BOARD").await.unwrap();
    sort.select_by_value("activity").await.unwrap();
    wait_text(&browser, "#rows tr:first-child td[data-field=\"sku\"]", "BOARD-A").await;

    // A return ticket appears in the returns panel and among the recent changes.
    assert!(client.confirm("order-1", Vec::new()).await.unwrap().is_ok());
    let ticket = serde_json::json!({
        "kind": "return", "order": "order-1", "lines": [{"sku": "BOARD-A", "qty": 2}],
        "reason": "wrong size", "actor": "cs-anna",
    });
    let (status, body) = crate::common::call_as(
        server.http_addr,
        Some(&admin),
        "POST",
        "/api/v1/tickets",
        Some(ticket),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    wait_text(
        &browser,
        "#returns-summary",
        "1 open tickets (1 requested); 0 overdue; 0 unmatched parcels",
    )
    .await;
    wait_text(&browser, "#tickets tr[data-ticket=\"RMA-00000001\"] td:nth-child(3)", "requested")
        .await;
    wait_text(&browser, "#tickets tr[data-ticket=\"RMA-00000001\"] td:nth-child(6)", "on time")
        .await;
    wait_text(
        &browser,
        "#changes li:first-child span",
        " RMA-00000001: ticket open new → requested by cs-anna (wrong size)",
    )
    .await;

    // The channels panel: "shop" synced, "mall" failing with the marketplace's error; the mall's
    // third failed pull raises an alert, which the page acknowledges in the operator's name.
    // (The startup round's pull failed too, unless this comes first.)
    let mut failed = 0;
    for _ in 0..3 {
        let path = "/api/v1/channels/mall/sync";
        let (status, body) =
            crate::common::call_as(server.http_addr, Some(&admin), "POST", path, None).await;
        assert_eq!(status, 200, "{body}");
        failed = body["failed_pulls"].as_u64().expect("failed_pulls");
        if failed >= 3 {
            break;
        }
    }
    assert_eq!(failed, 3, "every pull of the mall failed");
    assert!(server.shared.alerts.pacer.poke().await, "the alert rules are evaluated");
    let channel = |name: &str, column: u32| {
        format!("#channel-rows tr[data-channel=\"{name}\"] td:nth-child({column})")
    };
    wait_text(&browser, &channel("shop", 2), "ok").await;
    wait_text(&browser, &channel("mall", 2), "failing").await;
    let problem = "HTTP 500 Internal Server Error: marketplace down";
    wait_text(&browser, &channel("mall", 9), problem).await;
    let token = text_now(&browser, &channel("shop", 6)).await;
    assert!(token.starts_with("expires in "), "the token's expiry is shown: {token:?}");
    wait_text(&browser, "#channels-health", "1 of 2 failing").await;
    let pull_failing = "#alert-rows tr[data-rule=\"pull_failing\"][data-subject=\"mall\"]";
    wait_text(&browser, &format!("{pull_failing} td:nth-child(6)"), "firing").await;
    // BOARD-B's available stock is at its safety stock: that alerts too.
    let below = "#alert-rows tr[data-rule=\"below_safety_stock\"][data-subject=\"BOARD-B\"]";
    wait_text(&browser, &format!("{below} td:nth-child(6)"), "firing").await;
    // The card counts the rows (and sold-out SKUs may alert as well).
    let counted = browser
        .execute(
            "return [String(document.querySelectorAll('#alert-rows tr').length),
                     document.getElementById('alerts-open').textContent];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(counted[0], counted[1], "{counted}");
    let acknowledge = format!("{pull_failing} button");
    click_now(&browser, &acknowledge).await;
    wait_text(&browser, "#ack-result", "enter your name to acknowledge").await;
    browser.find(Locator::Css("#ack-actor")).await.unwrap().send_keys("night-shift").await.unwrap();
    click_now(&browser, &acknowledge).await;
    let acked = "acknowledged by night-shift";
    wait_text(&browser, &format!("{pull_failing} td:nth-child(6)"), acked).await;
    wait_text(&browser, "#alerts-acked", "1").await;
    let (_, open) =
        crate::common::call_as(server.http_addr, Some(&admin), "GET", "/api/v1/alerts", None).await;
    let mall_alert = open["alerts"].as_array().unwrap().iter().find(|a| a["subject"] == "mall");
    assert_eq!(mall_alert.expect("the mall's alert")["acknowledged_by"], "night-shift");

    // A change waiting for a second admin: listed for the ops key; approving takes an admin
    // (the page says so), and the ops key that asked may reject it.
    let write_off =
        serde_json::json!({"delta": -80, "actor": "stock-clerk", "reason": "water damage"});
    let (status, body) = crate::common::call_as(
        server.http_addr,
        Some(&ops),
        "POST",
        "/api/v1/skus/BOARD-A/adjustments",
        Some(write_off),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = body["approval"]["id"].as_str().expect("the pending request's id").to_string();
    let row = format!("#approval-rows tr[data-approval=\"{id}\"]");
    wait_text(&browser, &format!("{row} td:nth-child(2)"), "adjust stock").await;
    wait_text(&browser, &format!("{row} td:nth-child(3)"), "BOARD-A").await;
    wait_text(&browser, &format!("{row} td:nth-child(6)"), "browser").await;
    click_now(&browser, &format!("{row} button[data-decision=\"approve\"]")).await;
    wait_text(&browser, "#decide-result", "enter your name to approve").await;
    let name = browser.find(Locator::Css("#decide-actor")).await.unwrap();
    name.send_keys("shift-lead").await.unwrap();
    click_now(&browser, &format!("{row} button[data-decision=\"approve\"]")).await;
    let refused = "not approved: the ops role may not perform admin operations";
    wait_text(&browser, "#decide-result", refused).await;
    assert_eq!(client.query_sku("BOARD-A").await.unwrap().info.on_hand, 97, "nothing applied");
    click_now(&browser, &format!("{row} button[data-decision=\"reject\"]")).await;
    wait_text(&browser, "#decide-result", &format!("rejected {id}")).await;
    wait_gone(&browser, &row).await;
    let hidden = browser
        .execute("return document.getElementById('approvals-empty').hidden;", vec![])
        .await
        .unwrap();
    assert_eq!(hidden, json!(false), "the empty note shows once the request is gone");
    let (_, audit) = crate::common::call_as(
        server.http_addr,
        Some(&admin),
        "GET",
        "/api/v1/audit?action=approval_reject",
        None,
    )
    .await;
    assert_eq!(audit["entries"][0]["actor"], "shift-lead", "{audit}");

    // The screenshot shows the alerts, the channels and the returns.
    browser.execute("document.getElementById('alerts').scrollIntoView();", vec![]).await.unwrap();
    let png = browser.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG image");
    let artifact = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&artifact, &png).expect("screenshot saved");
    if let Some(path) = std::env::var_os("STOCKD_SCREENSHOT") {
        std::fs::write(path, &png).expect("screenshot copied");
    }
    eprintln!("screenshot: {}", artifact.display());

    browser.close().await.expect("browser closed");
    drop(chromedriver);
    drop(client);
    server.stop().await;
}
