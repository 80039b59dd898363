//! Reading and sending herd signals over HTTP.
//!
//! A client respects three ways a server says "not now":
//!
//! - `x-envoy-overloaded` (any value): the server, or an Envoy in front of it, is shedding
//!   load. Envoy itself never retries a response carrying it. Here it means
//!   [`Verdict::DoNotRetry`].
//! - `grpc-retry-pushback-ms` (gRFC A6): a non-negative number of milliseconds to wait before
//!   retrying, or a negative or malformed value meaning "do not retry".
//! - `Retry-After` in seconds on a 429 or 503: wait at least that long.
//!
//! A server says it with [`mark_overloaded`], which sets `x-envoy-overloaded` (so an Envoy
//! between the two respects it too) and `Retry-After`.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Response, StatusCode, header};

use crate::{Outcome, Verdict};

/// `x-envoy-overloaded`: the response was refused for overload; do not retry it.
pub const OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");
/// `grpc-retry-pushback-ms`: how long to wait before retrying; negative: do not retry.
pub const RETRY_PUSHBACK_MS: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// Whether and when to retry after `response`.
///
/// Overload signals first (see the [module docs](self)); then 408, 429, 502, 503 and 504 are
/// retried (after `Retry-After` if given); everything else (successes, other client errors,
/// and 500, which may have done the work) is [`Verdict::Done`].
pub fn verdict<B>(response: &Response<B>) -> Verdict {
    if response.headers().contains_key(OVERLOADED) {
        return Verdict::DoNotRetry;
    }
    if let Some(value) = response.headers().get(RETRY_PUSHBACK_MS) {
        return match value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
        {
            Some(ms) if ms >= 0 => Verdict::RetryAfter(Duration::from_millis(ms.unsigned_abs())),
            _ => Verdict::DoNotRetry,
        };
    }
    let status = response.status();
    let retryable = matches!(
        status,
        StatusCode::REQUEST_TIMEOUT
            | StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT
    );
    if !retryable {
        return Verdict::Done;
    }
    match retry_after(response) {
        Some(wait) => Verdict::RetryAfter(wait),
        None => Verdict::Retry,
    }
}

/// How `response` reflects on the server's health: 429, 503 and the overload headers are
/// [`Outcome::Overloaded`], other 5xx are failures, everything else (4xx included: the
/// client's fault) a success.
pub fn outcome<B>(response: &Response<B>) -> Outcome {
    let status = response.status();
    if status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::SERVICE_UNAVAILABLE
        || response.headers().contains_key(OVERLOADED)
        || matches!(verdict(response), Verdict::DoNotRetry)
    {
        Outcome::Overloaded
    } else if status.is_server_error() {
        Outcome::Failure
    } else {
        Outcome::Success
    }
}

/// `Retry-After` as a number of seconds, if present and well-formed (an HTTP date is not
/// read).
pub fn retry_after<B>(response: &Response<B>) -> Option<Duration> {
    let value = response.headers().get(header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Marks `response` as refused for overload: sets `x-envoy-overloaded: true` and, when given,
/// `Retry-After` (whole seconds, rounded up).
pub fn mark_overloaded<B>(response: &mut Response<B>, retry_after: Option<Duration>) {
    let headers = response.headers_mut();
    headers.insert(OVERLOADED, HeaderValue::from_static("true"));
    if let Some(wait) = retry_after {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, headers: &[(&str, &str)]) -> Response<()> {
        let mut builder = Response::builder().status(status);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("valid response")
    }

    #[test]
    fn overload_signals_forbid_retries() {
        assert_eq!(
            verdict(&response(503, &[("x-envoy-overloaded", "true")])),
            Verdict::DoNotRetry
        );
        assert_eq!(
            verdict(&response(503, &[("grpc-retry-pushback-ms", "-1")])),
            Verdict::DoNotRetry
        );
        assert_eq!(
            verdict(&response(503, &[("grpc-retry-pushback-ms", "soon")])),
            Verdict::DoNotRetry
        );
        assert_eq!(
            verdict(&response(503, &[("grpc-retry-pushback-ms", "250")])),
            Verdict::RetryAfter(Duration::from_millis(250))
        );
    }

    #[test]
    fn statuses_and_retry_after() {
        assert_eq!(verdict(&response(200, &[])), Verdict::Done);
        assert_eq!(verdict(&response(404, &[])), Verdict::Done);
        assert_eq!(verdict(&response(500, &[])), Verdict::Done);
        assert_eq!(verdict(&response(502, &[])), Verdict::Retry);
        assert_eq!(
            verdict(&response(429, &[("retry-after", "3")])),
            Verdict::RetryAfter(Duration::from_secs(3))
        );
        assert_eq!(
            verdict(&response(
                503,
                &[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]
            )),
            Verdict::Retry
        );
        assert_eq!(outcome(&response(404, &[])), Outcome::Success);
        assert_eq!(outcome(&response(500, &[])), Outcome::Failure);
        assert_eq!(outcome(&response(429, &[])), Outcome::Overloaded);
    }

    #[test]
    fn a_marked_response_reads_as_do_not_retry() {
        let mut r = response(503, &[]);
        mark_overloaded(&mut r, Some(Duration::from_millis(1500)));
        assert_eq!(verdict(&r), Verdict::DoNotRetry);
        assert_eq!(retry_after(&r), Some(Duration::from_secs(2)));
    }
}
