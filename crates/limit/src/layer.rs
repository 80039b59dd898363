//! A tower layer that rate-limits requests: 429 with `Retry-After` when refused, and the IETF
//! `RateLimit-Policy` / `RateLimit` headers on every answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::ConnectInfo;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use tower::{Layer, Service};

use crate::{Decision, Limiter};

type KeyOf<B> = Arc<dyn Fn(&Request<B>) -> Option<String> + Send + Sync>;

/// `RateLimit-Policy`, from the IETF HTTPAPI draft on rate-limit headers.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`, from the same draft.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Keys requests by the peer's IP address, from axum's `ConnectInfo<SocketAddr>` (serve with
/// `into_make_service_with_connect_info::<SocketAddr>()`). Behind a proxy, key by the header it
/// sets instead ([`by_header`]).
pub fn by_peer_ip<B>() -> impl Fn(&Request<B>) -> Option<String> + Send + Sync + 'static {
    |req: &Request<B>| {
        req.extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string())
    }
}

/// Keys requests by the value of `name` (an API key, a tenant id, `X-Forwarded-For`'s first
/// address...). Requests without it are not limited.
pub fn by_header<B>(
    name: &'static str,
) -> impl Fn(&Request<B>) -> Option<String> + Send + Sync + 'static {
    move |req: &Request<B>| {
        let value = req.headers().get(name)?.to_str().ok()?;
        let first = value.split(',').next()?.trim();
        (!first.is_empty()).then(|| first.to_owned())
    }
}

/// Rate-limits requests through a [`Limiter`], keyed by a function of the request, one unit
/// per request. A request with no key passes unlimited. A refused request gets 429 with
/// `Retry-After` (whole seconds, rounded up) and a problem document, and never reaches the
/// inner service; every answer carries `RateLimit-Policy` and `RateLimit`. When the limiter's
/// store fails and its fail mode is an error, the request gets 503.
pub struct RateLimitLayer<B> {
    limiter: Arc<dyn Limiter>,
    name: Arc<str>,
    key: KeyOf<B>,
}

impl<B> Clone for RateLimitLayer<B> {
    fn clone(&self) -> Self {
        Self {
            limiter: Arc::clone(&self.limiter),
            name: Arc::clone(&self.name),
            key: Arc::clone(&self.key),
        }
    }
}

impl<B> RateLimitLayer<B> {
    /// Limits requests by `key(request)` through `limiter`, naming the policy `name` in the
    /// headers.
    pub fn new(
        limiter: Arc<dyn Limiter>,
        name: &str,
        key: impl Fn(&Request<B>) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            limiter,
            name: Arc::from(name),
            key: Arc::new(key),
        }
    }
}

impl<S, B> Layer<S> for RateLimitLayer<B> {
    type Service = RateLimit<S, B>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`RateLimitLayer`] makes.
pub struct RateLimit<S, B> {
    inner: S,
    layer: RateLimitLayer<B>,
}

impl<S: Clone, B> Clone for RateLimit<S, B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S, B, R> Service<Request<B>> for RateLimit<S, B>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: From<String> + Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        let key = (layer.key)(&req);
        async move {
            let Some(key) = key else {
                return inner.call(req).await;
            };
            let decision = match layer.limiter.check(&key, 1).await {
                Ok(d) => d,
                Err(e) => {
                    return Ok(problem(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Rate limit unavailable",
                        &e.to_string(),
                    ));
                }
            };
            let mut response = if decision.allowed {
                inner.call(req).await?
            } else {
                let mut r = problem(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many requests",
                    &format!(
                        "rate limit {:?} exceeded for this client; retry later",
                        &*layer.name
                    ),
                );
                let secs = decision
                    .retry_after
                    .map_or(1, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
                if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
                r
            };
            add_headers(&mut response, &layer, &decision);
            Ok(response)
        }
        .boxed()
    }
}

fn add_headers<R>(response: &mut Response<R>, layer: &RateLimitLayer<impl Sized>, d: &Decision) {
    let policy = layer.limiter.policy();
    let window = policy.period().as_secs().max(1);
    let name = layer.name.replace(['"', '\\'], "");
    let reset = d.reset_after.as_secs() + u64::from(d.reset_after.subsec_nanos() > 0);
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{name}\";q={};w={window}", policy.limit())) {
        headers.insert(RATELIMIT_POLICY, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{name}\";r={};t={reset}", d.remaining)) {
        headers.insert(RATELIMIT, v);
    }
}

fn problem<R: From<String>>(status: StatusCode, title: &str, detail: &str) -> Response<R> {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    })
    .to_string();
    let mut response = Response::new(R::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}
