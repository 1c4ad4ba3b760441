//! The figures of the containers benchmark: built like a table, passed
//! from the release child to the parent as JSON, printed as a [`Table`].

use anyhow::{anyhow, Context, Result};

use crate::bench::table::Table;

/// The figures, built like a [`Table`] and passed from the release child
/// to the parent as JSON.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Report {
    entries: Vec<Entry>,
}

#[derive(Debug, PartialEq)]
enum Entry {
    Info { metric: String, value: String },
    Error { metric: String, reason: String },
    Note(String),
}

impl Report {
    pub(super) fn info(&mut self, metric: &str, value: String) {
        self.entries.push(Entry::Info {
            metric: metric.to_string(),
            value,
        });
    }

    pub(super) fn error(&mut self, metric: &str, reason: &anyhow::Error) {
        self.entries.push(Entry::Error {
            metric: metric.to_string(),
            reason: format!("{reason:#}"),
        });
    }

    pub(super) fn note(&mut self, text: String) {
        self.entries.push(Entry::Note(text));
    }

    pub(super) fn to_json(&self) -> String {
        let entries: Vec<serde_json::Value> = self
            .entries
            .iter()
            .map(|e| match e {
                Entry::Info { metric, value } => {
                    serde_json::json!({"info": metric, "value": value})
                }
                Entry::Error { metric, reason } => {
                    serde_json::json!({"error": metric, "reason": reason})
                }
                Entry::Note(text) => serde_json::json!({ "note": text }),
            })
            .collect();
        serde_json::Value::Array(entries).to_string()
    }

    pub(super) fn from_json(text: &str) -> Result<Report> {
        let value: serde_json::Value =
            serde_json::from_str(text).context("parsing the benchmark's results")?;
        let field = |e: &serde_json::Value, name: &str| {
            e[name]
                .as_str()
                .map(str::to_string)
                .with_context(|| format!("results entry without {name}: {e}"))
        };
        let mut report = Report::default();
        for e in value.as_array().context("results are not a JSON array")? {
            report.entries.push(if e.get("info").is_some() {
                Entry::Info {
                    metric: field(e, "info")?,
                    value: field(e, "value")?,
                }
            } else if e.get("error").is_some() {
                Entry::Error {
                    metric: field(e, "error")?,
                    reason: field(e, "reason")?,
                }
            } else {
                Entry::Note(field(e, "note")?)
            });
        }
        Ok(report)
    }

    pub(super) fn into_table(self, title: &str) -> Table {
        let mut table = Table::new(title);
        for e in self.entries {
            match e {
                Entry::Info { metric, value } => table.info(&metric, value),
                Entry::Error { metric, reason } => table.error(&metric, "", &anyhow!(reason)),
                Entry::Note(text) => table.note(text),
            }
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_survives_json() {
        let mut report = Report::default();
        report.info("start: x", "1.00 ms".into());
        report.error("pull", &anyhow!("registry \"gone\""));
        report.note("a note".into());
        let back = Report::from_json(&report.to_json()).expect("parse");
        assert_eq!(back, report);
    }
}
