//! The failure lab: each failure reproduced on demand, first against the naive approach and
//! then against onephase, on the same inputs, with the numbers side by side.
//!
//! Scenarios about time run on a tokio runtime whose time is paused ([`SimClock`]): when every
//! task is waiting, the runtime jumps to the next timer, so a minute of load runs in a
//! fraction of a second, and a seed replays a run exactly. Scenarios about an engine (leases,
//! an outbox and a log in SQLite, two PostgreSQL databases, HTTP on loopback) run against it
//! on the real clock, whose I/O paused time would jump past; one that needs an engine it was
//! not given reports what it needs instead ([`Report::needs`]). The code under test is the
//! real code: the naive side is written here, the onephase side is the library itself. Each
//! report states one invariant, checked on both runs ([`Report::passed`]), and charts the run
//! ([`Chart`]); [`html()`] makes a page of them.
//!
//! | scenario | failure | onephase's answer |
//! |---|---|---|
//! | [`lock::fenced_lock`] | a lock holder pauses past its lease | the fencing token of [`onephase_lease`], checked at the write |
//! | [`two_phase::two_phase_commit`] | a 2PC coordinator dies after the prepare, locks held | a saga: local transactions, a run another orchestrator takes over |
//! | [`webhook::webhooks`] | a receiver down for a second, lost answers, forged requests | [`onephase_webhook`]: stored, signed, retried with jitter, applied once |
//! | [`saga::compensation`] | a refund fails after an order is refused | the [`Orchestrator`](onephase_saga::Orchestrator): the run waits for an operator |
//! | [`herd::stampede`] | 1,000 readers miss an expired key at once | [`HerdCache`](onephase_herd::HerdCache): coalescing, XFetch |
//! | [`herd::retry_storm`] | a dependency is down for 10 s under steady load | [`Retry`](onephase_herd::Retry) with a budget and "do not retry" |
//! | [`herd::reconnect_flood`] | 1,000 clients lose their server at once | [`Reconnect`](onephase_herd::Reconnect): spread and jitter |
//! | [`outbox::dual_write`] | an order committed and its event published separately | [`onephase_outbox`]: the event in the order's transaction |
//! | `outbox::engines::dual_write_on_engines` (feature `nats`) | the same on PostgreSQL and NATS JetStream, the relay killed with SIGKILL | the outbox, a relay that resumes, JetStream's duplicate window |
//! | [`limit::boundary_burst`] | a client spends two windows' limit across one boundary | the sliding log of [`onephase_limit`] |
//! | [`limit::local_limits`] | three nodes each enforce the global limit alone | one shared limit through [`HybridLimiter`](onephase_limit::HybridLimiter) |
//! | [`events::lost_update`] | two writers decide on the same state and both append | the expected version of [`onephase_events`] |
//! | [`events::skipped::skipped_event`] | a reader by position passes an event that commits late | positions visible in the order handed out |
//! | [`events::read_your_writes`] | a client reads the read model right after its write | the append's position as a consistency token |
//! | [`events::schema_change`] | last year's events meet this year's code | [`Upcasters`](onephase_events::Upcasters) on read |
//! | [`replica::read_your_writes`] | a client reads a lagging replica right after its write | a consistency token: a replica that has replayed it, a bounded wait, or the primary |
//! | [`replica::monotonic_reads`] | a reader alternates between replicas with different lag | a [`Session`](onephase_replica::Session) that never moves to a replica behind its last read |
//! | [`kafka::group_that_stopped`] | a slow message and a poison message in front of a consumer group | [`onephase_kafka::Consumer`]: polls on its own thread, a dead-letter topic; the doctor names both failures |
//! | [`replica::across_services`] | service A writes and calls B, which reads a replica | the token in the `consistency-token` header, read by B |
//! | [`partition::adding_a_node`] | a 9th partition added under hash mod N moves almost every key | jump consistent hash (and rendezvous): about 1/9 |
//! | [`partition::hot_range`] | ranges of a timestamp: every new write on the last one | the analyzer shows it; a hash spreads them |
//! | [`trace::stored_context`] | work left in a table loses its request's trace | [`onephase_trace`]: the `traceparent` kept with the work |
//!
//! ```
//! let report = onephase_lab::run(onephase_lab::Scenario::Stampede, 7);
//! let burst = report.get("burst: origin calls").unwrap();
//! assert_eq!((burst.naive, burst.onephase), (1000.0, 1.0));
//! println!("{}", report.table());
//! ```

pub mod events;
pub mod herd;
mod html;
pub mod kafka;
pub mod limit;
pub mod lock;
pub mod outbox;
pub mod partition;
pub mod replica;
mod report;
pub mod saga;
mod sim;
pub mod trace;
pub mod two_phase;
pub mod webhook;

pub use html::{html, html_with};
pub use report::{Chart, Invariant, Report, Row, verdict};
pub use sim::SimClock;

/// Whatever stopped a scenario's engine: it ends the run, and the report says why.
type Failed = Box<dyn std::error::Error + Send + Sync>;

/// A scenario the lab can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// [`lock::fenced_lock`].
    FencedLock,
    /// [`outbox::dual_write`].
    DualWrite,
    /// [`saga::compensation`].
    SagaCompensation,
    /// [`two_phase::two_phase_commit`].
    TwoPhaseCommit,
    /// [`webhook::webhooks`].
    Webhooks,
    /// [`trace::stored_context`].
    TraceContext,
    /// [`herd::stampede`].
    Stampede,
    /// [`herd::retry_storm`].
    RetryStorm,
    /// [`herd::reconnect_flood`].
    ReconnectFlood,
    /// [`limit::boundary_burst`].
    BoundaryBurst,
    /// [`limit::local_limits`].
    LocalLimits,
    /// [`events::lost_update`].
    LostUpdate,
    /// [`events::skipped::skipped_event`].
    SkippedEvent,
    /// [`events::read_your_writes`].
    ReadYourWrites,
    /// [`events::schema_change`].
    SchemaChange,
    /// [`replica::read_your_writes`].
    ReplicaReadYourWrites,
    /// [`replica::monotonic_reads`].
    MonotonicReads,
    /// [`replica::across_services`].
    TokenAcrossServices,
    /// [`kafka::group_that_stopped`].
    GroupThatStopped,
    /// [`partition::adding_a_node`].
    AddingANode,
    /// [`partition::hot_range`].
    HotRange,
    /// [`partition::online::online_move`].
    OnlineMove,
}

impl Scenario {
    /// Every scenario, in the order of the seed's posts.
    pub const ALL: [Scenario; 22] = [
        Scenario::FencedLock,
        Scenario::GroupThatStopped,
        Scenario::SagaCompensation,
        Scenario::Stampede,
        Scenario::RetryStorm,
        Scenario::ReconnectFlood,
        Scenario::Webhooks,
        Scenario::DualWrite,
        Scenario::BoundaryBurst,
        Scenario::LocalLimits,
        Scenario::ReadYourWrites,
        Scenario::LostUpdate,
        Scenario::SkippedEvent,
        Scenario::SchemaChange,
        Scenario::TwoPhaseCommit,
        Scenario::AddingANode,
        Scenario::HotRange,
        Scenario::OnlineMove,
        Scenario::ReplicaReadYourWrites,
        Scenario::MonotonicReads,
        Scenario::TokenAcrossServices,
        Scenario::TraceContext,
    ];

    /// The name the CLI knows it by.
    pub fn name(self) -> &'static str {
        match self {
            Self::FencedLock => "fenced-lock",
            Self::DualWrite => "dual-write",
            Self::SagaCompensation => "saga-compensation",
            Self::TwoPhaseCommit => "two-phase-commit",
            Self::Webhooks => "webhooks",
            Self::TraceContext => "trace-context",
            Self::Stampede => "stampede",
            Self::RetryStorm => "retry-storm",
            Self::ReconnectFlood => "reconnect-flood",
            Self::BoundaryBurst => "boundary-burst",
            Self::LocalLimits => "local-limits",
            Self::LostUpdate => "lost-update",
            Self::SkippedEvent => "skipped-event",
            Self::ReadYourWrites => "read-your-writes",
            Self::SchemaChange => "schema-change",
            Self::ReplicaReadYourWrites => "replica-read-your-writes",
            Self::GroupThatStopped => "kafka-group-that-stopped",
            Self::MonotonicReads => "monotonic-reads",
            Self::TokenAcrossServices => "token-across-services",
            Self::AddingANode => "adding-a-node",
            Self::HotRange => "hot-range",
            Self::OnlineMove => "online-move",
        }
    }

    /// The post of the seed it makes executable; `None` for one no post is about.
    pub fn post(self) -> Option<u8> {
        match self {
            Self::FencedLock => Some(1),
            Self::DualWrite => Some(9),
            Self::SagaCompensation => Some(3),
            Self::TwoPhaseCommit => Some(12),
            Self::Webhooks => Some(8),
            // Not one of the posts: the operations docs (docs/trace.md).
            Self::TraceContext => None,
            Self::Stampede | Self::RetryStorm | Self::ReconnectFlood => Some(6),
            Self::BoundaryBurst | Self::LocalLimits => Some(11),
            Self::ReadYourWrites => Some(5),
            Self::LostUpdate | Self::SkippedEvent | Self::SchemaChange => Some(10),
            Self::ReplicaReadYourWrites | Self::MonotonicReads | Self::TokenAcrossServices => {
                Some(4)
            }
            Self::GroupThatStopped => Some(2),
            Self::AddingANode | Self::HotRange | Self::OnlineMove => Some(7),
        }
    }

    /// The failure, in a line.
    pub fn summary(self) -> &'static str {
        match self {
            Self::FencedLock => {
                "a lock holder pauses past its lease, and another holder writes meanwhile"
            }
            Self::DualWrite => {
                "an order is committed and its event published: two writes, two systems"
            }
            Self::SagaCompensation => {
                "orders charged, then refused, while the refund service is down"
            }
            Self::TwoPhaseCommit => {
                "a transfer across two databases by 2PC; the coordinator dies after the prepare"
            }
            Self::Webhooks => {
                "a flaky receiver, an impatient sender and an attacker who forges requests"
            }
            Self::TraceContext => "a request leaves work in a table; the trace stops there",
            Self::Stampede => "1,000 readers miss an expired key at once",
            Self::RetryStorm => {
                "a dependency is down for 10 s under steady load, and clients retry"
            }
            Self::ReconnectFlood => "1,000 clients lose their server at once and reconnect",
            Self::BoundaryBurst => "a client spends two windows' limit across one boundary",
            Self::LocalLimits => "three nodes each enforce the global limit in their own memory",
            Self::LostUpdate => {
                "two writers withdraw from one account, each after checking the balance"
            }
            Self::SkippedEvent => "a reader by position meets a transaction that commits late",
            Self::ReadYourWrites => "a client reads the read model right after its own write",
            Self::SchemaChange => "three years of an event's shapes, read by this year's code",
            Self::ReplicaReadYourWrites => {
                "a client writes, then reads the row back from a replica that applies WAL late"
            }
            Self::MonotonicReads => "a reader alternates between a late replica and a prompt one",
            Self::TokenAcrossServices => {
                "service A writes and calls service B, which reads from a replica"
            }
            Self::GroupThatStopped => {
                "a consumer group meets a message slower than max.poll.interval and one that always fails"
            }
            Self::AddingANode => "a 9th partition is added to 8 that hold 100,000 keys",
            Self::HotRange => "orders keyed by creation time, partitioned by ranges of it",
            Self::OnlineMove => "a key range moves to another database while writers write to it",
        }
    }

    /// The failure and onephase's answer, in two sentences.
    pub fn story(self) -> &'static str {
        match self {
            Self::FencedLock => {
                "A lease lapses while its holder is paused between reading and writing, so a \
                 second holder gets in and the first one's late write lands over it. Every \
                 write checks the lease's fencing token in its transaction, and the older token \
                 is refused, however long the pause or wherever the clocks jumped."
            }
            Self::TraceContext => {
                "Work left in a table is done later by a worker whose spans start traces of \
                 their own, so the request's trace ends at the table. Storing the request's \
                 traceparent with the row and following it in the worker keeps one trace."
            }
            Self::TwoPhaseCommit => {
                "A coordinator that dies between PREPARE and COMMIT PREPARED leaves its \
                 transactions in doubt, holding their row locks, and everything else that \
                 touches those rows waits until an operator decides. A saga commits each step \
                 locally and keeps its progress in a table, so nothing waits: the money is \
                 visibly in flight for a moment, and a failed credit is refunded."
            }
            Self::Webhooks => {
                "A sender that retries at once hammers a receiver that is down and then gives \
                 up, a receiver that applies whatever arrives applies retries twice and \
                 forgeries once. A stored message retried on a jittered schedule, signed, and \
                 applied once per webhook-id in the receiver's transaction loses nothing, \
                 doubles nothing and lets no forgery in."
            }
            Self::SagaCompensation => {
                "A saga has no isolation: others see the card charged before the order is \
                 placed, and a refused order is undone by a refund that can fail too. A \
                 try/catch logs the failed refund and moves on; the orchestrator parks the run \
                 for an operator, so no customer stays charged for nothing unnoticed."
            }
            Self::DualWrite => {
                "Commit, then publish, and a crash between loses the event; publish, then \
                 commit, and a failed commit leaves an event about an order that never existed. \
                 The outbox writes the event in the order's own transaction and a relay \
                 publishes what committed, so neither can happen."
            }
            Self::Stampede => {
                "When a hot key expires, every reader misses at once and each one calls the \
                 origin. HerdCache makes the readers share one load and refreshes a little \
                 early (XFetch), so the origin sees one call per expiry."
            }
            Self::RetryStorm => {
                "When a dependency fails, clients that retry at once multiply its load just as \
                 it tries to recover. Retry with jitter inside a budget, and no retry of an \
                 overload, keeps the load near what it was."
            }
            Self::ReconnectFlood => {
                "When a server restarts, every client reconnects in the same instant and the \
                 new server meets all of them at once. Reconnect spreads the first attempt and \
                 backs off with jitter, so the wave is flat."
            }
            Self::BoundaryBurst => {
                "A fixed window resets on the second, so a client that sends its limit just \
                 before the boundary and again just after gets twice the limit through in a \
                 moment. A sliding log counts the last second wherever it falls, and never \
                 admits more than the limit in it."
            }
            Self::LocalLimits => {
                "Each node that counts in its own memory admits the whole limit, so three nodes \
                 admit three times what was promised. One shared limit, reached through leases \
                 of a few units per node, stays within the limit plus a stated margin."
            }
            Self::LostUpdate => {
                "Two writers read the same balance, both decide it covers their withdrawal, and \
                 both append: the account is overdrawn though each decision was right. An \
                 append that expects the version it read is refused when the stream moved, and \
                 the writer decides again on the new balance."
            }
            Self::SkippedEvent => {
                "Positions from a sequence are handed out at insert and become visible at \
                 commit, so a reader that moves past the newest position it saw skips an \
                 event whose transaction was still open. Handing positions out in turns, held \
                 to commit, makes them visible in order: nothing is skipped, at the price of \
                 appends waiting for an open one."
            }
            Self::ReadYourWrites => {
                "The read model is updated after the write, so a client that reads it at once \
                 does not see what it just did and retries, or worse, decides again. The \
                 append's position is a token: the read waits, bounded, until the projection \
                 has applied it."
            }
            Self::ReplicaReadYourWrites => {
                "A replica shows the primary as it was a moment ago, so a read right after a \
                 write often misses it. The token taken after the commit names a WAL position; \
                 the read goes to a replica that has replayed it, waits a bounded time for one, \
                 or goes to the primary, and the latency rows show what that costs."
            }
            Self::MonotonicReads => {
                "Two replicas with different lag, read in turn, show a value and then an older \
                 one: time goes backwards for the reader. A session stays on one replica, whose \
                 replay only moves forward, and moves only to one at least as far along."
            }
            Self::TokenAcrossServices => {
                "Service B knows nothing of the write service A made just before calling it, \
                 so its replica read misses it. A sends the write's token in a header, B's \
                 router waits for a replica that has it: read-your-writes across a network hop."
            }
            Self::GroupThatStopped => {
                "A handler inside the poll loop that outlasts max.poll.interval.ms gets its \
                 member thrown out and the group rebalances again and again, and a message \
                 retried in place holds its partition for ever, while the process stays up. \
                 The runtime polls on its own thread, runs handlers on tasks per key, and \
                 sends a message that keeps failing to a dead-letter topic; the doctor names \
                 each failure."
            }
            Self::AddingANode => {
                "Hash mod N ties every key to N, so one more partition reshuffles nearly all \
                 of them and the data moves for days. Jump consistent hash and rendezvous \
                 hashing move only what the new partition takes, about 1/(N+1)."
            }
            Self::HotRange => {
                "Ranges chosen on the data you have put every later key on the last range, so \
                 one partition takes all the writes of a timestamp or a sequence. The \
                 analyzer shows it on your own keys before you choose, and a hash spreads \
                 the same writes over every partition."
            }
            Self::OnlineMove => {
                "Copying a range to a new database and then switching loses every write that \
                 landed on a row after it was copied, so a repartition means downtime. The \
                 online move logs changes from the first copied row, verifies with checksums \
                 and fences writes only for the moment the last changes drain and the map \
                 switches."
            }
            Self::SchemaChange => {
                "Events are kept forever and their shape changes, so code that deserializes \
                 today's shape fails on last year's events, or reads them wrong. Upcasters \
                 bring each stored version to today's on read, and a version the reader cannot \
                 know is refused by name instead of being skipped."
            }
        }
    }

    /// The scenario called `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Where the engines are, for the scenarios whose failure is about an engine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Engines {
    /// A PostgreSQL server with `max_prepared_transactions > 0`: `two-phase-commit` runs only
    /// with it (and says what it needs without it). `dual-write` on engines keeps its orders
    /// there too, and `skipped-event` (which needs any PostgreSQL) makes its database there.
    pub postgres: Option<String>,
    /// NATS with JetStream: with it (and `postgres` and `onephase`), `dual-write` runs on
    /// PostgreSQL and NATS instead of SQLite and the embedded log. Needs the feature `nats`.
    pub nats: Option<String>,
    /// The `onephase` executable, which `dual-write` on engines runs as its relay and kills.
    pub onephase: Option<std::path::PathBuf>,
    /// A PostgreSQL primary and two streaming replicas, as comma-separated URLs (primary
    /// first): the replica scenarios run only with them, and set `recovery_min_apply_delay`
    /// on the replicas for their run.
    pub replicas: Option<String>,
    /// A Kafka-compatible broker (`host:port`): `kafka-group-that-stopped` runs only with it,
    /// and only in a build with the feature `kafka`.
    pub kafka: Option<String>,
}

/// The dual write on engines when they are all given, else on SQLite and the embedded log.
async fn dual_write(seed: u64, engines: &Engines) -> Report {
    let (Some(postgres), Some(nats), Some(onephase)) =
        (&engines.postgres, &engines.nats, &engines.onephase)
    else {
        return outbox::dual_write(seed).await;
    };
    #[cfg(feature = "nats")]
    {
        let on = outbox::engines::OnEngines {
            postgres,
            nats,
            onephase,
        };
        outbox::engines::dual_write_on_engines(seed, on).await
    }
    #[cfg(not(feature = "nats"))]
    {
        let _ = (postgres, nats, onephase);
        let mut report = Report::new("dual-write", seed, "on PostgreSQL and NATS JetStream");
        report.not_run_for_want_of(
            "a build with the feature `nats` (the NATS client) to run on engines",
        );
        report
    }
}

/// Runs `scenario` with `seed` and no engines: the scenarios that need one report what they
/// need ([`Report::needs`]) instead of running. See [`run_with`].
pub fn run(scenario: Scenario, seed: u64) -> Report {
    run_with(scenario, seed, &Engines::default())
}

/// Runs `scenario` with `seed` on a runtime of its own (on a thread of its own, so it may be
/// called from inside another runtime): on paused time, except where the failure needs a
/// real engine (the lock's leases live in SQLite, 2PC needs PostgreSQL), which runs on the
/// real clock.
pub fn run_with(scenario: Scenario, seed: u64, engines: &Engines) -> Report {
    let engines = engines.clone();
    let work = move || match scenario {
        Scenario::FencedLock => sim::block_on_real(lock::fenced_lock(seed)),
        Scenario::DualWrite => sim::block_on_real(dual_write(seed, &engines)),
        Scenario::SagaCompensation => sim::block_on_real(saga::compensation(seed)),
        Scenario::TwoPhaseCommit => sim::block_on_real(two_phase::two_phase_commit(
            seed,
            engines.postgres.as_deref(),
        )),
        Scenario::Webhooks => sim::block_on_real(webhook::webhooks(seed)),
        Scenario::TraceContext => sim::block_on(trace::stored_context(seed)),
        Scenario::Stampede => sim::block_on(herd::stampede(seed)),
        Scenario::RetryStorm => sim::block_on(herd::retry_storm(seed)),
        Scenario::ReconnectFlood => sim::block_on(herd::reconnect_flood(seed)),
        Scenario::BoundaryBurst => sim::block_on(limit::boundary_burst(seed)),
        Scenario::LocalLimits => sim::block_on(limit::local_limits(seed)),
        Scenario::LostUpdate => sim::block_on_real(events::lost_update(seed)),
        Scenario::SkippedEvent => sim::block_on_real(events::skipped::skipped_event(
            seed,
            engines.postgres.as_deref(),
        )),
        Scenario::ReadYourWrites => sim::block_on_real(events::read_your_writes(seed)),
        Scenario::SchemaChange => sim::block_on_real(events::schema_change(seed)),
        Scenario::ReplicaReadYourWrites => {
            sim::block_on_real(replica::read_your_writes(seed, engines.replicas.as_deref()))
        }
        Scenario::MonotonicReads => {
            sim::block_on_real(replica::monotonic_reads(seed, engines.replicas.as_deref()))
        }
        Scenario::TokenAcrossServices => {
            sim::block_on_real(replica::across_services(seed, engines.replicas.as_deref()))
        }
        Scenario::GroupThatStopped => {
            sim::block_on_real(kafka::group_that_stopped(seed, engines.kafka.as_deref()))
        }
        Scenario::AddingANode => sim::block_on(partition::adding_a_node(seed)),
        Scenario::HotRange => sim::block_on(partition::hot_range(seed)),
        Scenario::OnlineMove => sim::block_on_real(partition::online::online_move(
            seed,
            engines.postgres.as_deref(),
        )),
    };
    let mut report = match std::thread::spawn(work).join() {
        Ok(report) => report,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    report.post = scenario.post();
    report.story = scenario.story();
    report
}
