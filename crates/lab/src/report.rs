//! A scenario's numbers: one row per metric, naive beside onephase.

use serde::Serialize;

/// One measured quantity, for the naive approach and for onephase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// What was measured, with its unit.
    pub metric: String,
    /// The naive approach's figure.
    pub naive: f64,
    /// onephase's figure.
    pub onephase: f64,
}

/// What a scenario measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: &'static str,
    /// The setup in one sentence: load, fault, settings.
    pub setup: String,
    /// The seed the run used.
    pub seed: u64,
    /// The figures.
    pub rows: Vec<Row>,
}

impl Report {
    pub(crate) fn new(scenario: &'static str, seed: u64, setup: impl Into<String>) -> Self {
        Self {
            scenario,
            setup: setup.into(),
            seed,
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, metric: &str, naive: f64, onephase: f64) {
        self.rows.push(Row {
            metric: metric.to_owned(),
            naive,
            onephase,
        });
    }

    /// The figure for `metric` (a row whose name starts with it).
    pub fn get(&self, metric: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.metric.starts_with(metric))
    }

    /// The report as a Markdown table, with naive ÷ onephase in the last column.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} (seed {})\n{}\n\n| metric | naive | onephase | naive ÷ onephase |\n|---|---:|---:|---:|\n",
            self.scenario, self.seed, self.setup
        );
        for r in &self.rows {
            let ratio = if r.onephase == 0.0 {
                if r.naive == 0.0 {
                    "=".to_owned()
                } else {
                    "∞".to_owned()
                }
            } else {
                format!("{:.1}×", r.naive / r.onephase)
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                r.metric,
                figure(r.naive),
                figure(r.onephase),
                ratio
            ));
        }
        out
    }
}

fn figure(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}
