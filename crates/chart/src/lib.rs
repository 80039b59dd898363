//! Line and bar charts as SVG, drawn on the server.
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

/// Rows of bars as one SVG document (valid inline in HTML and as a file of its own): one row
/// per series (a label and its bars, each with its value as a tooltip), all on the scale of
/// the largest value, which the title states with `unit`.
///
/// ```
/// let svg = onephase_chart::bars("Share per partition", "%", &[("jump", "#1570ef", vec![24.0, 26.0])])
///     .into_string();
/// assert_eq!(svg.matches("<rect").count(), 2);
/// ```
pub fn bars(title: &str, unit: &str, series: &[(&str, &str, Vec<f64>)]) -> Markup {
    const LABEL: f64 = 120.0;
    const PLOT: f64 = 480.0;
    const ROW: f64 = 44.0;
    const TOP: f64 = 24.0;
    let max = series
        .iter()
        .flat_map(|(_, _, values)| values.iter())
        .copied()
        .fold(0.0_f64, f64::max);
    let scale = if max > 0.0 { max } else { 1.0 };
    let height = TOP + ROW * series.len() as f64;
    html! {
        svg xmlns="http://www.w3.org/2000/svg" viewBox={ "0 0 " (LABEL + PLOT) " " (height) }
            width=(LABEL + PLOT) height=(height) role="img" aria-label=(title) font-family="sans-serif" font-size="11" {
            text x="0" y="14" font-size="13" { (title) " (bar height: largest " (format_value(max)) @if !unit.is_empty() { " " (unit) } ")" }
            @for (row, (name, colour, values)) in series.iter().enumerate() {
                @let base = TOP + ROW * (row as f64 + 1.0) - 4.0;
                @let width = PLOT / values.len().max(1) as f64;
                text x="0" y=(base - 8.0) { (name) }
                line x1=(LABEL) y1=(base) x2=(LABEL + PLOT) y2=(base) stroke="#d0d5dd" {}
                @for (i, v) in values.iter().enumerate() {
                    @let h = v.max(0.0) / scale * (ROW - 8.0);
                    rect x={ (format!("{:.1}", LABEL + i as f64 * width)) } y={ (format!("{:.1}", base - h)) }
                        width={ (format!("{:.1}", (width - 1.0).max(0.5))) } height={ (format!("{h:.1}")) } fill=(colour) {
                        title { (name) " " (i) ": " (format_value(*v)) @if !unit.is_empty() { " " (unit) } }
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
