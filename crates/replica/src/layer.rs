//! The consistency token over HTTP: a tower layer that reads it from requests and writes the
//! newest one on responses.
//!
//! A client sends the token of its last write (or last response) in the
//! [`consistency-token`](crate::HEADER) header; the layer parses it (a malformed one is
//! answered `400` with a problem document, before the service runs) and hands the service a
//! [`Consistency`] in the request's extensions. A handler routes its reads with
//! [`Consistency::token`], and after a write calls [`Consistency::advance`] with the token of
//! its commit. The response carries the newest of the two, so the client's next request, to
//! this service or any other reading the same cluster, sees at least as much.
//!
//! ```
//! use axum::{Extension, Router, routing::get};
//! use onephase_replica::layer::{Consistency, ConsistencyLayer};
//!
//! async fn show(Extension(consistency): Extension<Consistency>) -> String {
//!     format!("reading at least {:?}", consistency.token())
//! }
//!
//! let app: Router = Router::new().route("/", get(show)).layer(ConsistencyLayer);
//! ```

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::future::{BoxFuture, FutureExt};
use http::{HeaderValue, Request, Response, StatusCode, header};
use tower::{Layer, Service};

use crate::token::{HEADER, Token};

/// The token a request came with, and the newest its handling produced.
#[derive(Debug, Clone, Default)]
pub struct Consistency(Arc<Mutex<Option<Token>>>);

impl Consistency {
    /// A cell holding `token`.
    pub fn new(token: Option<Token>) -> Self {
        Self(Arc::new(Mutex::new(token)))
    }

    /// The newest token: the request's, or a later one a handler recorded.
    pub fn token(&self) -> Option<Token> {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a write's token; the response will carry the newer of it and the request's.
    pub fn advance(&self, token: Token) {
        let mut held = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *held = Some(match *held {
            Some(old) => old.max(token).unwrap_or(token),
            None => token,
        });
    }

    /// The header value to send on an outgoing call, if there is a token.
    pub fn header_value(&self) -> Option<HeaderValue> {
        self.token()
            .and_then(|t| HeaderValue::from_str(&t.to_string()).ok())
    }
}

/// Reads the token from requests, writes the newest on responses. See the
/// [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct ConsistencyLayer;

impl<S> Layer<S> for ConsistencyLayer {
    type Service = ConsistencyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConsistencyService { inner }
    }
}

/// The service [`ConsistencyLayer`] makes.
#[derive(Debug, Clone)]
pub struct ConsistencyService<S> {
    inner: S,
}

fn refuse<B: From<String>>(message: &str) -> Response<B> {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": "Bad consistency token",
        "status": 400,
        "detail": message,
    })
    .to_string();
    let mut response = Response::new(B::from(body));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

impl<S, B, ResBody> Service<Request<B>> for ConsistencyService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: From<String> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let mut values = request.headers().get_all(HEADER).iter();
        let token = match (values.next(), values.next()) {
            (None, _) => None,
            (Some(_), Some(_)) => {
                let message = format!("send one {HEADER} header, not several");
                return futures::future::ready(Ok(refuse(&message))).boxed();
            }
            (Some(value), None) => {
                let parsed = value
                    .to_str()
                    .map_err(|_| format!("the {HEADER} header is not ASCII text"))
                    .and_then(|text| text.parse::<Token>().map_err(|e| e.to_string()));
                match parsed {
                    Ok(token) => Some(token),
                    Err(message) => return futures::future::ready(Ok(refuse(&message))).boxed(),
                }
            }
        };
        let cell = Consistency::new(token);
        request.extensions_mut().insert(cell.clone());
        let future = self.inner.call(request);
        async move {
            let mut response = future.await?;
            if let Some(value) = cell.header_value() {
                response.headers_mut().insert(HEADER, value);
            }
            Ok(response)
        }
        .boxed()
    }
}
