//! The run's report: the history as JSON, the verdicts as JSON, and a page a person would
//! rather look at than read: every operation's latency over time, coloured by kind, with the
//! fault windows shaded behind.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde_json::Value;

use crate::history::Operation;
use crate::history::Outcome;
use crate::history::F;
use crate::nemesis::Window;

fn colour(f: F) -> RGBColor {
    match f {
        F::Read => RGBColor(31, 119, 180),
        F::Write => RGBColor(255, 127, 14),
        F::Cas => RGBColor(44, 160, 44),
        F::Add => RGBColor(148, 103, 189),
        F::Raise => RGBColor(214, 39, 40),
    }
}

/// Draws latency (log scale) against time with the fault windows shaded.
pub fn plot(
    path: &Path,
    history: &[Operation],
    windows: &[Window],
    duration_s: f64,
) -> Result<(), String> {
    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let max_ms = history
        .iter()
        .map(Operation::latency_ms)
        .fold(10.0, f64::max)
        * 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "latency over time (shaded: faults; x: indeterminate)",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..duration_s.max(1.0), (0.1..max_ms).log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("latency (ms)")
        .draw()
        .map_err(|e| e.to_string())?;
    for window in windows {
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(window.start_s, 0.1), (window.end_s, max_ms)],
                RGBColor(255, 0, 0).mix(0.12).filled(),
            )))
            .map_err(|e| e.to_string())?;
    }
    for f in [F::Read, F::Write, F::Cas, F::Add, F::Raise] {
        let points = history.iter().filter(|op| op.f == f);
        let (settled, unknown): (Vec<&Operation>, Vec<&Operation>) =
            points.partition(|op| op.outcome != Outcome::Info);
        chart
            .draw_series(settled.iter().map(|op| {
                let x = op.invoke_ns as f64 / 1e9;
                Circle::new((x, op.latency_ms().max(0.1)), 2, colour(f).filled())
            }))
            .map_err(|e| e.to_string())?
            .label(format!("{f:?}").to_lowercase())
            .legend(move |(x, y)| Circle::new((x, y), 4, colour(f).filled()));
        chart
            .draw_series(unknown.iter().map(|op| {
                let x = op.invoke_ns as f64 / 1e9;
                Cross::new((x, op.latency_ms().max(0.1)), 4, colour(f).stroke_width(2))
            }))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// Writes `index.html` summarising `results` around the plot.
pub fn html(path: &Path, results: &Value, windows: &[Window]) -> Result<(), String> {
    let mut page = String::new();
    let verdict = results["verdict"].as_str().unwrap_or("unknown");
    let _ = write!(
        page,
        "<!doctype html><meta charset=utf-8><title>keel fault run: {verdict}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 10px;text-align:left}}\
         .valid{{color:#2a2}}.invalid{{color:#c22}}.unknown{{color:#c80}}</style>\
         <h1>keel fault run: <span class={verdict}>{verdict}</span></h1>\
         <p>seed {} &middot; {} nodes &middot; {:.0} s &middot; {} operations &middot; nemesis {}</p>\
         <img src=latency.svg width=1200>",
        results["seed"], results["nodes"], results["duration_s"].as_f64().unwrap_or(0.0),
        results["operations"], results["nemesis"]
    );
    page.push_str("<h2>Checks</h2><table><tr><th>check</th><th>verdict</th><th>detail</th></tr>");
    for (name, check) in results["checks"].as_object().into_iter().flatten() {
        let verdict = check["verdict"].as_str().unwrap_or("unknown");
        let _ = write!(
            page,
            "<tr><td>{name}</td><td class={verdict}>{verdict}</td><td><code>{}</code></td></tr>",
            html_escape(&check["detail"].to_string())
        );
    }
    page.push_str(
        "</table><h2>Faults</h2><table><tr><th>from (s)</th><th>to (s)</th><th>fault</th></tr>",
    );
    for window in windows {
        let _ = write!(
            page,
            "<tr><td>{:.1}</td><td>{:.1}</td><td>{}</td></tr>",
            window.start_s,
            window.end_s,
            html_escape(&window.detail)
        );
    }
    page.push_str("</table><p>Files: <a href=history.json>history.json</a>, <a href=results.json>results.json</a>.</p>");
    std::fs::write(path, page).map_err(|e| e.to_string())
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
