//! The real `stockd` binary: `serve` with the embedded default configuration (on port 0), the
//! CLI client subcommands against it, exit codes, graceful shutdown on SIGTERM, and a bad
//! configuration refused with a message that names the key.

use std::process::Command;

use crate::common;

use common::Daemon;

const BIN: &str = env!("CARGO_BIN_EXE_stockd");

fn cli(daemon: &Daemon, args: &[&str]) -> (i32, String) {
    let output =
        Command::new(BIN).args(args).args(["--server", &daemon.addr]).output().expect("run stockd");
    (output.status.code().expect("exit code"), String::from_utf8_lossy(&output.stdout).into_owned())
}

fn terminate(mut daemon: Daemon) -> Option<i32> {
    daemon.signal("-TERM");
    daemon.wait()
}

/// Linux's number for the `SCHED_BATCH` policy.
const SCHED_BATCH: u32 = 3;

/// The scheduling policies of the daemon's threads (field 41 of `/proc/<pid>/task/<tid>/stat`).
fn scheduling_policies(daemon: &Daemon) -> std::collections::BTreeSet<u32> {
    let tasks = format!("/proc/{}/task", daemon.child.id());
    std::fs::read_dir(tasks)
        .expect("the daemon's threads")
        .map(|task| {
            let stat = std::fs::read_to_string(task.expect("task").path().join("stat"));
            let stat = stat.expect("stat");
            // The fields after the command name, which is in parentheses and may hold spaces.
            let after = &stat[stat.rfind(')').expect("comm") + 2..];
            after.split(' ').nth(41 - 3).expect("policy field").parse().expect("a number")
        })
        .collect()
}

#[test]
fn serve_and_use_the_cli() {
    let dir = tempfile::tempdir().expect("temp dir");
    let daemon = Daemon::start(dir.path());
    let (code, out) = cli(&daemon, &["stock", "set", "SKU-1", "5"]);
    assert_eq!(
        (code, out.trim()),
        (0, "ok on_hand=5 reserved=0 committed=0 safety_stock=0 available=5 paused=false")
    );
    let (code, out) = cli(&daemon, &["reserve", "ORDER-1", "SKU-1:2", "--ttl-ms", "60000"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("ok expires_at_ms="), "{out}");
    let (code, out) = cli(&daemon, &["reserve", "ORDER-2", "SKU-1:4"]);
    assert_eq!((code, out.trim()), (3, "insufficient_stock failed_line=0"));
    let (code, out) = cli(&daemon, &["confirm", "ORDER-1"]);
    assert_eq!((code, out.trim()), (0, "ok"));
    let (code, out) = cli(&daemon, &["reservation", "ORDER-1"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("state=confirmed") && out.contains("SKU-1 held=2 confirmed=2"),
        "{out}"
    );
    let (code, out) = cli(&daemon, &["ship", "ORDER-1"]);
    assert_eq!((code, out.trim()), (0, "ok"));
    let (code, out) = cli(&daemon, &["stock", "get", "SKU-1"]);
    assert_eq!(
        (code, out.trim()),
        (0, "ok on_hand=3 reserved=0 committed=0 safety_stock=0 available=3 paused=false")
    );
    let (code, out) = cli(&daemon, &["release", "NOPE"]);
    assert_eq!((code, out.trim()), (3, "not_found"));
    assert_eq!(
        scheduling_policies(&daemon),
        [SCHED_BATCH].into(),
        "server.batch_scheduling's default"
    );
    // Flash-sale limits.
    let set = ["limits", "set", "SKU-1", "--max-per-buyer", "1", "--quota", "live=50%"];
    assert_eq!(cli(&daemon, &set).0, 0);
    let order = ["reserve", "ORDER-3", "SKU-1:1", "--customer", "ann", "--channel", "live"];
    assert_eq!(cli(&daemon, &order).0, 0);
    let again = ["reserve", "ORDER-4", "SKU-1:1", "--customer", "ann", "--channel", "live"];
    assert_eq!(cli(&daemon, &again), (3, "buyer_limit_exceeded failed_line=0\n".into()));
    let (code, out) = cli(&daemon, &["limits", "get", "SKU-1"]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "ok max_per_buyer=1 shared_pool=false pool=2 pool_used=0\n  live quota=50% allocation=1 used=1\n"
    );
    let (code, out) = cli(&daemon, &["release", "ORDER-3"]);
    assert_eq!((code, out.trim()), (0, "ok"));
    assert_eq!(cli(&daemon, &["limits", "set", "SKU-1"]).0, 0, "no options: no limits");
    // A SKU deleted (nothing holds it), and one refused while held.
    assert_eq!(cli(&daemon, &["stock", "set", "SKU-2", "4"]).0, 0);
    let (code, out) = cli(&daemon, &["stock", "delete", "SKU-2"]);
    assert_eq!(
        (code, out.trim()),
        (0, "ok on_hand=0 reserved=0 committed=0 safety_stock=0 available=0 paused=false")
    );
    assert_eq!(cli(&daemon, &["reserve", "ORDER-5", "SKU-1:1"]).0, 0);
    let (code, out) = cli(&daemon, &["stock", "delete", "SKU-1"]);
    assert!(code == 3 && out.starts_with("sku_in_use on_hand=3 reserved=1"), "{out}");
    assert_eq!(cli(&daemon, &["release", "ORDER-5"]).0, 0);
    assert_eq!(terminate(daemon), Some(0), "SIGTERM is a clean exit");

    // The state survives the restart (through the final snapshot and the log).
    let daemon = Daemon::start(dir.path());
    let (code, out) = cli(&daemon, &["stock", "get", "SKU-1"]);
    assert_eq!(
        (code, out.trim()),
        (0, "ok on_hand=3 reserved=0 committed=0 safety_stock=0 available=3 paused=false")
    );
    let (code, out) = cli(&daemon, &["reservation", "ORDER-1"]);
    assert!(code == 0 && out.starts_with("state=shipped"), "{out}");
    let (code, out) = cli(&daemon, &["stock", "get", "SKU-2"]);
    assert!(code == 3 && out.starts_with("unknown_sku"), "deleted for good: {out}");
    assert_eq!(terminate(daemon), Some(0));
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("data dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("snap-")),
        "a final snapshot was written: {names:?}"
    );
    assert!(names.iter().any(|n| n.starts_with("wal-") && n.ends_with(".seg")), "{names:?}");
}

#[test]
fn locations_preorders_and_an_import_file_from_the_cli() {
    let dir = tempfile::tempdir().expect("temp dir");
    let daemon = Daemon::start(dir.path());
    let file = dir.path().join("changes.txt");
    let changes = "# warehouse counts\n\
                   location TEE east 2 1\n\
                   location TEE west 5 2\n\
                   incoming TEE west PO-1 10 1700000000000\n\
                   preorder TEE 3\n\
                   set CAP 4   # unlocated\n\
                   adjust NOPE 1\n\
                   set OLD 3\n\
                   delete OLD\n";
    std::fs::write(&file, changes).expect("write import file");
    let (code, out) = cli(&daemon, &["stock", "import", file.to_str().unwrap()]);
    assert_eq!(code, 3, "one change is refused: {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].ends_with(":2: ok") && lines[5].ends_with(":7: unknown_sku"), "{out}");
    assert!(lines[7].ends_with(":9: ok"), "{out}");
    assert_eq!(lines[8], "8 changes, 1 refused");
    let (code, out) = cli(&daemon, &["stock", "get", "OLD"]);
    assert!(code == 3 && out.starts_with("unknown_sku"), "deleted by the import: {out}");

    let split = ["reserve", "ORDER-1", "TEE:4", "--split"];
    let (code, out) = cli(&daemon, &split);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("  line 0 from west: 4\nok expires_at_ms="), "{out}");
    let named = ["reserve", "ORDER-2", "TEE:3", "--location", "east"];
    assert_eq!(cli(&daemon, &named), (3, "insufficient_stock failed_line=0\n".into()));
    let (code, out) = cli(&daemon, &["stock", "locations", "TEE"]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "ok preorder_max=3 preordered=0\n  \
         location east priority=1 on_hand=2 reserved=0 committed=0 incoming=0 available=2\n  \
         location west priority=2 on_hand=5 reserved=4 committed=0 incoming=10 available=11\n  \
         incoming PO-1 at \"west\" qty=10 eta_ms=1700000000000\n"
    );
    let (code, out) = cli(&daemon, &["stock", "receive", "TEE", "PO-1", "4", "--location", "west"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok on_hand=11 "), "{out}");
    assert_eq!(cli(&daemon, &["stock", "set", "TEE", "1"]).0, 3, "location_required");

    // A bad line stops the import before anything is sent.
    std::fs::write(&file, "set CAP 9\nset CAP nine\n").expect("write import file");
    let output = Command::new(BIN)
        .args(["stock", "import", file.to_str().unwrap(), "--server", &daemon.addr])
        .output()
        .expect("run stockd");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(":2: set: ON_HAND \"nine\" is not a count"), "{stderr}");
    assert!(cli(&daemon, &["stock", "get", "CAP"]).1.starts_with("ok on_hand=4 "));
    assert_eq!(terminate(daemon), Some(0));
}

#[test]
fn client_errors_exit_with_one() {
    let output = Command::new(BIN)
        .args(["ping", "--server", "127.0.0.1:1"])
        .output()
        .expect("run stockd client");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("connecting to 127.0.0.1:1"));
}

#[test]
fn bad_configuration_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("stockd.toml");
    std::fs::write(&path, "[engine]\nshards = 3\n").expect("write config");
    let output = Command::new(BIN)
        .args(["serve", "--config", path.to_str().expect("utf-8 path")])
        .output()
        .expect("run stockd");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("engine.shards"), "{stderr}");
}

#[test]
fn the_default_configuration_is_printable_and_valid() {
    let output = Command::new(BIN).arg("config-default").output().expect("run stockd");
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8(output.stdout).expect("utf-8");
    assert!(text.contains("[engine]") && text.contains("listen = \"127.0.0.1:7878\""));
}

#[test]
fn a_bad_wms_feed_is_refused_before_anything_is_sent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("feed.csv");
    std::fs::write(&file, "kind,sku,qty\ncount,A,1\ncount,B,minus\n").expect("write feed");
    let output = Command::new(BIN)
        .args(["wms-import", "--actor", "wms", "--reason", "test", "--http", "127.0.0.1:1"])
        .arg(&file)
        .output()
        .expect("run stockd");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 3") && stderr.contains("nothing was sent"), "{stderr}");
}

fn tickets(daemon: &Daemon, args: &[&str]) -> (i32, String) {
    let output = Command::new(BIN)
        .arg("tickets")
        .args(["--http", &daemon.http])
        .args(args)
        .output()
        .expect("run stockd tickets");
    (output.status.code().expect("exit code"), String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn return_tickets_from_the_cli_survive_a_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let daemon = Daemon::start(dir.path());
    assert_eq!(cli(&daemon, &["stock", "set", "TEE", "5"]).0, 0);
    assert_eq!(cli(&daemon, &["reserve", "O-1", "TEE:2"]).0, 0);
    assert_eq!(cli(&daemon, &["confirm", "O-1"]).0, 0);
    assert_eq!(cli(&daemon, &["ship", "O-1"]).0, 0, "a shipped order can still be returned");
    let open = ["open", "--kind", "return", "--order", "O-1", "--reason", "too big"];
    let (code, out) = tickets(&daemon, &[&open[..], &["--actor", "anna", "TEE:2"]].concat());
    assert_eq!((code, out.trim()), (0, "RMA-00000001 return requested order=O-1 tracking="));
    let (code, out) = tickets(&daemon, &[&open[..], &["--actor", "anna", "TEE:1"]].concat());
    assert_eq!(code, 3, "over-return is a refusal");
    assert!(out.starts_with("over_return: order \"O-1\" confirmed 2"), "{out}");
    for step in [
        &["move", "RMA-00000001", "approved", "--actor", "lead"][..],
        &["move", "RMA-00000001", "awaiting_return", "--tracking", "1Z9", "--actor", "lead"],
    ] {
        assert_eq!(tickets(&daemon, step).0, 0, "{step:?}");
    }
    let (code, out) = tickets(&daemon, &["scan", "1Z9", "--actor", "dock"]);
    assert_eq!(
        (code, out.trim()),
        (0, "matched RMA-00000001 return received order=O-1 tracking=1Z9")
    );
    let inspect = ["move", "RMA-00000001", "inspected", "--inspect", "TEE:1:1", "--actor", "qc"];
    assert_eq!(tickets(&daemon, &inspect).0, 0);
    let (code, out) = tickets(&daemon, &["scan", "MYSTERY", "--actor", "dock"]);
    assert_eq!((code, out.trim()), (0, "unmatched parcel=2"));
    let (_, stock) = cli(&daemon, &["stock", "get", "TEE"]);
    assert!(stock.starts_with("ok on_hand=4 "), "shipped 2, restocked 1: {stock}");

    // No clean shutdown: the tickets come back from the log alone.
    daemon.signal("-KILL");
    drop(daemon);
    let daemon = Daemon::start(dir.path());
    let (code, out) = tickets(&daemon, &["list"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "RMA-00000001 return inspected order=O-1 tracking=1Z9\n1 tickets");
    let (code, shown) = tickets(&daemon, &["show", "RMA-00000001"]);
    let shown: serde_json::Value = serde_json::from_str(&shown).expect("JSON");
    assert_eq!((code, &shown["lines"][0]["damaged"]), (0, &serde_json::json!(1)));
    let (_, stock) = cli(&daemon, &["stock", "get", "TEE"]);
    assert!(stock.starts_with("ok on_hand=4 "), "the restock replayed once: {stock}");
    assert_eq!(tickets(&daemon, &["move", "RMA-00000001", "refunded", "--actor", "fin"]).0, 0);
    let (code, report) = tickets(&daemon, &["report"]);
    let report: serde_json::Value = serde_json::from_str(&report).expect("JSON");
    assert_eq!((code, &report["stages"][2]["handled"]), (0, &serde_json::json!(1)));
    assert_eq!(terminate(daemon), Some(0));
}
