//! Alerts to Alertmanager (docs/semantics.md §3): one alert per open finding kind of a run's episode, derived
//! from the run states, so an Alertmanager outage loses nothing: whatever is firing when it is
//! back is posted again. Firing alerts are re-sent every `resend_interval_ms` with `endsAt` four
//! intervals ahead (two failed sends do not resolve them, as Prometheus does it); resolved ones
//! are sent with their `endsAt` for `resolved_resend_ms`, since Alertmanager keeps no state
//! across its restarts.

use std::collections::BTreeMap;

use ackwatch_topology::run::{Blocked, EpisodeState, Rollback};
use ackwatch_topology::time::format_rfc3339_ms;
use ackwatch_topology::{FindingKind, Millis, Phase, RunKey, RunState};
use serde_json::{json, Value};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::events::AlertPostFailed;
use crate::metrics::Metrics;
use crate::settings::Alerts;

pub const ALERT_NAME: &str = "AckwatchFinding";

/// Open sequences listed in one alert's annotation. Cost: the annotation's length.
pub const ALERT_SEQUENCES_LISTED_MAX: usize = 64;

/// What identifies an alert in Alertmanager (its labels, severity aside).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AlertKey {
    pub world_id: String,
    /// Empty for a world's alert.
    pub run_id: String,
    pub kind: AlertKind,
    /// 0 for a world's alert.
    pub episode: u32,
}

/// What an alert is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AlertKind {
    /// An open finding kind of one run's episode (`AckwatchFinding`).
    Finding(FindingKind),
    /// Several runs of one world paused at once (`AckwatchWorldPaused`, `world_alert.rs`).
    WorldPaused,
}

/// One firing alert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Firing {
    pub key: AlertKey,
    pub severity: &'static str,
    /// The earliest `detected_at` of the open findings.
    pub starts_at: Millis,
    pub sequences: Vec<u64>,
    pub open: usize,
    /// The phases of the open findings' sequences, each once, in order (none for gaps and
    /// orphan ACKs, whose activation is not known).
    pub phases: Vec<&'static str>,
    /// A world's alert: its paused runs (the first `ALERT_SEQUENCES_LISTED_MAX`; `open` counts all).
    pub runs: Vec<String>,
}

/// The alerts the runs' open findings call for. Critical when the run's episode escalated
/// (`rollback_after_ms` passed without a rollback) or a finding's sequence is in an `unfreeze`
/// phase. A blocked `ack_missing` raises none while it is held back by its gap (semantics §2: the
/// gap is the root cause an operator acts on, and has its own alert).
pub fn firing<'a>(runs: impl IntoIterator<Item = (&'a RunKey, &'a RunState)>) -> Vec<Firing> {
    let mut out = Vec::new();
    for (key, run) in runs {
        let escalated = matches!(
            run.episode_state,
            EpisodeState::Paused {
                rollback: Rollback::Escalated,
                ..
            }
        );
        let mut by_kind: BTreeMap<FindingKind, Firing> = BTreeMap::new();
        for (&seq, state) in &run.sequences {
            for kind in FindingKind::ALL {
                let Some(f) = state.finding(kind).filter(|f| f.is_open()) else {
                    continue;
                };
                let held =
                    kind == FindingKind::AckMissing && state.blocked.as_deref().is_some_and(Blocked::holds);
                if held {
                    continue;
                }
                let alert = by_kind.entry(kind).or_insert_with(|| Firing {
                    key: AlertKey {
                        world_id: key.world_id.to_string(),
                        run_id: key.run_id.to_string(),
                        kind: AlertKind::Finding(kind),
                        episode: run.episode,
                    },
                    severity: if escalated { "critical" } else { "warning" },
                    starts_at: f.detected_at,
                    sequences: Vec::new(),
                    open: 0,
                    phases: Vec::new(),
                    runs: Vec::new(),
                });
                alert.starts_at = alert.starts_at.min(f.detected_at);
                alert.open += 1;
                if alert.sequences.len() < ALERT_SEQUENCES_LISTED_MAX {
                    alert.sequences.push(seq);
                }
                if let Some(phase) = state.finding_phase(kind).map(|p| p.as_str()) {
                    if !alert.phases.contains(&phase) {
                        alert.phases.push(phase);
                        alert.phases.sort_unstable();
                    }
                }
                if state
                    .activation
                    .as_ref()
                    .is_some_and(|a| a.phase == Phase::Unfreeze)
                {
                    alert.severity = "critical";
                }
            }
        }
        for (seq, detected_at) in run.open_gaps() {
            let alert = by_kind
                .entry(FindingKind::ActivationGap)
                .or_insert_with(|| Firing {
                    key: AlertKey {
                        world_id: key.world_id.to_string(),
                        run_id: key.run_id.to_string(),
                        kind: AlertKind::Finding(FindingKind::ActivationGap),
                        episode: run.episode,
                    },
                    severity: if escalated { "critical" } else { "warning" },
                    starts_at: detected_at,
                    sequences: Vec::new(),
                    open: 0,
                    phases: Vec::new(),
                    runs: Vec::new(),
                });
            alert.starts_at = alert.starts_at.min(detected_at);
            alert.open += 1;
            if alert.sequences.len() < ALERT_SEQUENCES_LISTED_MAX {
                alert.sequences.push(seq);
            }
        }
        out.extend(by_kind.into_values());
    }
    out
}

/// What was posted: firing alerts, and resolved ones still being re-sent. Alertmanager tells
/// alerts apart by all their labels, severity included, so a resolved alert is kept by its key
/// and severity.
#[derive(Default)]
pub struct AlertBook {
    firing: BTreeMap<AlertKey, Firing>,
    resolved: BTreeMap<(AlertKey, &'static str), (Firing, Millis)>,
}

impl AlertBook {
    /// Takes the current firing set at `now_ms`: alerts no longer in it are resolved now, and
    /// so is the old copy of one whose severity changed (semantics §3: an escalation ends the alert
    /// of the old severity at once, so Alertmanager never reports "resolved" for a finding that
    /// got worse).
    pub fn update(&mut self, now_ms: Millis, current: Vec<Firing>, settings: &Alerts) {
        let mut next: BTreeMap<AlertKey, Firing> =
            current.into_iter().map(|f| (f.key.clone(), f)).collect();
        for (key, old) in std::mem::take(&mut self.firing) {
            let same = next.get(&key).is_some_and(|f| f.severity == old.severity);
            if !same {
                self.resolved.insert((key, old.severity), (old, now_ms));
            }
        }
        for (key, f) in &next {
            self.resolved.remove(&(key.clone(), f.severity));
        }
        self.resolved
            .retain(|_, (_, at)| now_ms - *at <= settings.resolved_resend_ms as Millis);
        self.firing = std::mem::take(&mut next);
    }

    pub fn firing_count(&self) -> usize {
        self.firing.len()
    }

    /// The body of `POST /api/v2/alerts`.
    pub fn payload(&self, now_ms: Millis, settings: &Alerts) -> Value {
        let ends_firing = now_ms + 4 * settings.resend_interval_ms as Millis;
        let alerts = self
            .firing
            .values()
            .map(|f| alert(f, ends_firing, settings))
            .chain(
                self.resolved
                    .values()
                    .map(|(f, at)| alert(f, *at, settings)),
            )
            .collect();
        Value::Array(alerts)
    }
}

fn alert(f: &Firing, ends_at: Millis, settings: &Alerts) -> Value {
    match f.key.kind {
        AlertKind::Finding(kind) => finding_alert(f, kind, ends_at, settings),
        AlertKind::WorldPaused => super::world_alert::alert(f, ends_at, settings),
    }
}

/// An alert of `labels` and `annotations` as Alertmanager takes it, with `alerts.labels` added,
/// the runbook link of `page`, and the generatorURL of `path` (under the generator base).
pub(super) fn posted(
    mut labels: Value,
    mut annotations: Value,
    page: &str,
    path: &str,
    f: &Firing,
    ends_at: Millis,
    settings: &Alerts,
) -> Value {
    if let Some(url) = runbook_link(&settings.runbook_url, page) {
        annotations["runbook_url"] = json!(url);
    }
    for (name, value) in &settings.labels {
        labels[name] = json!(value);
    }
    let mut alert = json!({
        "labels": labels,
        "annotations": annotations,
        "startsAt": format_rfc3339_ms(f.starts_at),
        "endsAt": format_rfc3339_ms(ends_at),
    });
    if !settings.generator_base_url.is_empty() {
        alert["generatorURL"] = json!(format!(
            "{}{path}",
            settings.generator_base_url.trim_end_matches('/')
        ));
    }
    alert
}

fn finding_alert(f: &Firing, kind: FindingKind, ends_at: Millis, settings: &Alerts) -> Value {
    let finding = kind;
    let kind = kind.as_str();
    let (world, run) = (&f.key.world_id, &f.key.run_id);
    let sequences = f
        .sequences
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let listed = if f.open > f.sequences.len() {
        format!("{sequences} (first {} of {})", f.sequences.len(), f.open)
    } else {
        sequences.clone()
    };
    let phase = if f.phases.is_empty() {
        String::new()
    } else {
        format!(", phase {}", f.phases.join("/"))
    };
    let annotations = json!({
        "summary": format!("{kind}: {} open in run {world}/{run}", f.open),
        "description": format!(
            "{kind} in run {world}/{run} (episode {}): sequences {listed}{phase}, open since {}. {}",
            f.key.episode,
            format_rfc3339_ms(f.starts_at),
            first_step(finding),
        ),
        "sequences": sequences,
    });
    let labels = json!({
        "alertname": ALERT_NAME,
        "world_id": world,
        "run_id": run,
        "kind": kind,
        "episode": f.key.episode.to_string(),
        "severity": f.severity,
    });
    let path = format!("/runs/{}/{}", path_segment(world), path_segment(run));
    posted(labels, annotations, kind, &path, f, ends_at, settings)
}

/// What an on-call does first about a finding of `kind` (the runbook has the rest).
fn first_step(kind: FindingKind) -> &'static str {
    match kind {
        FindingKind::AckMissing => "First: check the Gateways that apply this world (consumer lag, errors); the run stays paused until every ACK arrives.",
        FindingKind::ActivationGap => "First: check WorldService's publishing of this run (the missing sequences were never seen on the activation topic).",
        FindingKind::OrphanAck => "First: check that the activation topic and the ACK topic are co-partitioned and that WorldService published this sequence.",
        FindingKind::SequenceConflict => "First: find who published a second, different activation under this sequence (two WorldService writers?).",
    }
}

/// `text` as one URL path segment (RFC 3986 unreserved characters kept, the rest percent-encoded).
pub(super) fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The runbook page of a finding kind: `{kind}` in the configured URL is replaced (one page per
/// kind, as deploy/runbooks/ has them); a URL without it gets `#<kind>` (one page, an anchor per kind).
fn runbook_link(runbook_url: &str, kind: &str) -> Option<String> {
    if runbook_url.is_empty() {
        None
    } else if runbook_url.contains("{kind}") {
        Some(runbook_url.replace("{kind}", kind))
    } else {
        Some(format!("{runbook_url}#{kind}"))
    }
}

/// Posts the firing alerts to every Alertmanager: soon after an output changes them (`dirty`),
/// every `resend_interval_ms` regardless, and every 5 s after a failed post, so an Alertmanager
/// outage delays alerts but loses none. `current` derives the firing set from the tasks' run
/// states (it takes their locks briefly, so it runs on a blocking thread).
pub async fn post_loop(
    settings: Alerts,
    metrics: Arc<Metrics>,
    dirty: Arc<AtomicBool>,
    current: impl Fn() -> Vec<Firing> + Send + Sync + 'static,
) {
    const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
    let resend = Duration::from_millis(settings.resend_interval_ms);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client without TLS builds");
    let current = Arc::new(current);
    // Labels and logs show the URLs without credentials.
    let shown_urls: Vec<String> = settings
        .alertmanager_urls
        .iter()
        .map(|u| crate::secrets::display_url(u))
        .collect();
    let mut book = AlertBook::default();
    let mut last_post: Option<Instant> = None;
    let mut failed = false;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let wait = if failed { RETRY_AFTER_FAILURE } else { resend };
        let due = last_post.is_none_or(|t| t.elapsed() >= wait)
            || (dirty.load(Ordering::Relaxed) && !failed);
        if !due {
            continue;
        }
        dirty.store(false, Ordering::Relaxed);
        let scan = current.clone();
        let Ok(firing_now) = tokio::task::spawn_blocking(move || scan()).await else {
            continue;
        };
        let now = crate::runtime::wall_ms();
        book.update(now, firing_now, &settings);
        metrics.alerts_firing.set(book.firing_count() as i64);
        let payload = book.payload(now, &settings);
        failed = false;
        for (url, shown) in settings.alertmanager_urls.iter().zip(&shown_urls) {
            let endpoint = format!("{}/api/v2/alerts", url.trim_end_matches('/'));
            let result = match client.post(&endpoint).json(&payload).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("status {}", r.status())),
                // Without the URL: it may carry credentials.
                Err(e) => Err(e.without_url().to_string()),
            };
            match result {
                Ok(()) => metrics.alert_posts.with_label_values(&[shown, "ok"]).inc(),
                Err(why) => {
                    failed = true;
                    AlertPostFailed {
                        url: shown,
                        error: &why,
                    }
                    .emit(&metrics);
                }
            }
        }
        last_post = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ackwatch_topology::run::{ActivationSeen, FindingState, SeqState};

    fn run(
        seqs: &[(u64, Phase, Option<(FindingKind, Millis, bool)>)],
        escalated: bool,
    ) -> RunState {
        let mut r = RunState::new(0);
        r.episode = 1;
        if escalated {
            r.episode_state = EpisodeState::Paused {
                at: 0,
                rollback: Rollback::Escalated,
            };
        }
        for &(seq, phase, finding) in seqs {
            let mut s = SeqState {
                activation: Some(ActivationSeen {
                    event_ms: 0,
                    phase,
                    etag: None,
                }),
                ..Default::default()
            };
            if let Some((kind, at, open)) = finding {
                s.findings[kind.index()] = Some(FindingState {
                    detected_at: at,
                    resolved_at: (!open).then_some(at + 1),
                });
            }
            r.sequences.insert(seq, s);
        }
        r
    }

    fn check(state: RunState, expected: &[(FindingKind, &str, Millis, &[u64])]) {
        let key = RunKey::new("w", "r");
        let got: Vec<(FindingKind, &str, Millis, Vec<u64>)> = firing([(&key, &state)])
            .into_iter()
            .map(|f| match f.key.kind {
                AlertKind::Finding(kind) => (kind, f.severity, f.starts_at, f.sequences),
                AlertKind::WorldPaused => unreachable!("firing() raises finding alerts only"),
            })
            .collect();
        let want: Vec<(FindingKind, &str, Millis, Vec<u64>)> = expected
            .iter()
            .map(|(k, s, a, q)| (*k, *s, *a, q.to_vec()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn one_alert_per_open_kind_with_its_severity() {
        use FindingKind::*;
        use Phase::*;
        check(run(&[(1, Freeze, None)], false), &[]);
        check(
            run(&[(1, Freeze, Some((AckMissing, 5, false)))], false),
            &[],
        );
        check(
            run(
                &[
                    (1, Freeze, Some((AckMissing, 5, true))),
                    (2, Freeze, Some((AckMissing, 3, true))),
                ],
                false,
            ),
            &[(AckMissing, "warning", 3, &[1, 2])],
        );
        check(
            run(
                &[
                    (1, Freeze, Some((AckMissing, 5, true))),
                    (2, Unfreeze, Some((OrphanAck, 9, true))),
                ],
                false,
            ),
            &[
                (AckMissing, "warning", 5, &[1]),
                (OrphanAck, "critical", 9, &[2]),
            ],
        );
        check(
            run(&[(1, Freeze, Some((ActivationGap, 5, true)))], true),
            &[(ActivationGap, "critical", 5, &[1])],
        );
    }

    #[test]
    fn resolved_alerts_are_resent_for_a_while_then_dropped() {
        let settings = Alerts {
            resend_interval_ms: 1000,
            resolved_resend_ms: 10_000,
            ..Alerts::default()
        };
        let key = RunKey::new("w", "r");
        let state = run(
            &[(1, Phase::Freeze, Some((FindingKind::AckMissing, 5, true)))],
            false,
        );
        let mut book = AlertBook::default();
        book.update(100, firing([(&key, &state)]), &settings);
        let p = book.payload(100, &settings);
        assert_eq!(p[0]["endsAt"], format_rfc3339_ms(4100));
        assert_eq!(p[0]["labels"]["severity"], "warning");
        book.update(200, vec![], &settings);
        let p = book.payload(200, &settings);
        assert_eq!(p.as_array().unwrap().len(), 1);
        assert_eq!(
            p[0]["endsAt"],
            format_rfc3339_ms(200),
            "resolved at the update that no longer saw it"
        );
        book.update(10_201, vec![], &settings);
        assert_eq!(book.payload(10_201, &settings), json!([]));
    }

    #[test]
    fn a_blocked_ack_missing_raises_no_alert_until_it_is_released() {
        use ackwatch_topology::run::Blocked;
        let key = RunKey::new("w", "r");
        let mut state = run(
            &[(3, Phase::Freeze, Some((FindingKind::AckMissing, 5, true)))],
            false,
        );
        let blocked = Blocked {
            by: 2,
            release_due: None,
            released: false,
        };
        state.sequences.get_mut(&3).unwrap().blocked = Some(Box::new(blocked));
        assert_eq!(firing([(&key, &state)]), vec![], "held back by its gap");
        state.sequences.get_mut(&3).unwrap().blocked = Some(Box::new(Blocked {
            released: true,
            ..blocked
        }));
        assert_eq!(
            firing([(&key, &state)]).len(),
            1,
            "released: an ordinary finding"
        );
    }

    /// semantics §3: an escalation ends the warning copy at once (its endsAt now), so Alertmanager
    /// never reports "resolved" for a finding that got worse; the critical copy fires.
    #[test]
    fn an_escalation_ends_the_alert_of_the_old_severity_at_once() {
        let settings = Alerts {
            resend_interval_ms: 1000,
            resolved_resend_ms: 10_000,
            ..Alerts::default()
        };
        let key = RunKey::new("w", "r");
        let finding = [(1, Phase::Freeze, Some((FindingKind::AckMissing, 5, true)))];
        let mut book = AlertBook::default();
        book.update(100, firing([(&key, &run(&finding, false))]), &settings);
        book.update(200, firing([(&key, &run(&finding, true))]), &settings);
        let payload = book.payload(200, &settings);
        let by_severity = |severity: &str| -> Vec<Value> {
            payload
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| a["labels"]["severity"] == severity)
                .cloned()
                .collect()
        };
        assert_eq!(by_severity("critical").len(), 1);
        assert_eq!(
            by_severity("critical")[0]["endsAt"],
            format_rfc3339_ms(4200)
        );
        assert_eq!(by_severity("warning").len(), 1);
        assert_eq!(
            by_severity("warning")[0]["endsAt"],
            format_rfc3339_ms(200),
            "the warning ended when the severity changed"
        );
        assert_eq!(book.firing_count(), 1);
    }

    /// What an on-call reads: a description with kind, run, sequences, phase, since when and a
    /// first step; the deployment's static labels; a link to the run on this instance.
    #[test]
    fn an_alert_says_what_where_since_when_and_links_to_its_run() {
        let settings = Alerts {
            labels: [("cluster".to_string(), "prod-eu".to_string())].into(),
            generator_base_url: "http://ackwatch-0.ackwatch:9464/".into(),
            ..Alerts::default()
        };
        let key = RunKey::new("w 1", "r/2");
        let state = run(
            &[
                (3, Phase::Unfreeze, Some((FindingKind::AckMissing, 5, true))),
                (4, Phase::Freeze, Some((FindingKind::AckMissing, 9, true))),
            ],
            false,
        );
        let mut book = AlertBook::default();
        book.update(100, firing([(&key, &state)]), &settings);
        let alert = &book.payload(100, &settings)[0];
        assert_eq!(
            alert["annotations"]["description"],
            "ack_missing in run w 1/r/2 (episode 1): sequences 3,4, phase freeze/unfreeze, open \
             since 1970-01-01T00:00:00.005Z. First: check the Gateways that apply this world \
             (consumer lag, errors); the run stays paused until every ACK arrives."
        );
        assert_eq!(alert["labels"]["cluster"], "prod-eu");
        assert_eq!(
            alert["labels"]["severity"], "critical",
            "an unfreeze sequence"
        );
        assert_eq!(
            alert["generatorURL"],
            "http://ackwatch-0.ackwatch:9464/runs/w%201/r%2F2"
        );
        let without = book.payload(100, &Alerts::default());
        assert!(without[0].get("generatorURL").is_none());
    }

    #[test]
    fn runbook_links_fill_the_kind_into_a_template_or_add_an_anchor() {
        let check = |url: &str, expected: Option<&str>| {
            assert_eq!(
                runbook_link(url, "ack_missing").as_deref(),
                expected,
                "{url}"
            )
        };
        check("", None);
        check(
            "https://runbooks.example/ackwatch",
            Some("https://runbooks.example/ackwatch#ack_missing"),
        );
        check(
            "https://git.example/ackwatch/blob/main/deploy/runbooks/{kind}.md",
            Some("https://git.example/ackwatch/blob/main/deploy/runbooks/ack_missing.md"),
        );
    }
}
