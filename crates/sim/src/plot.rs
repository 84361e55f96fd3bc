//! An SVG timeline of open, closing and pending connections over simulated time, so a leak
//! (open creeping up) or a storm (a wall of closes) is visible at a glance.

use std::fmt::Write as _;
use std::time::Duration;

use crate::check::Sample;

const W: f64 = 900.0;
const H: f64 = 320.0;
const PAD: f64 = 48.0;

/// Name, colour and value of one plotted line.
type Series = (&'static str, &'static str, fn(&Sample) -> usize);

/// Renders `samples`; `limit`, when given, is drawn as a dashed line, and every fault or
/// action of the timeline (`marks`: when, what) as a labelled vertical line, so cause and effect
/// sit on one picture.
pub fn svg(samples: &[Sample], limit: Option<usize>, marks: &[(Duration, String)]) -> String {
    let end = samples.last().map_or(1.0, |s| s.at.as_secs_f64()).max(1.0);
    let top = samples
        .iter()
        .map(|s| s.open.max(s.closing).max(s.pending))
        .max()
        .unwrap_or(0)
        .max(limit.unwrap_or(0))
        .max(1) as f64;
    let x = |t: f64| PAD + (W - 2.0 * PAD) * t / end;
    let y = |v: f64| H - PAD - (H - 2.0 * PAD) * v / top;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="monospace" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<line x1="{PAD}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        H - PAD,
        W - PAD,
        H - PAD
    );
    let _ = writeln!(out, r#"<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{}" stroke="black"/>"#, H - PAD);
    let _ = writeln!(
        out,
        r#"<text x="{PAD}" y="{}">0</text><text x="{}" y="{}" text-anchor="end">{end:.0}s</text>"#,
        H - PAD + 14.0,
        W - PAD,
        H - PAD + 14.0
    );
    let _ = writeln!(out, r#"<text x="{}" y="{}" text-anchor="end">{top:.0}</text>"#, PAD - 4.0, PAD + 4.0);
    if let Some(limit) = limit {
        let ly = y(limit as f64);
        let _ = writeln!(
            out,
            r#"<line x1="{PAD}" y1="{ly:.1}" x2="{}" y2="{ly:.1}" stroke="gray" stroke-dasharray="4 4"/><text x="{}" y="{:.1}" fill="gray">limit {limit}</text>"#,
            W - PAD,
            W - PAD - 70.0,
            ly - 4.0
        );
    }
    for (i, (at, label)) in marks.iter().enumerate() {
        let mx = x(at.as_secs_f64());
        // Labels step down so faults close together stay readable.
        let ly = PAD + 12.0 + 12.0 * (i % 8) as f64;
        let _ = writeln!(
            out,
            r##"<line x1="{mx:.1}" y1="{PAD}" x2="{mx:.1}" y2="{}" stroke="#ff7f0e" stroke-dasharray="2 3"/><text x="{:.1}" y="{ly:.1}" fill="#ff7f0e">{}</text>"##,
            H - PAD,
            mx + 3.0,
            escape(label)
        );
    }
    let series: [Series; 3] = [
        ("open", "#1f77b4", |s| s.open),
        ("closing", "#d62728", |s| s.closing),
        ("pending", "#2ca02c", |s| s.pending),
    ];
    for (i, (name, color, value)) in series.iter().enumerate() {
        let points: Vec<String> = samples
            .iter()
            .map(|s| format!("{:.1},{:.1}", x(s.at.as_secs_f64()), y(value(s) as f64)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
            points.join(" ")
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" fill="{color}">{name}</text>"#,
            PAD + 10.0 + 80.0 * i as f64,
            PAD - 16.0
        );
    }
    out.push_str("</svg>\n");
    out
}

/// Text safe inside an SVG element.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_every_series_with_the_limit() {
        let samples: Vec<Sample> = (0..5)
            .map(|i| Sample { at: Duration::from_secs(i), open: i as usize * 2, closing: 1, pending: 0 })
            .collect();
        let svg = svg(&samples, Some(10), &[]);
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("limit 10"));
        // The last open point (8 of 10) sits above the x axis.
        assert!(svg.contains(&format!("{:.1},{:.1}", 852.0, 320.0 - 48.0 - (320.0 - 96.0) * 0.8)));
    }

    #[test]
    fn faults_are_marked_where_they_happened() {
        let samples: Vec<Sample> =
            (0..=10).map(|i| Sample { at: Duration::from_secs(i), ..Sample::default() }).collect();
        let marks = [
            (Duration::from_secs(5), "gateway restarted".to_owned()),
            (Duration::from_secs(10), "partition <a>".to_owned()),
        ];
        let svg = svg(&samples, None, &marks);
        // Halfway along the x axis: 48 + (900 - 96) * 0.5.
        assert!(svg.contains(r#"x1="450.0""#), "{svg}");
        assert!(svg.contains(">gateway restarted</text>") && svg.contains(">partition &lt;a&gt;</text>"));
    }
}
