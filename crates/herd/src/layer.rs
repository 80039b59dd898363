//! Tower layers: a circuit breaker or an adaptive throttle in front of a service, and retries
//! around it.
//!
//! Tower ships retries but no circuit breaker. [`GateLayer`] puts any [`Gate`] (a
//! [`CircuitBreaker`] or an [`AdaptiveThrottle`]) in front of a service: a refused call fails
//! at once with the gate's error, boxed, without reaching the service; an admitted call's
//! result is classified into an [`Outcome`] and recorded. A call dropped before it finished
//! is [`Outcome::Ignored`].
//!
//! ```
//! use std::time::Duration;
//! use onephase_herd::layer::GateLayer;
//! use onephase_herd::{BreakerConfig, CircuitBreaker, Outcome};
//! use tower::{Layer, Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let breaker = CircuitBreaker::new("echo", BreakerConfig::default());
//! let layer = GateLayer::new(breaker, |r: &Result<u32, std::io::Error>| match r {
//!     Ok(_) => Outcome::Success,
//!     Err(_) => Outcome::Failure,
//! });
//! let mut service = layer.layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
//! assert_eq!(service.ready().await.unwrap().call(7).await.unwrap(), 7);
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{BoxError, Layer, Service, ServiceExt as _};

use crate::{
    AdaptiveThrottle, BreakerOpen, BreakerPermit, CircuitBreaker, Outcome, Retry, ThrottleTicket,
    Throttled, Verdict,
};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Something that admits or refuses calls and learns from their outcomes.
pub trait Gate: Clone + Send + Sync + 'static {
    /// Held for the duration of an admitted call.
    type Ticket: Send + 'static;
    /// Why a call was refused.
    type Refusal: std::error::Error + Send + Sync + 'static;
    /// Admits a call or refuses it.
    fn enter(&self) -> Result<Self::Ticket, Self::Refusal>;
    /// Records how an admitted call ended.
    fn exit(&self, ticket: Self::Ticket, outcome: Outcome);
}

impl Gate for CircuitBreaker {
    type Ticket = BreakerPermit;
    type Refusal = BreakerOpen;
    fn enter(&self) -> Result<BreakerPermit, BreakerOpen> {
        self.admit()
    }
    fn exit(&self, permit: BreakerPermit, outcome: Outcome) {
        self.record(permit, outcome);
    }
}

impl Gate for Arc<AdaptiveThrottle> {
    type Ticket = ThrottleTicket;
    type Refusal = Throttled;
    fn enter(&self) -> Result<ThrottleTicket, Throttled> {
        self.admit()
    }
    fn exit(&self, ticket: ThrottleTicket, outcome: Outcome) {
        match outcome {
            Outcome::Success | Outcome::Failure => self.record(ticket, true),
            Outcome::Overloaded => self.record(ticket, false),
            Outcome::Ignored => drop(ticket),
        }
    }
}

/// Puts a [`Gate`] in front of a service. See the [module docs](self).
pub struct GateLayer<G, C> {
    gate: G,
    classify: Arc<C>,
}

impl<G: Clone, C> Clone for GateLayer<G, C> {
    fn clone(&self) -> Self {
        Self {
            gate: self.gate.clone(),
            classify: Arc::clone(&self.classify),
        }
    }
}

impl<G, C> GateLayer<G, C> {
    /// Gates calls through `gate`, classifying each result with `classify`.
    pub fn new(gate: G, classify: C) -> Self {
        Self {
            gate,
            classify: Arc::new(classify),
        }
    }
}

impl<S, G: Clone, C> Layer<S> for GateLayer<G, C> {
    type Service = Gated<S, G, C>;
    fn layer(&self, inner: S) -> Self::Service {
        Gated {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`GateLayer`] makes.
pub struct Gated<S, G, C> {
    inner: S,
    layer: GateLayer<G, C>,
}

impl<S: Clone, G: Clone, C> Clone for Gated<S, G, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S, G, C, Req> Service<Req> for Gated<S, G, C>
where
    S: Service<Req> + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    G: Gate,
    C: Fn(&Result<S::Response, S::Error>) -> Outcome + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let ticket = match self.layer.gate.enter() {
            Ok(ticket) => ticket,
            Err(refusal) => return Box::pin(std::future::ready(Err(refusal.into()))),
        };
        let future = self.inner.call(req);
        let (gate, classify) = (self.layer.gate.clone(), Arc::clone(&self.layer.classify));
        Box::pin(async move {
            let mut pending = PendingTicket(Some((gate, ticket)));
            let result = future.await;
            let outcome = classify(&result);
            if let Some((gate, ticket)) = pending.0.take() {
                gate.exit(ticket, outcome);
            }
            result.map_err(Into::into)
        })
    }
}

/// Records [`Outcome::Ignored`] if the call is dropped before it finished.
struct PendingTicket<G: Gate>(Option<(G, G::Ticket)>);

impl<G: Gate> Drop for PendingTicket<G> {
    fn drop(&mut self) {
        if let Some((gate, ticket)) = self.0.take() {
            gate.exit(ticket, Outcome::Ignored);
        }
    }
}

/// Retries calls to a service under a [`Retry`] policy, classifying each result with a
/// function returning a [`Verdict`] (for HTTP, [`crate::http::verdict`]). Requests are cloned
/// for each attempt.
pub struct RetryLayer<C> {
    retry: Retry,
    classify: Arc<C>,
}

impl<C> Clone for RetryLayer<C> {
    fn clone(&self) -> Self {
        Self {
            retry: self.retry.clone(),
            classify: Arc::clone(&self.classify),
        }
    }
}

impl<C> RetryLayer<C> {
    /// Retries under `retry`, deciding with `classify`.
    pub fn new(retry: Retry, classify: C) -> Self {
        Self {
            retry,
            classify: Arc::new(classify),
        }
    }
}

impl<S, C> Layer<S> for RetryLayer<C> {
    type Service = Retrying<S, C>;
    fn layer(&self, inner: S) -> Self::Service {
        Retrying {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`RetryLayer`] makes.
pub struct Retrying<S, C> {
    inner: S,
    layer: RetryLayer<C>,
}

impl<S: Clone, C> Clone for Retrying<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S, C, Req> Service<Req> for Retrying<S, C>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    Req: Clone + Send + 'static,
    C: Fn(&Result<S::Response, S::Error>) -> Verdict + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // The first attempt uses the service that was made ready; later ones wait for a clone.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        // Behind a mutex so that the future is Send without asking `Req` or `S` to be Sync.
        let shared = std::sync::Mutex::new((req, self.inner.clone()));
        Box::pin(async move {
            let mut first = Some(ready);
            layer
                .retry
                .run(
                    |_attempt| {
                        let (req, inner) = {
                            let guard = shared.lock().unwrap_or_else(|e| e.into_inner());
                            (guard.0.clone(), guard.1.clone())
                        };
                        let service = first.take();
                        async move {
                            match service {
                                Some(mut ready) => ready.call(req).await,
                                None => inner.oneshot(req).await,
                            }
                        }
                    },
                    |result| (layer.classify)(result),
                )
                .await
        })
    }
}
