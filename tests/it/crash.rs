//! Crash test: the real binary under load from several client tasks is killed with SIGKILL at
//! a random moment, restarted on the same data directory, and checked: every acknowledged
//! operation is there, nothing appears that was not at least sent (only in-flight requests may
//! have been applied without an acknowledgement), and no SKU is oversold. Repeated over
//! several cycles; `STOCKD_CRASH_CYCLES=50` runs more, `STOCKD_CRASH_SEED` replays one run.

use crate::common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::Daemon;
use stockd_protocol::{
    Client, ClientOptions, Line, Op, OpReply, ReservationState, Reserve, ResultCode,
};

const SKUS: usize = 4;
const STOCK: u64 = 3_000;
const TASKS: usize = 8;

/// A tiny deterministic generator (xorshift64*), so a failing run can be replayed by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the clients know about one reservation.
#[derive(Clone, Debug, Default)]
struct Known {
    sku: usize,
    qty: u32,
    /// The last state an acknowledgement confirmed (`None`: the reserve was never acknowledged).
    acked: Option<ReservationState>,
    /// An operation sent and not acknowledged when the server died.
    in_flight: Option<ReservationState>,
}

type Ledger = Arc<Mutex<HashMap<String, Known>>>;

fn sku(index: usize) -> String {
    format!("sku-{index}")
}

async fn drive(addr: String, task: usize, cycle: usize, seed: u64, ledger: Ledger) {
    let Ok(client) = Client::connect(addr.as_str(), ClientOptions::default()).await else { return };
    let mut rng = Rng(seed ^ ((task as u64 + 1) << 32) ^ cycle as u64);
    let mut held: Vec<String> = Vec::new();
    for n in 0.. {
        let confirm_or_release = !held.is_empty() && rng.below(3) == 0;
        let (id, target, call) = if confirm_or_release {
            let id = held.swap_remove(rng.below(held.len() as u64) as usize);
            let confirm = rng.below(2) == 0;
            let target =
                if confirm { ReservationState::Confirmed } else { ReservationState::Released };
            (id, target, Some(confirm))
        } else {
            let id = format!("c{cycle}-t{task}-{n}");
            let known = Known {
                sku: rng.below(SKUS as u64) as usize,
                qty: 1 + rng.below(3) as u32,
                acked: None,
                in_flight: Some(ReservationState::Held),
            };
            ledger.lock().unwrap().insert(id.clone(), known);
            (id, ReservationState::Held, None)
        };
        ledger.lock().unwrap().get_mut(&id).unwrap().in_flight = Some(target);
        let code = match call {
            Some(true) => client.confirm(id.clone(), vec![]).await,
            Some(false) => client.release(id.clone()).await,
            None => {
                let known = ledger.lock().unwrap()[&id].clone();
                let reserve = Reserve {
                    id: id.clone().into(),
                    ttl_ms: 0,
                    channel: Bytes::new(),
                    customer: Bytes::new(),
                    lines: vec![Line::new(sku(known.sku), known.qty)],
                };
                client.reserve(reserve).await.map(|reply| reply.code)
            }
        };
        let Ok(code) = code else { return }; // the server died: this request stays in flight
        let mut ledger = ledger.lock().unwrap();
        let known = ledger.get_mut(&id).unwrap();
        known.in_flight = None;
        match code {
            ResultCode::Ok => {
                known.acked = Some(target);
                if target == ReservationState::Held {
                    held.push(id);
                }
            }
            ResultCode::InsufficientStock if target == ReservationState::Held => {}
            other => panic!("{id}: unexpected {other} for {target:?}"),
        }
    }
}

async fn verify(addr: &str, ledger: &Ledger) {
    let client = Client::connect(addr, ClientOptions::default()).await.expect("connect");
    let ledger: Vec<(String, Known)> = ledger.lock().unwrap().clone().into_iter().collect();
    let mut held = [0u64; SKUS];
    let mut committed = [0u64; SKUS];
    for chunk in ledger.chunks(4096) {
        let ops =
            chunk.iter().map(|(id, _)| Op::QueryReservation { id: id.clone().into() }).collect();
        let replies = client.batch(ops).await.expect("query batch");
        for ((id, known), reply) in chunk.iter().zip(replies) {
            let OpReply::QueryReservation(reply) = reply else { panic!("{id}: {reply:?}") };
            let state = reply.info.as_ref().map(|info| info.state);
            let allowed = state == known.acked || state == known.in_flight;
            assert!(
                allowed,
                "{id}: server has {state:?}, clients saw {:?} with {:?} in flight",
                known.acked, known.in_flight
            );
            if let Some(info) = reply.info {
                assert_eq!(info.lines.len(), 1);
                assert_eq!(info.lines[0].qty_held, known.qty, "{id}");
                match info.state {
                    ReservationState::Held => held[known.sku] += u64::from(known.qty),
                    ReservationState::Confirmed => committed[known.sku] += u64::from(known.qty),
                    _ => {}
                }
            }
        }
    }
    for (index, (held, committed)) in held.iter().zip(committed).enumerate() {
        let info = client.query_sku(sku(index)).await.expect("query sku").info;
        assert_eq!(
            (info.reserved, info.committed),
            (*held, committed),
            "{} accounting",
            sku(index)
        );
        assert!(
            info.reserved + info.committed <= info.on_hand,
            "{} oversold: {info:?}",
            sku(index)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_acknowledged() {
    let cycles: usize =
        std::env::var("STOCKD_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let seed: u64 =
        std::env::var("STOCKD_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
                as u64
                | 1
        });
    println!("crash test seed {seed} ({cycles} cycles); replay with STOCKD_CRASH_SEED={seed}");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let ledger: Ledger = Arc::default();
    let mut rng = Rng(seed);
    {
        let daemon = Daemon::start(dir.path());
        let client = Client::connect(daemon.addr.as_str(), ClientOptions::default()).await.unwrap();
        for index in 0..SKUS {
            assert!(client.set_stock(sku(index), STOCK, None).await.unwrap().code.is_ok());
        }
        drop(daemon); // killed: the stock must survive too
    }
    let mut acknowledged_total = 0;
    for cycle in 0..cycles {
        let mut daemon = Daemon::start(dir.path());
        verify(&daemon.addr, &ledger).await;
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| tokio::spawn(drive(daemon.addr.clone(), task, cycle, seed, ledger.clone())))
            .collect();
        // Let the load run for a random while (this picks the moment of the crash; nothing
        // waits on it for correctness), then pull the plug.
        tokio::time::sleep(Duration::from_millis(100 + rng.below(400))).await;
        daemon.signal("-KILL");
        assert_eq!(daemon.wait(), None, "killed by a signal");
        for task in tasks {
            tokio::time::timeout(common::WAIT, task).await.expect("clients stop").expect("task");
        }
        acknowledged_total = ledger.lock().unwrap().values().filter(|k| k.acked.is_some()).count();
    }
    let daemon = Daemon::start(dir.path());
    verify(&daemon.addr, &ledger).await;
    assert!(acknowledged_total > 100, "the load did real work ({acknowledged_total} acknowledged)");
    println!("verified {acknowledged_total} acknowledged reservations over {cycles} crashes");
}
