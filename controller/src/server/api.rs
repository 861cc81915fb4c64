//! The HTTP API: `/status`, `/rollouts` (one line per rollout), `/rollouts/{name}` (one
//! rollout's status), `/rollouts/{name}/history` (its current run and the ended ones),
//! `/filter-config` (every rollout's, conditional on its ETag), the operator's
//! `/rollouts/{name}/{command}` and `POST /feedback`, the mutating calls behind bearer
//! tokens: the operator's for commands, the feedback token (which can do nothing else) for
//! ratings. `/rollout/{command}`, `/history` and `/status` without a name are for a
//! controller of one rollout; `?rollout=NAME` names one there (unknown names are refused, so
//! that `finalize NAME` never lands on another rollout).

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{now_ms, AppState, Controller, Shared};
use crate::machine::Input;

fn status_json(c: &Controller) -> serde_json::Value {
    let feedback: serde_json::Map<_, _> = ["canary", "stable"]
        .map(|version| {
            let count = |rating| {
                c.feedback_total
                    .get(&(version, rating))
                    .copied()
                    .unwrap_or(0)
            };
            (
                version.to_string(),
                json!({"up": count("up"), "down": count("down")}),
            )
        })
        .into_iter()
        .collect();
    let now = now_ms();
    json!({
        "rollout": c.spec.name,
        "release": c.state.release,
        "stable_release": c.state.stable_release,
        "run": c.state.run,
        "phase": c.state.phase,
        "stage": c.state.stage + 1,
        "stages": c.spec.stages.len(),
        "weight_bp": c.state.weight_bp,
        "shadow": c.state.shadow.as_ref().map(|s| json!({
            "active": s.active,
            "agreement_pct": s.agreement_pct(),
            "min_agreement_pct": c.spec.shadow.as_ref().map(|g| g.min_agreement_pct),
            "gate": s.gate,
            "gate_failures": s.gate_failures,
            "counts": s.counts,
        })),
        "blue_green": crate::machine::blue_green::status_json(&c.spec, &c.state, now),
        "time_in_stage_s": now.saturating_sub(c.state.stage_started_ms) as f64 / 1000.0,
        "stage_requests": {"canary": c.state.stage_canary_requests, "stable": c.state.stage_stable_requests},
        "consecutive_failures": c.state.consecutive_failures,
        "analyses": c.state.analyses,
        "failure_limit": c.spec.analysis.failure_limit,
        "config_version": c.state.config_version,
        "circuit_breaker": {
            "open_envoys": c.breaker.open,
            "trips": c.breaker.trips,
            "diverted_requests": c.breaker.diverted,
        },
        "fallback": c.tiers.iter().map(|(name, t)| (name.clone(), json!({
            // The filter's own response has no breaker.
            "state": (name != canary_contract::fallback::RESPONSE_TIER).then(|| t.state()),
            "open_envoys": t.open,
            "half_open_envoys": t.half_open,
            "trips": t.trips,
            "requests": t.requests,
            "rq_5xx": t.rq_5xx,
        }))).collect::<serde_json::Map<_, _>>(),
        "stage_totals": c.state.stages,
        "verdicts": c.state.verdicts,
        "timeline": c.state.timeline,
        "quota": c.spec.quota.as_ref().map(|q| json!({
            "tokens_per_minute": q.tokens_per_minute,
            "activate_share": q.activate_share,
            "clear_share": q.clear_share,
            "per_user": q.per_user,
            "proxies": c.proxies,
            "sentinel": c.quota,
        })),
        "feedback": feedback,
    })
}

/// A rollout's status, with the refusal of its spec file's current version if there is one.
async fn status_of(app: &AppState, name: &str, controller: &Shared) -> serde_json::Value {
    let refusal = app.fleet.lock().await.refusal_of(name).cloned();
    let mut status = status_json(&*controller.lock().await);
    status["spec_refused"] = json!(refusal);
    status
}

/// `GET /status`: the one rollout's status; with several, every rollout's, and the refused
/// spec files.
pub(super) async fn status(State(app): State<AppState>) -> Json<serde_json::Value> {
    let (controllers, refused) = snapshot(&app).await;
    if let [(name, controller)] = controllers.as_slice() {
        return Json(status_of(&app, name, controller).await);
    }
    let mut rollouts = Vec::new();
    for (name, controller) in &controllers {
        rollouts.push(status_of(&app, name, controller).await);
    }
    Json(json!({"rollouts": rollouts, "refused": refused}))
}

/// The running rollouts' controllers and the refused spec files, read under the fleet's
/// lock and returned without it.
async fn snapshot(app: &AppState) -> (Vec<(String, Shared)>, Vec<crate::server::Refusal>) {
    let fleet = app.fleet.lock().await;
    let controllers = fleet
        .controllers()
        .map(|(n, c)| (n.clone(), c.clone()))
        .collect();
    (controllers, fleet.refused().cloned().collect())
}

/// `GET /rollouts`: one line per rollout, like `kubectl argo rollouts list`.
pub(super) async fn list(State(app): State<AppState>) -> Json<serde_json::Value> {
    let (controllers, refused) = snapshot(&app).await;
    let mut rollouts = Vec::new();
    for (_, controller) in controllers {
        let c = controller.lock().await;
        rollouts.push(json!({
            "rollout": c.spec.name,
            "phase": c.state.phase,
            "stage": c.state.stage + 1,
            "stages": c.spec.stages.len(),
            "weight_bp": c.state.weight_bp,
            "time_in_stage_s": now_ms().saturating_sub(c.state.stage_started_ms) as f64 / 1000.0,
            "analyses": c.state.analyses,
            "last_outcome": c.state.verdicts.back().map(|v| v.verdict.outcome),
        }));
    }
    Json(json!({"rollouts": rollouts, "refused": refused}))
}

/// Why a call names no running rollout: its status code and error.
struct NotFound(StatusCode, String);

impl IntoResponse for NotFound {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

/// The rollout `name` names, or (without a name) the controller's only one.
async fn find(app: &AppState, name: Option<&str>) -> Result<(String, Shared), NotFound> {
    let fleet = app.fleet.lock().await;
    let not_found = |error: String| Err(NotFound(StatusCode::NOT_FOUND, error));
    match name {
        Some(name) => match fleet.controller(name) {
            Some(c) => Ok((name.to_string(), c)),
            None => match fleet.refused().find(|r| r.rollout.as_deref() == Some(name)) {
                Some(r) => not_found(format!(
                    "rollout {name:?} is not running: its spec {} was refused: {}",
                    r.file, r.error
                )),
                None => not_found(format!("no rollout {name:?}")),
            },
        },
        None => {
            let mut all = fleet.controllers();
            match (all.next(), all.next()) {
                (Some((name, c)), None) => Ok((name.clone(), c.clone())),
                (None, _) => not_found("no rollout is running".into()),
                (Some(_), Some(_)) => Err(NotFound(
                    StatusCode::CONFLICT,
                    "this controller runs several rollouts: name one (/rollouts/{name}/...)".into(),
                )),
            }
        }
    }
}

/// `GET /rollouts/{name}`.
pub(super) async fn rollout_status(
    State(app): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    match find(&app, Some(&name)).await {
        Ok((name, c)) => Json(status_of(&app, &name, &c).await).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Reads the published snapshot, never the controller's mutex: a poll is answered while an
/// analysis (or anything else) holds it.
pub(super) async fn filter_config(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let served = app.served.borrow().clone();
    if served.etag.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no configuration published yet\n",
        )
            .into_response();
    }
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        // `If-None-Match` may list several tags (RFC 9110); the filter sends the one it holds.
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == served.etag))
    {
        return (
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, served.etag.clone())],
        )
            .into_response();
    }
    (
        StatusCode::OK,
        [
            (header::ETAG, served.etag.clone()),
            (header::CONTENT_TYPE, "application/json".to_string()),
        ],
        served.json.clone(),
    )
        .into_response()
}

/// The answer to a request without the bearer token `which` names.
fn unauthorized(which: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(json!({"error": format!("a valid bearer token is required: {which}")})),
    )
        .into_response()
}

/// `POST /feedback`: a user's thumbs up or down, counted for the version that user is on.
pub(super) async fn feedback(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !authorized(app.feedback_token.as_deref(), &headers) {
        return unauthorized("the feedback token");
    }
    let bad = |e: crate::feedback::FeedbackError| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": e.to_string(), "field": e.field})),
        )
            .into_response()
    };
    let rating = match crate::feedback::parse(&body) {
        Ok(f) => f,
        Err(e) => return bad(e),
    };
    let controller = match find(&app, rating.rollout.as_deref()).await {
        Ok((_, c)) => c,
        Err(_) if rating.rollout.is_none() => {
            return bad(crate::feedback::FeedbackError {
                field: "rollout".into(),
                reason: "required: this controller runs several rollouts".into(),
            })
        }
        Err(e) => return e.into_response(),
    };
    let mut c = controller.lock().await;
    let attribution =
        match crate::feedback::attribute(&c.spec, &c.weights, c.state.weight_bp, &rating) {
            Ok(a) => a,
            Err(e) => return bad(e),
        };
    c.feedback.add(attribution.version, rating.rating);
    let key = (
        attribution.version.as_str(),
        match rating.rating {
            crate::feedback::Rating::Up => "up",
            crate::feedback::Rating::Down => "down",
        },
    );
    *c.feedback_total.entry(key).or_default() += 1;
    (
        StatusCode::OK,
        Json(json!({
            "rollout": c.spec.name,
            "version": attribution.version.as_str(),
            "assignment": format!("{:?}", attribution.assignment).to_lowercase(),
            "weight_bp": attribution.weight_bp,
            "rating": rating.rating,
        })),
    )
        .into_response()
}

fn authorized(token: Option<&String>, headers: &HeaderMap) -> bool {
    let Some(token) = token else {
        return false;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `?rollout=NAME`: which rollout a call without one in its path means.
#[derive(serde::Deserialize)]
pub(super) struct Addressed {
    rollout: Option<String>,
}

/// `GET /history` (`?rollout=NAME`, or the only rollout).
pub(super) async fn history(
    State(app): State<AppState>,
    Query(addressed): Query<Addressed>,
) -> Response {
    history_of(&app, addressed.rollout.as_deref()).await
}

/// `GET /rollouts/{name}/history`.
pub(super) async fn rollout_history(
    State(app): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    history_of(&app, Some(&name)).await
}

/// The rollout's current run and the ended ones, newest first.
async fn history_of(app: &AppState, name: Option<&str>) -> Response {
    let controller = match find(app, name).await {
        Ok((_, c)) => c,
        Err(e) => return e.into_response(),
    };
    let c = controller.lock().await;
    match c.store.load_history() {
        Ok(history) => {
            Json(crate::machine::history::HistoryView::of(&c.state, &history)).into_response()
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

/// `POST /rollout/{command}`: a command to the controller's only rollout (or the one
/// `?rollout=NAME` names).
pub(super) async fn command(
    State(app): State<AppState>,
    axum::extract::Path(command): axum::extract::Path<String>,
    Query(addressed): Query<Addressed>,
    headers: HeaderMap,
) -> Response {
    run_command(app, addressed.rollout, command, headers).await
}

/// `POST /rollouts/{name}/{command}`.
pub(super) async fn rollout_command(
    State(app): State<AppState>,
    axum::extract::Path((name, command)): axum::extract::Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    run_command(app, Some(name), command, headers).await
}

async fn run_command(
    app: AppState,
    name: Option<String>,
    command: String,
    headers: HeaderMap,
) -> Response {
    if !authorized(app.operator_token.as_deref(), &headers) {
        return unauthorized("the operator token");
    }
    let input = match command.as_str() {
        "promote" => Input::Promote,
        "pause" => Input::Pause,
        "resume" => Input::Resume,
        "abort" | "rollback" => Input::Abort,
        "retry" => Input::Retry,
        "finalize" => Input::Finalize,
        other => {
            return (
                StatusCode::NOT_FOUND,
                Json(json!({"error": format!("unknown command {other:?}: promote, pause, resume, abort, rollback, retry or finalize")})),
            )
                .into_response()
        }
    };
    let controller = match find(&app, name.as_deref()).await {
        Ok((_, c)) => c,
        Err(e) => return e.into_response(),
    };
    let mut c = controller.lock().await;
    let spec = c.spec.clone();
    match c.state.step(&spec, input, now_ms()) {
        Ok((next, effects)) => match c.apply(next, effects, &app.http) {
            Ok(()) => (StatusCode::OK, Json(status_json(&c))).into_response(),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": format!("state not saved, nothing changed: {e}")})),
            )
                .into_response(),
        },
        Err(refused) => (
            StatusCode::CONFLICT,
            Json(json!({"error": refused.to_string()})),
        )
            .into_response(),
    }
}
