//! A small hand-written SVG: the exec→exit distribution of every batch (box from p25 to
//! p75, whiskers min–max, a dot per run) and the median start-up phases of VM batches.

use std::fmt::Write as _;

use std::path::Path;

use serde::Deserialize;

use super::report::BatchReport;
use super::runners::Batch;
use super::BenchError;

const W: f64 = 960.0;
const LEFT: f64 = 300.0;
const RIGHT: f64 = 930.0;
const ROW: f64 = 34.0;
/// Width of one phase-legend column (the longest label is ≈ 200 px at 11 px).
const LEGEND_COLUMN: f64 = 300.0;
const COLORS: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#9c755f",
];

/// VM phases as (metric key, legend label), stacked in this order.
const PHASES: [(&str, &str); 6] = [
    ("vmm_ready_us", "exec → VMM ready"),
    ("ready_to_run_us", "VMM ready → first KVM_RUN"),
    ("run_to_timer_us", "first KVM_RUN → boot timer"),
    ("timer_to_stop_us", "boot timer → VM stopped"),
    ("stop_to_exit_us", "VM stopped → VMM done (teardown)"),
    ("teardown_us", "VMM done → reaped"),
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A round tick step giving at most ~8 ticks up to `max`.
pub fn tick_step(max: f64) -> f64 {
    if max.is_nan() || max <= 0.0 {
        return 1.0;
    }
    let raw = max / 8.0;
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * mag)
}

struct Axis {
    max: f64,
}

impl Axis {
    fn new(data_max: f64) -> Self {
        let step = tick_step(data_max);
        Axis {
            max: (data_max / step).ceil().max(1.0) * step,
        }
    }

    fn x(&self, v: f64) -> f64 {
        LEFT + (v / self.max).clamp(0.0, 1.0) * (RIGHT - LEFT)
    }

    /// Grid lines and labels between `top` and `bottom`.
    fn draw(&self, out: &mut String, top: f64, bottom: f64, unit: &str) {
        let step = tick_step(self.max);
        let decimals = (-step.log10().floor()).max(0.0) as usize;
        let ticks = (self.max / step).round() as usize;
        for k in 0..=ticks {
            let v = k as f64 * step;
            let x = self.x(v);
            let _ = writeln!(
                out,
                r##"<line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" font-size="11">{v:.decimals$}</text>"##,
                bottom + 14.0
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{RIGHT}" y="{:.1}" text-anchor="end" font-size="11">{unit}</text>"#,
            bottom + 28.0
        );
    }
}

/// The "runner ×concurrency" label left of a chart row centred at `yc`.
fn row_label(out: &mut String, yc: f64, b: &BatchReport) {
    let label = format!("{} ×{}", b.batch.runner, b.batch.concurrency);
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="12">{}</text>"#,
        LEFT - 10.0,
        yc + 4.0,
        esc(&label)
    );
}

fn distribution_panel(out: &mut String, batches: &[&BatchReport], top: f64) -> f64 {
    let _ = writeln!(
        out,
        r#"<text x="20" y="{top}" font-size="15" font-weight="bold">exec → exit per run, parent clock (box p25–p75, line median, whiskers min–max)</text>"#
    );
    let max = batches
        .iter()
        .filter_map(|b| b.metric("wall_us"))
        .map(|s| s.max / 1000.0)
        .fold(0.0, f64::max);
    let axis = Axis::new(max);
    let y0 = top + 15.0;
    let bottom = y0 + ROW * batches.len() as f64;
    axis.draw(out, y0, bottom, "ms");
    let mut names: Vec<&str> = Vec::new();
    for b in batches {
        if !names.contains(&b.batch.runner.as_str()) {
            names.push(&b.batch.runner);
        }
    }
    for (i, b) in batches.iter().enumerate() {
        let yc = y0 + ROW * (i as f64 + 0.5);
        row_label(out, yc, b);
        let Some(s) = b.metric("wall_us") else {
            continue;
        };
        // One colour per runner, so its one-at-a-time and concurrent rows match.
        let nth = names.iter().position(|n| *n == b.batch.runner).unwrap_or(i);
        let c = COLORS[nth % COLORS.len()];
        let (x0, x1) = (axis.x(s.min / 1e3), axis.x(s.max / 1e3));
        let (b0, b1) = (axis.x(s.p25 / 1e3), axis.x(s.p75 / 1e3));
        let xm = axis.x(s.median / 1e3);
        let _ = writeln!(
            out,
            r#"<line x1="{x0:.1}" y1="{yc:.1}" x2="{x1:.1}" y2="{yc:.1}" stroke="{c}"/><rect x="{b0:.1}" y="{:.1}" width="{:.1}" height="16" fill="{c}" fill-opacity="0.35" stroke="{c}"/><line x1="{xm:.1}" y1="{:.1}" x2="{xm:.1}" y2="{:.1}" stroke="{c}" stroke-width="3"/>"#,
            yc - 8.0,
            (b1 - b0).max(1.0),
            yc - 10.0,
            yc + 10.0
        );
        for smp in b.batch.samples.iter().filter(|s| s.ok) {
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{yc:.1}" r="2" fill="{c}" fill-opacity="0.8"/>"#,
                axis.x(smp.wall_us / 1e3)
            );
        }
    }
    bottom + 50.0
}

fn phase_panel(out: &mut String, vms: &[&BatchReport], top: f64) -> f64 {
    let _ = writeln!(
        out,
        r#"<text x="20" y="{top}" font-size="15" font-weight="bold">Kiln VM start-up phases (median of each phase)</text>"#
    );
    let total = |b: &BatchReport| -> f64 {
        PHASES
            .iter()
            .filter_map(|(k, _)| b.metric(k))
            .map(|s| s.median.max(0.0) / 1e3)
            .sum()
    };
    let axis = Axis::new(vms.iter().map(|b| total(b)).fold(0.0, f64::max));
    let y0 = top + 15.0;
    let bottom = y0 + ROW * vms.len() as f64;
    axis.draw(out, y0, bottom, "ms");
    for (i, b) in vms.iter().enumerate() {
        let yc = y0 + ROW * (i as f64 + 0.5);
        row_label(out, yc, b);
        let mut at = 0.0;
        for (j, (key, name)) in PHASES.iter().enumerate() {
            let Some(s) = b.metric(key) else { continue };
            let len = s.median.max(0.0) / 1e3;
            let (x0, x1) = (axis.x(at), axis.x(at + len));
            let _ = writeln!(
                out,
                r#"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="20" fill="{}"><title>{}: {len:.3} ms</title></rect>"#,
                yc - 10.0,
                (x1 - x0).max(0.5),
                COLORS[j % COLORS.len()],
                esc(name)
            );
            at += len;
        }
    }
    // Three legend entries per line, so the longest labels fit inside the width.
    let ly = bottom + 40.0;
    for (j, (_, name)) in PHASES.iter().enumerate() {
        let x = 20.0 + LEGEND_COLUMN * (j % 3) as f64;
        let ly = ly + 18.0 * (j / 3) as f64;
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{}" y="{ly:.1}" font-size="11">{}</text>"#,
            ly - 10.0,
            COLORS[j % COLORS.len()],
            x + 16.0,
            esc(name)
        );
    }
    ly + 18.0 * PHASES.len().div_ceil(3).saturating_sub(1) as f64 + 20.0
}

/// Redraws the chart of an earlier `kiln bench --json` file (its raw samples) into `svg`,
/// without measuring anything.
pub fn replot(json: &Path, svg_path: &Path) -> Result<(), BenchError> {
    /// The parts of the `--json` document the chart needs.
    #[derive(Deserialize)]
    struct Saved {
        settings: SavedSettings,
        batches: Vec<Batch>,
    }
    #[derive(Deserialize)]
    struct SavedSettings {
        runs: usize,
    }
    let text = std::fs::read_to_string(json).map_err(|source| BenchError::Read {
        path: json.to_path_buf(),
        source,
    })?;
    let saved: Saved = serde_json::from_str(&text).map_err(|source| BenchError::Saved {
        path: json.to_path_buf(),
        source,
    })?;
    let reports: Vec<BatchReport> = saved.batches.into_iter().map(BatchReport::new).collect();
    let title = format!("kiln bench: {} runs per runner", saved.settings.runs);
    super::write_file(svg_path, &svg(&title, &reports))
}

/// The whole SVG document; `title` goes on top.
pub fn svg(title: &str, batches: &[BatchReport]) -> String {
    let all: Vec<&BatchReport> = batches.iter().collect();
    let vms: Vec<&BatchReport> = batches
        .iter()
        .filter(|b| b.metric("vmm_ready_us").is_some())
        .collect();
    let mut body = String::new();
    let mut y = distribution_panel(&mut body, &all, 60.0);
    if !vms.is_empty() {
        y = phase_panel(&mut body, &vms, y + 10.0);
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{h:.0}\" viewBox=\"0 0 {W} {h:.0}\" font-family=\"sans-serif\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"20\" y=\"28\" font-size=\"17\" font-weight=\"bold\">{}</text>\n{body}</svg>\n",
        esc(title),
        h = y + 10.0
    )
}

#[cfg(test)]
mod tests {
    use super::super::runners::Sample;
    use super::*;
    use vmm::timings::RunTimings;
    use vmm_sys_util::tempdir::TempDir;

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(80.0), 10.0);
        assert_eq!(tick_step(25.0), 5.0);
        assert_eq!(tick_step(3.0), 0.5);
        assert_eq!(tick_step(0.0), 1.0);
        assert_eq!(Axis::new(23.0).max, 25.0);
    }

    fn batch(runner: &str, vm: bool) -> BatchReport {
        let samples = (0..4)
            .map(|i| Sample {
                index: i,
                wall_us: 1000.0 * (i + 1) as f64,
                ok: true,
                exit_code: Some(0),
                vm: vm.then(|| RunTimings {
                    vmm_ready_us: Some(2000),
                    first_kvm_run_us: Some(2100),
                    boot_timer_us: Some(2200),
                    vm_stopped_us: Some(2300),
                    exit_us: Some(9000),
                    ..RunTimings::default()
                }),
                ..Sample::default()
            })
            .collect();
        BatchReport::new(Batch {
            runner: runner.into(),
            concurrency: 1,
            total_us: 1e6,
            samples,
        })
    }

    #[test]
    fn legend_fits_the_width() {
        let s = svg("t", &[batch("kiln VM", true)]);
        let longest = PHASES.iter().map(|(_, n)| n.chars().count()).max().unwrap();
        // 11 px sans-serif: at most ~6.5 px per character.
        let room = W - (20.0 + 2.0 * LEGEND_COLUMN + 16.0);
        assert!(longest as f64 * 6.5 < room, "{longest} chars in {room} px");
        for (_, name) in PHASES {
            assert!(s.contains(&esc(name)), "{name} missing");
        }
        let xs = s.split("<text x=\"").skip(1);
        let max_x = xs.filter_map(|t| t.split('"').next()?.parse::<f64>().ok());
        assert!(max_x.fold(0.0, f64::max) <= W);
    }

    #[test]
    fn replot_redraws_a_saved_run() {
        let b = batch("kiln VM", true);
        let doc = serde_json::json!({ "settings": { "runs": 4 }, "batches": [b] });
        let dir = TempDir::new_with_prefix(std::env::temp_dir().join("kiln-plot-")).unwrap();
        let (json, out) = (dir.as_path().join("b.json"), dir.as_path().join("b.svg"));
        std::fs::write(&json, doc.to_string()).unwrap();
        replot(&json, &out).unwrap();
        let expected = svg("kiln bench: 4 runs per runner", &[b]);
        assert_eq!(std::fs::read_to_string(&out).unwrap(), expected);
    }

    #[test]
    fn replot_rejects_other_json() {
        let dir = TempDir::new_with_prefix(std::env::temp_dir().join("kiln-plot-")).unwrap();
        let json = dir.as_path().join("x.json");
        std::fs::write(&json, "{}").unwrap();
        let e = replot(&json, &dir.as_path().join("x.svg")).unwrap_err();
        assert!(matches!(e, BenchError::Saved { .. }), "{e}");
    }

    #[test]
    fn svg_is_well_formed_enough() {
        let b = batch("a<b", false);
        let s = svg("t & u", &[b]);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert_eq!(s.matches("<circle").count(), 4);
        assert!(s.contains("a&lt;b ×1") && s.contains("t &amp; u"));
        assert!(!s.contains("phases"));
    }
}
