//! The tower layers around real services: the breaker refusing without calling, probing, and
//! freeing a probe slot when a call is dropped; retries obeying HTTP's signals.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::{Response, StatusCode};
use onephase_core::{Backoff, Jitter, ManualClock};
use onephase_herd::layer::{GateLayer, RetryLayer};
use onephase_herd::{
    AdaptiveThrottle, BreakerConfig, BreakerOpen, BreakerState, CircuitBreaker, Outcome, Random,
    Retry, Throttled,
};
use tower::{Layer, Service, ServiceExt, service_fn};

type Reply = Result<Response<String>, std::io::Error>;

fn status_service(
    calls: Arc<AtomicU32>,
    status: impl Fn(u32) -> (StatusCode, Vec<(&'static str, &'static str)>) + Clone + Send + 'static,
) -> impl Service<u32, Response = Response<String>, Error = std::io::Error, Future: Send> + Clone {
    service_fn(move |_req: u32| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        let (code, headers) = status(n);
        let mut response = Response::new(String::new());
        *response.status_mut() = code;
        for (k, v) in headers {
            response
                .headers_mut()
                .insert(k, http::HeaderValue::from_static(v));
        }
        std::future::ready(Ok::<_, std::io::Error>(response))
    })
}

fn classify(r: &Reply) -> Outcome {
    match r {
        Ok(response) => onephase_herd::http::outcome(response),
        Err(_) => Outcome::Failure,
    }
}

#[tokio::test]
async fn an_open_breaker_refuses_without_calling_and_a_probe_closes_it() {
    let clock = ManualClock::default();
    let breaker = CircuitBreaker::new(
        "layer",
        BreakerConfig {
            open_jitter: 0.0,
            probes: 1,
            ..BreakerConfig::default()
        },
    )
    .with_clock(Arc::new(clock.clone()))
    .with_random(Random::seeded(1));
    let calls = Arc::new(AtomicU32::new(0));
    let healthy_from = 5;
    let inner = status_service(Arc::clone(&calls), move |n| {
        if n < healthy_from {
            (StatusCode::INTERNAL_SERVER_ERROR, vec![])
        } else {
            (StatusCode::OK, vec![])
        }
    });
    let mut service = GateLayer::new(breaker.clone(), classify).layer(inner);
    for _ in 0..5 {
        let r = service.ready().await.expect("ready").call(0).await;
        assert_eq!(r.expect("a response").status(), 500);
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    let refused = service.ready().await.expect("ready").call(0).await;
    let err = refused.expect_err("refused");
    let open = err.downcast_ref::<BreakerOpen>().expect("a BreakerOpen");
    assert_eq!(open.retry_in, Some(Duration::from_secs(5)));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        5,
        "the refused call never reached the service"
    );

    clock.advance(Duration::from_secs(5));
    let probe = service.ready().await.expect("ready").call(0).await;
    assert_eq!(probe.expect("the probe went through").status(), 200);
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[tokio::test]
async fn a_dropped_probe_frees_its_slot() {
    let clock = ManualClock::default();
    let breaker = CircuitBreaker::new(
        "probe",
        BreakerConfig {
            consecutive_failures: Some(1),
            open_jitter: 0.0,
            probes: 1,
            ..BreakerConfig::default()
        },
    )
    .with_clock(Arc::new(clock.clone()))
    .with_random(Random::seeded(1));
    let permit = breaker.admit().expect("closed");
    breaker.record(permit, Outcome::Failure);
    clock.advance(Duration::from_secs(5));
    // A probe that hangs until dropped.
    let hanging = service_fn(|_: u32| std::future::pending::<Reply>());
    let mut service = GateLayer::new(breaker.clone(), classify).layer(hanging);
    let call = service.ready().await.expect("ready").call(0);
    assert!(breaker.admit().is_err(), "the only probe slot is taken");
    drop(call);
    let probe = breaker.admit().expect("the slot was freed");
    breaker.record(probe, Outcome::Success);
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[tokio::test]
async fn the_throttle_layer_refuses_locally_when_the_backend_sheds() {
    let throttle = Arc::new(AdaptiveThrottle::new("layer"));
    let calls = Arc::new(AtomicU32::new(0));
    let inner = status_service(Arc::clone(&calls), |_| {
        (StatusCode::TOO_MANY_REQUESTS, vec![])
    });
    let mut service = GateLayer::new(Arc::clone(&throttle), classify).layer(inner);
    let mut refused = 0;
    for _ in 0..1_000 {
        match service.ready().await.expect("ready").call(0).await {
            Ok(r) => assert_eq!(r.status(), 429),
            Err(e) => {
                assert!(e.is::<Throttled>(), "{e}");
                refused += 1;
            }
        }
    }
    assert_eq!(refused + calls.load(Ordering::SeqCst), 1_000);
    assert!(refused > 800, "{refused}");
}

fn http_retry() -> RetryLayer<impl Fn(&Reply) -> onephase_herd::Verdict + Clone> {
    let retry = Retry::new("layer").max_attempts(3).backoff(
        Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(10),
            Jitter::Full,
        )
        .expect("valid"),
    );
    RetryLayer::new(retry, |r: &Reply| match r {
        Ok(response) => onephase_herd::http::verdict(response),
        Err(_) => onephase_herd::Verdict::Retry,
    })
}

/// Sends one request through the HTTP retry layer to a service answering `status(n)` to its
/// `n`-th call; the final status and how many calls were made.
async fn retried(
    status: impl Fn(u32) -> (StatusCode, Vec<(&'static str, &'static str)>) + Clone + Send + 'static,
) -> (u16, u32) {
    let calls = Arc::new(AtomicU32::new(0));
    let inner = status_service(Arc::clone(&calls), status);
    let r = http_retry()
        .layer(inner)
        .oneshot(0)
        .await
        .expect("a response");
    (r.status().as_u16(), calls.load(Ordering::SeqCst))
}

#[tokio::test]
async fn the_retry_layer_retries_a_503_and_respects_an_overloaded_one() {
    let unavailable = retried(|_| (StatusCode::SERVICE_UNAVAILABLE, vec![])).await;
    assert_eq!(unavailable, (503, 3));
    let overloaded = retried(|_| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            vec![("x-envoy-overloaded", "true")],
        )
    })
    .await;
    assert_eq!(overloaded, (503, 1));
    let blip = retried(|n| {
        if n == 0 {
            (StatusCode::BAD_GATEWAY, vec![])
        } else {
            (StatusCode::OK, vec![])
        }
    })
    .await;
    assert_eq!(blip, (200, 2));
}
