//! The partition panel: the maps (scheme, partitions, owners, version, how evenly the owners
//! hold the partitions) and the moves, those in progress or failed first.

use std::future::Future;
use std::pin::Pin;

use maud::html;
use onephase_partition::online::Phase;

use super::{Panel, Rendered};
use crate::state::AppState;

/// Partition maps and online moves.
pub struct PartitionPanel;

impl Panel for PartitionPanel {
    fn title(&self) -> &str {
        "Partitions"
    }

    fn render<'a>(
        &'a self,
        state: &'a AppState,
    ) -> Pin<Box<dyn Future<Output = Rendered> + Send + 'a>> {
        Box::pin(async move {
            let service = state.partition();
            let (maps, moves) = match (
                service.maps().list().await,
                service.maps().moves(None, 20).await,
            ) {
                (Ok(maps), Ok(moves)) => (maps, moves),
                (Err(e), _) | (_, Err(e)) => {
                    return Rendered::with_problem(html! { p.bad { (e) } }, true);
                }
            };
            if maps.is_empty() {
                return Rendered::fine(html! {
                    p { "No partition map. Create one with " code { "PUT /v1/partitions/{map}" }
                        ", and choose its scheme with " code { "onephase partition analyze" } "; see docs/partition.md." }
                });
            }
            let mut views = Vec::new();
            for m in moves {
                views.push(crate::v1::partition_view(state, m).await);
            }
            let problem = views.iter().any(|v| {
                v.status_error.is_some()
                    || v.status
                        .as_ref()
                        .is_some_and(|s| s.error.is_some() || s.phase == Phase::Fenced)
            });
            let body = html! {
                table {
                    tr { th { "Map" } th { "Version" } th { "Scheme" } th { "Partitions" } th { "Owners" } th title="the owner with the most partitions over the mean per owner; the analyzer measures the skew of the keys" { "Owner skew" } }
                    @for m in &maps {
                        tr {
                            td { code { (m.name) } }
                            td { (m.version) }
                            td { (m.scheme.kind()) }
                            td { (m.owners.len()) }
                            td { (owners(&m.owners)) }
                            td { (format!("{:.2}", owner_skew(&m.owners))) }
                        }
                    }
                }
                @if !views.is_empty() {
                    table {
                        tr { th { "Move" } th { "Partition" } th { "From → to" } th { "Phase" } th { "Copied" } th { "Catch-up lag" } th { "Pause" } }
                        @for v in &views {
                            tr {
                                td { code { (v.spec.id.to_string().get(..8).unwrap_or_default()) } }
                                td { (v.spec.map) " #" (v.spec.partition) }
                                td { (v.spec.source) " → " (v.spec.target) }
                                @if let Some(s) = &v.status {
                                    td {
                                        @if s.phase == Phase::Fenced { span.bad { (format!("{:?}", s.phase)) } }
                                        @else { (format!("{:?}", s.phase)) }
                                        @if let Some(e) = &s.error { " " span.bad { (e) } }
                                    }
                                    td { (s.copied_rows) " / " (s.total_rows) }
                                    td { (s.catch_up_lag) }
                                    td { (s.pause_ms.map_or("-".to_owned(), |p| format!("{p} ms"))) }
                                } @else {
                                    td colspan="4" { span.bad { (v.status_error.clone().unwrap_or_default()) } }
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

/// The owners, each with how many partitions it holds.
fn owners(owners: &[String]) -> String {
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for o in owners {
        *counts.entry(o).or_default() += 1;
    }
    counts
        .iter()
        .map(|(o, n)| format!("{o} ({n})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The owner with the most partitions over the mean per owner: 1.0 when evenly owned.
fn owner_skew(owners: &[String]) -> f64 {
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for o in owners {
        *counts.entry(o).or_default() += 1;
    }
    let most = counts.values().copied().max().unwrap_or(0) as f64;
    if counts.is_empty() {
        return 1.0;
    }
    most / (owners.len() as f64 / counts.len() as f64)
}
