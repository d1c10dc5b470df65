//! The HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, and read-only queries of the runs
//! this instance owns (Kafka Streams' interactive queries): `/runs/{world_id}` and
//! `/runs/{world_id}/{run_id}`.

use std::sync::Arc;

use ackwatch_topology::report::Percentiles;
use ackwatch_topology::run::{EpisodeState, Rollback};
use ackwatch_topology::time::format_rfc3339_ms;
use ackwatch_topology::{FindingKind, RunKey, RunState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::Shared;

/// Runs listed by one `/runs/{world_id}` answer. Cost: one JSON object per run in the reply.
pub const RUNS_PER_WORLD_LISTED_MAX: usize = 1000;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/runs/{world_id}", get(world))
        .route("/runs/{world_id}/{run_id}", get(run))
        .with_state(shared)
}

pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    if let Err(e) = axum::serve(listener, router(shared)).await {
        crate::events::HttpServerStopped { error: &e }.emit();
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
