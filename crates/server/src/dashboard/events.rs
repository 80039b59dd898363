//! The event-store panel: projections with their lag (parked ones first, with the error), and
//! which stream categories received the recent appends.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use maud::html;

use super::{Panel, Rendered, rfc3339};
use crate::state::AppState;

/// How many of the latest events the per-category counts cover.
const RECENT: u64 = 10_000;

/// Projections and recent appends.
pub struct EventsPanel;

impl Panel for EventsPanel {
    fn title(&self) -> &str {
        "Events and projections"
    }

    fn render<'a>(
        &'a self,
        state: &'a AppState,
    ) -> Pin<Box<dyn Future<Output = Rendered> + Send + 'a>> {
        Box::pin(async move {
            let service = state.events();
            let looked = tokio::time::timeout(Duration::from_secs(1), async {
                let projections = service.projections().list().await?;
                let categories = service.events().recent_categories(RECENT).await?;
                let head = service.events().head().await?;
                Ok::<_, onephase_events::EventsError>((projections, categories, head))
            })
            .await;
            let Ok(Ok((projections, categories, head))) = looked else {
                return Rendered::with_problem(
                    html! { p.bad { "the event store does not answer" } },
                    true,
                );
            };
            let parked = projections
                .iter()
                .filter(|p| p.parked_position.is_some())
                .count();
            let body = html! {
                p { (head) " events; " (projections.len()) " projection generations"
                    @if parked > 0 { ", " span.bad { (parked) " parked" } } }
                @if projections.is_empty() {
                    p { "No projections yet: " code { "onephase events define <name> definition.json" } }
                } @else {
                    table {
                        tr { th { "Projection" } th { "Gen" } th { "Role" } th { "Position" } th { "Lag" } th { "Lag (s)" } th { "Parked" } }
                        @for p in projections.iter().take(50) {
                            tr {
                                td { code { (p.name) } }
                                td { (p.generation) }
                                td { (p.role) }
                                td { (p.position) }
                                td { (p.lag_events) }
                                td { (format!("{:.1}", p.lag_seconds)) }
                                td {
                                    @if let Some(at) = p.parked_position {
                                        span.bad { "at " (at) ": " (p.parked_error.clone().unwrap_or_default()) }
                                        " " code { "onephase events retry|skip " (p.name) " --reason ..." }
                                    } @else { "-" }
                                }
                            }
                        }
                    }
                }
                @if !categories.is_empty() {
                    p { "Appends among the last " (RECENT.min(head)) " events, by stream category:" }
                    table {
                        tr { th { "Category" } th { "Events" } th { "Last" } }
                        @for c in &categories {
                            tr { td { code { (c.category) } } td { (c.events) } td { (rfc3339(c.last_at)) } }
                        }
                    }
                }
            };
            Rendered::with_problem(body, parked > 0)
        })
    }
}
