//! What a command shows on standard error while it waits: a spinner with a message that says
//! what it waits for, drawn only when standard error is a terminal (a script or a pipe sees
//! nothing, and standard output stays the command's answer alone).

use std::future::Future;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::time::Instant;

/// A spinner on standard error; cleared when dropped.
pub struct Waiting(ProgressBar);

impl Waiting {
    /// Starts a spinner saying `message`.
    pub fn new(message: impl Into<String>) -> Self {
        // indicatif draws nothing when standard error is not a terminal.
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
            bar.set_style(style);
        }
        bar.set_message(message.into());
        bar.enable_steady_tick(Duration::from_millis(120));
        Self(bar)
    }

    /// Says something else.
    pub fn say(&self, message: impl Into<String>) {
        self.0.set_message(message.into());
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// A bar of how much of a queue has drained: its length is the most ever seen waiting, its
/// position how many of those are done; cleared when dropped.
pub struct Draining {
    bar: ProgressBar,
    most: u64,
}

impl Draining {
    /// Starts an empty bar whose counts are `what` (`deliveries`, say).
    pub fn new(what: &str) -> Self {
        let bar = ProgressBar::new(0);
        let template = format!("{{bar:30}} {{pos}}/{{len}} {what} done, {{msg}}");
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style);
        }
        Self { bar, most: 0 }
    }

    /// `waiting` are still waiting, with `remaining` left before giving up.
    pub fn update(&mut self, waiting: u64, remaining: Duration) {
        self.most = self.most.max(waiting);
        self.bar.set_length(self.most);
        self.bar.set_position(self.most - waiting);
        self.bar.set_message(left(remaining));
    }
}

impl Drop for Draining {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// Awaits `work`, counting down from `within` on standard error meanwhile (`what: 12 s left`).
pub async fn counting_down<T>(what: &str, within: Duration, work: impl Future<Output = T>) -> T {
    let deadline = Instant::now() + within;
    let waiting = Waiting::new(format!("{what}: {}", left(within)));
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => {
                waiting.say(format!("{what}: {}", left(deadline.saturating_duration_since(Instant::now()))));
            }
        }
    }
}

/// `remaining` as a countdown: `12 s left`, `2 min 5 s left`.
pub fn left(remaining: Duration) -> String {
    let secs = remaining.as_secs();
    if secs >= 60 {
        format!("{} min {} s left", secs / 60, secs % 60)
    } else {
        format!("{secs} s left")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn countdowns_read_in_minutes_past_one() {
        assert_eq!(left(Duration::from_millis(12_900)), "12 s left");
        assert_eq!(left(Duration::from_secs(125)), "2 min 5 s left");
        assert_eq!(left(Duration::ZERO), "0 s left");
    }
}
