//! The benchmark results table.

/// How a figure compares with its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Meets the target.
    Pass,
    /// Misses the target.
    Miss,
    /// Could not be measured.
    Error,
    /// No target for this figure.
    Info,
}

/// One row: what was measured, the figure, the target and the verdict.
pub struct Row {
    metric: String,
    value: String,
    target: String,
    verdict: Verdict,
}

/// Results of one benchmark.
#[derive(Default)]
pub struct Table {
    title: String,
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Table {
    /// An empty table with a title.
    pub fn new(title: &str) -> Table {
        Table {
            title: title.to_string(),
            ..Table::default()
        }
    }

    /// A figure without a target.
    pub fn info(&mut self, metric: &str, value: String) {
        self.push(metric, value, String::new(), Verdict::Info);
    }

    /// A figure checked against a target.
    pub fn check(&mut self, metric: &str, value: String, target: &str, pass: bool) {
        let verdict = if pass { Verdict::Pass } else { Verdict::Miss };
        self.push(metric, value, target.to_string(), verdict);
    }

    /// A figure that could not be measured, with the reason in the notes.
    pub fn error(&mut self, metric: &str, target: &str, reason: &anyhow::Error) {
        self.push(
            metric,
            "n/a".to_string(),
            target.to_string(),
            Verdict::Error,
        );
        self.note(format!("{metric}: not measured: {reason:#}"));
    }

    /// A free-text note printed under the table.
    pub fn note(&mut self, text: String) {
        self.notes.push(text);
    }

    fn push(&mut self, metric: &str, value: String, target: String, verdict: Verdict) {
        self.rows.push(Row {
            metric: metric.to_string(),
            value,
            target,
            verdict,
        });
    }

    /// Number of rows that missed their target or could not be measured.
    pub fn misses(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| matches!(r.verdict, Verdict::Miss | Verdict::Error))
            .count()
    }

    /// Prints the table and its notes.
    pub fn print(&self) {
        let w_metric = self
            .rows
            .iter()
            .map(|r| r.metric.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let w_value = self
            .rows
            .iter()
            .map(|r| r.value.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let w_target = self
            .rows
            .iter()
            .map(|r| r.target.len())
            .max()
            .unwrap_or(6)
            .max(6);
        println!("\n==> {}", self.title);
        println!(
            "{:<w_metric$}  {:>w_value$}  {:<w_target$}  result",
            "metric", "value", "target"
        );
        println!("{}", "-".repeat(w_metric + w_value + w_target + 12));
        for r in &self.rows {
            let verdict = match r.verdict {
                Verdict::Pass => "PASS",
                Verdict::Miss => "MISS",
                Verdict::Error => "ERROR",
                Verdict::Info => "",
            };
            println!(
                "{:<w_metric$}  {:>w_value$}  {:<w_target$}  {verdict}",
                r.metric, r.value, r.target
            );
        }
        for n in &self.notes {
            println!("note: {n}");
        }
    }
}
