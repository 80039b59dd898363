//! Line charts as inline SVG, drawn on the server.
//!
//! A chart is a `<figure>` holding an `<svg>` of polylines: no script, no library, no request
//! to anywhere else, so a page that holds it reads the same in a browser, in a mail client or
//! from a file. The dashboard draws its last hour with it, and the failure lab its timelines.
//!
//! ```
//! let svg = onephase_chart::line(
//!     "Attempts per 100 ms",
//!     "30 s",
//!     "",
//!     &[("naive", "#d92d20", vec![Some(1.0), Some(9.0)]), ("onephase", "#1570ef", vec![Some(1.0), Some(2.0)])],
//! )
//! .into_string();
//! assert!(svg.contains("<polyline"));
//! ```

use maud::{Markup, html};

/// A line chart of `series` (named, each with its CSS colour) over `span` (`last hour`, say)
/// as inline SVG, with the largest value and the latest value of each series in the caption.
/// Missing points break the line; a lone point is a dot.
pub fn line(
    title: &str,
    span: &str,
    unit: &str,
    series: &[(&str, &str, Vec<Option<f64>>)],
) -> Markup {
    const W: f64 = 320.0;
    const H: f64 = 60.0;
    let max = series
        .iter()
        .flat_map(|(_, _, points)| points.iter().flatten())
        .copied()
        .fold(0.0_f64, f64::max);
    let top = if max > 0.0 { max } else { 1.0 };
    let n = series.iter().map(|(_, _, p)| p.len()).max().unwrap_or(0);
    let x = |i: usize| {
        if n <= 1 {
            W
        } else {
            i as f64 * W / (n - 1) as f64
        }
    };
    let y = |v: f64| H - v / top * (H - 4.0) - 2.0;
    let lines: Vec<(&str, Vec<String>)> = series
        .iter()
        .map(|(_, colour, points)| {
            // Consecutive present points form one polyline; a gap starts another.
            let mut runs = vec![String::new()];
            for (i, point) in points.iter().enumerate() {
                match point {
                    Some(v) => {
                        let run = runs.last_mut().expect("runs is never empty");
                        run.push_str(&format!("{:.1},{:.1} ", x(i), y(*v)));
                    }
                    None => runs.push(String::new()),
                }
            }
            runs.retain(|r| !r.is_empty());
            (*colour, runs)
        })
        .collect();
    html! {
        figure.chart {
            figcaption {
                (title) " (" (span) ", max " (format_value(max)) @if !unit.is_empty() { " " (unit) } ")"
                @for (name, colour, points) in series {
                    " " span style={ "color:" (colour) } { "■ " (name) " " (points.iter().rev().flatten().next().map_or("-".to_owned(), |v| format_value(*v))) }
                }
            }
            svg viewBox={ "0 0 " (W) " " (H) } width="100%" height="60" preserveAspectRatio="none" role="img" aria-label=(title) {
                line x1="0" y1=(H - 1.0) x2=(W) y2=(H - 1.0) stroke="#d0d5dd" stroke-width="1" {}
                @for (colour, runs) in &lines {
                    @for run in runs {
                        @if run.matches(' ').count() == 1 {
                            @let (px, py) = run.trim().split_once(',').unwrap_or(("0", "0"));
                            circle cx=(px) cy=(py) r="2" fill=(colour) {}
                        } @else {
                            polyline points=(run.trim()) fill="none" stroke=(colour) stroke-width="1.5" vector-effect="non-scaling-stroke" {}
                        }
                    }
                }
            }
        }
    }
}

fn format_value(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_draw_lines_dots_and_gaps() {
        let svg = line(
            "x",
            "last hour",
            "/s",
            &[("a", "#000", vec![Some(1.0), Some(2.0), None, Some(3.0)])],
        )
        .into_string();
        assert_eq!(svg.matches("<polyline").count(), 1, "{svg}");
        assert_eq!(svg.matches("<circle").count(), 1, "{svg}");
        assert!(svg.contains("max 3 /s") && svg.contains("■ a 3"), "{svg}");
        let empty = line("y", "", "", &[("b", "#000", vec![])]).into_string();
        assert!(
            empty.contains("<svg") && !empty.contains("<polyline"),
            "{empty}"
        );
    }
}
