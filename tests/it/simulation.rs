//! Deterministic simulation: the real engine, write-ahead log, snapshotter and recovery run
//! against the fault-injecting in-memory disk ([`MemStorage`]) and a manual clock, driven by a
//! seeded random workload with crashes and restarts.
//!
//! Each step is one of: a round of one to four commands (applied to the engine and logged
//! exactly as the server's dispatcher does, then awaited as one group commit), a jump of the
//! clock, an expiry sweep, a snapshot, a fault (a power cut at the n-th next sync, failing
//! syncs, a failing write, a full disk or space freed), or a restart: clean (final snapshot),
//! a process crash (written data survives), or a power loss that keeps any seeded subset of
//! the 512-byte sectors written since their file's last sync (torn and reordered writes).
//!
//! After every restart the recovered state must equal a reference engine that replays the
//! first R logged commands, where R lies between the last acknowledged LSN and the last
//! logged one: nothing acknowledged is lost and nothing is invented. Every successful reserve
//! is checked for oversell when it happens.
//!
//! Determinism: the writer's group commits are pinned with [`Wal::hold`], and after every step
//! the simulation waits until the log's background threads are quiet (a spare segment is ready
//! or cannot be made, everything that can be durable is). So a seed always takes the same path;
//! a test runs one seed twice and compares the traces. A failure prints its seed and the tail
//! of its trace; `STOCKD_SIM_SEED=<seed> cargo test --test it simulation::` replays it.
//! `STOCKD_SIM_SEEDS=<n>` runs more seeds (default 24), `STOCKD_SIM_FIRST_SEED` moves the
//! window, `STOCKD_SIM_STEPS` lengthens each run (default 400).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stockd::clock::Clock;
use stockd::engine::{Command, Engine, EngineConfig};
use stockd::server::durability::{close_with_snapshot, write_snapshot};
use stockd::wal::segment::is_spare;
use stockd::wal::{recover, FsyncMode, Health, MemStorage, RecoverOptions, Wal, WalConfig};
use stockd_protocol::{Confirm, Line, OpReply, Reserve, ResultCode};

/// Long ids make records big, so runs fill segments and roll over.
const SKUS: [&str; 5] = [
    "sku-0-with-a-long-identifier-so-that-records-are-large",
    "sku-1-with-a-long-identifier-so-that-records-are-large",
    "sku-2-with-a-long-identifier-so-that-records-are-large",
    "sku-3-with-a-long-identifier-so-that-records-are-large",
    "sku-4-with-a-long-identifier-so-that-records-are-large",
];
const IDS: usize = 12;
const TTLS: [u32; 4] = [0, 50, 300, 1500];
const JUMPS: [u64; 5] = [1, 10, 100, 1_000, 5_000];
/// The smallest segment that holds a maximal record, so runs roll over and recycle often.
const SEGMENT_BYTES: u64 = 80 * 1024;
/// Long enough for any step on a loaded machine; reaching it is a hang, reported as a failure.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

fn engine_config() -> EngineConfig {
    EngineConfig {
        shards: 4,
        ttl_ms_default: 200,
        hold_ms_max: 2_000,
        retention_ms: 1_000,
        shipped_retention_ms: 1_000,
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: not a number")))
}

/// One incarnation of the server process.
struct Node {
    /// Shared with a capture that runs while rounds go on (`Sim::snapshot`).
    engine: Arc<Engine>,
    wal: Wal,
    clock: Clock,
    snapshot_lsn: u64,
}

/// How a machine loses power: which sectors written since the last sync reach the disk.
#[derive(Clone, Copy, Debug)]
enum Tearing {
    /// None of them.
    Nothing,
    /// The first ones, in write order (a torn write).
    Prefix,
    /// Any of them (a disk that reorders writes).
    Any,
}

struct Sim {
    seed: u64,
    rng: StdRng,
    storage: MemStorage,
    runtime: tokio::runtime::Runtime,
    /// The simulated wall clock; a restarted node may find it behind the log.
    wall_ms: u64,
    node: Option<Node>,
    /// Every logged command, `history[lsn - 1] = (now_ms, command)`.
    history: Vec<(u64, Command)>,
    /// The highest LSN acknowledged as durable.
    acked: u64,
    trace: Vec<String>,
    restarts: u64,
    /// The last settle found that no spare segment can be made, and nothing since (space
    /// freed, a segment handed back for reuse, a restart) can have changed that.
    stuck: bool,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        Sim {
            seed,
            rng: StdRng::seed_from_u64(seed),
            storage: MemStorage::new(),
            runtime,
            wall_ms: 1_000_000,
            node: None,
            history: Vec::new(),
            acked: 0,
            trace: Vec::new(),
            restarts: 0,
            stuck: false,
        }
    }

    fn note(&mut self, event: String) {
        self.trace.push(event);
    }

    fn node(&self) -> &Node {
        self.node.as_ref().expect("a node is running")
    }

    fn run(&mut self, steps: u64) {
        self.start();
        for _ in 0..steps {
            if self.node().wal.health() == Health::Failed {
                // A failed log refuses everything until restart, as the server does.
                self.restart_after_failure();
                continue;
            }
            match self.rng.random_range(0..100) {
                0..50 => self.round(),
                50..62 => self.advance(),
                62..70 => self.sweep(),
                70..77 => self.snapshot(),
                77..82 => self.power_cut(),
                82..85 => self.fail_sync(),
                85..87 => self.fail_write(),
                87..90 => self.toggle_disk_full(),
                90..94 => self.clean_restart(),
                94..97 => self.process_crash(),
                _ => self.power_loss(Tearing::Any),
            }
            self.settle();
        }
        self.clean_restart();
    }

    // ---- the workload -------------------------------------------------------------------

    fn pick_sku(&mut self) -> Bytes {
        Bytes::from_static(SKUS[self.rng.random_range(0..SKUS.len())].as_bytes())
    }

    fn pick_id(&mut self) -> Bytes {
        Bytes::from(format!("r{}", self.rng.random_range(0..IDS)))
    }

    fn random_command(&mut self) -> Command {
        let id = self.pick_id();
        match self.rng.random_range(0..100) {
            0..12 => Command::SetStock {
                sku: self.pick_sku(),
                on_hand: self.rng.random_range(0..20),
                expected: None,
            },
            12..20 => Command::AdjustStock {
                sku: self.pick_sku(),
                delta: self.rng.random_range(-5..=8),
                expected: None,
            },
            20..24 => Command::SetSafetyStock {
                sku: self.pick_sku(),
                safety_stock: self.rng.random_range(0..4),
            },
            24..60 => {
                let lines = (0..self.rng.random_range(1..=3))
                    .map(|_| {
                        let sku = self.pick_sku();
                        Line { sku, qty: self.rng.random_range(1..=4) }
                    })
                    .collect();
                let ttl_ms = TTLS[self.rng.random_range(0..TTLS.len())];
                let customer = Bytes::from(format!(
                    "customer-{}-with-a-long-identifier",
                    self.rng.random_range(0..3)
                ));
                Command::Reserve(Reserve { id, ttl_ms, channel: "web".into(), customer, lines })
            }
            60..75 => {
                // Empty lines confirm everything held; otherwise a part of the hold.
                let lines = match self.rng.random_bool(0.7) {
                    true => Vec::new(),
                    false => vec![Line { sku: self.pick_sku(), qty: 1 }],
                };
                Command::Confirm(Confirm { id, lines })
            }
            75..86 => Command::Release { id },
            86..93 => Command::Extend { id, ttl_ms: TTLS[self.rng.random_range(1..TTLS.len())] },
            93..97 => Command::Ship { id },
            // Mostly refused (the SKU is in use); when not, reserves find it unknown until a
            // stock change creates it again.
            _ => Command::DeleteSku { sku: self.pick_sku() },
        }
    }

    /// Waits for the group commit that ends at `lsn`; acknowledges it if it became durable.
    fn commit(&mut self, lsn: u64) {
        let node = self.node.as_mut().expect("a node is running");
        let waited = self
            .runtime
            .block_on(async { tokio::time::timeout(STEP_TIMEOUT, node.wal.durable(lsn)).await });
        match waited {
            Err(_) => self.fail("a commit never completed"),
            Ok(Ok(())) => {
                self.acked = self.acked.max(lsn);
                self.note(format!("  durable to {lsn}"));
            }
            Ok(Err(e)) => self.note(format!("  not acknowledged ({e})")),
        }
    }

    /// Runs `commands` as one group commit at the node's current time.
    fn group(&mut self, commands: Vec<Command>) {
        let node = self.node.as_ref().expect("a node is running");
        // Refused before applying while the log cannot write, as the dispatcher does.
        let health = node.wal.health();
        if health != Health::Ok {
            self.trace.push(format!("  refused: log {health:?}"));
            return;
        }
        let now_ms = node.clock.now_ms();
        let mut last = None;
        {
            let _hold = node.wal.hold();
            for command in commands {
                match log_one(node, &mut self.history, &mut self.trace, command, now_ms) {
                    Logged::Lsn(lsn) => last = Some(lsn),
                    Logged::Unchanged => {}
                    Logged::Refused => break,
                }
            }
        }
        if let Some(lsn) = last {
            self.commit(lsn);
        }
    }

    fn round(&mut self) {
        let commands: Vec<Command> =
            (0..self.rng.random_range(1..=4)).map(|_| self.random_command()).collect();
        self.note(format!("round of {}", commands.len()));
        self.group(commands);
    }

    fn advance(&mut self) {
        let jump = JUMPS[self.rng.random_range(0..JUMPS.len())];
        self.wall_ms += jump;
        self.node().clock.advance_ms(jump);
        self.note(format!("time +{jump} ms"));
    }

    fn sweep(&mut self) {
        let node = self.node();
        let due = node.engine.due(node.clock.now_ms(), 64);
        self.note(format!("sweep: {} due", due.len()));
        self.group(due);
    }

    /// Captures the live state while a few rounds, sweeps and clock jumps go on between the
    /// capture's steps (a few entries each), then, after a few more rounds, writes the
    /// snapshot if the log made the cut durable, as the server's snapshotter does.
    fn snapshot(&mut self) {
        self.stuck = false; // it may hand segments back for reuse
        let engine = self.node().engine.clone();
        let (mut capture, (lsn, now_ms)) = {
            let node = self.node();
            engine.capture(|| (node.wal.last_lsn(), node.clock.now_ms()))
        };
        self.note(format!("capture at {lsn}"));
        while !capture.step_by(self.rng.random_range(1..=3)) {
            match self.rng.random_range(0..6) {
                0 => self.round(),
                1 => self.sweep(),
                2 => self.advance(),
                _ => {}
            }
        }
        let captured = capture.finish();
        // The snapshot reads captured reservations only while it is written: changes made
        // meanwhile must leave them as they were at the cut.
        for _ in 0..self.rng.random_range(0..=2) {
            self.round();
        }
        let node = self.node();
        if lsn <= node.snapshot_lsn {
            self.note("snapshot: nothing new".into());
            return;
        }
        if node.wal.progress().durable_lsn < lsn {
            self.note(format!("snapshot at {lsn} not written: not durable"));
            return;
        }
        match write_snapshot(&self.storage, &node.wal, lsn, now_ms, &captured) {
            Ok(()) => {
                self.node.as_mut().expect("node").snapshot_lsn = lsn;
                self.note(format!("snapshot at {lsn}"));
            }
            Err(e) => self.note(format!("snapshot failed: {e:#}")),
        }
    }

    // ---- faults -------------------------------------------------------------------------

    /// The power fails during one of the next syncs; the node keeps working until then, and
    /// the machine restarts after a few more steps.
    fn power_cut(&mut self) {
        let at = self.rng.random_range(1..=3);
        self.note(format!("power cut armed at sync {at}"));
        self.storage.cut_power_at_sync(at);
        for _ in 0..self.rng.random_range(1..=3) {
            match self.rng.random_bool(0.8) {
                true => self.round(),
                false => self.snapshot(),
            }
            self.settle();
        }
        let tearing =
            [Tearing::Nothing, Tearing::Prefix, Tearing::Any][self.rng.random_range(0..3)];
        self.power_loss(tearing);
    }

    fn fail_sync(&mut self) {
        self.note("syncs fail".into());
        self.storage.fail_syncs(true);
        self.round();
    }

    fn fail_write(&mut self) {
        self.note("the next write fails".into());
        self.storage.fail_next_write();
        match self.rng.random_bool(0.8) {
            true => self.round(),
            false => self.snapshot(),
        }
    }

    fn toggle_disk_full(&mut self) {
        self.stuck = false;
        let full = !self.storage.disk_full();
        self.note(format!("disk full: {full}"));
        self.storage.set_disk_full(full);
    }

    // ---- restarts -----------------------------------------------------------------------

    fn restart_after_failure(&mut self) {
        match self.rng.random_bool(0.5) {
            true => self.process_crash(),
            false => self.power_loss(Tearing::Any),
        }
        self.settle();
    }

    fn clean_restart(&mut self) {
        let node = self.node.take().expect("a node is running");
        let now_ms = node.clock.now_ms();
        let closed =
            close_with_snapshot(&self.storage, &node.wal, &node.engine, now_ms, node.snapshot_lsn);
        self.note(format!("clean stop: {closed:?}"));
        drop(node);
        // A close that could not write leaves failing syncs behind; an operator restarts.
        self.storage.fail_syncs(false);
        self.start();
    }

    /// The process dies: what was written survives (the machine's page cache), what was
    /// buffered in the process does not.
    fn process_crash(&mut self) {
        self.note("process crash".into());
        let node = self.node.take().expect("a node is running");
        // Only failed logs or a full disk leave records buffered at a step boundary; closing
        // writes what it can, as the kernel would have written what the process had written.
        drop(node);
        self.storage.fail_syncs(false);
        self.start();
    }

    fn power_loss(&mut self, tearing: Tearing) {
        let node = self.node.take().expect("a node is running");
        // The power is gone: nothing more reaches the disk from this process.
        self.storage.power_off();
        drop(node);
        let mut kept = 0u64;
        let mut prefix = true;
        let rng = &mut self.rng;
        self.storage.crash_keeping(|_, _| {
            let keep = match tearing {
                Tearing::Nothing => false,
                Tearing::Prefix => {
                    prefix = prefix && rng.random_bool(0.7);
                    prefix
                }
                Tearing::Any => rng.random_bool(0.5),
            };
            kept += u64::from(keep);
            keep
        });
        self.note(format!("power loss ({tearing:?}): {kept} unsynced sectors kept"));
        // The wall clock may step back across a reboot; the node must not run behind its log.
        self.wall_ms -= self.rng.random_range(0..2_000);
        self.start();
    }

    /// Recovers a node from the disk and checks it against the reference.
    fn start(&mut self) {
        self.restarts += 1;
        self.stuck = false;
        let recovered = match recover(&self.storage, &engine_config(), RecoverOptions::default()) {
            Ok(recovered) => recovered,
            Err(e) => self.fail(&format!("recovery failed: {e}")),
        };
        let last = recovered.last_lsn;
        self.note(format!(
            "recovered to {last} (acknowledged {}, logged {}), snapshot {}, {:?}",
            self.acked,
            self.history.len(),
            recovered.snapshot_lsn,
            recovered.truncated
        ));
        if last < self.acked {
            self.fail(&format!("lost acknowledged records {}..={}", last + 1, self.acked));
        }
        if last > self.history.len() as u64 {
            self.fail("recovered records that were never logged");
        }
        let reference = Engine::new(engine_config());
        for (lsn, (now_ms, command)) in self.history[..last as usize].iter().enumerate() {
            let mut changed = false;
            reference.apply(command, *now_ms, || changed = true);
            assert!(changed, "reference: record {} changes nothing", lsn + 1);
        }
        if recovered.engine.image() != reference.image() {
            self.fail("the recovered state differs from the reference");
        }
        self.history.truncate(last as usize);

        let tail = match recovered.tail(&self.storage) {
            Ok(tail) => tail,
            Err(e) => self.fail(&format!("cannot open the tail: {e}")),
        };
        let storage: Arc<dyn stockd::wal::Storage> = Arc::new(self.storage.clone());
        let config = WalConfig { segment_bytes: SEGMENT_BYTES, fsync: FsyncMode::Always };
        let wal = match Wal::start(storage, config, tail) {
            Ok(wal) => wal,
            Err(e) => self.fail(&format!("the log did not start: {e}")),
        };
        let clock = Clock::manual(self.wall_ms);
        clock.not_before(recovered.max_now_ms);
        self.node = Some(Node {
            engine: Arc::new(recovered.engine),
            wal,
            clock,
            snapshot_lsn: recovered.snapshot_lsn,
        });
        self.settle();
    }

    /// Waits until the log's background threads are quiet, so the next step's outcome does
    /// not depend on their timing: the writer has made durable what it can, and a spare
    /// segment is ready, or provably cannot be made (the disk is full and the preparer failed
    /// twice since this call began, so it has seen any segment handed back for reuse).
    fn settle(&mut self) {
        let Some(node) = self.node.as_ref() else { return };
        let deadline = Instant::now() + STEP_TIMEOUT;
        let refusals = self.storage.enospc_count();
        let stuck = std::mem::take(&mut self.stuck);
        loop {
            let progress = node.wal.progress();
            if progress.health == Health::Failed {
                return;
            }
            let spare = self.storage.files().iter().any(|(name, _)| is_spare(name));
            let flushed = progress.durable_lsn >= node.wal.last_lsn();
            let no_spare_possible = self.storage.disk_full()
                && !spare
                && (stuck || self.storage.enospc_count() >= refusals + 2);
            let quiet = match progress.health {
                Health::Ok => flushed && (spare || no_spare_possible),
                _ => no_spare_possible,
            };
            if quiet {
                self.stuck = no_spare_possible;
                return;
            }
            if Instant::now() > deadline {
                self.fail(&format!("the log never settled: {progress:?}"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn fail(&self, why: &str) -> ! {
        panic!("seed {}: {why}", self.seed);
    }
}

enum Logged {
    Lsn(u64),
    Unchanged,
    Refused,
}

/// Applies `command` and logs it if it changed anything, exactly as the dispatcher does, and
/// checks that a new hold oversold nothing.
fn log_one(
    node: &Node,
    history: &mut Vec<(u64, Command)>,
    trace: &mut Vec<String>,
    command: Command,
    now_ms: u64,
) -> Logged {
    let mut logged = None;
    let reply = node.engine.apply(&command, now_ms, || {
        logged = Some(node.wal.append(now_ms, &command));
    });
    if let (OpReply::Reserve(reply), Command::Reserve(reserve)) = (&reply, &command) {
        // A new hold (not a retry of an old one, which stock counts may have overtaken).
        if reply.code == ResultCode::Ok && logged.is_some() {
            for line in &reserve.lines {
                let info = node.engine.query_sku(&line.sku, now_ms).info;
                assert!(
                    info.reserved + info.committed <= info.on_hand,
                    "oversold {:?} after reserve {:?}: {info:?}",
                    line.sku,
                    reserve.id
                );
            }
        }
    }
    match logged {
        None => Logged::Unchanged,
        Some(Ok(lsn)) => {
            assert_eq!(lsn, history.len() as u64 + 1, "LSNs are dense");
            trace.push(format!("  lsn {lsn}: {}", describe(&command)));
            history.push((now_ms, command));
            Logged::Lsn(lsn)
        }
        Some(Err(e)) => {
            trace.push(format!("  refused by the log: {e}"));
            Logged::Refused
        }
    }
}

fn describe(command: &Command) -> String {
    let text = format!("{command:?}");
    text.chars().take(120).collect()
}

/// Runs one seed; on failure prints the seed, how to replay it and the trace's tail.
fn run_seed(seed: u64, steps: u64) -> Vec<String> {
    let mut sim = Sim::new(seed);
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| sim.run(steps)));
    if let Err(panic) = outcome {
        let from = sim.trace.len().saturating_sub(60);
        eprintln!(
            "simulation seed {seed} failed after {} restarts; replay with \
             STOCKD_SIM_SEED={seed} cargo test --test it simulation::\n--- trace (last {} of {} \
             events) ---\n{}",
            sim.restarts,
            sim.trace.len() - from,
            sim.trace.len(),
            sim.trace[from..].join("\n")
        );
        std::panic::resume_unwind(panic);
    }
    sim.trace
}

fn steps() -> u64 {
    env_u64("STOCKD_SIM_STEPS").unwrap_or(400)
}

#[test]
fn recovery_matches_the_durable_state_under_crashes_and_faults() {
    let seeds = match env_u64("STOCKD_SIM_SEED") {
        Some(seed) => seed..seed + 1,
        None => {
            let first = env_u64("STOCKD_SIM_FIRST_SEED").unwrap_or(0);
            first..first + env_u64("STOCKD_SIM_SEEDS").unwrap_or(24)
        }
    };
    let started = Instant::now();
    let (mut restarts, mut records, mut slowest) = (0, 0, (Duration::ZERO, 0));
    for seed in seeds.clone() {
        let began = Instant::now();
        let trace = run_seed(seed, steps());
        slowest = slowest.max((began.elapsed(), seed));
        restarts += trace.iter().filter(|e| e.starts_with("recovered")).count();
        records += trace.iter().filter(|e| e.starts_with("  lsn")).count();
    }
    eprintln!(
        "simulated seeds {seeds:?}: {records} records, {restarts} recoveries checked in {:.1} s \
         (slowest: seed {} in {:.1} s)",
        started.elapsed().as_secs_f64(),
        slowest.1,
        slowest.0.as_secs_f64()
    );
    assert!(restarts as u64 > seeds.end - seeds.start, "every seed restarts more than once");
}

#[test]
fn a_seed_takes_the_same_path_every_time() {
    let seed = env_u64("STOCKD_SIM_SEED").unwrap_or(7);
    let first = run_seed(seed, 200);
    let second = run_seed(seed, 200);
    assert!(first.iter().any(|e| e.starts_with("power loss")), "the seed exercises power loss");
    if let Some(at) = (0..first.len().max(second.len())).find(|&i| first.get(i) != second.get(i)) {
        let from = at.saturating_sub(8);
        panic!(
            "seed {seed} is not deterministic: event {at} differs\n--- first run ---\n{}\n--- \
             second run ---\n{}",
            first[from..(at + 3).min(first.len())].join("\n"),
            second[from..(at + 3).min(second.len())].join("\n")
        );
    }
}
