//! The HTTP API: `/status`, `/history` (the ended runs), `/filter-config` (conditional on its
//! ETag), the operator's `/rollout/{command}` and `POST /feedback`, the mutating calls behind
//! bearer tokens: the operator's for commands, the feedback token (which can do nothing else)
//! for ratings. `?rollout=NAME` on a command or `/history` is refused unless NAME is this
//! controller's rollout (so that `finalize NAME` never lands on another rollout).

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{now_ms, AppState, Controller};
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

pub(super) async fn status(State(app): State<AppState>) -> Json<serde_json::Value> {
    let c = app.controller.lock().await;
    Json(status_json(&c))
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
    let mut c = app.controller.lock().await;
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

/// `?rollout=NAME`: which rollout a call means, checked against this controller's.
#[derive(serde::Deserialize)]
pub(super) struct Addressed {
    rollout: Option<String>,
}

/// 404 if the call names another rollout than `c`'s.
fn other_rollout(c: &Controller, addressed: &Addressed) -> Option<Response> {
    let name = addressed.rollout.as_deref()?;
    (name != c.spec.name).then(|| {
        let error = format!(
            "no rollout {name:?} here: this controller runs {:?}",
            c.spec.name
        );
        (StatusCode::NOT_FOUND, Json(json!({"error": error}))).into_response()
    })
}

/// `GET /history`: the current run and the ended ones, newest first.
pub(super) async fn history(
    State(app): State<AppState>,
    Query(addressed): Query<Addressed>,
) -> Response {
    let c = app.controller.lock().await;
    if let Some(refused) = other_rollout(&c, &addressed) {
        return refused;
    }
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

pub(super) async fn command(
    State(app): State<AppState>,
    axum::extract::Path(command): axum::extract::Path<String>,
    Query(addressed): Query<Addressed>,
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
    let mut c = app.controller.lock().await;
    if let Some(refused) = other_rollout(&c, &addressed) {
        return refused;
    }
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
