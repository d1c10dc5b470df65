//! `--format html`: the audit report as one self-contained page (inline CSS and SVG, nothing
//! fetched): a timeline per run, the ACK latency distribution by phase, findings and signals
//! in tables, and, for a cluster audit, where the live outputs differ from the replay.

use std::collections::BTreeMap;
use std::fmt::Write;

use ackwatch_topology::report::Report;
use ackwatch_topology::time::parse_rfc3339_ms;
use ackwatch_topology::timeline::Timeline;
use ackwatch_topology::Millis;

use super::cluster::Difference;
use super::provenance::Provenance;

/// Runs drawn as timelines (those with findings or signals, the most eventful first); the
/// tables still list every row.
pub const TIMELINE_RUNS_MAX: usize = 200;

/// HTML-escapes text for element content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub struct Page<'a> {
    pub title: String,
    pub subtitle: String,
    pub provenance: &'a Provenance,
    pub report: &'a Report,
    /// `--world W --run R`: that run's timeline, as a table.
    pub timeline: Option<&'a Timeline>,
    /// Bucket upper bound (ms) -> count, per phase.
    pub latency_by_phase: &'a BTreeMap<String, Vec<(String, u64)>>,
    /// A cluster audit: (outputs compared, differences listed, differences in all).
    pub live: Option<(usize, &'a [Difference], usize)>,
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}\
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 8px;text-align:left}\
th{background:#f4f4f4}.open{color:#b00;font-weight:bold}.ok{color:#070}.muted{color:#777}\
.bar{fill:#4a78c2}.det{fill:#c33}.res{fill:#2a2}.sig{fill:#e90}svg text{font-size:11px}";

struct Marker {
    at: Millis,
    class: &'static str,
    label: String,
}

fn time(t: &str) -> Millis {
    parse_rfc3339_ms(t).unwrap_or(0)
}

fn timeline(markers: &[Marker], spans: &[(Millis, Option<Millis>)]) -> String {
    let min = markers.iter().map(|m| m.at).min().unwrap_or(0);
    let max = markers.iter().map(|m| m.at).max().unwrap_or(0).max(min + 1);
    let (width, left) = (900.0, 10.0);
    let x = |t: Millis| left + (t - min) as f64 / (max - min) as f64 * (width - 2.0 * left);
    let mut svg = format!("<svg width=\"{width}\" height=\"46\" role=\"img\">");
    let _ = write!(
        svg,
        "<line x1=\"{left}\" y1=\"20\" x2=\"{}\" y2=\"20\" stroke=\"#bbb\"/>",
        width - left
    );
    for (from, to) in spans {
        let end = to.unwrap_or(max);
        let _ = write!(
            svg,
            "<rect x=\"{:.1}\" y=\"17\" width=\"{:.1}\" height=\"6\" fill=\"{}\" opacity=\".35\"/>",
            x(*from),
            (x(end) - x(*from)).max(1.0),
            if to.is_some() { "#2a2" } else { "#c33" }
        );
    }
    for m in markers {
        let _ = write!(
            svg,
            "<circle class=\"{}\" cx=\"{:.1}\" cy=\"20\" r=\"4\"><title>{}</title></circle>",
            m.class,
            x(m.at),
            esc(&m.label)
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{left}\" y=\"42\" class=\"muted\">{}</text><text x=\"{}\" y=\"42\" text-anchor=\"end\" class=\"muted\">+{} ms</text></svg>",
        esc(&ackwatch_topology::time::format_rfc3339_ms(min)),
        width - left,
        max - min
    );
    svg
}

/// What is still open at the end, first: the counts every format shows (the report's headline).
fn headline(h: &mut String, r: &Report) {
    let hl = &r.headline;
    if hl.open_findings == 0 {
        h.push_str("<p class=\"ok\">Open at the end: none (every finding listed was resolved).</p>");
    } else {
        let kinds: Vec<String> = hl
            .open_by_kind
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = write!(
            h,
            "<p class=\"open\">Open at the end: {} finding(s) ({} sequence(s)) in {} run(s): {}.</p>",
            hl.open_findings,
            hl.open_sequences,
            hl.runs_with_open_findings,
            esc(&kinds.join(", "))
        );
    }
    let _ = write!(
        h,
        "<p>Listed: {} finding(s) ({} sequence(s)), {} signal(s), {} pending at the end. A finding is one row below: sequences of one run and kind detected and resolved together.</p>",
        hl.findings, hl.finding_sequences, hl.signals, hl.pending_at_end
    );
}

/// The bucket holding the `p`-th percentile (nearest rank over the bucket counts).
fn percentile_bucket(buckets: &[(String, u64)], p: u64) -> Option<usize> {
    let total: u64 = buckets.iter().map(|(_, c)| c).sum();
    if total == 0 {
        return None;
    }
    let rank = (p * total).div_ceil(100).max(1);
    let mut seen = 0;
    buckets.iter().position(|(_, c)| {
        seen += c;
        seen >= rank
    })
}

/// One phase's ACK latency histogram: bars per bucket, a count axis with ticks, the bucket
/// bounds (ms) on the other axis, and where p50, p95 and p99 fall.
fn histogram(h: &mut String, phase: &str, buckets: &[(String, u64)]) {
    let most = buckets.iter().map(|(_, c)| *c).max().unwrap_or(0).max(1);
    let total: u64 = buckets.iter().map(|(_, c)| c).sum();
    let (left, top, plot_w, plot_h) = (60.0, 24.0, 840.0, 110.0);
    let bottom = top + plot_h;
    let _ = write!(
        h,
        "<h3>{} ({total} ACKs)</h3><svg width=\"920\" height=\"190\" role=\"img\" aria-label=\"ACK latency histogram, {}\">",
        esc(phase),
        esc(phase)
    );
    // Axes: counts (with ticks at 0, half and the tallest bar) and bucket bounds.
    let _ = write!(
        h,
        "<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{bottom}\" stroke=\"#333\"/><line x1=\"{left}\" y1=\"{bottom}\" x2=\"{}\" y2=\"{bottom}\" stroke=\"#333\"/>",
        left + plot_w
    );
    let mut ticks = vec![0, most / 2, most];
    ticks.dedup(); // a tallest bar of 1: ticks 0 and 1 only
    for tick in ticks {
        let y = bottom - tick as f64 / most as f64 * plot_h;
        let _ = write!(
            h,
            "<line x1=\"{}\" y1=\"{y:.1}\" x2=\"{left}\" y2=\"{y:.1}\" stroke=\"#333\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{tick}</text>",
            left - 4.0,
            left - 6.0,
            y + 4.0
        );
    }
    let _ = write!(
        h,
        "<text x=\"12\" y=\"{:.1}\" transform=\"rotate(-90 12 {:.1})\" text-anchor=\"middle\">ACKs</text><text x=\"{:.1}\" y=\"184\" text-anchor=\"middle\">ACK latency, ms (bucket upper bound)</text>",
        top + plot_h / 2.0,
        top + plot_h / 2.0,
        left + plot_w / 2.0
    );
    let w = plot_w / buckets.len().max(1) as f64;
    for (i, (bound, count)) in buckets.iter().enumerate() {
        let height = *count as f64 / most as f64 * plot_h;
        let x = left + i as f64 * w;
        let _ = write!(
            h,
            "<rect class=\"bar\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{height:.1}\"><title>≤ {} ms: {count}</title></rect><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            x + 2.0,
            bottom - height,
            w - 4.0,
            esc(bound),
            x + w / 2.0,
            bottom + 14.0,
            esc(bound)
        );
    }
    for (p, dy) in [(50, 0.0), (95, 11.0), (99, 22.0)] {
        if let Some(i) = percentile_bucket(buckets, p) {
            let x = left + i as f64 * w + w / 2.0;
            let _ = write!(
                h,
                "<line class=\"pct\" x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{bottom}\" stroke=\"#c33\" stroke-dasharray=\"3 2\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#c33\">p{p} ≤ {} ms</text>",
                x + 3.0,
                top - 12.0 + dy,
                esc(&buckets[i].0)
            );
        }
    }
    h.push_str("</svg>");
}

pub fn render(page: &Page<'_>) -> String {
    let r = page.report;
    let t = &r.totals;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>",
        esc(&page.title)
    );
    let _ = write!(
        h,
        "<h1>{}</h1><p class=\"muted\">{}</p>",
        esc(&page.title),
        esc(&page.subtitle)
    );
    for warning in &r.warnings {
        let _ = write!(h, "<p class=\"open\">warning: {}</p>", esc(warning));
    }
    headline(&mut h, r);
    h += "<details><summary>Provenance</summary><ul>";
    for line in page.provenance.lines() {
        let _ = write!(h, "<li>{}</li>", esc(&line));
    }
    h += "</ul></details>";
    let _ = write!(
        h,
        "<table><tr><th>records</th><th>tracked</th><th>acks</th><th>untracked</th><th>duplicates</th><th>invalid</th><th>runs</th><th>findings</th><th>signals</th></tr>\
         <tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
        t.records, t.tracked, t.acks, t.untracked, t.duplicates, t.invalid, r.runs.len(), r.findings.len(), r.signals.len()
    );

    if let Some((compared, differences, total)) = page.live {
        let _ = write!(h, "<h2>Live outputs against the replay</h2><p>{compared} live outputs in the window compared by idempotency key: ");
        if total == 0 {
            h += "<span class=\"ok\">no difference</span>.</p>";
        } else {
            let _ = write!(h, "<span class=\"open\">{total} differences</span>.</p><table><tr><th>what</th><th>topic</th><th>idempotency key</th><th>replay</th><th>live</th></tr>");
            for d in differences {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    d.what,
                    esc(&d.topic),
                    esc(&d.idempotency_key),
                    esc(d.replay.as_deref().unwrap_or("")),
                    esc(d.live.as_deref().unwrap_or(""))
                );
            }
            h += "</table>";
        }
    }

    h += "<h2>ACK latency by phase</h2>";
    if page.latency_by_phase.is_empty() {
        h += "<p class=\"muted\">No ACK latency observed.</p>";
    }
    for (phase, buckets) in page.latency_by_phase {
        histogram(&mut h, phase, buckets);
    }

    // Timelines: the runs with findings or signals.
    let mut runs: BTreeMap<(&str, &str), (Vec<Marker>, Vec<(Millis, Option<Millis>)>)> =
        BTreeMap::new();
    for f in &r.findings {
        let entry = runs.entry((&f.world_id, &f.run_id)).or_default();
        let detected = time(&f.detected_at);
        let resolved = f.resolved_at.as_deref().map(time);
        entry.0.push(Marker {
            at: detected,
            class: "det",
            label: format!(
                "{} {:?} detected {}",
                f.kind.as_str(),
                f.sequences,
                f.detected_at
            ),
        });
        if let Some(at) = resolved {
            entry.0.push(Marker {
                at,
                class: "res",
                label: format!(
                    "{} {:?} resolved {}",
                    f.kind.as_str(),
                    f.sequences,
                    f.resolved_at.as_deref().unwrap_or("")
                ),
            });
        }
        entry.1.push((detected, resolved));
    }
    for s in &r.signals {
        runs.entry((&s.world_id, &s.run_id))
            .or_default()
            .0
            .push(Marker {
                at: time(&s.at),
                class: "sig",
                label: format!("{} (episode {}) {}", s.action.as_str(), s.episode, s.at),
            });
    }
    let mut ordered: Vec<_> = runs.into_iter().collect();
    ordered.sort_by_key(|(k, (m, _))| (std::cmp::Reverse(m.len()), *k));
    let _ = write!(
        h,
        "<h2>Timelines</h2><p class=\"muted\">Per run: <span class=\"open\">●</span> detected, <span class=\"ok\">●</span> resolved, <span style=\"color:#e90\">●</span> signal; bars are open (red) or resolved (green) findings. {} runs{}.</p>",
        ordered.len(),
        if ordered.len() > TIMELINE_RUNS_MAX { format!(", the {TIMELINE_RUNS_MAX} most eventful drawn") } else { String::new() }
    );
    for ((world, run), (markers, spans)) in ordered.iter().take(TIMELINE_RUNS_MAX) {
        let _ = write!(
            h,
            "<div><b>{}/{}</b><br>{}</div>",
            esc(world),
            esc(run),
            timeline(markers, spans)
        );
    }

    let _ = write!(h, "<h2>Findings ({})</h2><table><tr><th>detected</th><th>kind</th><th>world</th><th>run</th><th>sequences</th><th>phase</th><th>resolved</th></tr>", r.findings.len());
    for f in &r.findings {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:?}</td><td>{}</td><td>{}</td></tr>",
            esc(&f.detected_at),
            f.kind.as_str(),
            esc(&f.world_id),
            esc(&f.run_id),
            f.sequences,
            f.phase.map_or("", |p| if p == ackwatch_topology::Phase::Freeze { "freeze" } else { "unfreeze" }),
            f.resolved_at.as_deref().map_or("<span class=\"open\">open</span>".to_string(), esc)
        );
    }
    h += "</table>";
    let _ = write!(h, "<h2>Signals ({})</h2><table><tr><th>at</th><th>action</th><th>world</th><th>run</th><th>episode</th><th>idempotency key</th></tr>", r.signals.len());
    for s in &r.signals {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&s.at),
            s.action.as_str(),
            esc(&s.world_id),
            esc(&s.run_id),
            s.episode,
            esc(&s.idempotency_key)
        );
    }
    h += "</table>";
    if let Some(t) = page.timeline {
        let _ = write!(
            h,
            "<h2>Timeline of world {} run {} ({} entries{})</h2><table><tr><th>at</th><th>event</th><th>sequences</th><th>detail</th></tr>",
            esc(&t.run.world_id),
            esc(&t.run.run_id),
            t.entries.len(),
            if t.cut > 0 { format!(", {} more cut", t.cut) } else { String::new() }
        );
        for e in &t.entries {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{:?}</td><td>{}</td></tr>",
                esc(&e.at),
                e.event,
                e.sequences,
                esc(&e.detail)
            );
        }
        h += "</table>";
    }
    if !r.pending_at_end.is_empty() {
        let _ = write!(h, "<h2>Pending at the end ({})</h2><table><tr><th>due</th><th>kind</th><th>world</th><th>run</th><th>sequences</th></tr>", r.pending_at_end.len());
        for p in &r.pending_at_end {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:?}</td></tr>",
                esc(&p.due),
                p.kind.as_str(),
                esc(&p.world_id),
                esc(&p.run_id),
                p.sequences
            );
        }
        h += "</table>";
    }
    invalid_records(&mut h, r);
    h += "</body></html>\n";
    h
}

/// The invalid records (dead-lettered live): where, why, and the start of the value.
fn invalid_records(h: &mut String, r: &Report) {
    if r.invalid_records.is_empty() {
        return;
    }
    let unlisted = match r.invalid_records_unlisted {
        0 => String::new(),
        n => format!("; {n} more not listed"),
    };
    let _ = write!(
        h,
        "<h2>Invalid records ({}{unlisted})</h2><table><tr><th>topic</th><th>partition</th><th>offset</th><th>timestamp</th><th>reason</th><th>detail</th><th>value (start)</th></tr>",
        r.invalid_records.len()
    );
    for row in &r.invalid_records {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            row.topic,
            row.partition,
            row.offset,
            esc(row.timestamp.as_deref().unwrap_or("")),
            row.reason,
            esc(&row.detail),
            esc(row.preview.as_deref().unwrap_or("(no value)"))
        );
    }
    h.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(counts: &[u64], expected: [Option<usize>; 3]) {
        let buckets: Vec<(String, u64)> =
            counts.iter().enumerate().map(|(i, c)| (i.to_string(), *c)).collect();
        let got = [50, 95, 99].map(|p| percentile_bucket(&buckets, p));
        assert_eq!(got, expected, "counts {counts:?}");
    }

    #[test]
    fn percentile_marks_fall_in_the_bucket_of_the_nearest_rank() {
        check(&[0, 0, 0], [None, None, None]);
        check(&[1], [Some(0), Some(0), Some(0)]);
        check(&[50, 45, 4, 1], [Some(0), Some(1), Some(2)]);
        check(&[0, 51, 0, 49], [Some(1), Some(3), Some(3)]);
        check(&[0, 100], [Some(1), Some(1), Some(1)]);
    }

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(esc("world_1/r-2"), "world_1/r-2");
    }
}
