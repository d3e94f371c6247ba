//! Results: the summary table, the JSON file, and a self-contained HTML report with SVG charts
//! of throughput and latency percentiles per second.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::run::RunConfig;
use crate::scenario::Ledger;
use crate::stats::Recorder;
use crate::verdict::Verdict;

#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Second {
    pub second: usize,
    pub ops: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CodeCount {
    pub op: String,
    pub code: String,
    pub count: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub scenario: String,
    pub mode: String,
    pub server: String,
    /// Whether the connections were TLS.
    pub tls: bool,
    pub connections: usize,
    pub in_flight: usize,
    pub batch: usize,
    pub skus: u64,
    pub stock: u64,
    pub setup_s: f64,
    pub measured_s: f64,
    pub requests: u64,
    pub ops: u64,
    pub ops_per_s: f64,
    pub latency: Latency,
    pub codes: Vec<CodeCount>,
    pub timeline: Vec<Second>,
    pub verdict: Verdict,
}

impl RunResult {
    pub fn new(
        config: &RunConfig,
        stock: u64,
        setup: Duration,
        measured: Duration,
        recorder: &Recorder,
        ledger: &Ledger,
        verdict: Verdict,
    ) -> RunResult {
        let h = &recorder.overall;
        let q = |quantile| if h.is_empty() { 0 } else { h.value_at_quantile(quantile) };
        let mut codes: Vec<CodeCount> = ledger
            .codes
            .iter()
            .map(|(op, code, count)| CodeCount {
                op: op.to_string(),
                code: code.to_string(),
                count,
            })
            .collect();
        codes.sort_by(|a, b| (&a.op, &a.code).cmp(&(&b.op, &b.code)));
        let timeline = recorder
            .per_second
            .iter()
            .zip(&recorder.ops_per_second)
            .enumerate()
            .map(|(second, (h, ops))| Second {
                second,
                ops: *ops,
                p50_us: h.value_at_quantile(0.5),
                p99_us: h.value_at_quantile(0.99),
                max_us: h.max(),
            })
            .collect();
        let mode = match config.rate {
            Some(rate) => format!("open loop at {rate} requests/s"),
            None => "closed loop".to_string(),
        };
        RunResult {
            scenario: config.scenario.name().to_string(),
            mode,
            server: config.server.clone(),
            tls: config.tls.is_some(),
            connections: config.connections,
            in_flight: config.in_flight,
            batch: config.batch,
            skus: config.skus,
            stock,
            setup_s: setup.as_secs_f64(),
            measured_s: measured.as_secs_f64(),
            requests: recorder.requests,
            ops: recorder.ops,
            ops_per_s: recorder.ops as f64 / measured.as_secs_f64().max(1e-9),
            latency: Latency {
                p50_us: q(0.5),
                p90_us: q(0.9),
                p99_us: q(0.99),
                p999_us: q(0.999),
                max_us: h.max(),
                mean_us: h.mean(),
            },
            codes,
            timeline,
            verdict,
        }
    }

    /// The human-readable summary.
    pub fn summary(&self) -> String {
        let l = &self.latency;
        let ms = |us: u64| format!("{:.3} ms", us as f64 / 1000.0);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "scenario     {} ({}) against {}{}",
            self.scenario,
            self.mode,
            self.server,
            if self.tls { " over TLS" } else { "" }
        );
        let _ = writeln!(
            out,
            "load         {} connections x {} in flight, {} op(s) per request, {} SKUs",
            self.connections, self.in_flight, self.batch, self.skus
        );
        let _ = writeln!(
            out,
            "measured     {:.1} s: {} requests, {} operations",
            self.measured_s, self.requests, self.ops
        );
        let _ = writeln!(out, "throughput   {:.0} operations/s", self.ops_per_s);
        let _ = writeln!(
            out,
            "latency      p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.p999_us),
            ms(l.max_us)
        );
        let _ = writeln!(out, "results");
        for c in &self.codes {
            let _ = writeln!(out, "  {:<10} {:<20} {:>12}", c.op, c.code, c.count);
        }
        let _ = writeln!(out, "verdict      {}", if self.verdict.passed { "PASS" } else { "FAIL" });
        for check in &self.verdict.checks {
            let mark = if check.passed { "ok  " } else { "FAIL" };
            let _ = writeln!(out, "  {mark} {}: {}", check.name, check.detail);
        }
        out
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("serialisable")
    }

    /// A self-contained HTML page (no scripts, no external resources).
    pub fn to_html(&self) -> String {
        let throughput: Vec<(f64, f64)> =
            self.timeline.iter().map(|s| (s.second as f64, s.ops as f64)).collect();
        let series = |f: fn(&Second) -> u64| -> Vec<(f64, f64)> {
            self.timeline.iter().map(|s| (s.second as f64, f(s) as f64 / 1000.0)).collect()
        };
        let latency = [
            ("p50", "#2b7bb9", series(|s| s.p50_us)),
            ("p99", "#e08a00", series(|s| s.p99_us)),
            ("max", "#c0392b", series(|s| s.max_us)),
        ];
        let verdict_rows: String = self
            .verdict
            .checks
            .iter()
            .map(|c| {
                let class = if c.passed { "ok" } else { "fail" };
                let mark = if c.passed { "pass" } else { "FAIL" };
                format!(
                    "<tr class=\"{class}\"><td>{mark}</td><td>{}</td><td>{}</td></tr>",
                    escape(&c.name),
                    escape(&c.detail)
                )
            })
            .collect();
        let code_rows: String = self
            .codes
            .iter()
            .map(|c| format!("<tr><td>{}</td><td>{}</td><td>{}</td></tr>", c.op, c.code, c.count))
            .collect();
        let l = &self.latency;
        format!(
            r#"<!doctype html>
<html><head><meta charset="utf-8"><title>stockd load test: {scenario}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 60rem; }}
h1 {{ font-size: 1.4rem; }} table {{ border-collapse: collapse; margin: 1rem 0; }}
td, th {{ padding: .25rem .75rem; border-bottom: 1px solid #ddd; text-align: left; }}
.big {{ font-size: 2rem; font-weight: 600; }} .ok td:first-child {{ color: #1e8449; }}
.fail td:first-child {{ color: #c0392b; font-weight: 700; }}
.verdict-{verdict_class} {{ font-size: 1.2rem; font-weight: 700; }}
</style></head><body>
<h1>stockd load test: {scenario}</h1>
<p>{mode} against {server}{tls}: {connections} connections x {in_flight} in flight, {batch} op(s) per request, {skus} SKUs, {measured:.1} s measured.</p>
<p class="big">{ops_per_s:.0} operations/s</p>
<table><tr><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>
<tr><td>{p50}</td><td>{p90}</td><td>{p99}</td><td>{p999}</td><td>{max}</td></tr></table>
<p class="verdict-{verdict_class}">Verdict: {verdict}</p>
<table><tr><th></th><th>check</th><th>detail</th></tr>{verdict_rows}</table>
<h2>Throughput (operations per second)</h2>
{throughput_chart}
<h2>Latency per second (ms)</h2>
{latency_chart}
<h2>Results</h2>
<table><tr><th>operation</th><th>result</th><th>count</th></tr>{code_rows}</table>
</body></html>
"#,
            scenario = self.scenario,
            mode = self.mode,
            server = escape(&self.server),
            tls = if self.tls { " over TLS" } else { "" },
            connections = self.connections,
            in_flight = self.in_flight,
            batch = self.batch,
            skus = self.skus,
            measured = self.measured_s,
            ops_per_s = self.ops_per_s,
            p50 = format_ms(l.p50_us),
            p90 = format_ms(l.p90_us),
            p99 = format_ms(l.p99_us),
            p999 = format_ms(l.p999_us),
            max = format_ms(l.max_us),
            verdict = if self.verdict.passed { "PASS" } else { "FAIL" },
            verdict_class = if self.verdict.passed { "ok" } else { "fail" },
            throughput_chart = svg_chart(&[("operations/s", "#2b7bb9", throughput)]),
            latency_chart = svg_chart(&latency),
        )
    }
}

fn format_ms(us: u64) -> String {
    format!("{:.3} ms", us as f64 / 1000.0)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// One line of a chart: its name, colour and (x, y) points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// A line chart with axes, grid labels and a legend, as inline SVG.
fn svg_chart(series: &[Series<'_>]) -> String {
    let (width, height, left, bottom, top, right) = (760.0, 260.0, 70.0, 30.0, 20.0, 110.0);
    let points = series.iter().flat_map(|(_, _, p)| p.iter());
    let x_max = points.clone().map(|p| p.0).fold(1.0, f64::max);
    let y_max = points.map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.1;
    let x = |v: f64| left + v / x_max * (width - left - right);
    let y = |v: f64| height - bottom - v / y_max * (height - bottom - top);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-size="11">"#
    );
    for i in 0..=4 {
        let v = y_max * i as f64 / 4.0;
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{x2}" y1="{py:.1}" y2="{py:.1}" stroke="#eee"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{label}</text>"##,
            x2 = width - right,
            py = y(v),
            tx = left - 6.0,
            ty = y(v) + 4.0,
            label = if y_max >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") },
        );
    }
    let _ = write!(
        svg,
        r##"<line x1="{left}" x2="{x2}" y1="{yb}" y2="{yb}" stroke="#999"/><text x="{xm:.1}" y="{ty}" text-anchor="middle">seconds</text>"##,
        x2 = width - right,
        yb = height - bottom,
        xm = (left + width - right) / 2.0,
        ty = height - 6.0,
    );
    for (index, (name, color, points)) in series.iter().enumerate() {
        let path: Vec<String> =
            points.iter().map(|(px, py)| format!("{:.1},{:.1}", x(*px), y(*py))).collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/><text x="{lx}" y="{ly}" fill="{color}">{name}</text>"#,
            path.join(" "),
            lx = width - right + 10.0,
            ly = top + 14.0 * (index as f64 + 1.0),
        );
    }
    svg.push_str("</svg>");
    svg
}
