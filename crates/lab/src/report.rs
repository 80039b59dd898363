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

/// What must hold, checked on both runs: onephase's must keep it; the naive one usually does
/// not, which is the failure the scenario shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Invariant {
    /// The invariant as a sentence ("at most 1 origin call per expiry").
    pub statement: String,
    /// Whether onephase's run kept it.
    pub holds: bool,
    /// Whether the naive run kept it.
    pub naive_holds: bool,
}

/// One quantity over the run, per bucket of time, naive beside onephase: the picture of the
/// failure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Chart {
    /// What is counted ("origin calls per 100 ms").
    pub title: String,
    /// The unit of the values, if any.
    pub unit: String,
    /// What one point stands for: `100 ms`, `a round`, `20 orders`.
    pub step: String,
    /// The naive run's value in each bucket.
    pub naive: Vec<f64>,
    /// onephase's value in each bucket.
    pub onephase: Vec<f64>,
}

/// What a scenario measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: &'static str,
    /// The post of the seed it comes from; `None` for a scenario no post is about.
    pub post: Option<u8>,
    /// The failure and onephase's answer, in two sentences.
    pub story: &'static str,
    /// The setup in one sentence: load, fault, settings.
    pub setup: String,
    /// The seed the run used.
    pub seed: u64,
    /// The figures.
    pub rows: Vec<Row>,
    /// What must hold, and whether it did.
    pub invariant: Invariant,
    /// The failure over time, where time is what it is about.
    pub chart: Option<Chart>,
    /// What the scenario needs and was not given (an engine): it did not run.
    pub needs: Option<String>,
    /// Why the scenario stopped before it measured anything (its engine failed); the
    /// invariant then fails with the same words.
    pub error: Option<String>,
}

impl Report {
    pub(crate) fn new(scenario: &'static str, seed: u64, setup: impl Into<String>) -> Self {
        Self {
            scenario,
            post: None,
            story: "",
            setup: setup.into(),
            seed,
            rows: Vec::new(),
            invariant: Invariant {
                statement: "the scenario stated no invariant".to_owned(),
                holds: false,
                naive_holds: false,
            },
            chart: None,
            needs: None,
            error: None,
        }
    }

    /// Whether onephase kept the invariant.
    pub fn passed(&self) -> bool {
        self.invariant.holds
    }

    /// Whether the scenario ran: false when it needs an engine it was not given
    /// ([`needs`](Self::needs) says which).
    pub fn ran(&self) -> bool {
        self.needs.is_none()
    }

    /// What the runs measured, or `None` when the scenario's engine failed before they
    /// measured anything: then the report keeps the error and a failed invariant that says
    /// why, so that `lab` exits non-zero with the cause.
    pub(crate) fn ran_to_end<T, E: std::fmt::Display>(
        &mut self,
        outcome: Result<T, E>,
    ) -> Option<T> {
        match outcome {
            Ok(measured) => Some(measured),
            Err(error) => {
                let error = error.to_string();
                self.invariant(format!("the scenario could not run: {error}"), false, false);
                self.error = Some(error);
                None
            }
        }
    }

    /// The scenario needs `what` (an engine it was not given) and did not run.
    pub(crate) fn not_run_for_want_of(&mut self, what: &str) {
        self.needs = Some(what.to_owned());
        self.invariant(format!("not run: it needs {what}"), false, false);
    }

    pub(crate) fn invariant(&mut self, statement: impl Into<String>, naive: bool, onephase: bool) {
        self.invariant = Invariant {
            statement: statement.into(),
            holds: onephase,
            naive_holds: naive,
        };
    }

    /// A chart over time, one point per `bucket`.
    pub(crate) fn chart(
        &mut self,
        title: &str,
        unit: &str,
        bucket: std::time::Duration,
        naive: Vec<f64>,
        onephase: Vec<f64>,
    ) {
        let step = format!("{} ms", bucket.as_millis());
        self.chart_by(title, unit, &step, naive, onephase);
    }

    /// A chart with one point per `step` of the run (`a round`, `20 orders`).
    pub(crate) fn chart_by(
        &mut self,
        title: &str,
        unit: &str,
        step: &str,
        naive: Vec<f64>,
        onephase: Vec<f64>,
    ) {
        self.chart = Some(Chart {
            title: title.to_owned(),
            unit: unit.to_owned(),
            step: step.to_owned(),
            naive,
            onephase,
        });
    }

    pub(crate) fn row(&mut self, metric: &str, naive: f64, onephase: f64) {
        self.rows.push(Row {
            metric: metric.to_owned(),
            naive,
            onephase,
        });
    }

    /// Where the scenario comes from, for a heading: `post 12`, or `no post`.
    pub fn source(&self) -> String {
        match self.post {
            Some(post) => format!("post {post}"),
            None => "no post".to_owned(),
        }
    }

    /// The figure for `metric` (a row whose name starts with it).
    pub fn get(&self, metric: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.metric.starts_with(metric))
    }

    /// The report as a Markdown table, with naive ÷ onephase in the last column, and the
    /// invariant's verdict under it.
    pub fn table(&self) -> String {
        if let Some(needs) = &self.needs {
            return format!(
                "{} ({})\nnot run: it needs {needs}\n",
                self.scenario,
                self.source()
            );
        }
        if let Some(error) = &self.error {
            return format!(
                "{} ({}, seed {})\ncould not run: {error}\n",
                self.scenario,
                self.source(),
                self.seed
            );
        }
        let mut out = format!(
            "{} ({}, seed {})\n{}\n\n| metric | naive | onephase | naive ÷ onephase |\n|---|---:|---:|---:|\n",
            self.scenario,
            self.source(),
            self.seed,
            self.setup
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
        out.push_str(&format!(
            "\ninvariant: {}: onephase {}, naive {}\n",
            self.invariant.statement,
            verdict(self.invariant.holds),
            verdict(self.invariant.naive_holds)
        ));
        out
    }
}

/// `PASS` or `FAIL`.
pub fn verdict(holds: bool) -> &'static str {
    if holds { "PASS" } else { "FAIL" }
}

/// A figure as printed: whole numbers without decimals, others with two.
pub(crate) fn figure(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

/// A duration in seconds, to the hundredth, for a row.
pub(crate) fn seconds(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 100.0).round() / 100.0
}
