//! The HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, and read-only queries of the runs
//! this instance owns (Kafka Streams' interactive queries): `/runs/{world_id}` and
//! `/runs/{world_id}/{run_id}` (a query to a non-owner is redirected to the owner, `owners.rs`),
//! and the index of what is wrong now, `/runs?state=open|paused|escalated` (`&scope=group`:
//! every member's, merged);
//! and the runbooks shipped in deploy/runbooks (`/runbooks/{page}`),
//! where alerts link by default.

use std::sync::Arc;
use std::time::Duration;

use ackwatch_topology::report::Percentiles;
use ackwatch_topology::run::{EpisodeState, Rollback};
use ackwatch_topology::time::format_rfc3339_ms;
use ackwatch_topology::partitioning::Partitioner;
use ackwatch_topology::{FindingKind, RunKey, RunState};
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, Uri};
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
        match query_param(query, "state") {
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

/// The value of parameter `name` in a query string (`a=1&name=value`), if present.
fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// `/runs?state=open|paused|escalated`: the runs of this instance's tasks in that state (only
/// runs in memory can be: a settled run, evicted to the store, has no open finding and is not
/// paused). With `scope=group`, the whole group's: this instance asks every other member the
/// broker lists (at its advertised URL) and merges the answers, saying which did not answer.
async fn runs_by_state(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    let wanted = match RunsWanted::of_query(query.as_deref()) {
        Ok(wanted) => wanted,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let group = query_param(query.as_deref(), "scope") == Some("group");
    let scan = shared.clone();
    let local = match tokio::task::spawn_blocking(move || local_runs(&scan, wanted)).await {
        Ok(local) => local,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    if !group {
        return Json(local).into_response();
    }
    Json(group_runs(shared, wanted, local).await).into_response()
}

/// This instance's answer to `/runs?state=`.
fn local_runs(shared: &Shared, wanted: RunsWanted) -> Value {
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
    sort_runs(&mut runs);
    json!({
        "state": wanted.as_str(),
        "runs": runs,
        "runs_total": total,
        "runs_listed_max": RUNS_BY_STATE_LISTED_MAX,
        "owned_partitions": shared.partitions(),
        "advertised_url": shared.settings.http.advertised(),
    })
}

fn sort_runs(runs: &mut [Value]) {
    runs.sort_by(|a, b| {
        (a["world_id"].as_str(), a["run_id"].as_str()).cmp(&(b["world_id"].as_str(), b["run_id"].as_str()))
    });
}

/// Longest `/runs?state=…&scope=group` waits for one other instance's answer. Cost: a group
/// query with an unreachable member takes this long, and says which member did not answer.
pub const GROUP_QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// The group's answer: this instance's and every other advertising member's, merged; members
/// that did not answer (or advertise no address) are listed and `complete` is false.
async fn group_runs(shared: Arc<Shared>, wanted: RunsWanted, local: Value) -> Value {
    let own_url = shared.settings.http.advertised();
    let mut answers = vec![(own_url.clone(), Ok(local))];
    let mut missing: Vec<Value> = Vec::new();
    let lookup = shared.clone();
    match tokio::task::spawn_blocking(move || lookup.owners.owners(&lookup.settings)).await {
        Ok(Ok(owners)) => {
            // This instance's own consumers (answered above, with or without an address).
            let own_ids: Vec<String> = (0..shared.settings.runtime.num_stream_threads as usize)
                .filter_map(|t| {
                    let config = super::stream_thread::consumer_config(&shared.settings, t);
                    config.get("client.id").map(str::to_string)
                })
                .collect();
            let mut urls: Vec<String> = Vec::new();
            for member in owners.members.iter().filter(|m| !own_ids.contains(&m.client_id)) {
                match &member.url {
                    Some(url) if *url != own_url => urls.push(url.clone()),
                    Some(_) => missing.push(json!({"client_id": member.client_id, "error": "advertises this instance's http.advertised_url: give each instance its own"})),
                    None => missing.push(json!({"client_id": member.client_id, "error": "advertises no http.advertised_url"})),
                }
            }
            urls.sort();
            urls.dedup();
            let client = reqwest::Client::builder()
                .timeout(GROUP_QUERY_TIMEOUT)
                .build()
                .map_err(|e| e.to_string());
            let mut asked = tokio::task::JoinSet::new();
            for url in urls {
                let client = client.clone();
                asked.spawn(async move {
                    let answer = match client {
                        Ok(client) => ask_member(&client, &url, wanted).await,
                        Err(e) => Err(format!("cannot make an HTTP client: {e}")),
                    };
                    (url, answer)
                });
            }
            while let Some(joined) = asked.join_next().await {
                match joined {
                    Ok(answer) => answers.push(answer),
                    Err(e) => missing.push(json!({"error": format!("asking a member failed: {e}")})),
                }
            }
        }
        Ok(Err(e)) => missing.push(json!({"error": format!("cannot describe the group: {e:#}")})),
        Err(e) => missing.push(json!({"error": e.to_string()})),
    }
    let (mut runs, mut total, mut instances) = (Vec::new(), 0u64, Vec::new());
    for (url, answer) in answers {
        match answer {
            Ok(answer) => {
                total += answer["runs_total"].as_u64().unwrap_or(0);
                runs.extend(answer["runs"].as_array().cloned().unwrap_or_default());
                instances.push(json!({"url": url, "owned_partitions": answer["owned_partitions"], "runs_total": answer["runs_total"]}));
            }
            Err(error) => missing.push(json!({"url": url, "error": error})),
        }
    }
    sort_runs(&mut runs);
    runs.truncate(RUNS_BY_STATE_LISTED_MAX);
    json!({
        "state": wanted.as_str(),
        "scope": "group",
        "complete": missing.is_empty(),
        "runs": runs,
        "runs_total": total,
        "runs_listed_max": RUNS_BY_STATE_LISTED_MAX,
        "instances": instances,
        "not_answered": missing,
    })
}

/// One other member's `/runs?state=` answer.
async fn ask_member(client: &reqwest::Client, url: &str, wanted: RunsWanted) -> Result<Value, String> {
    let response = client
        .get(format!("{url}/runs?state={}", wanted.as_str()))
        .send()
        .await
        .map_err(|e| format!("cannot ask it: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("it answered {}", response.status()));
    }
    response.json::<Value>().await.map_err(|e| format!("its answer is not JSON: {e}"))
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
                if let Some(blocked) = state.blocked.as_deref().filter(|_| kind == FindingKind::AckMissing) {
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

/// The query parameter a redirected query carries (the redirecting instance's id): an instance
/// answers such a query itself, so two instances with different views of the group never send
/// it back and forth.
const REDIRECTED_FROM: &str = "redirected_from";

/// The answer when this instance has nothing of `world_id`: a redirect (307) to the member that
/// owns the world's partition when that is another instance advertising its address; 503 while
/// no member owns it or its task is starting here; otherwise 404 (this instance owns the
/// partition, so the world has no live run; or the owner advertises no address).
fn not_here(shared: &Shared, world_id: &str, what: String, uri: &Uri) -> Response {
    let owned = shared.partitions();
    let partitions = world_partitions(world_id, shared.input_partitions);
    let mut body = json!({
        "error": format!("{what} is not in the state of this instance"),
        "owned_partitions": owned,
        "world_partitions": partitions,
    });
    let redirected = query_param(uri.query(), REDIRECTED_FROM).is_some();
    let elsewhere: Vec<i32> = partitions.iter().copied().filter(|p| !owned.contains(p)).collect();
    if redirected || elsewhere.is_empty() {
        body["hint"] = json!(
            "this instance owns the world's partition (or was sent here by the instance that \
             found it the owner): the world has no live run, or its runs passed retention"
        );
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    }
    let owners = match shared.owners.owners(&shared.settings) {
        Ok(owners) => owners,
        Err(e) => {
            body["hint"] = json!(format!("cannot tell which member owns the world's partition: {e:#}; retry"));
            return (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "1")], Json(body)).into_response();
        }
    };
    let own_url = shared.settings.http.advertised();
    let mut moving = false;
    let mut found = Vec::new();
    for p in elsewhere {
        match owners.owner_of(p) {
            Some(member) => match member.url.as_deref() {
                Some(url) if url != own_url => {
                    let location = format!("{url}{}", redirected_query(uri, &shared.settings.runtime.instance_id()));
                    body["owner"] = json!({"partition": p, "client_id": member.client_id, "url": url});
                    return (StatusCode::TEMPORARY_REDIRECT, [("location", location)], Json(body)).into_response();
                }
                Some(_) => moving = true,
                None => found.push(json!({"partition": p, "client_id": member.client_id, "url": null})),
            },
            None => moving = true,
        }
    }
    if moving {
        body["hint"] = json!(format!(
            "the world's partition is moving (group {}): no member has it yet, or its task is starting here; retry",
            owners.state
        ));
        return (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "1")], Json(body)).into_response();
    }
    body["owners"] = json!(found);
    body["hint"] = json!("the owner advertises no http.advertised_url: ask it directly");
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// The partitions a world's key may be on: murmur2's (the upstream producers'), then CRC-32's
/// (librdkafka's default) when it differs (semantics §1 "Partitioning").
fn world_partitions(world_id: &str, input_partitions: i32) -> Vec<i32> {
    let mut partitions: Vec<i32> = Partitioner::ALL
        .iter()
        .map(|p| p.partition(world_id.as_bytes(), input_partitions))
        .collect();
    partitions.dedup();
    partitions
}

/// `uri`'s path and query with `redirected_from=<instance id>` added.
fn redirected_query(uri: &Uri, instance_id: &str) -> String {
    let from: String = instance_id
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    match uri.query() {
        Some(query) if !query.is_empty() => format!("{}?{query}&{REDIRECTED_FROM}={from}", uri.path()),
        _ => format!("{}?{REDIRECTED_FROM}={from}", uri.path()),
    }
}

async fn world(State(shared): State<Arc<Shared>>, Path(world_id): Path<String>, uri: Uri) -> Response {
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
            return not_here(&shared, &world_id, format!("world {world_id:?}"), &uri);
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
    uri: Uri,
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
            None => not_here(&shared, &world_id, format!("run {world_id:?}/{run_id:?}"), &uri),
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

    #[test]
    fn a_redirect_keeps_the_query_and_says_where_from() {
        let check = |uri: &str, instance: &str, expected: &str| {
            let uri: Uri = uri.parse().unwrap();
            assert_eq!(redirected_query(&uri, instance), expected);
        };
        check("/runs/w1/r1", "ackwatch-1", "/runs/w1/r1?redirected_from=ackwatch-1");
        check("/runs/w%201?x=1", "pod 2", "/runs/w%201?x=1&redirected_from=pod%202");
        check("/runs/w1?", "a", "/runs/w1?redirected_from=a");
    }

    #[test]
    fn a_world_may_be_on_its_murmur2_or_its_crc32_partition() {
        for world in ["w1", "world-7", "eu.prod"] {
            let partitions = world_partitions(world, 12);
            let murmur2 = Partitioner::Murmur2.partition(world.as_bytes(), 12);
            let crc32 = Partitioner::Crc32.partition(world.as_bytes(), 12);
            assert_eq!(partitions[0], murmur2);
            assert_eq!(partitions.len(), if murmur2 == crc32 { 1 } else { 2 });
            assert!(partitions.contains(&crc32));
        }
        assert_eq!(world_partitions("w1", 1), [0]);
    }
}
