//! Real HTTP participants for the saga tests: an inventory, a payment and a shipping service
//! in one axum server, each applying an idempotency key at most once and keeping books.
//!
//! What a request does is decided by the `plan` in its body, so a test states up front which
//! invocations fail and how: `{"fail_times": 2}` answers 503 twice then applies,
//! `{"refuse": true}` answers 422 and applies nothing, `{"always_fail": true}` answers 503
//! forever, `{"delay_ms": 50}` waits before answering.
//!
//! Like a participant behind `onephase_lease::FenceLayer`, they remember the highest
//! `Fencing-Token` seen per run and refuse a lower one (409, nothing applied): such a call
//! comes from an orchestrator that was paused past its claim.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// One applied effect.
#[derive(Debug, Clone)]
pub struct Effect {
    pub service: String,
    pub op: String,
    pub order: i64,
    pub amount: i64,
    /// For compensations: the action key it undid, when that action had been applied.
    pub undid: Option<String>,
    pub seq: usize,
}

#[derive(Debug, Default)]
pub struct Books {
    /// Idempotency key -> the effect applied under it (at most one per key by construction;
    /// `reapplied` counts what would have been a second application).
    pub applied: HashMap<String, Effect>,
    /// Keys whose request came again after being applied (answered from the record).
    pub replays: HashMap<String, u32>,
    /// Requests per key, to count failures planned per key.
    pub requests: HashMap<String, u32>,
    /// Keys with a request in progress.
    in_flight: HashSet<String>,
    /// Keys that arrived while a request with the same key was still in progress.
    pub overlaps: Vec<String>,
    /// (key, attempt header) pairs seen, and the ones seen twice.
    attempts: HashSet<(String, String)>,
    pub repeated_attempts: Vec<(String, String)>,
    /// Compensations that arrived for an action never applied (answered as no-ops). The
    /// action key is kept so that the action, should it arrive late, is refused.
    pub noop_compensations: u32,
    tombstones: HashSet<String>,
    next_seq: usize,
    /// The highest `Fencing-Token` seen per run; a lower one comes from an orchestrator that
    /// was paused past its claim, and is refused (409) with nothing applied.
    fences: HashMap<String, u64>,
    /// Requests refused that way.
    pub stale_fenced: u32,
}

impl Books {
    /// Net amount per (service, order): actions add, compensations subtract.
    pub fn net(&self) -> BTreeMap<(String, i64), i64> {
        let mut net = BTreeMap::new();
        for e in self.applied.values() {
            let sign = if is_compensation(&e.op) { -1 } else { 1 };
            *net.entry((e.service.clone(), e.order)).or_default() += sign * e.amount;
        }
        net
    }
}

fn is_compensation(op: &str) -> bool {
    matches!(op, "release" | "refund")
}

#[derive(Clone)]
pub struct Participants {
    pub addr: SocketAddr,
    pub books: Arc<Mutex<Books>>,
}

impl Participants {
    pub async fn start() -> anyhow::Result<Self> {
        let books = Arc::new(Mutex::new(Books::default()));
        let app = axum::Router::new()
            .route("/{service}/{op}", post(handle))
            .with_state(books.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, books })
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct InFlight {
    books: Arc<Mutex<Books>>,
    key: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut b = self.books.lock().unwrap_or_else(|e| e.into_inner());
        b.in_flight.remove(&self.key);
    }
}

async fn handle(
    State(books): State<Arc<Mutex<Books>>>,
    Path((service, op)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let Some(key) = header("idempotency-key") else {
        return (StatusCode::BAD_REQUEST, "no Idempotency-Key").into_response();
    };
    let attempt = header("onephase-attempt").unwrap_or_default();
    let plan = body.get("plan").cloned().unwrap_or(Value::Null);
    let flag = |name: &str| plan.get(name).and_then(Value::as_bool).unwrap_or(false);
    let fail_times = plan.get("fail_times").and_then(Value::as_u64).unwrap_or(0);
    let delay = plan.get("delay_ms").and_then(Value::as_u64).unwrap_or(0);
    let run = header("onephase-saga-run").unwrap_or_default();
    let token: Option<u64> = header("fencing-token").and_then(|t| t.parse().ok());
    let n = {
        let mut b = books.lock().unwrap_or_else(|e| e.into_inner());
        if !b.attempts.insert((key.clone(), attempt.clone())) {
            b.repeated_attempts.push((key.clone(), attempt));
        }
        // The fence, as onephase_lease::FenceLayer keeps it: per run, equal tokens pass.
        if let Some(token) = token {
            let highest = b.fences.entry(run).or_default();
            if token < *highest {
                b.stale_fenced += 1;
                return (StatusCode::CONFLICT, "stale fencing token").into_response();
            }
            *highest = token;
        }
        if !b.in_flight.insert(key.clone()) {
            b.overlaps.push(key.clone());
        }
        let n = b.requests.entry(key.clone()).or_default();
        *n += 1;
        *n
    };
    // A request whose client disconnects is dropped mid-handler; it is no longer in flight.
    let guard = InFlight {
        books: books.clone(),
        key: key.clone(),
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    drop(guard);
    let mut b = books.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = b.applied.get(&key) {
        let id = json!({"id": key, "seq": e.seq});
        *b.replays.entry(key).or_default() += 1;
        return (StatusCode::OK, Json(id)).into_response();
    }
    if flag("always_fail") || u64::from(n) <= fail_times {
        return (StatusCode::SERVICE_UNAVAILABLE, "planned transient failure").into_response();
    }
    if flag("refuse") || b.tombstones.contains(&key) {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error": "planned refusal"})),
        )
            .into_response();
    }
    let order = body.get("order").and_then(Value::as_i64).unwrap_or(-1);
    let amount = body.get("amount").and_then(Value::as_i64).unwrap_or(0);
    let mut undid = None;
    if is_compensation(&op) {
        let action_key = body
            .get("action_key")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if !b.applied.contains_key(&action_key) {
            // Nothing to undo: succeed without an effect, as the protocol asks.
            b.noop_compensations += 1;
            b.tombstones.insert(action_key);
            return (StatusCode::OK, Json(json!({"noop": true}))).into_response();
        }
        undid = Some(action_key);
    }
    let seq = b.next_seq;
    b.next_seq += 1;
    b.applied.insert(
        key.clone(),
        Effect {
            service,
            op,
            order,
            amount,
            undid,
            seq,
        },
    );
    (StatusCode::OK, Json(json!({"id": key, "seq": seq}))).into_response()
}

/// The order saga as a JSON definition against `base`: reserve inventory and charge payment
/// (compensatable), ship (pivot). Each body carries the run's plan for that invocation.
pub fn order_definition(base: &str, version: u32, timeout_ms: u64) -> String {
    let call = |service: &str, op: &str, step: &str, phase: &str| {
        json!({
            "method": "POST",
            "url": format!("{base}/{service}/{op}"),
            "body": {
                "order": "{{input.order}}",
                "amount": format!("{{{{input.amount.{step}}}}}"),
                "action_key": "{{call.action_key}}",
                "plan": format!("{{{{input.plan.{step}.{phase}}}}}"),
            }
        })
    };
    json!({
        "name": "order",
        "version": version,
        "defaults": {
            "timeout_ms": timeout_ms,
            "action_max_attempts": 50,
            "compensation_max_attempts": 6,
            "backoff_base_ms": 5,
            "backoff_cap_ms": 50
        },
        "steps": [
            {"name": "reserve", "kind": "compensatable",
             "action": call("inventory", "reserve", "reserve", "action"),
             "compensation": call("inventory", "release", "reserve", "compensation")},
            {"name": "charge", "kind": "compensatable",
             "action": call("payment", "charge", "charge", "action"),
             "compensation": call("payment", "refund", "charge", "compensation")},
            {"name": "ship", "kind": "pivot",
             "action": call("shipping", "ship", "ship", "action")}
        ]
    })
    .to_string()
}

/// What a run's plan makes it end as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Completed,
    Compensated,
    NeedsOperator,
}

/// A run's input: which invocations fail and how. `refuse_at` makes that step's action refuse;
/// `stuck` makes that step's compensation always fail (only meaningful when it will be
/// compensated); `flaky` lists (step, phase, times) transient failures.
pub fn order_input(
    order: i64,
    refuse_at: Option<&str>,
    stuck: Option<&str>,
    flaky: &[(&str, &str, u32)],
    delay_ms: u64,
) -> Value {
    let mut plan = serde_json::Map::new();
    for step in ["reserve", "charge", "ship"] {
        let mut action = json!({"delay_ms": delay_ms});
        let mut compensation = json!({"delay_ms": delay_ms});
        if refuse_at == Some(step) {
            action["refuse"] = json!(true);
        }
        if stuck == Some(step) {
            compensation["always_fail"] = json!(true);
        }
        for (s, phase, times) in flaky {
            if *s == step {
                let target = if *phase == "action" {
                    &mut action
                } else {
                    &mut compensation
                };
                target["fail_times"] = json!(times);
            }
        }
        plan.insert(
            step.to_owned(),
            json!({"action": action, "compensation": compensation}),
        );
    }
    json!({
        "order": order,
        "amount": {"reserve": 2, "charge": 1999, "ship": 1},
        "plan": plan,
    })
}

/// The outcome `order_input` leads to.
/// The books an order should end with, (inventory, payment, shipping), for its plan.
/// Compensation stops at the one that keeps failing: a stuck refund leaves the reservation in
/// place too (it would have been released after the refund).
pub fn expected_books(refuse_at: Option<&str>, stuck: Option<&str>) -> (i64, i64, i64) {
    match expected(refuse_at, stuck) {
        Expect::Completed => (2, 1999, 1),
        Expect::Compensated => (0, 0, 0),
        Expect::NeedsOperator if stuck == Some("reserve") => (2, 0, 0),
        Expect::NeedsOperator => (2, 1999, 0),
    }
}

pub fn expected(refuse_at: Option<&str>, stuck: Option<&str>) -> Expect {
    let order = ["reserve", "charge", "ship"];
    match refuse_at {
        None => Expect::Completed,
        Some(refused) => {
            let at = order.iter().position(|s| *s == refused).unwrap_or(0);
            // Steps before the refused one were applied and get compensated (ship has none).
            let compensated = &order[..at];
            match stuck {
                Some(s) if compensated.contains(&s) => Expect::NeedsOperator,
                _ => Expect::Compensated,
            }
        }
    }
}
