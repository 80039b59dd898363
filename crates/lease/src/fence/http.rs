//! A tower middleware that fences HTTP requests.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use http::{HeaderValue, Request, Response, StatusCode, header};
use tower::{Layer, Service};

use super::Fences;
use crate::{FENCING_TOKEN_HEADER, FenceError, FencingToken};

type ResourceOf<B> = Arc<dyn Fn(&Request<B>) -> String + Send + Sync>;

/// Fences every request it wraps: reads the [`FENCING_TOKEN_HEADER`], admits it to the
/// request's resource (by default its path) through [`Fences`], and holds the resource until
/// the response is ready, so that a newer holder's request cannot be overtaken by an older
/// one's. The token is put in the request's extensions for handlers that also fence a SQL
/// write with [`check`](super::check).
///
/// Refusals are RFC 9457 problem documents: 428 without a token, 400 for a token that is not
/// a decimal number, 409 for a stale token. The inner service is not called for any of them.
///
/// The fences live in this process: behind several replicas, fence the write itself
/// ([`check`](super::check) in its transaction) instead.
pub struct FenceLayer<B> {
    fences: Fences,
    resource: ResourceOf<B>,
}

impl<B> Clone for FenceLayer<B> {
    fn clone(&self) -> Self {
        Self {
            fences: self.fences.clone(),
            resource: Arc::clone(&self.resource),
        }
    }
}

impl<B> FenceLayer<B> {
    /// Fences requests per path, in `fences`.
    pub fn new(fences: Fences) -> Self {
        Self {
            fences,
            resource: Arc::new(|req: &Request<B>| req.uri().path().to_owned()),
        }
    }

    /// Fences requests per `resource(request)` instead of per path.
    pub fn with_resource(
        mut self,
        resource: impl Fn(&Request<B>) -> String + Send + Sync + 'static,
    ) -> Self {
        self.resource = Arc::new(resource);
        self
    }
}

impl<S, B> Layer<S> for FenceLayer<B> {
    type Service = FenceService<S, B>;

    fn layer(&self, inner: S) -> Self::Service {
        FenceService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`FenceLayer`] makes.
pub struct FenceService<S, B> {
    inner: S,
    layer: FenceLayer<B>,
}

impl<S: Clone, B> Clone for FenceService<S, B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S, B, R> Service<Request<B>> for FenceService<S, B>
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

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The clone that was driven to readiness serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let fences = self.layer.fences.clone();
        let resource = (self.layer.resource)(&req);
        async move {
            let token = match req.headers().get(FENCING_TOKEN_HEADER) {
                None => {
                    return Ok(problem(
                        StatusCode::PRECONDITION_REQUIRED,
                        "Fencing token required",
                        &format!(
                            "send the lease's fencing token in the {FENCING_TOKEN_HEADER} header"
                        ),
                    ));
                }
                Some(value) => match value
                    .to_str()
                    .ok()
                    .and_then(|v| v.parse::<FencingToken>().ok())
                {
                    Some(token) => token,
                    None => {
                        return Ok(problem(
                            StatusCode::BAD_REQUEST,
                            "Malformed fencing token",
                            &format!("{FENCING_TOKEN_HEADER} must be a decimal number"),
                        ));
                    }
                },
            };
            let admitted = match fences.enter(&resource, token).await {
                Ok(admitted) => admitted,
                Err(e @ FenceError::Stale { .. }) => {
                    return Ok(problem(
                        StatusCode::CONFLICT,
                        "Stale fencing token",
                        &e.to_string(),
                    ));
                }
                Err(e) => {
                    return Ok(problem(
                        StatusCode::BAD_REQUEST,
                        "Unusable fencing token",
                        &e.to_string(),
                    ));
                }
            };
            req.extensions_mut().insert(token);
            let response = inner.call(req).await;
            drop(admitted);
            response
        }
        .boxed()
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
