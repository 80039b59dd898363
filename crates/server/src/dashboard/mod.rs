//! The dashboard at `/`: server-rendered HTML, no front-end build, no CDN.
//!
//! Each capability adds a [`Panel`]. The page renders every panel, those with a problem first,
//! then a few lines of inline script re-fetch `/dashboard/panels` every five seconds and swap
//! the panels in place; without JavaScript the page is simply static. Panels link to pages
//! about one thing (a saga run, a webhook endpoint or message, a relay's dead letters) where an
//! admin acts on it ([`pages`]). Every page needs a session ([`session`]).

pub mod events;
pub mod history;
pub mod kafka;
pub mod lab;
pub mod pages;
pub mod partition;
pub mod replica;
pub mod session;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::state::AppState;
use session::Viewer;

/// One box on the dashboard.
pub trait Panel: Send + Sync {
    /// The panel's heading.
    fn title(&self) -> &str;

    /// The panel's body, rendered fresh on every refresh, and whether it shows a problem.
    fn render<'a>(
        &'a self,
        state: &'a AppState,
    ) -> Pin<Box<dyn Future<Output = Rendered> + Send + 'a>>;
}

/// A panel's body and whether something in it needs someone (it then sorts first).
pub struct Rendered {
    /// The body.
    pub body: Markup,
    /// Whether it shows something wrong: dead letters, a parked run, a disabled endpoint.
    pub problem: bool,
}

impl Rendered {
    /// A body with nothing wrong in it.
    pub fn fine(body: Markup) -> Self {
        Self {
            body,
            problem: false,
        }
    }

    /// A body showing a problem when `problem`.
    pub fn with_problem(body: Markup, problem: bool) -> Self {
        Self { body, problem }
    }
}

/// The colours of a chart's lines, in order.
const PALETTE: [&str; 6] = [
    "#2563eb", "#b42318", "#17803d", "#b54708", "#6941c6", "#0e7490",
];

/// A series of one value per sample.
type Series<'a> = (&'a str, &'a str, Vec<Option<f64>>);

fn outbox_charts(samples: &[history::Sample], names: &[&str]) -> Markup {
    let per_relay =
        |value: &dyn Fn(&history::RelaySample) -> Option<f64>| -> Vec<Vec<Option<f64>>> {
            names
                .iter()
                .map(|name| {
                    samples
                        .iter()
                        .map(|s| s.relays.iter().find(|r| r.name == *name).and_then(value))
                        .collect()
                })
                .collect()
        };
    let published = per_relay(&|r| Some(r.published as f64));
    let lag = per_relay(&|r| r.lag_secs);
    let named = |values: Vec<Vec<Option<f64>>>, rate: bool| -> Vec<Series<'_>> {
        values
            .into_iter()
            .zip(names)
            .enumerate()
            .map(|(i, (v, name))| {
                (
                    *name,
                    PALETTE[i % PALETTE.len()],
                    if rate { history::rates(&v) } else { v },
                )
            })
            .collect()
    };
    html! {
        (history::chart("Published", "/s", &named(published, true)))
        (history::chart("Lag", "s", &named(lag, false)))
    }
}

fn webhook_charts(samples: &[history::Sample]) -> Markup {
    let success: Vec<Option<f64>> = samples
        .iter()
        .map(|s| {
            (s.webhook_attempts > 0)
                .then(|| s.webhook_delivered as f64 * 100.0 / s.webhook_attempts as f64)
        })
        .collect();
    let latency: Vec<Option<f64>> = samples.iter().map(|s| s.webhook_latency_ms).collect();
    html! {
        (history::chart("Delivered per 30 s", "%", &[("success", PALETTE[2], success)]))
        (history::chart("Mean latency", "ms", &[("latency", PALETTE[0], latency)]))
    }
}

fn saga_chart(samples: &[history::Sample]) -> Markup {
    let series: Vec<Series<'_>> = ["running", "compensating", "needs_operator"]
        .iter()
        .zip([PALETTE[0], PALETTE[3], PALETTE[1]])
        .map(|(state, colour)| {
            let values = samples
                .iter()
                .map(|s| {
                    s.sagas
                        .as_ref()
                        .map(|counts| counts.get(*state).copied().unwrap_or(0) as f64)
                })
                .collect();
            (*state, colour, values)
        })
        .collect();
    history::chart("Runs", "", &series)
}

fn limit_chart(samples: &[history::Sample]) -> Markup {
    let decisions: Vec<Option<f64>> = samples
        .iter()
        .map(|s| Some(s.limit_decisions as f64))
        .collect();
    let refused: Vec<Option<f64>> = samples
        .iter()
        .map(|s| Some(s.limit_refused as f64))
        .collect();
    history::chart(
        "Decisions",
        "/s",
        &[
            ("checked", PALETTE[0], history::rates(&decisions)),
            ("refused", PALETTE[1], history::rates(&refused)),
        ],
    )
}

/// A time as the API and the CLI write it: RFC 3339, UTC.
pub fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.to_string())
}

/// The dashboard's routes: the overview, its refresh, sign-in, and the pages of [`pages`].
/// Every answer forbids framing and loads nothing from elsewhere.
pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/", get(page))
        .route("/dashboard/panels", get(panels))
        .route(
            "/dashboard/sign-in",
            get(session::sign_in_form).post(session::sign_in),
        )
        .route("/dashboard/sign-out", post(session::sign_out))
        .route("/lab", get(lab::page))
        .route("/lab/run", post(lab::run))
        .merge(pages::routes())
        .layer(axum::middleware::map_response(protect))
}

async fn protect(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; \
             base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The server's own panel: version, store, uptime, readiness.
pub struct ServerPanel;

impl Panel for ServerPanel {
    fn title(&self) -> &str {
        "Server"
    }

    fn render<'a>(
        &'a self,
        state: &'a AppState,
    ) -> Pin<Box<dyn Future<Output = Rendered> + Send + 'a>> {
        Box::pin(async move {
            let store = state.store();
            let ready = matches!(
                tokio::time::timeout(Duration::from_secs(1), store.ping()).await,
                Ok(Ok(()))
            );
            let body = html! {
                dl {
                    dt { "Version" } dd { (env!("CARGO_PKG_VERSION")) }
                    dt { "Store" } dd { (store.backend()) " " code { (store.url()) } }
                    dt { "Ready" } dd class=(if ready { "ok" } else { "bad" }) {
                        (if ready { "yes" } else { "no: the store does not answer" })
                    }
                    dt { "Uptime" } dd { (format_uptime(state.uptime())) }
                }
            };
            Rendered::with_problem(body, !ready)
        })
    }
}

/// The outbox panel: per configured relay, its lag, backlog, dead letters and publish rate.
pub struct OutboxPanel;

impl Panel for OutboxPanel {
    fn title(&self) -> &str {
        "Outbox"
    }

    fn render<'a>(
        &'a self,
        state: &'a AppState,
    ) -> Pin<Box<dyn Future<Output = Rendered> + Send + 'a>> {
        Box::pin(async move {
            let sources = state.outbox().sources();
            let mut rows = Vec::with_capacity(sources.len());
            for source in sources {
                let status = match source.admin() {
                    Ok(admin) => {
                        match tokio::time::timeout(Duration::from_secs(1), admin.status()).await {
                            Ok(Ok(status)) => Ok(status),
                            Ok(Err(e)) => Err(format!("its outbox cannot be read: {e}")),
                            Err(_) => Err("its source database does not answer".to_owned()),
                        }
                    }
                    Err(error) => Err(error),
                };
                let status = match (source.state(), status) {
                    (crate::outbox::RelayState::Unavailable { error }, _) => Err(error),
                    (_, status) => status,
                };
                rows.push((
                    source,
                    status,
                    source.published_rate(state.clock().monotonic()),
                ));
            }
            let problem = rows.iter().any(|(_, status, _)| match status {
                Ok(status) => {
                    status.dead > 0
                        || status
                            .oldest_pending_age
                            .is_some_and(|age| age > Duration::from_secs(60))
                }
                Err(_) => true,
            });
            let body = html! {
                @if rows.is_empty() {
                    p { "No relays configured. Add " code { "[[outbox.relay]]" } " to the configuration file; "
                        code { "POST /v1/outbox/{topic}" } " appends to the embedded log either way." }
                } @else {
                    table {
                        tr { th { "Relay" } th { "Sink" } th { "Lag" } th { "Pending" } th { "Dead" } th { "Published/s" } th { "Published" } }
                        @for (source, status, rate) in &rows {
                            tr {
                                td { a href={ "/dashboard/relays/" (source.name) } { (source.name) } }
                                td { code { (source.sink) } }
                                @match status {
                                    Ok(status) => {
                                        td { (status.oldest_pending_age.map_or("0 s".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))) }
                                        td { (status.pending) }
                                        td class=(if status.dead > 0 { "bad" } else { "ok" }) { (status.dead) }
                                    }
                                    Err(error) => { td class="bad" colspan="3" { "unavailable: " (error) } }
                                }
                                td { (rate.map_or("-".to_owned(), |r| format!("{r:.0}"))) }
                                td { (source.stats.published()) }
                            }
                        }
                    }
                    (outbox_charts(&state.history().samples(), &rows.iter().map(|(s, _, _)| s.name.as_str()).collect::<Vec<_>>()))
                }
            };
            Rendered::with_problem(body, problem)
        })
    }
}

/// Attempts of one step after which a run shows as retrying it over and over.
const RETRYING_AFTER: u32 = 3;

/// The saga panel: runs waiting for an operator, then runs retrying one step over and over
/// (with the last error), then runs by state.
pub struct SagaPanel;

impl Panel for SagaPanel {
    fn title(&self) -> &str {
        "Sagas"
    }

    fn render<'a>(
        &'a self,
        state: &'a AppState,
    ) -> Pin<Box<dyn Future<Output = Rendered> + Send + 'a>> {
        Box::pin(async move {
            let admin = state.saga().orchestrator().admin();
            let second = Duration::from_secs(1);
            let counts = tokio::time::timeout(second, admin.counts()).await;
            let parked = tokio::time::timeout(
                second,
                admin.list(&onephase_saga::RunFilter {
                    state: Some(onephase_saga::RunState::NeedsOperator),
                    limit: 10,
                    ..Default::default()
                }),
            )
            .await;
            let retrying = tokio::time::timeout(second, admin.retrying(RETRYING_AFTER, 10)).await;
            let (Ok(Ok(counts)), Ok(Ok(parked)), Ok(Ok(retrying))) = (counts, parked, retrying)
            else {
                return Rendered::with_problem(
                    html! { p.bad { "the store does not answer" } },
                    true,
                );
            };
            let body = html! {
                @if !parked.is_empty() {
                    p.bad { "Waiting for an operator (open a run to retry, resolve or abort it):" }
                    table {
                        tr { th { "Run" } th { "Saga" } th { "Why" } }
                        @for run in &parked {
                            tr {
                                td { a href={ "/dashboard/runs/" (run.id) } { code { (run.id) } } }
                                td { (run.saga) " v" (run.version) }
                                td { (run.error.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
                @if !retrying.is_empty() {
                    p.bad { "Retrying the same step:" }
                    table {
                        tr { th { "Run" } th { "Step" } th { "Attempts" } th { "Last error" } }
                        @for r in &retrying {
                            tr {
                                td { a href={ "/dashboard/runs/" (r.run.id) } { code { (r.run.id) } } br; (r.run.saga) " v" (r.run.version) }
                                td { (r.step) " (" (r.phase.as_str()) ")" }
                                td.bad { (r.attempts) }
                                td { (r.last_error.as_deref().unwrap_or("-")) }
                            }
                        }
                    }
                }
                dl {
                    @for run_state in onephase_saga::RunState::ALL {
                        @let n = counts.get(&run_state).copied().unwrap_or(0);
                        dt { (run_state.as_str().replace('_', " ")) }
                        dd class=(if run_state == onephase_saga::RunState::NeedsOperator && n > 0 { "bad" } else { "" }) { (n) }
                    }
                }
                (saga_chart(&state.history().samples()))
            };
            Rendered::with_problem(body, !parked.is_empty() || !retrying.is_empty())
        })
    }
}

/// The webhook panel: per endpoint over the last hour, success rate and latency; disabled
/// endpoints and dead letters stand out.
pub struct WebhookPanel;

impl Panel for WebhookPanel {
    fn title(&self) -> &str {
        "Webhooks"
    }

    fn render<'a>(
        &'a self,
        state: &'a AppState,
    ) -> Pin<Box<dyn Future<Output = Rendered> + Send + 'a>> {
        Box::pin(async move {
            let stats = tokio::time::timeout(
                Duration::from_secs(1),
                state.webhook().webhooks().stats(Duration::from_secs(3600)),
            )
            .await;
            let Ok(Ok(stats)) = stats else {
                return Rendered::with_problem(
                    html! { p.bad { "the store does not answer" } },
                    true,
                );
            };
            if stats.is_empty() {
                return Rendered::fine(
                    html! { p { "No endpoints yet: " code { "onephase webhook endpoints create <url>" } } },
                );
            }
            let dead: i64 = stats.iter().map(|e| e.dead).sum();
            let problem = dead > 0
                || stats
                    .iter()
                    .any(|e| !e.enabled || e.success_rate.is_some_and(|r| r < 0.9));
            // Endpoints that need someone first: disabled, then dead letters, then failing.
            let mut stats = stats;
            stats.sort_by_key(|e| {
                (
                    e.enabled,
                    e.dead == 0,
                    !e.success_rate.is_some_and(|r| r < 0.9),
                )
            });
            let body = html! {
                @if dead > 0 {
                    p.bad { (dead) (if dead == 1 { " dead letter (" } else { " dead letters (" }) code { "onephase webhook dead" } ", then " code { "onephase webhook replay" } ")" }
                }
                table {
                    tr { th { "Endpoint (last hour)" } th { "OK" } th { "Latency" } th { "Pending" } th { "Dead" } }
                    @for e in stats.iter().take(20) {
                        tr {
                            td {
                                a href={ "/dashboard/endpoints/" (e.endpoint_id) } { code { (e.endpoint_id) } } br;
                                (e.url)
                                @if !e.enabled { " " span.bad { "disabled" } }
                            }
                            td class=(if e.success_rate.is_some_and(|r| r < 0.9) { "bad" } else { "ok" }) {
                                (e.success_rate.map_or("-".to_owned(), |r| format!("{:.1}%", r * 100.0)))
                                " of " (e.attempts)
                            }
                            td { (e.mean_latency_ms.map_or("-".to_owned(), |ms| format!("{ms:.0} ms avg"))) }
                            td { (e.pending) }
                            td class=(if e.dead > 0 { "bad" } else { "" }) { (e.dead) }
                        }
                    }
                }
                @if stats.len() > 20 { p { (stats.len() - 20) " more endpoints: " code { "onephase webhook endpoints list" } } }
                (webhook_charts(&state.history().samples()))
            };
            Rendered::with_problem(body, problem)
        })
    }
}

/// The lease panel: current holders with their tokens and expiries, and the latest token of
/// each free lease.
pub struct LeasePanel;

impl Panel for LeasePanel {
    fn title(&self) -> &str {
        "Leases"
    }

    fn render<'a>(
        &'a self,
        state: &'a AppState,
    ) -> Pin<Box<dyn Future<Output = Rendered> + Send + 'a>> {
        Box::pin(async move {
            let service = state.lease();
            let leases =
                tokio::time::timeout(Duration::from_secs(1), service.leases().list()).await;
            let Ok(Ok(leases)) = leases else {
                return Rendered::with_problem(
                    html! { p.bad { "the lease backend (" (service.backend()) ") does not answer" } },
                    true,
                );
            };
            if leases.is_empty() {
                return Rendered::fine(
                    html! { p { "No leases yet (kept in " (service.backend()) "): " code { "onephase lease acquire <name> --ttl 30s" } } },
                );
            }
            let held = leases.iter().filter(|l| l.holder.is_some()).count();
            Rendered::fine(html! {
                p { (held) " of " (leases.len()) " leases held (kept in " (service.backend()) ")" }
                table {
                    tr { th { "Lease" } th { "Holder" } th { "Token" } th { "Expires" } }
                    @for l in leases.iter().take(50) {
                        tr {
                            td { code { (l.name) } }
                            td { @if let Some(h) = &l.holder { (h) } @else { span { "free" } } }
                            td { (l.token) }
                            td { (l.expires_at.filter(|_| l.holder.is_some()).map_or("-".to_owned(), rfc3339)) }
                        }
                    }
                }
                @if leases.len() > 50 { p { (leases.len() - 50) " more: " code { "onephase lease list" } } }
            })
        })
    }
}

/// The rate-limit panel: per policy, this server's decisions and rejections.
pub struct LimitPanel;

impl Panel for LimitPanel {
    fn title(&self) -> &str {
        "Rate limits"
    }

    fn render<'a>(
        &'a self,
        state: &'a AppState,
    ) -> Pin<Box<dyn Future<Output = Rendered> + Send + 'a>> {
        Box::pin(async move {
            let service = state.limit();
            let policies = tokio::time::timeout(Duration::from_secs(1), service.list()).await;
            let Ok(Ok(policies)) = policies else {
                return Rendered::with_problem(
                    html! { p.bad { "the store does not answer" } },
                    true,
                );
            };
            if policies.is_empty() {
                return Rendered::fine(
                    html! { p { "No policies yet: " code { "[[limit.policy]]" } " in the configuration, or " code { "PUT /v1/limits/{policy}" } } },
                );
            }
            Rendered::fine(html! {
                p { "Counts kept " (if service.store_kind() == "redis" { "in Redis, shared by every server" } else { "by each server on its own" }) }
                table {
                    tr { th { "Policy" } th { "Rule" } th { "Decisions" } th { "Refused" } }
                    @for p in &policies {
                        tr {
                            td { code { (p.name) } " (" (p.source) ")" }
                            td { (p.spec.algorithm) " " (p.spec.limit) " per " (p.spec.period_ms) " ms" }
                            td { (p.decisions) }
                            td class=(if p.rejections > 0 { "bad" } else { "" }) {
                                (p.rejections)
                                @if p.decisions > 0 { " (" (format!("{:.1}%", p.rejections as f64 * 100.0 / p.decisions as f64)) ")" }
                            }
                        }
                    }
                }
                (limit_chart(&state.history().samples()))
            })
        })
    }
}

fn format_uptime(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86400 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86400, (s % 86400) / 3600),
    }
}

async fn render_panels(state: &AppState) -> Markup {
    let mut rendered = Vec::with_capacity(state.panels().len());
    for panel in state.panels() {
        rendered.push((panel.title().to_owned(), panel.render(state).await));
    }
    // Problems first; otherwise the configured order.
    rendered.sort_by_key(|(_, r)| !r.problem);
    html! {
        @for (title, r) in rendered {
            section.panel.problem[r.problem] {
                h2 { (title) @if r.problem { " " span.bad { "needs attention" } } }
                (r.body)
            }
        }
    }
}

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1c2330}
header{background:#1c2330;color:#fff;padding:.8rem 1.5rem;display:flex;flex-wrap:wrap;gap:1rem;align-items:baseline}
header h1{margin:0;font-size:1.2rem}header a{color:#9fc3ff}header form{margin:0 0 0 auto}
header .who{color:#c9d1dd}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,22rem),1fr));gap:1rem;padding:1rem 1.5rem}
main.page{display:block;max-width:70rem}
.panel{background:#fff;border-radius:6px;padding:.8rem 1rem;box-shadow:0 1px 2px #0002;overflow-x:auto;margin-bottom:1rem}
.panel.problem{box-shadow:0 0 0 2px #b42318}.narrow{max-width:28rem}
.panel h2{margin:.2rem 0 .6rem;font-size:1rem}
table{border-collapse:collapse;font-size:.9rem}td,th{padding:.15rem .6rem .15rem 0;text-align:left;vertical-align:top}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.3rem 1rem;margin:0}dt{color:#5b6578}dd{margin:0;overflow-wrap:anywhere}
.ok{color:#17803d}.bad{color:#b42318;font-weight:600}code{font-size:.85rem}.hint{color:#5b6578;font-size:.9rem}
.notice{background:#e8f5ec;border-left:4px solid #17803d;padding:.5rem 1rem}
.error{background:#fdecea;border-left:4px solid #b42318;padding:.5rem 1rem}
form.act{display:inline-flex;gap:.4rem;margin:.2rem .4rem .2rem 0;flex-wrap:wrap}
input[type=text],input[type=password]{padding:.3rem;min-width:14rem}button{padding:.3rem .7rem;cursor:pointer}
figure.chart{margin:.6rem 0 0}figcaption{font-size:.8rem;color:#5b6578}svg{display:block}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f6f7f9;padding:.5rem;max-height:20rem;overflow:auto}
";

const REFRESH: &str = "
setInterval(async () => {
  try {
    const r = await fetch('/dashboard/panels');
    if (r.redirected || r.status === 401) { location.reload(); return; }
    if (r.ok) document.getElementById('panels').innerHTML = await r.text();
  } catch (e) {}
}, 5000);
";

/// A whole page: the header (with who is signed in, and sign-out), then `body`.
pub fn layout(title: &str, viewer: Option<&Viewer>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · onephase" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { a href="/" style="color:inherit;text-decoration:none" { "onephase" } }
                    a href="/lab" { "failure lab" }
                    a href="/metrics" { "metrics" }
                    a href="/openapi.json" { "OpenAPI" }
                    @if let Some(viewer) = viewer {
                        form method="post" action="/dashboard/sign-out" {
                            span.who { (viewer.caller.name) " (" (viewer.caller.role) ") " }
                            input type="hidden" name="csrf" value=(viewer.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                (body)
            }
        }
    }
}

/// `GET /`: the whole page.
pub async fn page(viewer: Viewer, State(state): State<AppState>) -> Markup {
    let panels = render_panels(&state).await;
    layout(
        "Overview",
        Some(&viewer),
        html! {
            main #panels { (panels) }
            script { (PreEscaped(REFRESH)) }
        },
    )
}

/// `GET /dashboard/panels`: the panels alone, for the page's refresh.
pub async fn panels(_viewer: Viewer, State(state): State<AppState>) -> Markup {
    render_panels(&state).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_reads_naturally() {
        assert_eq!(format_uptime(Duration::from_secs(5)), "5 s");
        assert_eq!(format_uptime(Duration::from_secs(125)), "2 min 5 s");
        assert_eq!(format_uptime(Duration::from_secs(7260)), "2 h 1 min");
        assert_eq!(format_uptime(Duration::from_secs(90000)), "1 d 1 h");
    }
}
