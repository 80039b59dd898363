//! The replica panel: each watched cluster's primary, and every replica's state, measured lag
//! and replay position (replicas out of rotation first).

use std::future::Future;
use std::pin::Pin;

use maud::html;

use super::{Panel, Rendered};
use crate::state::AppState;

/// Replica clusters: lag and rotation.
pub struct ReplicaPanel;

impl Panel for ReplicaPanel {
    fn title(&self) -> &str {
        "Replicas"
    }

    fn render<'a>(
        &'a self,
        state: &'a AppState,
    ) -> Pin<Box<dyn Future<Output = Rendered> + Send + 'a>> {
        Box::pin(async move {
            let clusters = state.replica().status();
            if clusters.is_empty() {
                return Rendered::fine(html! {
                    p { "No replica cluster is watched. Add a " code { "[[replica]]" }
                        " table (primary and replicas) to the configuration; see docs/replica.md." }
                });
            }
            let problem = clusters
                .iter()
                .any(|c| c.primary_error.is_some() || c.replicas.iter().any(|r| !r.in_rotation));
            let body = html! {
                @for cluster in &clusters {
                    @let out = cluster.replicas.iter().filter(|r| !r.in_rotation).count();
                    p {
                        strong { (cluster.cluster) } ": primary at "
                        code { (cluster.primary_position.clone().unwrap_or_else(|| "?".into())) }
                        @if let Some(tl) = cluster.timeline { " (timeline " (tl) ")" }
                        @if let Some(e) = &cluster.primary_error { " " span.bad { "primary: " (e) } }
                        @if out > 0 { ", " span.bad { (out) " out of rotation" } }
                    }
                    table {
                        tr { th { "Replica" } th { "State" } th { "Lag (s)" } th { "Lag (bytes)" } th { "Replayed to" } }
                        @for r in cluster.replicas.iter().filter(|r| !r.in_rotation).chain(cluster.replicas.iter().filter(|r| r.in_rotation)) {
                            tr {
                                td { code { (r.name) } }
                                td {
                                    @if r.in_rotation { (r.state.as_str()) }
                                    @else { span.bad { (r.state.as_str()) } }
                                    @if let Some(e) = &r.error { " " span.bad { (e) } }
                                }
                                td { (r.lag_seconds.map_or("-".to_owned(), |s| format!("{s:.3}"))) }
                                td { (r.lag_bytes.map_or("-".to_owned(), |b| b.to_string())) }
                                td { code { (r.replay_position.clone().unwrap_or_else(|| "-".into())) } }
                            }
                        }
                    }
                }
            };
            Rendered::with_problem(body, problem)
        })
    }
}
