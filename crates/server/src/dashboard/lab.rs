//! `/lab`: the failure lab's last report, and (for admins) the button that runs it again in
//! this server.
//!
//! The report is the page `onephase lab all --report` writes, with the dashboard's links and
//! the run form above it. Running takes a few seconds (every scenario, naive and onephase);
//! one run at a time, kept in memory until the next one or a restart.

use std::sync::Mutex;

use axum::Form;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use onephase_core::Clock as _;
use onephase_lab::{Report, Scenario};
use serde::Deserialize;
use time::OffsetDateTime;

use super::session::Viewer;
use super::{layout, rfc3339};
use crate::state::AppState;

/// The last run of the lab in this server, and whether one is running.
#[derive(Debug, Default)]
pub struct LabRuns {
    state: Mutex<LabState>,
}

#[derive(Debug, Default)]
struct LabState {
    running: bool,
    last: Option<LabRun>,
}

#[derive(Debug, Clone)]
struct LabRun {
    at: OffsetDateTime,
    by: String,
    seed: u64,
    reports: Vec<Report>,
}

impl LabRuns {
    fn lock(&self) -> std::sync::MutexGuard<'_, LabState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The mark of a run in progress, cleared when the run ends however it ends (a client that
/// goes away drops the request, and this with it).
struct Running(AppState);

impl Running {
    fn start(state: &AppState) -> Option<Self> {
        let mut lab = state.lab().lock();
        if lab.running {
            return None;
        }
        lab.running = true;
        Some(Self(state.clone()))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.lab().lock().running = false;
    }
}

/// The run form's fields.
#[derive(Debug, Deserialize)]
pub struct RunForm {
    csrf: String,
    /// The seed; 1 when empty.
    #[serde(default)]
    seed: String,
}

/// `GET /lab`: the last report, or how to make one.
pub async fn page(viewer: Viewer, State(state): State<AppState>) -> Response {
    let (last, running) = {
        let lab = state.lab().lock();
        (lab.last.clone(), lab.running)
    };
    let Some(run) = last else {
        let body = html! {
            main {
                section.panel {
                    h2 { "The failure lab" }
                    p {
                        "Each failure of the seed's posts, run the naive way and with onephase on the \
                         same inputs, with an invariant checked on both. No report yet in this server."
                    }
                    (controls(&viewer, running, 1))
                }
            }
        };
        return layout("Failure lab", Some(&viewer), body).into_response();
    };
    let header = html! {
        nav style="display:flex;gap:1rem;align-items:center;flex-wrap:wrap;font-size:.9rem" {
            a href="/" { "← dashboard" }
            span { "Run " (rfc3339(run.at)) " by " (run.by) ", seed " (run.seed) "." }
            (controls(&viewer, running, run.seed))
        }
    };
    Html(onephase_lab::html_with(&run.reports, header)).into_response()
}

/// The run button for admins; a note for the others.
fn controls(viewer: &Viewer, running: bool, seed: u64) -> Markup {
    html! {
        @if running {
            span { "A run is in progress; reload in a few seconds." }
        } @else if viewer.is_admin() {
            form.act method="post" action="/lab/run" {
                input type="hidden" name="csrf" value=(viewer.csrf);
                label { "seed " input type="text" name="seed" value=(seed) size="6" style="min-width:4rem"; }
                button type="submit" { "Run every scenario" }
            }
        } @else {
            span { "An admin token may run the lab from here; `onephase lab all` runs it anywhere." }
        }
    }
}

/// `POST /lab/run`: runs every scenario with the form's seed, then shows the report.
pub async fn run(
    viewer: Viewer,
    State(state): State<AppState>,
    Form(form): Form<RunForm>,
) -> Response {
    if let Err(refused) = viewer.may_act(&form.csrf) {
        return refused.into_response();
    }
    let seed = match form.seed.trim() {
        "" => 1,
        text => match text.parse::<u64>() {
            Ok(seed) => seed,
            Err(_) => {
                return (
                    StatusCode::BAD_REQUEST,
                    "the seed is a whole number from 0 to 18446744073709551615; nothing ran",
                )
                    .into_response();
            }
        },
    };
    let Some(_running) = Running::start(&state) else {
        return (
            StatusCode::CONFLICT,
            "the lab is already running; its report replaces this page's when it ends",
        )
            .into_response();
    };
    let reports = tokio::task::spawn_blocking(move || {
        Scenario::ALL
            .into_iter()
            .map(|s| onephase_lab::run(s, seed))
            .collect::<Vec<_>>()
    })
    .await;
    match reports {
        Ok(reports) => {
            let failed = reports.iter().filter(|r| !r.passed()).count();
            if failed > 0 {
                tracing::error!(failed, seed, "the lab found onephase breaking an invariant");
            }
            state.lab().lock().last = Some(LabRun {
                at: state.clock().now(),
                by: viewer.caller.name.clone(),
                seed,
                reports,
            });
            Redirect::to("/lab").into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "the lab's run failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the lab's run failed; the error is in the server's log",
            )
                .into_response()
        }
    }
}
