//! A webhook receiver over real HTTP whose answers a test scripts, recording what arrived.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

/// What the receiver answers: status, optional `Retry-After`, and how long it waits first.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<&'static str>,
    pub delay: Duration,
}

impl Answer {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            retry_after: None,
            delay: Duration::ZERO,
        }
    }
}

/// One request that arrived.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The status the receiver answered.
    pub status: u16,
}

impl Arrival {
    pub fn id(&self) -> String {
        header(&self.headers, "webhook-id")
    }
}

pub fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

type Script = dyn Fn(&str, usize) -> Answer + Send + Sync;

/// Decides each answer from the path and how many requests that path has seen before.
#[derive(Clone)]
pub struct TestReceiver {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

struct Inner {
    script: Mutex<Arc<Script>>,
    arrivals: Mutex<Vec<Arrival>>,
    seen: Mutex<HashMap<String, usize>>,
    running: AtomicUsize,
    max_running: Mutex<HashMap<String, usize>>,
    running_by_path: Mutex<HashMap<String, usize>>,
}

impl TestReceiver {
    pub async fn start() -> Self {
        let inner = Arc::new(Inner {
            script: Mutex::new(Arc::new(|_: &str, _: usize| Answer::status(200))),
            arrivals: Mutex::new(Vec::new()),
            seen: Mutex::new(HashMap::new()),
            running: AtomicUsize::new(0),
            max_running: Mutex::new(HashMap::new()),
            running_by_path: Mutex::new(HashMap::new()),
        });
        let app = axum::Router::new()
            .route("/{*path}", post(receive))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("an address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, inner }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    pub fn script(&self, script: impl Fn(&str, usize) -> Answer + Send + Sync + 'static) {
        *self.inner.script.lock().expect("lock") = Arc::new(script);
    }

    pub fn arrivals(&self) -> Vec<Arrival> {
        self.inner.arrivals.lock().expect("lock").clone()
    }

    pub fn arrivals_at(&self, path: &str) -> Vec<Arrival> {
        self.arrivals()
            .into_iter()
            .filter(|a| a.path == path)
            .collect()
    }

    /// The most requests one path had in progress at once.
    pub fn max_running(&self, path: &str) -> usize {
        self.inner
            .max_running
            .lock()
            .expect("lock")
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

async fn receive(
    State(inner): State<Arc<Inner>>,
    axum::extract::Path(path): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let n = {
        let mut seen = inner.seen.lock().expect("lock");
        let n = seen.entry(path.clone()).or_insert(0);
        *n += 1;
        *n - 1
    };
    {
        let mut running = inner.running_by_path.lock().expect("lock");
        let now = running.entry(path.clone()).or_insert(0);
        *now += 1;
        let mut max = inner.max_running.lock().expect("lock");
        let m = max.entry(path.clone()).or_insert(0);
        *m = (*m).max(*now);
    }
    inner.running.fetch_add(1, Ordering::SeqCst);
    let script = inner.script.lock().expect("lock").clone();
    let answer = script(&path, n);
    inner.arrivals.lock().expect("lock").push(Arrival {
        path: path.clone(),
        headers,
        body,
        status: answer.status,
    });
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    inner.running.fetch_sub(1, Ordering::SeqCst);
    if let Some(n) = inner.running_by_path.lock().expect("lock").get_mut(&path) {
        *n -= 1;
    }
    let mut response = StatusCode::from_u16(answer.status)
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        .into_response();
    if let Some(after) = answer.retry_after {
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from_static(after));
    }
    response
}
