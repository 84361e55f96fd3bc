//! The table of results and its place in `BENCHMARKS.md`: the block between the `bench:begin`
//! and `bench:end` markers is rewritten, the text around it is left alone.

use std::fmt::Write as _;
use std::path::Path;

/// The columns of the bus table: the same request load through each system.
pub const SYSTEMS: [&str; 3] = ["embedded backend", "NATS, 1 gateway", "NATS, 2 gateways"];

pub const BEGIN: &str = "<!-- bench:begin (written by `just bench`; edit outside these markers) -->";
pub const END: &str = "<!-- bench:end -->";
/// The fan-out block has markers of its own: `just bench-fanout` rewrites it alone.
pub const FANOUT_BEGIN: &str = "<!-- fanout:begin (written by `just bench`; edit outside these markers) -->";
pub const FANOUT_END: &str = "<!-- fanout:end -->";
/// So has the store block: `just bench-store` rewrites it alone.
pub const STORE_BEGIN: &str = "<!-- store:begin (written by `just bench`; edit outside these markers) -->";
pub const STORE_END: &str = "<!-- store:end -->";

/// One figure, measured on clientmq and (where it applies) on the echo baseline and on the Node
/// gateway of the seed's design.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub figure: String,
    pub clientmq: Option<f64>,
    pub baseline: Option<f64>,
    /// The Node seed peer (`bench/seed-gateway`).
    pub seed: Option<f64>,
    /// Decimals printed.
    pub decimals: usize,
    pub target: String,
    /// `Some(true)` met, `Some(false)` missed, `None` not a target.
    pub met: Option<bool>,
    /// Every run's values, for the details.
    pub runs: String,
}

impl Row {
    /// clientmq / baseline: what the targets are set against.
    pub fn ratio(&self) -> Option<f64> {
        Some(self.clientmq? / self.baseline.filter(|b| *b != 0.0)?)
    }

    /// clientmq / Node seed: against the kind of gateway clientmq replaces.
    pub fn seed_ratio(&self) -> Option<f64> {
        Some(self.clientmq? / self.seed.filter(|s| *s != 0.0)?)
    }
}

/// One figure of the bus table: the embedded backend, and the same load through NATS with one and
/// with two gateways ([`SYSTEMS`]).
#[derive(Debug, Clone, Default)]
pub struct BusRow {
    pub figure: String,
    pub values: [Option<f64>; 3],
    pub decimals: usize,
    pub runs: String,
}

/// Everything a suite run measured.
#[derive(Debug, Clone, Default)]
pub struct Results {
    pub rows: Vec<Row>,
    /// The bus figures, when measured.
    pub bus: Vec<BusRow>,
    pub notes: Vec<String>,
    /// The fan-out figures and their notes, when measured.
    pub fanout: Vec<crate::fanout::suite::FanRow>,
    pub fanout_notes: Vec<String>,
    /// The store figures (chat through JetStream) and their notes, when measured.
    pub store: Vec<crate::store::StoreRow>,
    pub store_notes: Vec<String>,
    /// How the store runs were done, one sentence.
    pub store_method: String,
    pub machine: String,
    pub date: String,
    /// How runs were done (repeats, warm-up, window), one sentence.
    pub method: String,
    pub command: String,
}

/// Every run's values, for a row's details.
pub fn runs(values: &[f64], decimals: usize) -> String {
    values.iter().map(|v| format!("{v:.decimals$}")).collect::<Vec<_>>().join(", ")
}

/// A target's verdict as the tables print it.
pub fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "",
    }
}

/// "- {note}" lines under a heading, when there are notes.
fn notes(s: &mut String, notes: &[String]) {
    if !notes.is_empty() {
        let _ = writeln!(s, "\nNotes from this run:\n");
        for note in notes {
            let _ = writeln!(s, "- {note}");
        }
    }
}

/// A figure with `decimals`, or "-".
pub fn value(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

/// The generated block of `BENCHMARKS.md`, markers included.
pub fn render(res: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{BEGIN}");
    let _ = writeln!(s, "Measured {} on {}.", res.date, res.machine);
    let _ = writeln!(s, "{}\n", res.method);
    let _ = writeln!(s, "Command: `{}`\n", res.command);
    let _ = writeln!(
        s,
        "| figure | clientmq | baseline | clientmq / baseline | Node seed | clientmq / Node seed | target | verdict |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---|---|");
    let ratio = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.2}"));
    for row in &res.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row.figure,
            value(row.clientmq, row.decimals),
            value(row.baseline, row.decimals),
            ratio(row.ratio()),
            value(row.seed, row.decimals),
            ratio(row.seed_ratio()),
            row.target,
            verdict(row.met),
        );
    }
    if !res.bus.is_empty() {
        let [a, b, c] = SYSTEMS;
        let _ =
            writeln!(s, "\nThrough the bus (gateway -> nats-server -> `clientmq-chat` worker), same load:\n");
        let _ = writeln!(s, "| figure | {a} | {b} | {c} |\n|---|---:|---:|---:|");
        for row in &res.bus {
            let [a, b, c] = row.values.map(|v| value(v, row.decimals));
            let _ = writeln!(s, "| {} | {a} | {b} | {c} |", row.figure);
        }
    }
    let _ = writeln!(s, "\nEvery run:\n");
    for row in res.rows.iter().filter(|r| !r.runs.is_empty()) {
        let _ = writeln!(s, "- {}: {}", row.figure, row.runs);
    }
    for row in res.bus.iter().filter(|r| !r.runs.is_empty()) {
        let _ = writeln!(s, "- bus, {}: {}", row.figure, row.runs);
    }
    notes(&mut s, &res.notes);
    let _ = writeln!(s, "{END}");
    s
}

/// The generated fan-out block, markers included.
pub fn render_fanout(res: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{FANOUT_BEGIN}");
    let _ = writeln!(s, "Measured {} on {}.\n", res.date, res.machine);
    let _ = writeln!(s, "Command: `{}`\n", res.command);
    s.push_str(&crate::fanout::suite::render(&res.fanout));
    let _ = writeln!(s, "\nEvery run:\n");
    for row in res.fanout.iter().filter(|r| !r.runs.is_empty()) {
        let _ = writeln!(s, "- {}: {}", row.figure, row.runs);
    }
    notes(&mut s, &res.fanout_notes);
    let _ = writeln!(s, "{FANOUT_END}");
    s
}

/// The generated store block, markers included.
pub fn render_store(res: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{STORE_BEGIN}");
    let _ = writeln!(s, "Measured {} on {}.", res.date, res.machine);
    let _ = writeln!(s, "{}\n", res.store_method);
    let _ = writeln!(s, "Command: `{}`\n", res.command);
    s.push_str(&crate::store::render(&res.store));
    let _ = writeln!(s, "\nEvery run:\n");
    for row in res.store.iter().filter(|r| !r.runs.is_empty()) {
        let _ = writeln!(s, "- {}: {}", row.figure, row.runs);
    }
    notes(&mut s, &res.store_notes);
    let _ = writeln!(s, "{STORE_END}");
    s
}

/// Puts `generated` (a block with its markers) in place of the block with the same markers in
/// `path`, or adds it (creating the file if needed).
pub fn write_into(path: &Path, generated: &str) -> std::io::Result<()> {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    std::fs::write(path, splice(&existing, generated))
}

/// `existing` with the block marked like `generated` (by its first line's marker name) replaced
/// by `generated`; `generated` added at the end (or a new document around it) when there is none.
pub fn splice(existing: &str, generated: &str) -> String {
    let name = generated.trim_start().trim_start_matches("<!-- ").split(':').next().unwrap_or_default();
    let end_marker = format!("<!-- {name}:end -->");
    let begin = existing.find(&format!("<!-- {name}:begin"));
    let end = existing.find(&end_marker).map(|e| e + end_marker.len());
    match (begin, end) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{}{}", &existing[..b], generated.trim_end(), &existing[e..])
        }
        _ if existing.trim().is_empty() => format!("# Benchmarks\n\n{generated}"),
        _ => format!("{}\n\n{generated}", existing.trim_end()),
    }
}

pub use clientmq_core::calendar::civil_date;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_block_replaces_only_itself() {
        let block = format!("{BEGIN}\nnew table\n{END}\n");
        let doc = format!("# Benchmarks\n\nintro\n\n{BEGIN}\nold table\n{END}\n\n## Analysis\nkept\n");
        let out = splice(&doc, &block);
        assert_eq!(out, format!("# Benchmarks\n\nintro\n\n{BEGIN}\nnew table\n{END}\n\n## Analysis\nkept\n"));
        assert_eq!(splice("", &block), format!("# Benchmarks\n\n{block}"));
        assert_eq!(splice("# Mine\n", &block), format!("# Mine\n\n{block}"));
        // Each block replaces only the block with its own markers.
        let fan = format!("{FANOUT_BEGIN}\nfan\n{FANOUT_END}\n");
        let both = splice(&out, &fan);
        assert!(both.ends_with(&fan) && both.contains("new table"), "{both}");
        let again = splice(&both, &format!("{FANOUT_BEGIN}\nfan2\n{FANOUT_END}\n"));
        assert_eq!(again, both.replace("\nfan\n", "\nfan2\n"));
        assert_eq!(splice(&again, &block), again);
        // The store block too, in place of its placeholder.
        let placeholder = format!("{again}\n{STORE_BEGIN}\nNot measured yet.\n{STORE_END}\n\n## After\n");
        let store = render_store(&Results { store_method: "m".into(), ..Results::default() });
        assert!(store.starts_with(STORE_BEGIN) && store.trim_end().ends_with(STORE_END), "{store}");
        let written = splice(&placeholder, &store);
        assert_eq!(
            written,
            placeholder.replace(&format!("{STORE_BEGIN}\nNot measured yet.\n{STORE_END}"), store.trim_end())
        );
    }

    #[test]
    fn ratios_and_rendering() {
        let row = Row {
            figure: "requests/s".into(),
            clientmq: Some(80.0),
            baseline: Some(100.0),
            seed: Some(40.0),
            decimals: 0,
            target: ">= 0.8 x baseline".into(),
            met: Some(true),
            runs: runs(&[80.0, 79.5], 0),
        };
        assert_eq!(row.ratio(), Some(0.8));
        assert_eq!(row.seed_ratio(), Some(2.0));
        assert_eq!(Row { baseline: Some(0.0), ..row.clone() }.ratio(), None);
        assert_eq!(Row { clientmq: None, ..row.clone() }.ratio(), None);
        assert_eq!(Row { seed: None, ..row.clone() }.seed_ratio(), None);
        let only_clientmq = Row { figure: "sim".into(), baseline: None, seed: None, ..row.clone() };
        let res = Results { rows: vec![row, only_clientmq], notes: vec!["n".into()], ..Results::default() };
        let text = render(&res);
        assert!(text.starts_with(BEGIN) && text.trim_end().ends_with(END));
        assert!(
            text.contains("| requests/s | 80 | 100 | 0.80 | 40 | 2.00 | >= 0.8 x baseline | met |"),
            "{text}"
        );
        assert!(text.contains("| sim | 80 | - | - | - | - | >= 0.8 x baseline | met |"), "{text}");
        assert!(text.contains("- requests/s: 80, 80\n"), "{text}");
        assert!(!text.contains("Through the bus"), "no bus table without bus rows");
        let bus = BusRow {
            figure: "rps".into(),
            values: [Some(3.0), None, Some(1.5)],
            decimals: 1,
            runs: "r".into(),
        };
        let text = render(&Results { bus: vec![bus], ..Results::default() });
        assert!(text.contains("| rps | 3.0 | - | 1.5 |"), "{text}");
        assert!(text.contains("- bus, rps: r\n"), "{text}");
    }
}
