//! The failure lab: each failure reproduced on demand, first against the naive approach and
//! then against onephase, on the same inputs, with the numbers side by side.
//!
//! Scenarios run on a tokio runtime whose time is paused ([`SimClock`]): when every task is
//! waiting, the runtime jumps to the next timer, so a minute of load runs in a fraction of a
//! second, and a seed replays a run exactly. The code under test is the real code: the naive
//! side is written here, the onephase side is the library itself.
//!
//! | scenario | failure | onephase's answer |
//! |---|---|---|
//! | [`herd::stampede`] | 1,000 readers miss an expired key at once | [`HerdCache`](onephase_herd::HerdCache): coalescing, XFetch |
//! | [`herd::retry_storm`] | a dependency is down for 10 s under steady load | [`Retry`](onephase_herd::Retry) with a budget and "do not retry" |
//! | [`herd::reconnect_flood`] | 1,000 clients lose their server at once | [`Reconnect`](onephase_herd::Reconnect): spread and jitter |
//!
//! ```
//! let report = onephase_lab::run(onephase_lab::Scenario::Stampede, 7);
//! let burst = report.get("burst: origin calls").unwrap();
//! assert_eq!((burst.naive, burst.onephase), (1000.0, 1.0));
//! println!("{}", report.table());
//! ```

pub mod herd;
mod report;
mod sim;

pub use report::{Report, Row};
pub use sim::SimClock;

/// A scenario the lab can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// [`herd::stampede`].
    Stampede,
    /// [`herd::retry_storm`].
    RetryStorm,
    /// [`herd::reconnect_flood`].
    ReconnectFlood,
}

impl Scenario {
    /// Every scenario, in the order the lab prints them.
    pub const ALL: [Scenario; 3] = [
        Scenario::Stampede,
        Scenario::RetryStorm,
        Scenario::ReconnectFlood,
    ];

    /// The name the CLI knows it by.
    pub fn name(self) -> &'static str {
        match self {
            Self::Stampede => "stampede",
            Self::RetryStorm => "retry-storm",
            Self::ReconnectFlood => "reconnect-flood",
        }
    }

    /// The scenario called `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Runs `scenario` with `seed` on a paused-time runtime of its own (on a thread of its own,
/// so it may be called from inside another runtime).
pub fn run(scenario: Scenario, seed: u64) -> Report {
    let work = move || {
        sim::block_on(async move {
            match scenario {
                Scenario::Stampede => herd::stampede(seed).await,
                Scenario::RetryStorm => herd::retry_storm(seed).await,
                Scenario::ReconnectFlood => herd::reconnect_flood(seed).await,
            }
        })
    };
    match std::thread::spawn(work).join() {
        Ok(report) => report,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
