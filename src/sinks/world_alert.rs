//! One alert per world with several runs paused at once (`AckwatchWorldPaused`): a bad Gateway
//! pauses every run of the worlds it applies, and an on-call wants one page saying so, not one
//! per run. The per-run `AckwatchFinding` alerts still fire (each links to its run); the example
//! Alertmanager config inhibits them while their world's alert fires. A world's runs are all on
//! the partition of its key, so the instance that owns it counts them all.

use std::collections::BTreeMap;

use ackwatch_topology::run::{EpisodeState, Rollback};
use ackwatch_topology::time::format_rfc3339_ms;
use ackwatch_topology::{Millis, RunKey, RunState};
use serde_json::{json, Value};

use super::alerts::{posted, path_segment, AlertKey, AlertKind, Firing, ALERT_SEQUENCES_LISTED_MAX};
use crate::settings::Alerts;

pub const ALERT_NAME: &str = "AckwatchWorldPaused";

/// Paused runs of one world from which its alert fires; a single paused run pages through its
/// own finding alert.
pub const WORLD_PAUSED_RUNS_MIN: usize = 2;

/// The paused runs of one world.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Paused {
    pub runs: usize,
    pub escalated: usize,
    /// The earliest pause.
    pub since: Millis,
    /// The first run ids, in order (at most `ALERT_SEQUENCES_LISTED_MAX`).
    pub listed: Vec<String>,
}

/// Adds the paused runs among `runs` to `by_world`.
pub fn count_paused<'a>(
    runs: impl IntoIterator<Item = (&'a RunKey, &'a RunState)>,
    by_world: &mut BTreeMap<String, Paused>,
) {
    for (key, run) in runs {
        let EpisodeState::Paused { at, rollback } = run.episode_state else {
            continue;
        };
        let world = by_world.entry(key.world_id.to_string()).or_insert(Paused {
            since: at,
            ..Paused::default()
        });
        world.runs += 1;
        world.escalated += usize::from(rollback == Rollback::Escalated);
        world.since = world.since.min(at);
        world.listed.push(key.run_id.to_string());
        world.listed.sort_unstable();
        world.listed.truncate(ALERT_SEQUENCES_LISTED_MAX);
    }
}

/// The world alerts `by_world` calls for: critical once one of the runs escalated.
pub fn firing(by_world: BTreeMap<String, Paused>) -> Vec<Firing> {
    by_world
        .into_iter()
        .filter(|(_, p)| p.runs >= WORLD_PAUSED_RUNS_MIN)
        .map(|(world_id, p)| Firing {
            key: AlertKey {
                world_id,
                run_id: String::new(),
                kind: AlertKind::WorldPaused,
                episode: 0,
            },
            severity: if p.escalated > 0 { "critical" } else { "warning" },
            starts_at: p.since,
            sequences: Vec::new(),
            open: p.runs,
            phases: Vec::new(),
            runs: p.listed,
        })
        .collect()
}

/// The world alert as posted; `escalated` is not kept in [`Firing`], so the description says
/// what the severity says.
pub fn alert(f: &Firing, ends_at: Millis, settings: &Alerts) -> Value {
    let world = &f.key.world_id;
    let mut runs = f.runs.join(", ");
    if f.open > f.runs.len() {
        runs += &format!(" (first {} of {})", f.runs.len(), f.open);
    }
    let escalated = if f.severity == "critical" {
        " Some have escalated (rollback_after_ms passed without a rollback)."
    } else {
        ""
    };
    let annotations = json!({
        "summary": format!("{} runs of world {world} are paused", f.open),
        "description": format!(
            "{} runs of world {world} are paused since {}: {runs}.{escalated} Several runs at once point at a Gateway of this world (down, stuck, lagging) rather than at one run: check it first. The runs' own alerts are inhibited while this one fires.",
            f.open,
            format_rfc3339_ms(f.starts_at),
        ),
        "paused_runs": f.open.to_string(),
        "runs": f.runs.join(","),
    });
    let labels = json!({
        "alertname": ALERT_NAME,
        "world_id": world,
        "severity": f.severity,
    });
    let path = format!("/runs/{}", path_segment(world));
    posted(labels, annotations, "world_paused", &path, f, ends_at, settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paused(escalated: bool, at: Millis) -> RunState {
        let mut run = RunState::new(0);
        run.episode = 1;
        run.episode_state = EpisodeState::Paused {
            at,
            rollback: if escalated { Rollback::Escalated } else { Rollback::Due },
        };
        run
    }

    /// `(world, run, state)` runs; expected `(world, severity, since, paused runs, listed)`.
    fn check(runs: &[(&str, &str, RunState)], expected: &[(&str, &str, Millis, usize, &[&str])]) {
        let keyed: Vec<(RunKey, &RunState)> =
            runs.iter().map(|(w, r, s)| (RunKey::new(w, r), s)).collect();
        let mut by_world = BTreeMap::new();
        count_paused(keyed.iter().map(|(k, s)| (k, *s)), &mut by_world);
        let got: Vec<(String, &str, Millis, usize, Vec<String>)> = firing(by_world)
            .into_iter()
            .map(|f| (f.key.world_id, f.severity, f.starts_at, f.open, f.runs))
            .collect();
        let want: Vec<(String, &str, Millis, usize, Vec<String>)> = expected
            .iter()
            .map(|(w, s, at, n, l)| (w.to_string(), *s, *at, *n, l.iter().map(|r| r.to_string()).collect()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_world_with_several_paused_runs_has_one_alert() {
        check(&[], &[]);
        // One paused run pages through its own alert.
        check(&[("w", "r1", paused(false, 5))], &[]);
        check(&[("w", "r1", paused(false, 5)), ("w", "r2", RunState::new(0))], &[]);
        check(
            &[
                ("w", "r2", paused(false, 7)),
                ("w", "r1", paused(false, 5)),
                ("v", "r1", paused(false, 1)),
                ("w", "r3", RunState::new(0)),
            ],
            &[("w", "warning", 5, 2, &["r1", "r2"])],
        );
        // One escalated run makes the world's alert critical.
        check(
            &[("w", "r1", paused(false, 5)), ("w", "r2", paused(true, 9)), ("w", "r3", paused(false, 2))],
            &[("w", "critical", 2, 3, &["r1", "r2", "r3"])],
        );
    }

    #[test]
    fn the_alert_says_how_many_and_links_to_the_world() {
        let f = firing(BTreeMap::from([(
            "w 1".to_string(),
            Paused { runs: 3, escalated: 0, since: 0, listed: vec!["a".into(), "b".into(), "c".into()] },
        )]))
        .remove(0);
        let settings = Alerts {
            generator_base_url: "http://ackwatch-0.ackwatch:9464".into(),
            runbook_url: "http://ackwatch-0.ackwatch:9464/runbooks/{kind}.md".into(),
            ..Alerts::default()
        };
        let a = alert(&f, 60_000, &settings);
        assert_eq!(a["labels"], json!({"alertname": ALERT_NAME, "world_id": "w 1", "severity": "warning"}));
        assert_eq!(a["annotations"]["paused_runs"], "3");
        assert_eq!(a["annotations"]["summary"], "3 runs of world w 1 are paused");
        assert_eq!(a["annotations"]["runbook_url"], "http://ackwatch-0.ackwatch:9464/runbooks/world_paused.md");
        assert_eq!(a["generatorURL"], "http://ackwatch-0.ackwatch:9464/runs/w%201");
    }
}
