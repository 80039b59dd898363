//! Single-flight under the ways a leader or a waiter can stop: panic, cancellation, errors,
//! and ten thousand waiters on one key.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use onephase_herd::SingleFlight;
use tokio::sync::{Barrier, oneshot};

type Flight = SingleFlight<&'static str, u64, String>;

/// Spawns a caller that registers in `calls`, waits for `release`, then answers `value`.
fn spawn_gated(
    flight: &Arc<Flight>,
    calls: &Arc<AtomicUsize>,
    release: oneshot::Receiver<()>,
    value: Result<u64, String>,
) -> tokio::task::JoinHandle<Result<u64, String>> {
    let (flight, calls) = (Arc::clone(flight), Arc::clone(calls));
    tokio::spawn(async move {
        flight
            .run("k", || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let _ = release.await;
                value
            })
            .await
    })
}

/// Spawns a waiter whose own call, if it ever runs, counts in `calls` and answers `value`
/// at once.
fn spawn_waiter(
    flight: &Arc<Flight>,
    calls: &Arc<AtomicUsize>,
    value: u64,
) -> tokio::task::JoinHandle<Result<u64, String>> {
    let (release, gate) = oneshot::channel();
    let _ = release.send(());
    spawn_gated(flight, calls, gate, Ok(value))
}

/// A flight whose leader for "k" hangs until aborted (the gate's sender is returned, kept
/// alive and never used).
async fn hung_leader(
    name: &str,
) -> (
    Arc<Flight>,
    Arc<AtomicUsize>,
    tokio::task::JoinHandle<Result<u64, String>>,
    oneshot::Sender<()>,
) {
    let flight = Arc::new(Flight::new(name));
    let calls = Arc::new(AtomicUsize::new(0));
    let (never, gate) = oneshot::channel::<()>();
    let leader = spawn_gated(&flight, &calls, gate, Ok(0));
    settle().await;
    (flight, calls, leader, never)
}

/// Lets spawned tasks reach their awaits.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn waiters_share_the_leaders_value_and_its_error() {
    let flight = Arc::new(Flight::new("share"));
    let calls = Arc::new(AtomicUsize::new(0));
    for expected in [Ok(5), Err("origin down".to_owned())] {
        calls.store(0, Ordering::SeqCst);
        let (release, gate) = oneshot::channel();
        let leader = spawn_gated(&flight, &calls, gate, expected.clone());
        settle().await;
        let waiters: Vec<_> = (0..50).map(|_| spawn_waiter(&flight, &calls, 99)).collect();
        settle().await;
        release.send(()).expect("leader waiting");
        assert_eq!(leader.await.expect("leader"), expected);
        for w in waiters {
            assert_eq!(w.await.expect("waiter"), expected);
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one execution for 51 callers"
        );
    }
    // The key is free once the outcome is out: a new call executes.
    assert_eq!(flight.run("k", || async { Ok(8) }).await, Ok(8));
    assert!(!flight.is_running(&"k"));
}

#[tokio::test]
async fn a_panicking_leader_hands_the_work_to_a_waiter() {
    let flight = Arc::new(Flight::new("panic"));
    let calls = Arc::new(AtomicUsize::new(0));
    let (release, gate) = oneshot::channel::<()>();
    let leader = {
        let (flight, calls) = (Arc::clone(&flight), Arc::clone(&calls));
        tokio::spawn(async move {
            flight
                .run("k", || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let _ = gate.await;
                    panic!("the leader's query panicked");
                })
                .await
        })
    };
    settle().await;
    let waiters: Vec<_> = (0..10).map(|i| spawn_waiter(&flight, &calls, i)).collect();
    settle().await;
    release.send(()).expect("leader waiting");
    assert!(leader.await.expect_err("leader panicked").is_panic());
    let results: Vec<_> = futures::future::join_all(waiters)
        .await
        .into_iter()
        .map(|r| r.expect("no waiter sees the panic"))
        .collect();
    // Exactly one waiter ran its own call; everyone got its value.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let first = results[0].clone();
    assert!(first.is_ok());
    assert!(results.iter().all(|r| *r == first), "{results:?}");
    assert_eq!(flight.stats().handoffs, 1);
}

#[tokio::test]
async fn a_cancelled_leader_hands_the_work_to_a_waiter() {
    let (flight, calls, leader, _never) = hung_leader("cancel-leader").await;
    let waiters: Vec<_> = (0..10)
        .map(|i| spawn_waiter(&flight, &calls, 100 + i))
        .collect();
    settle().await;
    leader.abort();
    assert!(leader.await.expect_err("aborted").is_cancelled());
    let results: Vec<_> = futures::future::join_all(waiters).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the leader's and one waiter's"
    );
    let first = results[0].as_ref().expect("joined").clone();
    for r in results {
        assert_eq!(r.expect("joined"), first);
    }
    assert!(!flight.is_running(&"k"));
}

#[tokio::test]
async fn a_cancelled_waiter_neither_cancels_the_leader_nor_starts_a_call() {
    let flight = Arc::new(Flight::new("cancel-waiter"));
    let calls = Arc::new(AtomicUsize::new(0));
    let (release, gate) = oneshot::channel();
    let leader = spawn_gated(&flight, &calls, gate, Ok(3));
    settle().await;
    let cancelled: Vec<_> = (0..5).map(|_| spawn_waiter(&flight, &calls, 9)).collect();
    let kept = spawn_waiter(&flight, &calls, 9);
    settle().await;
    for w in &cancelled {
        w.abort();
    }
    settle().await;
    assert!(flight.is_running(&"k"));
    release.send(()).expect("leader still waiting");
    assert_eq!(leader.await.expect("leader"), Ok(3));
    assert_eq!(kept.await.expect("waiter"), Ok(3));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_cancelled_leader_with_no_waiters_frees_the_key() {
    let (flight, _calls, leader, _never) = hung_leader("orphan").await;
    assert!(flight.is_running(&"k"));
    leader.abort();
    let _ = leader.await;
    assert!(!flight.is_running(&"k"));
    assert_eq!(flight.run("k", || async { Ok(2) }).await, Ok(2));
}

#[tokio::test]
async fn leaders_failing_one_after_another_still_end_with_every_waiter_answered() {
    let (flight, calls, first, _never) = hung_leader("chain").await;
    // Two more would-be leaders that hang, then a patient waiter.
    let mut hung = Vec::new();
    let mut gates = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = oneshot::channel::<()>();
        gates.push(tx);
        hung.push(spawn_gated(&flight, &calls, rx, Ok(7)));
    }
    let patient = spawn_waiter(&flight, &calls, 42);
    settle().await;
    first.abort();
    settle().await;
    // The next in line is running its hanging call; cancel it too.
    hung[0].abort();
    settle().await;
    hung[1].abort();
    assert_eq!(patient.await.expect("patient"), Ok(42));
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(flight.stats().handoffs, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_waiters_share_one_execution() {
    const CALLERS: usize = 10_000;
    let flight = Arc::new(SingleFlight::<u32, Arc<str>, String>::new("ten-thousand"));
    let calls = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(CALLERS));
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (flight, calls, barrier) = (
                Arc::clone(&flight),
                Arc::clone(&calls),
                Arc::clone(&barrier),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                let leader_view = Arc::clone(&flight);
                flight
                    .run(1, || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        // Answer only once every other caller is waiting on this call.
                        while leader_view.waiters(&1) < CALLERS - 1 {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        Ok(Arc::from("value"))
                    })
                    .await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("joined").as_deref(), Ok("value"));
    }
    let stats = flight.stats();
    assert_eq!(stats.calls, CALLERS as u64);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "{stats:?}");
    assert_eq!(stats.coalescing_ratio(), CALLERS as f64);
}
