//! The Kafka panel: each watched group's status, lag, rebalances and the doctor's findings;
//! groups that are stuck or stopped first.

use std::future::Future;
use std::pin::Pin;

use maud::html;
use onephase_kafka::diagnosis::FindingKind;
use onephase_kafka::rules::Status;

use super::{Panel, Rendered};
use crate::state::AppState;

/// Kafka consumer groups: the doctor's diagnoses.
pub struct KafkaPanel;

impl Panel for KafkaPanel {
    fn title(&self) -> &str {
        "Kafka groups"
    }

    fn render<'a>(
        &'a self,
        state: &'a AppState,
    ) -> Pin<Box<dyn Future<Output = Rendered> + Send + 'a>> {
        Box::pin(async move {
            let watches = state.kafka().status();
            if watches.is_empty() {
                return Rendered::fine(html! {
                    p { "No Kafka cluster is watched. Add a " code { "[[kafka.watch]]" }
                        " table (brokers, groups) to the configuration; see docs/kafka.md." }
                });
            }
            let problem = watches.iter().any(|w| {
                w.error.is_some()
                    || w.groups.iter().any(|g| {
                        g.status != Status::Ok
                            || g.findings.iter().any(|f| {
                                !matches!(f.kind, FindingKind::Healthy | FindingKind::NotEnoughData)
                            })
                    })
            });
            let body = html! {
                @for w in &watches {
                    p {
                        strong { (w.brokers) }
                        @if let Some(e) = &w.error { " " span.bad { (e) } }
                    }
                    table {
                        tr { th { "Group" } th { "State" } th { "Status" } th { "Members" } th { "Rebalances" } th { "Lag" } th { "Lag (s)" } th { "Diagnosis" } }
                        // The doctor sorts worst first.
                        @for g in &w.groups {
                            tr {
                                td { code { (g.group) } }
                                td { (g.state) }
                                td {
                                    @if g.status == Status::Ok { (g.status.as_str()) }
                                    @else { span.bad { (g.status.as_str()) } }
                                }
                                td { (g.members.len()) }
                                td { (g.rebalances) }
                                td { (g.lag) }
                                td { (format!("{:.1}", g.lag_seconds)) }
                                td {
                                    @for f in &g.findings {
                                        div {
                                            @if matches!(f.kind, FindingKind::Healthy | FindingKind::NotEnoughData) { (f.summary) }
                                            @else { span.bad { (f.summary) } " — " (f.next_step) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            };
            Rendered::with_problem(body, problem)
        })
    }
}
