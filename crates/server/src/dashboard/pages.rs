//! Pages about one thing, and the actions an admin takes there.
//!
//! - `/dashboard/runs/{id}`: a saga run's steps, history and timing; retry, resolve a step,
//!   or abort a run that waits for an operator (each with the note the API requires).
//! - `/dashboard/endpoints/{id}`: a webhook endpoint and its recent attempts (status, latency,
//!   the start of the answer); enable, disable, replay its dead letters.
//! - `/dashboard/messages/{id}`: a webhook message, its delivery at each endpoint and its
//!   attempts; replay it.
//! - `/dashboard/relays/{name}`: an outbox relay's dead letters; retry or discard each.
//!
//! An action is a form `POST` with the session's CSRF token, refused for a client token. It
//! runs the same service call as the API route (the audit names the session's token), then
//! redirects to the page with a notice; a refused action shows the page again with the reason
//! and changes nothing.

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use onephase_core::Classify;
use serde::Deserialize;
use uuid::Uuid;

use super::session::{Confirm, Viewer};
use super::{layout, rfc3339};
use crate::state::AppState;

/// The page routes and their actions.
pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/dashboard/runs/{id}", get(run))
        .route("/dashboard/runs/{id}/{action}", post(run_action))
        .route(
            "/dashboard/runs/{id}/steps/{step}/resolve",
            post(run_resolve),
        )
        .route("/dashboard/endpoints/{id}", get(endpoint))
        .route("/dashboard/endpoints/{id}/{action}", post(endpoint_action))
        .route("/dashboard/messages/{id}", get(message))
        .route("/dashboard/messages/{id}/replay", post(message_replay))
        .route("/dashboard/relays/{name}", get(relay))
        .route(
            "/dashboard/relays/{name}/dead/{id}/{action}",
            post(dead_row_action),
        )
}

/// What a redirect after an action says on the page it lands on.
#[derive(Debug, Default, Deserialize)]
pub struct Notice {
    /// A fixed code (never text from the request, so a link cannot make the page say
    /// anything else).
    done: Option<String>,
}

fn notice_text(code: &str) -> Option<&'static str> {
    Some(match code {
        "retried" => "Retried: the run is moving again.",
        "resolved" => "Resolved by hand: the run goes on.",
        "aborted" => "Aborted: the run ends here.",
        "enabled" => "Enabled: pending deliveries resume.",
        "disabled" => "Disabled: deliveries wait until it is enabled.",
        "replayed" => "Replayed: the deliveries are pending again.",
        "row-retried" => "The row is pending again.",
        "row-discarded" => "The row is discarded; the rows of its key behind it go on.",
        _ => return None,
    })
}

/// A form with a note, for saga operator actions.
#[derive(Debug, Deserialize)]
pub struct NoteForm {
    csrf: String,
    note: String,
}

/// A form with an optional reason, for disabling an endpoint.
#[derive(Debug, Deserialize)]
pub struct ReasonForm {
    csrf: String,
    #[serde(default)]
    reason: String,
}

/// The page of `title` with `body`, the notice of `done`, or an error in place of the notice.
fn page(
    title: &str,
    viewer: &Viewer,
    notice: Option<&str>,
    error: Option<&str>,
    body: Markup,
) -> Markup {
    layout(
        title,
        Some(viewer),
        html! {
            main.page {
                p { a href="/" { "← overview" } }
                @if let Some(error) = error { p.error { (error) } }
                @if let Some(text) = notice.and_then(notice_text) { p.notice { (text) } }
                (body)
            }
        },
    )
}

/// A page that could not be rendered: the status and what went wrong.
fn failed(viewer: &Viewer, status: StatusCode, what: &str) -> Response {
    (
        status,
        page("Not shown", viewer, None, Some(what), html! {}),
    )
        .into_response()
}

/// What follows an action: done, a redirect to the page at `back` with the notice `done`;
/// refused, the page again (rendered by `again` with why) under the status the API would have
/// answered (400 for an empty note, 409 for a run that is not parked, ...), unless the page
/// itself could not be rendered.
async fn settle<T, E: Classify + std::fmt::Display>(
    result: Result<T, E>,
    back: &str,
    done: &str,
    again: impl AsyncFnOnce(&str) -> Response,
) -> Response {
    match result {
        Ok(_) => Redirect::to(&format!("{back}?done={done}")).into_response(),
        Err(e) => {
            let mut page = again(&format!("not done: {e}")).await;
            if page.status().is_success() {
                *page.status_mut() = status_of(&e);
            }
            page
        }
    }
}

fn no_such_action(viewer: &Viewer, action: &str) -> Response {
    failed(
        viewer,
        StatusCode::NOT_FOUND,
        &format!("there is no action {action:?} here; nothing changed"),
    )
}

fn status_of(e: &(impl Classify + std::fmt::Display)) -> StatusCode {
    StatusCode::from_u16(crate::problem::Problem::from_error(e).status)
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn not_a_run_id(viewer: &Viewer, id: &str) -> Response {
    failed(
        viewer,
        StatusCode::BAD_REQUEST,
        &format!("{id:?} is not a run id (a UUID)"),
    )
}

fn hidden_csrf(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.csrf); }
}

fn opt_time(at: Option<time::OffsetDateTime>) -> String {
    at.map_or("-".to_owned(), rfc3339)
}

// ---- saga runs ----

async fn run_page(
    state: &AppState,
    viewer: &Viewer,
    id: Uuid,
    notice: Option<&str>,
    error: Option<&str>,
) -> Response {
    let detail = match state.saga().orchestrator().admin().show(id).await {
        Ok(detail) => detail,
        Err(e) => return failed(viewer, status_of(&e), &e.to_string()),
    };
    let run = &detail.run;
    let parked = run.state == onephase_saga::RunState::NeedsOperator;
    let took = run.finished_at.map(|end| end - run.created_at);
    let body = html! {
        section.panel.problem[parked] {
            h2 { "Saga run " code { (run.id) } }
            dl {
                dt { "Saga" } dd { (run.saga) " v" (run.version) }
                dt { "State" } dd class=(if parked { "bad" } else { "" }) { (run.state.as_str().replace('_', " ")) }
                @if let Some(error) = &run.error { dt { "Error" } dd.bad { (error) } }
                dt { "Started" } dd { (rfc3339(run.created_at)) }
                dt { "Updated" } dd { (rfc3339(run.updated_at)) }
                dt { "Finished" } dd { (opt_time(run.finished_at)) @if let Some(took) = took { " (" (format!("{:.3} s", took.as_seconds_f64())) ")" } }
                @if let Some(key) = &run.idempotency_key { dt { "Idempotency key" } dd { code { (key) } } }
            }
            @if parked && viewer.is_admin() {
                h2 { "Act" }
                p.hint { "Each action needs a note; it is kept in the run's history with your token's name." }
                form.act method="post" action={ "/dashboard/runs/" (run.id) "/retry" } {
                    (hidden_csrf(viewer))
                    input type="text" name="note" required placeholder="why retry now";
                    button type="submit" { "Retry the failed step" }
                }
                @for step in detail.steps.iter().filter(|s| s.status == onephase_saga::StepStatus::Failed) {
                    form.act method="post" action={ "/dashboard/runs/" (run.id) "/steps/" (step.step) "/resolve" } {
                        (hidden_csrf(viewer))
                        input type="text" name="note" required placeholder="what you did by hand";
                        button type="submit" { "Resolve " (step.step) " by hand" }
                    }
                }
                form.act method="post" action={ "/dashboard/runs/" (run.id) "/abort" } {
                    (hidden_csrf(viewer))
                    input type="text" name="note" required placeholder="why give up";
                    button type="submit" { "Abort" }
                }
            }
        }
        section.panel {
            h2 { "Steps" }
            table {
                tr { th { "Step" } th { "Phase" } th { "Status" } th { "Attempts" } th { "Started" } th { "Finished" } th { "Last error" } }
                @for s in &detail.steps {
                    tr {
                        td { (s.step) } td { (s.phase.as_str()) }
                        td class=(if s.status == onephase_saga::StepStatus::Failed { "bad" } else { "" }) { (s.status.as_str()) }
                        td { (s.attempts) } td { (opt_time(s.started_at)) } td { (opt_time(s.finished_at)) }
                        td { (s.last_error.as_deref().unwrap_or("-")) }
                    }
                }
            }
        }
        section.panel {
            h2 { "History" }
            table {
                tr { th { "At" } th { "Event" } th { "Step" } th { "Attempt" } th { "ms" } th { "By" } th { "Detail" } }
                @for h in &detail.history {
                    tr {
                        td { (rfc3339(h.at)) } td { (h.event) } td { (h.step.as_deref().unwrap_or("-")) }
                        td { (h.attempt.map_or("-".to_owned(), |a| a.to_string())) }
                        td { (h.elapsed_ms.map_or("-".to_owned(), |ms| ms.to_string())) }
                        td { (h.actor.as_deref().unwrap_or("-")) } td { (h.detail.as_deref().unwrap_or("-")) }
                    }
                }
            }
        }
    };
    page("Saga run", viewer, notice, error, body).into_response()
}

async fn run(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(notice): Query<Notice>,
) -> Response {
    match Uuid::parse_str(&id) {
        Ok(id) => run_page(&state, &viewer, id, notice.done.as_deref(), None).await,
        Err(_) => not_a_run_id(&viewer, &id),
    }
}

/// Runs an operator action on run `id` with the form's note, then redirects with `done`, or
/// shows the page with why it was refused.
async fn operate(
    state: &AppState,
    viewer: &Viewer,
    id: &str,
    form: &NoteForm,
    done: &str,
    action: impl AsyncFnOnce(
        onephase_saga::SagaAdmin,
        Uuid,
        onephase_saga::Audit,
    ) -> Result<(), onephase_saga::SagaError>,
) -> Response {
    if let Err((status, why)) = viewer.may_act(&form.csrf) {
        return failed(viewer, status, why);
    }
    let Ok(id) = Uuid::parse_str(id) else {
        return not_a_run_id(viewer, id);
    };
    let audit = onephase_saga::Audit::new(viewer.caller.name.clone(), form.note.clone());
    let result = action(state.saga().orchestrator().admin(), id, audit).await;
    settle(
        result,
        &format!("/dashboard/runs/{id}"),
        done,
        async |why| run_page(state, viewer, id, None, Some(why)).await,
    )
    .await
}

/// `retry` or `abort` a parked run.
async fn run_action(
    viewer: Viewer,
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<NoteForm>,
) -> Response {
    match action.as_str() {
        "retry" => {
            operate(
                &state,
                &viewer,
                &id,
                &form,
                "retried",
                async |admin, id, audit| admin.retry(id, &audit).await,
            )
            .await
        }
        "abort" => {
            operate(
                &state,
                &viewer,
                &id,
                &form,
                "aborted",
                async |admin, id, audit| admin.abort(id, &audit).await,
            )
            .await
        }
        other => no_such_action(&viewer, other),
    }
}

async fn run_resolve(
    viewer: Viewer,
    State(state): State<AppState>,
    Path((id, step)): Path<(String, String)>,
    Form(form): Form<NoteForm>,
) -> Response {
    operate(
        &state,
        &viewer,
        &id,
        &form,
        "resolved",
        async move |admin, id, audit| admin.resolve(id, &step, &audit).await,
    )
    .await
}

// ---- webhook endpoints and messages ----

async fn endpoint_page(
    state: &AppState,
    viewer: &Viewer,
    id: &str,
    notice: Option<&str>,
    error: Option<&str>,
) -> Response {
    let webhooks = state.webhook().webhooks();
    let endpoint = match webhooks.endpoint(id).await {
        Ok(endpoint) => endpoint,
        Err(e) => return failed(viewer, status_of(&e), &e.to_string()),
    };
    let (attempts, dead) = match (
        webhooks.attempts(None, Some(id), None, 50).await,
        webhooks.dead_letters(Some(id), 100).await,
    ) {
        (Ok(attempts), Ok(dead)) => (attempts, dead),
        (Err(e), _) | (_, Err(e)) => return failed(viewer, status_of(&e), &e.to_string()),
    };
    let body = html! {
        section.panel.problem[!endpoint.enabled || !dead.is_empty()] {
            h2 { "Webhook endpoint " code { (endpoint.id) } }
            dl {
                dt { "URL" } dd { code { (endpoint.url) } }
                dt { "Application" } dd { (endpoint.app) }
                dt { "Events" } dd { (endpoint.event_types.as_ref().map_or("all".to_owned(), |t| t.join(", "))) }
                dt { "Enabled" } dd class=(if endpoint.enabled { "ok" } else { "bad" }) {
                    @if endpoint.enabled { "yes" } @else { "no: " (endpoint.disabled_reason.as_deref().unwrap_or("disabled")) " (" (opt_time(endpoint.disabled_at)) ")" }
                }
                @if let Some(since) = endpoint.failing_since { dt { "Failing since" } dd.bad { (rfc3339(since)) } }
                dt { "Ordered" } dd { (if endpoint.ordered { "yes, per partition key" } else { "no" }) }
                dt { "Dead letters" } dd class=(if dead.is_empty() { "" } else { "bad" }) { (dead.len()) }
            }
            @if viewer.is_admin() {
                h2 { "Act" }
                @if endpoint.enabled {
                    form.act method="post" action={ "/dashboard/endpoints/" (endpoint.id) "/disable" } {
                        (hidden_csrf(viewer))
                        input type="text" name="reason" placeholder="why (optional)";
                        button type="submit" { "Disable" }
                    }
                    @if !dead.is_empty() {
                        form.act method="post" action={ "/dashboard/endpoints/" (endpoint.id) "/replay" } {
                            (hidden_csrf(viewer))
                            button type="submit" { "Replay " (dead.len()) (if dead.len() == 1 { " dead letter" } else { " dead letters" }) }
                        }
                    }
                } @else {
                    form.act method="post" action={ "/dashboard/endpoints/" (endpoint.id) "/enable" } {
                        (hidden_csrf(viewer))
                        button type="submit" { "Enable" }
                    }
                }
            }
        }
        section.panel {
            h2 { "Recent attempts" }
            @if attempts.is_empty() { p { "None yet." } }
            @else {
                table {
                    tr { th { "At" } th { "Message" } th { "Attempt" } th { "Outcome" } th { "Status" } th { "Latency" } th { "Answer / error" } }
                    @for a in &attempts {
                        tr {
                            td { (time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(a.at_ms) * 1_000_000).map_or("-".to_owned(), rfc3339)) }
                            td { a href={ "/dashboard/messages/" (a.message_id) } { code { (a.message_id) } } }
                            td { (a.attempt) }
                            td class=(if a.outcome == "delivered" { "ok" } else { "bad" }) { (a.outcome) }
                            td { (a.status_code.map_or("-".to_owned(), |s| s.to_string())) }
                            td { (a.latency_ms) " ms" }
                            td { code { (a.response.as_deref().or(a.error.as_deref()).unwrap_or("-").chars().take(200).collect::<String>()) } }
                        }
                    }
                }
            }
        }
    };
    page("Webhook endpoint", viewer, notice, error, body).into_response()
}

async fn endpoint(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(notice): Query<Notice>,
) -> Response {
    endpoint_page(&state, &viewer, &id, notice.done.as_deref(), None).await
}

/// Runs `action` on endpoint `id` after checking the form, then redirects with `done`.
async fn on_endpoint<T>(
    state: &AppState,
    viewer: &Viewer,
    id: &str,
    csrf: &str,
    done: &str,
    action: impl AsyncFnOnce(&onephase_webhook::Webhooks) -> Result<T, onephase_webhook::WebhookError>,
) -> Response {
    if let Err((status, why)) = viewer.may_act(csrf) {
        return failed(viewer, status, why);
    }
    let result = action(state.webhook().webhooks()).await;
    settle(
        result,
        &format!("/dashboard/endpoints/{id}"),
        done,
        async |why| endpoint_page(state, viewer, id, None, Some(why)).await,
    )
    .await
}

/// `enable`, `disable` (with a reason) or `replay` the dead letters of an endpoint.
async fn endpoint_action(
    viewer: Viewer,
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<ReasonForm>,
) -> Response {
    let csrf = form.csrf.as_str();
    match action.as_str() {
        "enable" => {
            on_endpoint(&state, &viewer, &id, csrf, "enabled", async |w| {
                w.enable(&id).await
            })
            .await
        }
        "disable" => {
            let reason = match form.reason.trim() {
                "" => format!("disabled by {} on the dashboard", viewer.caller.name),
                given => given.to_owned(),
            };
            on_endpoint(&state, &viewer, &id, csrf, "disabled", async |w| {
                w.disable(&id, &reason).await
            })
            .await
        }
        "replay" => {
            let replay = onephase_webhook::Replay {
                endpoint_id: Some(id.clone()),
                ..Default::default()
            };
            on_endpoint(&state, &viewer, &id, csrf, "replayed", async |w| {
                w.replay(&replay).await
            })
            .await
        }
        other => no_such_action(&viewer, other),
    }
}

async fn message_page(
    state: &AppState,
    viewer: &Viewer,
    id: &str,
    notice: Option<&str>,
    error: Option<&str>,
) -> Response {
    let webhooks = state.webhook().webhooks();
    let (message, attempts) = match (
        webhooks.message(id).await,
        webhooks.attempts(Some(id), None, None, 100).await,
    ) {
        (Ok(message), Ok(attempts)) => (message, attempts),
        (Err(e), _) | (_, Err(e)) => return failed(viewer, status_of(&e), &e.to_string()),
    };
    let body = html! {
        section.panel {
            h2 { "Webhook message " code { (message.id) } }
            dl {
                dt { "Event type" } dd { (message.event_type) }
                dt { "Application" } dd { (message.app) }
                dt { "Created" } dd { (rfc3339(message.created_at)) }
                @if let Some(key) = &message.partition_key { dt { "Partition key" } dd { code { (key) } } }
            }
            pre { (message.body.chars().take(4096).collect::<String>()) }
            @if viewer.is_admin() {
                form.act method="post" action={ "/dashboard/messages/" (message.id) "/replay" } {
                    (hidden_csrf(viewer))
                    button type="submit" { "Replay to every endpoint it went to (dead deliveries)" }
                }
            }
        }
        section.panel {
            h2 { "Deliveries" }
            table {
                tr { th { "Endpoint" } th { "Status" } th { "Attempts" } th { "Next attempt" } th { "Last error" } }
                @for d in &message.deliveries {
                    tr {
                        td { a href={ "/dashboard/endpoints/" (d.endpoint_id) } { code { (d.endpoint_id) } } }
                        td class=(if d.status == "dead" { "bad" } else { "" }) { (d.status) }
                        td { (d.attempts) } td { (opt_time(d.next_attempt_at)) }
                        td { (d.last_error.as_deref().unwrap_or("-")) }
                    }
                }
            }
            h2 { "Attempts" }
            table {
                tr { th { "Endpoint" } th { "Attempt" } th { "Outcome" } th { "Status" } th { "Latency" } }
                @for a in &attempts {
                    tr {
                        td { code { (a.endpoint_id) } } td { (a.attempt) }
                        td class=(if a.outcome == "delivered" { "ok" } else { "bad" }) { (a.outcome) }
                        td { (a.status_code.map_or("-".to_owned(), |s| s.to_string())) } td { (a.latency_ms) " ms" }
                    }
                }
            }
        }
    };
    page("Webhook message", viewer, notice, error, body).into_response()
}

async fn message(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(notice): Query<Notice>,
) -> Response {
    message_page(&state, &viewer, &id, notice.done.as_deref(), None).await
}

async fn message_replay(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Form(form): Form<Confirm>,
) -> Response {
    if let Err((status, why)) = viewer.may_act(&form.csrf) {
        return failed(&viewer, status, why);
    }
    let replay = onephase_webhook::Replay {
        message_id: Some(id.clone()),
        ..Default::default()
    };
    let result = state.webhook().webhooks().replay(&replay).await;
    settle(
        result,
        &format!("/dashboard/messages/{id}"),
        "replayed",
        async |why| message_page(&state, &viewer, &id, None, Some(why)).await,
    )
    .await
}

// ---- outbox relays ----

async fn relay_page(
    state: &AppState,
    viewer: &Viewer,
    name: &str,
    notice: Option<&str>,
    error: Option<&str>,
) -> Response {
    let Some(source) = state.outbox().source(name) else {
        return failed(
            viewer,
            StatusCode::NOT_FOUND,
            &format!("no relay named {name:?} in this server's configuration"),
        );
    };
    let admin = match source.admin() {
        Ok(admin) => admin,
        Err(why) => return failed(viewer, StatusCode::SERVICE_UNAVAILABLE, &why),
    };
    let dead = match admin.dead(0, 200).await {
        Ok(dead) => dead,
        Err(e) => return failed(viewer, status_of(&e), &e.to_string()),
    };
    let body = html! {
        section.panel.problem[!dead.is_empty()] {
            h2 { "Outbox relay " (source.name) }
            dl {
                dt { "Sink" } dd { code { (source.sink) } }
                dt { "Published" } dd { (source.stats.published()) }
                dt { "Dead letters" } dd class=(if dead.is_empty() { "" } else { "bad" }) { (dead.len()) }
            }
            p.hint { "A dead row holds back the later rows of its key until it is retried or discarded." }
        }
        section.panel {
            h2 { "Dead letters" }
            @if dead.is_empty() { p { "None." } }
            @else {
                table {
                    tr { th { "Seq" } th { "Id" } th { "Topic" } th { "Key" } th { "Attempts" } th { "Dead since" } th { "Last error" } @if viewer.is_admin() { th {} } }
                    @for row in &dead {
                        tr {
                            td { (row.seq) } td { code { (row.id) } } td { (row.topic) }
                            td { (row.key.as_deref().unwrap_or("-")) } td { (row.attempts) }
                            td { (opt_time(row.dead_at)) } td { (row.last_error.as_deref().unwrap_or("-")) }
                            @if viewer.is_admin() {
                                td {
                                    form.act method="post" action={ "/dashboard/relays/" (source.name) "/dead/" (row.id) "/retry" } {
                                        (hidden_csrf(viewer)) button type="submit" { "Retry" }
                                    }
                                    form.act method="post" action={ "/dashboard/relays/" (source.name) "/dead/" (row.id) "/discard" } {
                                        (hidden_csrf(viewer)) button type="submit" { "Discard" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page("Outbox relay", viewer, notice, error, body).into_response()
}

async fn relay(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(notice): Query<Notice>,
) -> Response {
    relay_page(&state, &viewer, &name, notice.done.as_deref(), None).await
}

/// Retries or discards dead row `id` of relay `name`, then redirects with `done`.
async fn on_dead_row(
    state: &AppState,
    viewer: &Viewer,
    (name, id): (String, String),
    csrf: &str,
    discard: bool,
) -> Response {
    if let Err((status, why)) = viewer.may_act(csrf) {
        return failed(viewer, status, why);
    }
    let Ok(row) = Uuid::parse_str(&id) else {
        return failed(
            viewer,
            StatusCode::BAD_REQUEST,
            &format!("{id:?} is not a row's message id (a UUID)"),
        );
    };
    let Some(admin) = state.outbox().source(&name).and_then(|s| s.admin().ok()) else {
        return relay_page(state, viewer, &name, None, None).await;
    };
    let (result, done) = if discard {
        (admin.discard(row).await, "row-discarded")
    } else {
        (admin.retry(row).await, "row-retried")
    };
    settle(
        result,
        &format!("/dashboard/relays/{name}"),
        done,
        async |why| relay_page(state, viewer, &name, None, Some(why)).await,
    )
    .await
}

/// `retry` or `discard` a dead row.
async fn dead_row_action(
    viewer: Viewer,
    State(state): State<AppState>,
    Path((name, id, action)): Path<(String, String, String)>,
    Form(form): Form<Confirm>,
) -> Response {
    match action.as_str() {
        "retry" => on_dead_row(&state, &viewer, (name, id), &form.csrf, false).await,
        "discard" => on_dead_row(&state, &viewer, (name, id), &form.csrf, true).await,
        other => no_such_action(&viewer, other),
    }
}
