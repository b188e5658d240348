//! How every benchmark reports: a readable table for people, or with `--json` one JSON object
//! per line for scripts: `{"bench": "api", "metric": "create_throughput", "value": 2345.6,
//! "unit": "ops/s"}`.

use std::io::Write;
use std::time::Duration;

use serde::Serialize;

use super::stats::{Latencies, ms};

/// One line of `--json` output.
#[derive(Debug, Clone, Serialize)]
pub struct Metric {
    pub bench: &'static str,
    pub metric: String,
    pub value: f64,
    pub unit: &'static str,
}

/// One row of the table: an operation measured `count` times.
#[derive(Debug, Clone)]
pub struct Row {
    /// Shown in the table.
    pub label: String,
    /// The metric name prefix (`create` → `create_throughput`, `create_p50`, `create_p99`).
    pub key: &'static str,
    pub count: usize,
    /// Operations per second, when the operation was run as a throughput test.
    pub throughput: Option<f64>,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
}

impl Row {
    /// A row from latency samples; `elapsed` (wall time for all of them) gives the throughput.
    pub fn new(
        label: impl Into<String>,
        key: &'static str,
        mut latencies: Latencies,
        elapsed: Option<Duration>,
    ) -> Row {
        let count = latencies.len();
        let throughput = elapsed
            .filter(|e| !e.is_zero())
            .map(|e| count as f64 / e.as_secs_f64());
        Row {
            label: label.into(),
            key,
            count,
            throughput,
            p50: latencies.percentile(50.0),
            p99: latencies.percentile(99.0),
        }
    }
}

/// A value that is not per operation (memory, object counts).
#[derive(Debug, Clone)]
pub struct Figure {
    pub label: String,
    pub key: String,
    pub value: f64,
    pub unit: &'static str,
}

/// Collects a benchmark's results and prints them in the chosen format.
#[derive(Debug)]
pub struct Report {
    bench: &'static str,
    json: bool,
    rows: Vec<Row>,
    figures: Vec<Figure>,
}

impl Report {
    pub fn new(bench: &'static str, json: bool) -> Report {
        Report {
            bench,
            json,
            rows: Vec::new(),
            figures: Vec::new(),
        }
    }

    pub fn row(&mut self, row: Row) {
        self.rows.push(row);
    }

    pub fn figure(
        &mut self,
        label: impl Into<String>,
        key: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) {
        self.figures.push(Figure {
            label: label.into(),
            key: key.into(),
            value,
            unit,
        });
    }

    /// Every result as metrics, in the order they were added.
    pub fn metrics(&self) -> Vec<Metric> {
        let mut metrics = Vec::new();
        let metric = |name: String, value: f64, unit: &'static str| Metric {
            bench: self.bench,
            metric: name,
            value,
            unit,
        };
        for row in &self.rows {
            if let Some(t) = row.throughput {
                metrics.push(metric(
                    format!("{}_throughput", row.key),
                    round(t, 1),
                    "ops/s",
                ));
            }
            if let Some(p50) = row.p50 {
                metrics.push(metric(format!("{}_p50", row.key), round(ms(p50), 3), "ms"));
            }
            if let Some(p99) = row.p99 {
                metrics.push(metric(format!("{}_p99", row.key), round(ms(p99), 3), "ms"));
            }
        }
        for figure in &self.figures {
            metrics.push(metric(
                figure.key.clone(),
                round(figure.value, 1),
                figure.unit,
            ));
        }
        metrics
    }

    /// Prints the results to `out`: the table, or JSON lines.
    pub fn print(&self, out: &mut impl Write) -> std::io::Result<()> {
        if self.json {
            for metric in self.metrics() {
                let line = serde_json::to_string(&metric).map_err(std::io::Error::other)?;
                writeln!(out, "{line}")?;
            }
            return out.flush();
        }
        let width = self
            .rows
            .iter()
            .map(|r| r.label.len())
            .chain([9])
            .max()
            .unwrap_or(9);
        writeln!(
            out,
            "{:<width$}  {:>7}  {:>12}  {:>8}  {:>8}",
            "operation", "count", "throughput/s", "p50 ms", "p99 ms"
        )?;
        for row in &self.rows {
            let throughput = row
                .throughput
                .map_or("-".to_string(), |t| format!("{t:.0}"));
            let p50 = row.p50.map_or("-".to_string(), |d| format!("{:.3}", ms(d)));
            let p99 = row.p99.map_or("-".to_string(), |d| format!("{:.3}", ms(d)));
            writeln!(
                out,
                "{:<width$}  {:>7}  {:>12}  {:>8}  {:>8}",
                row.label, row.count, throughput, p50, p99
            )?;
        }
        if !self.figures.is_empty() {
            writeln!(out)?;
            let width = self
                .figures
                .iter()
                .map(|f| f.label.len())
                .max()
                .unwrap_or(0);
            for figure in &self.figures {
                // Counts are whole numbers; measurements keep one decimal.
                let decimals = if figure.unit == "objects" { 0 } else { 1 };
                writeln!(
                    out,
                    "{:<width$}  {:.decimals$} {}",
                    figure.label, figure.value, figure.unit
                )?;
            }
        }
        out.flush()
    }
}

fn round(value: f64, decimals: i32) -> f64 {
    let factor = 10f64.powi(decimals);
    (value * factor).round() / factor
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_report(json: bool) -> Report {
        let mut latencies = Latencies::new();
        for ms in 1..=10 {
            latencies.push(Duration::from_millis(ms));
        }
        let mut report = Report::new("api", json);
        report.row(Row::new(
            "create",
            "create",
            latencies.clone(),
            Some(Duration::from_millis(50)),
        ));
        report.row(Row::new(
            "watch delivery",
            "watch_delivery",
            latencies,
            None,
        ));
        report.figure("server RSS, idle", "server_rss_idle", 12.34, "MiB");
        report
    }

    #[test]
    fn json_lines_carry_bench_metric_value_unit() {
        let mut out = Vec::new();
        sample_report(true).print(&mut out).unwrap();
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let names: Vec<&str> = lines
            .iter()
            .map(|l| l["metric"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "create_throughput",
                "create_p50",
                "create_p99",
                "watch_delivery_p50",
                "watch_delivery_p99",
                "server_rss_idle"
            ]
        );
        assert_eq!(
            lines[0],
            serde_json::json!({"bench": "api", "metric": "create_throughput", "value": 200.0, "unit": "ops/s"})
        );
        assert_eq!(lines[1]["value"], 5.0);
        assert_eq!(lines[2]["unit"], "ms");
        assert_eq!(lines[5]["value"], 12.3);
    }

    #[test]
    fn table_has_a_header_and_a_row_per_operation() {
        let mut out = Vec::new();
        sample_report(false).print(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("operation") && lines[0].contains("throughput/s"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("create") && lines[1].contains("200"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("watch delivery") && lines[2].contains(" - "),
            "{text}"
        );
        assert!(text.contains("server RSS, idle  12.3 MiB"), "{text}");
    }
}
