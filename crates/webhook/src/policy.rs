//! What a sender does after each attempt: the retry schedule with jitter, and what an
//! endpoint's answer means (delivered, retry, retry later as asked, slow down, gone).
//!
//! ```
//! use std::time::Duration;
//! use onephase_webhook::policy::{RetrySchedule, Verdict, judge};
//! use onephase_core::rand::{SeedableRng, rngs::StdRng};
//!
//! let schedule = RetrySchedule::default(); // now, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h
//! assert_eq!(schedule.attempts(), 8);
//! let mut rng = StdRng::seed_from_u64(1);
//! let second = schedule.delay_before(2, &mut rng).expect("8 attempts");
//! assert!(second >= Duration::from_secs(4) && second <= Duration::from_secs(6));
//! assert!(schedule.delay_before(9, &mut rng).is_none()); // exhausted: dead letter
//!
//! assert_eq!(judge(204, None, 0), Verdict::Delivered);
//! assert_eq!(judge(410, None, 0), Verdict::Gone);
//! assert!(matches!(judge(503, Some("120"), 0), Verdict::Retry { slow_down: true, retry_after: Some(_) }));
//! ```

use std::time::Duration;

use onephase_core::rand::{Rng, RngExt as _};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

/// When each attempt is made, counted from the previous one: the first entry is the delay
/// before the first attempt (usually zero).
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
    jitter: f64,
}

impl Default for RetrySchedule {
    /// The Standard Webhooks schedule: immediately, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and
    /// 10 h (about 28 hours in all), each spread by ±20%.
    fn default() -> Self {
        let secs = [0, 5, 300, 1800, 7200, 18_000, 36_000, 36_000];
        Self {
            delays: secs.into_iter().map(Duration::from_secs).collect(),
            jitter: 0.2,
        }
    }
}

/// A schedule that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid retry schedule: {0}")]
pub struct InvalidSchedule(&'static str);

impl RetrySchedule {
    /// A schedule of `delays` (1 to 50 of them, each at most a week), each spread by
    /// ±`jitter` (0 to 1) of itself so that endpoints that failed together are not retried
    /// together.
    pub fn new(delays: Vec<Duration>, jitter: f64) -> Result<Self, InvalidSchedule> {
        if delays.is_empty() || delays.len() > 50 {
            return Err(InvalidSchedule("1 to 50 attempts"));
        }
        if delays.iter().any(|d| *d > Duration::from_secs(7 * 86_400)) {
            return Err(InvalidSchedule("each delay at most 7 days"));
        }
        if !(0.0..=1.0).contains(&jitter) {
            return Err(InvalidSchedule("jitter is a fraction from 0 to 1"));
        }
        Ok(Self { delays, jitter })
    }

    /// How many attempts a message gets.
    pub fn attempts(&self) -> u32 {
        u32::try_from(self.delays.len()).unwrap_or(u32::MAX)
    }

    /// The delay before attempt `attempt` (1-based), jittered; `None` once the schedule is
    /// exhausted (the message goes to the dead letters).
    pub fn delay_before(&self, attempt: u32, rng: &mut impl Rng) -> Option<Duration> {
        let index = usize::try_from(attempt.checked_sub(1)?).ok()?;
        let base = *self.delays.get(index)?;
        if base.is_zero() || self.jitter == 0.0 {
            return Some(base);
        }
        let factor = 1.0 + self.jitter * (rng.random::<f64>() * 2.0 - 1.0);
        Some(base.mul_f64(factor))
    }
}

/// What an endpoint's answer means for the message and the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: delivered.
    Delivered,
    /// 410 Gone: the receiver asks never to be called again; disable the endpoint.
    Gone,
    /// Anything else: try again per the schedule, not before `retry_after` if the endpoint
    /// said so, and with `slow_down` the endpoint is overloaded (429, 502, 503, 504): lower
    /// its concurrency for a while.
    Retry {
        /// The endpoint's `Retry-After`, if it sent one that reads.
        retry_after: Option<Duration>,
        /// Whether the answer says the endpoint is overloaded.
        slow_down: bool,
    },
}

/// Judges an answer with `status` and an optional `Retry-After` header, at `now` (Unix
/// seconds, for the HTTP-date form of `Retry-After`).
pub fn judge(status: u16, retry_after: Option<&str>, now: i64) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        410 => Verdict::Gone,
        _ => Verdict::Retry {
            retry_after: retry_after.and_then(|v| parse_retry_after(v, now)),
            slow_down: matches!(status, 429 | 502 | 503 | 504),
        },
    }
}

/// Reads `Retry-After`: delay-seconds (`120`) or an HTTP-date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`), relative to `now` (Unix seconds). A date in the past is
/// zero.
pub fn parse_retry_after(value: &str, now: i64) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = OffsetDateTime::parse(value, &Rfc2822)
        .ok()?
        .unix_timestamp();
    Some(Duration::from_secs(
        u64::try_from(at.saturating_sub(now)).unwrap_or(0),
    ))
}

/// When the next attempt goes out: the scheduled delay, or the endpoint's `Retry-After` if it
/// asked for longer, but never longer than `max_retry_after` (an endpoint cannot park its
/// messages for a month).
pub fn next_delay(
    scheduled: Duration,
    retry_after: Option<Duration>,
    max_retry_after: Duration,
) -> Duration {
    match retry_after {
        Some(asked) if asked > scheduled => asked.min(max_retry_after.max(scheduled)),
        _ => scheduled,
    }
}

#[cfg(test)]
mod tests {
    use onephase_core::rand::SeedableRng;
    use onephase_core::rand::rngs::StdRng;
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn answers_mean_delivered_gone_retry_or_slow_down() {
        assert_eq!(judge(200, None, 0), Verdict::Delivered);
        assert_eq!(judge(299, None, 0), Verdict::Delivered);
        assert_eq!(judge(410, None, 0), Verdict::Gone);
        for status in [429, 502, 503, 504] {
            assert!(matches!(
                judge(status, None, 0),
                Verdict::Retry {
                    slow_down: true,
                    ..
                }
            ));
        }
        for status in [301, 400, 404, 500] {
            assert_eq!(
                judge(status, None, 0),
                Verdict::Retry {
                    retry_after: None,
                    slow_down: false
                }
            );
        }
    }

    #[test]
    fn retry_after_reads_both_forms_and_is_bounded() {
        assert_eq!(parse_retry_after("120", 0), Some(Duration::from_secs(120)));
        // 2015-10-21T07:28:00Z is 1445412480.
        let now = 1_445_412_480 - 30;
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now + 3600),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", 0), None);
        assert_eq!(parse_retry_after("-5", 0), None);
        let hour = Duration::from_secs(3600);
        let five = Duration::from_secs(5);
        assert_eq!(
            next_delay(five, Some(Duration::from_secs(60)), hour),
            Duration::from_secs(60)
        );
        assert_eq!(
            next_delay(five, Some(Duration::from_secs(86_400 * 30)), hour),
            hour
        );
        assert_eq!(next_delay(five, Some(Duration::from_secs(1)), hour), five);
        assert_eq!(
            next_delay(
                Duration::from_secs(7200),
                Some(Duration::from_secs(86_400)),
                hour
            ),
            Duration::from_secs(7200)
        );
    }

    #[test]
    fn schedules_are_checked() {
        assert!(RetrySchedule::new(vec![], 0.1).is_err());
        assert!(RetrySchedule::new(vec![Duration::from_secs(8 * 86_400)], 0.1).is_err());
        assert!(RetrySchedule::new(vec![Duration::ZERO], 1.5).is_err());
        assert!(RetrySchedule::new(vec![Duration::ZERO, Duration::from_secs(1)], 0.0).is_ok());
    }

    proptest! {
        #[test]
        fn jitter_stays_within_its_fraction(seed in any::<u64>(), attempt in 1_u32..=8) {
            let schedule = RetrySchedule::default();
            let base = [0, 5, 300, 1800, 7200, 18_000, 36_000, 36_000][attempt as usize - 1] as f64;
            let mut rng = StdRng::seed_from_u64(seed);
            let delay = schedule.delay_before(attempt, &mut rng).map(|d| d.as_secs_f64());
            prop_assert!(delay.is_some_and(|d| d >= base * 0.8 - 1e-6 && d <= base * 1.2 + 1e-6));
            prop_assert!(schedule.delay_before(9, &mut rng).is_none());
            prop_assert!(schedule.delay_before(0, &mut rng).is_none());
        }
    }
}
