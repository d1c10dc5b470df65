//! The HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, and read-only queries of the runs
//! this instance owns (Kafka Streams' interactive queries): `/runs/{world_id}` and
//! `/runs/{world_id}/{run_id}`, and the index of what is wrong now, `/runs?state=open|paused|escalated`;
//! and the runbooks shipped in deploy/runbooks (`/runbooks/{page}`),
//! where alerts link by default.

use std::sync::Arc;

use ackwatch_topology::report::Percentiles;
use ackwatch_topology::run::{EpisodeState, Rollback};
use ackwatch_topology::time::format_rfc3339_ms;
use ackwatch_topology::{FindingKind, RunKey, RunState};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::Shared;

/// Runs listed by one `/runs/{world_id}` answer. Cost: one JSON object per run in the reply.
pub const RUNS_PER_WORLD_LISTED_MAX: usize = 1000;

/// Runs listed by one `/runs?state=` answer (the rest are counted). Cost: one JSON object per
/// run in the reply, built while the tasks' locks are taken one at a time.
pub const RUNS_BY_STATE_LISTED_MAX: usize = 1000;

/// Which runs `/runs?state=` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunsWanted {
    /// With at least one open finding.
    Open,
    /// Paused (escalated or not).
    Paused,
    /// Paused past `rollback_after_ms` without `auto_rollback`: waiting for an operator.
    Escalated,
}

impl RunsWanted {
    /// The `state` of a query string such as `state=paused`.
    pub fn of_query(query: Option<&str>) -> Result<RunsWanted, String> {
        let state = query
            .unwrap_or("")
            .split('&')
            .find_map(|pair| pair.strip_prefix("state="));
        match state {
            Some("open") => Ok(RunsWanted::Open),
            Some("paused") => Ok(RunsWanted::Paused),
            Some("escalated") => Ok(RunsWanted::Escalated),
            Some(other) => Err(format!("state={other:?} is not one of open, paused, escalated")),
            None => Err("say which runs: /runs?state=open, paused or escalated".into()),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunsWanted::Open => "open",
            RunsWanted::Paused => "paused",
            RunsWanted::Escalated => "escalated",
        }
    }

    fn matches(self, run: &RunState) -> bool {
        match (self, run.episode_state) {
            (RunsWanted::Open, _) => run.open_findings() > 0 || run.open_gaps().next().is_some(),
            (RunsWanted::Paused, EpisodeState::Paused { .. }) => true,
            (RunsWanted::Escalated, EpisodeState::Paused { rollback, .. }) => rollback == Rollback::Escalated,
            _ => false,
        }
    }
}

/// `/runs?state=open|paused|escalated`: the runs of this instance's tasks in that state (only
/// runs in memory can be: a settled run, evicted to the store, has no open finding and is not
/// paused). The whole group's: ask every instance (docs/semantics.md §3).
async fn runs_by_state(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    let wanted = match RunsWanted::of_query(query.as_deref()) {
        Ok(wanted) => wanted,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    tokio::task::spawn_blocking(move || {
        let mut runs = Vec::new();
        let mut total = 0usize;
        for thread in &shared.threads {
            let tasks = thread.tasks();
            for task in tasks.running() {
                for (key, run) in task.core.engine.runs().filter(|(_, run)| wanted.matches(run)) {
                    total += 1;
                    if runs.len() < RUNS_BY_STATE_LISTED_MAX {
                        runs.push(run_view(key, run, task.partition()));
                    }
                }
            }
        }
        runs.sort_by(|a, b| {
            (a["world_id"].as_str(), a["run_id"].as_str()).cmp(&(b["world_id"].as_str(), b["run_id"].as_str()))
        });
        Json(json!({
            "state": wanted.as_str(),
            "runs": runs,
            "runs_total": total,
            "runs_listed_max": RUNS_BY_STATE_LISTED_MAX,
            "owned_partitions": shared.partitions(),
        }))
        .into_response()
    })
    .await
    .unwrap_or_else(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response())
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/runs", get(runs_by_state))
        .route("/runs/{world_id}", get(world))
        .route("/runs/{world_id}/{run_id}", get(run))
        .route("/runbooks/", get(|| runbook(Path("README.md".to_string()))))
        .route("/runbooks/{page}", get(runbook))
        .with_state(shared)
}

pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    if let Err(e) = axum::serve(listener, router(shared)).await {
        crate::events::HttpServerStopped { error: &e }.emit();
    }
}

/// The runbook pages of deploy/runbooks, built into the binary: an alert's default
/// `runbook_url` works wherever ackwatch runs, with nothing to publish first.
pub const RUNBOOKS: [(&str, &str); 8] = [
    ("README.md", include_str!("../../deploy/runbooks/README.md")),
    ("ack_missing.md", include_str!("../../deploy/runbooks/ack_missing.md")),
    ("activation_gap.md", include_str!("../../deploy/runbooks/activation_gap.md")),
    ("orphan_ack.md", include_str!("../../deploy/runbooks/orphan_ack.md")),
    ("sequence_conflict.md", include_str!("../../deploy/runbooks/sequence_conflict.md")),
    ("world_paused.md", include_str!("../../deploy/runbooks/world_paused.md")),
    ("ack_latency_high.md", include_str!("../../deploy/runbooks/ack_latency_high.md")),
    ("ackwatch_operations.md", include_str!("../../deploy/runbooks/ackwatch_operations.md")),
];

/// One runbook page, as Markdown (readable as it is in a browser).
async fn runbook(Path(page): Path<String>) -> Response {
    match RUNBOOKS.iter().find(|(name, _)| *name == page) {
        Some((_, text)) => ([("content-type", "text/markdown; charset=utf-8")], *text).into_response(),
        None => {
            let pages: Vec<&str> = RUNBOOKS.iter().map(|(name, _)| *name).collect();
            let known = pages.join(", ");
            (StatusCode::NOT_FOUND, format!("no runbook page {page:?}; pages: {known}\n")).into_response()
        }
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
        .into_response()
}

/// 200 while the processor runs and sees every partition it owns; 500 after a fatal error;
/// 503 while an input partition is stalled (docs/semantics.md §4), with the reason.
async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    if let Some(e) = shared.fatal() {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("failed: {e}\n")).into_response();
    }
    let stalled = shared.metrics.stalls.describe();
    if !stalled.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("stalled: {}\n", stalled.join("; ")),
        )
            .into_response();
    }
    (StatusCode::OK, "ok\n").into_response()
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: not in the consumer group yet, or a task is restoring its store\n",
        )
            .into_response()
    }
}

fn run_view(key: &RunKey, run: &RunState, partition: i32) -> Value {
    let summary = run.summary();
    let pending: Vec<u64> = run
        .sequences
        .iter()
        .filter(|(_, s)| s.awaits_ack())
        .map(|(q, _)| *q)
        .collect();
    let mut open = Vec::new();
    for (seq, state) in &run.sequences {
        for kind in FindingKind::ALL {
            if let Some(f) = state.finding(kind).filter(|f| f.is_open()) {
                let mut finding = json!({
                    "kind": kind.as_str(),
                    "sequence": seq,
                    "phase": state.finding_phase(kind),
                    "detected_at": format_rfc3339_ms(f.detected_at),
                });
                if let Some(blocked) = state.blocked.filter(|_| kind == FindingKind::AckMissing) {
                    finding["blocked_by"] = json!(blocked.by);
                    finding["blocked"] = json!(blocked.holds());
                }
                open.push(finding);
            }
        }
    }
    for (seq, detected_at) in run.open_gaps() {
        open.push(json!({
            "kind": FindingKind::ActivationGap.as_str(),
            "sequence": seq,
            "phase": null,
            "detected_at": format_rfc3339_ms(detected_at),
        }));
    }
    let episode = match run.episode_state {
        EpisodeState::Idle => json!({"state": "idle", "episode": run.episode}),
        EpisodeState::Paused { at, rollback } => json!({
            "state": "paused",
            "episode": run.episode,
            "since": format_rfc3339_ms(at),
            "escalated": rollback == Rollback::Escalated,
        }),
        EpisodeState::RolledBack { at } => {
            json!({"state": "rolled_back", "episode": run.episode, "since": format_rfc3339_ms(at)})
        }
    };
    json!({
        "world_id": &*key.world_id,
        "run_id": &*key.run_id,
        "partition": partition,
        "tracked": summary.tracked,
        "acked": summary.acked,
        "pending_acks": pending,
        "open_findings": open,
        "latency_ms": Percentiles::of_sorted(&summary.latencies_ms),
        "episode": episode,
        "last_event_at": format_rfc3339_ms(run.last_event_ms),
    })
}

fn store_error(e: anyhow::Error) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("cannot read the task's store: {e:#}\n"),
    )
        .into_response()
}

fn not_here(shared: &Shared, what: String) -> Response {
    let partitions = shared.partitions();
    (
        StatusCode::NOT_FOUND,
        Json(json!({
            "error": format!("{what} is not in the state of this instance"),
            "owned_partitions": partitions,
            "hint": "a world lives on the instance that owns its partition; ask the others, or the world has no live run",
        })),
    )
        .into_response()
}

async fn world(State(shared): State<Arc<Shared>>, Path(world_id): Path<String>) -> Response {
    tokio::task::spawn_blocking(move || {
        let mut runs = Vec::new();
        let mut total = 0usize;
        for thread in &shared.threads {
            let tasks = thread.tasks();
            for task in tasks.running() {
                let engine = &task.core.engine;
                for (key, run) in engine.runs() {
                    if *key.world_id == *world_id {
                        total += 1;
                        if runs.len() < RUNS_PER_WORLD_LISTED_MAX {
                            runs.push(run_view(key, run, task.partition()));
                        }
                    }
                }
                // Settled runs evicted to the store (those also in memory are listed above).
                // Counted by key; one past retention whose tombstone is not written yet counts
                // until it is, but is not listed.
                let stored = task.store.runs_of_world(&world_id, RUNS_PER_WORLD_LISTED_MAX, |key| {
                    engine.run(key).is_none()
                });
                let (stored, stored_total) = match stored {
                    Ok(found) => found,
                    Err(e) => return store_error(e),
                };
                total += stored_total;
                for (key, run) in stored {
                    if runs.len() < RUNS_PER_WORLD_LISTED_MAX && engine.retains(&run) {
                        runs.push(run_view(&key, &run, task.partition()));
                    }
                }
            }
        }
        if total == 0 {
            return not_here(&shared, format!("world {world_id:?}"));
        }
        runs.sort_by(|a, b| a["run_id"].as_str().cmp(&b["run_id"].as_str()));
        Json(json!({"world_id": world_id, "runs": runs, "runs_total": total, "runs_listed_max": RUNS_PER_WORLD_LISTED_MAX}))
            .into_response()
    })
    .await
    .unwrap_or_else(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response())
}

async fn run(
    State(shared): State<Arc<Shared>>,
    Path((world_id, run_id)): Path<(String, String)>,
) -> Response {
    tokio::task::spawn_blocking(move || {
        let key = RunKey::new(&world_id, &run_id);
        let mut found = None;
        for thread in &shared.threads {
            let tasks = thread.tasks();
            for task in tasks.running() {
                let engine = &task.core.engine;
                if let Some(run) = engine.run(&key) {
                    found = Some(run_view(&key, run, task.partition()));
                    break;
                }
                // A settled run evicted to the store.
                match task.store.get_run(&key) {
                    Ok(Some(run)) if engine.retains(&run) => {
                        found = Some(run_view(&key, &run, task.partition()));
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => return store_error(e),
                }
            }
            if found.is_some() {
                break;
            }
        }
        match found {
            Some(view) => Json(view).into_response(),
            None => not_here(&shared, format!("run {world_id:?}/{run_id:?}")),
        }
    })
    .await
    .unwrap_or_else(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_query_names_one_of_three() {
        let check = |query: Option<&str>, expected: Result<RunsWanted, &str>| {
            let got = RunsWanted::of_query(query);
            match expected {
                Ok(wanted) => assert_eq!(got, Ok(wanted), "{query:?}"),
                Err(says) => assert!(got.as_ref().is_err_and(|e| e.contains(says)), "{query:?}: {got:?}"),
            }
        };
        check(Some("state=open"), Ok(RunsWanted::Open));
        check(Some("x=1&state=paused"), Ok(RunsWanted::Paused));
        check(Some("state=escalated"), Ok(RunsWanted::Escalated));
        check(Some("state=closed"), Err("\"closed\" is not one of open, paused, escalated"));
        check(None, Err("say which runs"));
        check(Some(""), Err("say which runs"));
    }
}
