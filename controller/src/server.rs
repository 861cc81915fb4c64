//! The running controller: the analysis loop (scrape → window → judge → step), durable state,
//! config publication to the filters, webhooks, and the HTTP API.
//!
//! Every change of state goes through one mutex, is saved before it becomes visible, and the
//! filter configuration served at `/filter-config` is derived from the saved state, so a
//! restarted controller serves exactly what it served before.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::Mutex;

use crate::judge::{judge, Outcome};
use crate::machine::{Effect, Input, Phase, RolloutState};
use crate::sources;
use crate::spec::RolloutSpec;
use crate::stats::window::Windower;
use crate::store::{StateStore, StoreError};

pub struct ServeOptions {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    /// Bearer token for mutating calls; `None` refuses every mutation.
    pub token: Option<String>,
}

struct Controller {
    spec: RolloutSpec,
    state: RolloutState,
    store: StateStore,
    verdict_counts: BTreeMap<&'static str, u64>,
    source_errors: BTreeMap<String, u64>,
    breaker: BreakerSeen,
    /// The fallback chain's tiers as the analysis windows saw them: counters summed since
    /// this process started, breaker gauges as at the end of the last window.
    tiers: BTreeMap<String, crate::stats::TierStats>,
    /// The served filter configuration and the config version it was built for: every
    /// proxy fetches the same bytes after a change, so they are built once per change.
    published: Option<(String, String)>,
    /// Weights served over time, for ratings that arrive late.
    weights: crate::feedback::WeightHistory,
    /// Ratings not yet in an analysis window.
    feedback: crate::feedback::PendingFeedback,
    /// Ratings received, by version and rating (for /metrics).
    feedback_total: BTreeMap<(&'static str, &'static str), u64>,
    /// The last judged window's checks (for /metrics).
    last_checks: Vec<crate::judge::CheckResult>,
    /// The global quota sentinel (`quota` in the spec); not saved: a restarted controller
    /// measures again.
    quota: crate::machine::quota::Sentinel,
    /// Proxies read in the last round (for `quota.per_user`, divided among them).
    proxies: usize,
}

/// The filters' circuit breakers as the analysis windows saw them (since this process
/// started).
#[derive(Debug, Default, Clone, Copy)]
struct BreakerSeen {
    trips: u64,
    diverted: u64,
    /// Envoys whose breaker was open at the end of the last window.
    open: u64,
}

type Shared = Arc<Mutex<Controller>>;

#[derive(Clone)]
struct AppState {
    controller: Shared,
    token: Option<Arc<String>>,
    http: reqwest::Client,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Controller {
    /// The filter configuration for the current weight, as JSON.
    fn filter_config_json(&mut self) -> Result<String, crate::spec::SpecErrors> {
        let etag = self.etag();
        if let Some((built_for, json)) = &self.published {
            if *built_for == etag {
                return Ok(json.clone());
            }
        }
        let mut config = self
            .spec
            .filter_config(self.state.weight_bp, self.state.in_shadow())?;
        if let Some(per_user) = self.spec.quota.as_ref().and_then(|q| q.per_user.as_ref()) {
            crate::machine::quota::apply_per_user(&mut config, per_user, self.proxies);
        }
        crate::machine::quota::apply_throttle(&mut config, self.quota.throttled);
        let json = config.to_json();
        self.published = Some((etag, json.clone()));
        Ok(json)
    }

    /// The served configuration's ETag: the config version, plus the proxy count per-user
    /// allowances are divided by and the throttle (both change the configuration without a
    /// new rollout state).
    fn etag(&self) -> String {
        let mut etag = format!("\"{}", self.state.config_version);
        if self
            .spec
            .quota
            .as_ref()
            .is_some_and(|q| q.per_user.is_some())
        {
            etag.push_str(&format!("-p{}", self.proxies));
        }
        if self.quota.throttled {
            etag.push_str("-throttled");
        }
        etag.push('"');
        etag
    }

    /// Carries out a transition: save first, then notify (publication is the saved state).
    fn apply(
        &mut self,
        next: RolloutState,
        effects: Vec<Effect>,
        http: &reqwest::Client,
    ) -> Result<(), StoreError> {
        self.store.save(&next)?;
        self.state = next;
        for effect in effects {
            match effect {
                Effect::PublishWeight(bp) => {
                    self.weights.record(now_ms(), bp);
                    eprintln!(
                        "canaryctl: {}: weight {} (config version {})",
                        self.spec.name,
                        crate::machine::pct(bp),
                        self.state.config_version
                    );
                }
                Effect::Notify(event) => {
                    eprintln!("canaryctl: {}: {}", self.spec.name, event.message);
                    for hook in &self.spec.webhooks {
                        let body = json!({
                            "rollout": self.spec.name,
                            "event": event.kind,
                            "message": event.message,
                            "at_ms": event.at_ms,
                            "weight_bp": self.state.weight_bp,
                            "stage": self.state.stage,
                            "phase": self.state.phase,
                        });
                        let request = http.post(&hook.url).json(&body);
                        let url = hook.url.clone();
                        tokio::spawn(async move {
                            if let Err(e) = request.send().await {
                                eprintln!("canaryctl: webhook {url}: {e}");
                            }
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Runs the controller until the process is stopped.
pub async fn serve(spec: RolloutSpec, options: ServeOptions) -> anyhow::Result<()> {
    let store = StateStore::open(&options.state_dir, &spec.name)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let (state, start_effects) = match store.load()? {
        Some(state) => (state, None),
        None => {
            let (state, effects) = RolloutState::start(&spec, now_ms());
            (state, Some(effects))
        }
    };
    let mut c = Controller {
        spec: spec.clone(),
        state: state.clone(),
        store,
        verdict_counts: BTreeMap::new(),
        source_errors: BTreeMap::new(),
        breaker: BreakerSeen::default(),
        tiers: BTreeMap::new(),
        published: None,
        weights: crate::feedback::WeightHistory::default(),
        feedback: crate::feedback::PendingFeedback::default(),
        feedback_total: BTreeMap::new(),
        last_checks: Vec::new(),
        quota: crate::machine::quota::Sentinel::default(),
        proxies: spec.sources.envoy_admin.len().max(1),
    };
    c.weights
        .record(c.state.stage_started_ms, c.state.weight_bp);
    let resumed = start_effects.is_none();
    if let Some(effects) = start_effects {
        c.apply(state, effects, &http)?;
    }
    eprintln!(
        "canaryctl: {} {} at stage {} weight {} (state {})",
        spec.name,
        if resumed { "resumed" } else { "started" },
        c.state.stage + 1,
        crate::machine::pct(c.state.weight_bp),
        c.store.path().display()
    );
    let controller = Arc::new(Mutex::new(c));
    let app = AppState {
        controller: controller.clone(),
        token: options.token.map(Arc::new),
        http: http.clone(),
    };
    tokio::spawn(analysis_loop(controller, spec, http));
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/filter-config", get(filter_config))
        .route("/rollout/{command}", post(command))
        .route("/feedback", post(feedback))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(options.listen).await?;
    eprintln!("canaryctl: listening on http://{}", listener.local_addr()?);
    axum::serve(listener, router).await?;
    Ok(())
}

async fn analysis_loop(controller: Shared, spec: RolloutSpec, http: reqwest::Client) {
    let source = sources::from_spec(&spec.sources);
    let mut windower = Windower::default();
    let mut last_close = std::time::Instant::now();
    let mut ticker = tokio::time::interval(spec.analysis.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let readings = source.read(&http, &spec.name).await;
        let mut c = controller.lock().await;
        let readable = readings.iter().filter(|r| r.result.is_ok()).count();
        if readable > 0 {
            c.proxies = readable;
        }
        for r in &readings {
            if r.result.is_err() {
                *c.source_errors.entry(r.source.clone()).or_default() += 1;
            }
        }
        let mut window = windower.close(readings);
        let window_ms = last_close.elapsed().as_millis() as u64;
        last_close = std::time::Instant::now();
        for note in &window.notes {
            eprintln!("canaryctl: {note}");
        }
        if window.sources_counted == 0 {
            // Nothing measured: no verdict at all rather than an empty one.
            continue;
        }
        if let Some(quota) = &spec.quota {
            let s = &window.stats;
            let tokens = [&s.stable.llm, &s.canary.llm]
                .iter()
                .map(|l| l.input_tokens + l.output_tokens)
                .sum();
            if let Some(change) = c.quota.observe(quota, tokens, window_ms, now_ms()) {
                eprintln!(
                    "canaryctl: {}: quota sentinel: {change:?} (quota {} tokens/min)",
                    spec.name, quota.tokens_per_minute
                );
            }
        }
        let stats = &mut window.stats;
        c.feedback
            .drain_into(&mut stats.canary.llm, &mut stats.stable.llm);
        let canary = &window.stats.canary;
        c.breaker.trips += canary.breaker_trips;
        c.breaker.diverted += canary.breaker_diverted;
        c.breaker.open = canary.breaker_open;
        for (name, t) in &window.stats.tiers {
            let seen = c.tiers.entry(name.clone()).or_default();
            seen.requests += t.requests;
            seen.rq_5xx += t.rq_5xx;
            seen.trips += t.trips;
            (seen.open, seen.half_open) = (t.open, t.half_open);
        }
        let verdict = judge(&window.stats, &spec.analysis, &spec.checks);
        c.last_checks = verdict.checks.clone();
        *c.verdict_counts
            .entry(match verdict.outcome {
                Outcome::Pass => "pass",
                Outcome::Fail => "fail",
                Outcome::Inconclusive => "inconclusive",
            })
            .or_default() += 1;
        let input = match spec.shadow {
            Some(_) => Input::ShadowWindow(verdict, window.stats.shadow.clone()),
            None => Input::Analysis(verdict),
        };
        let step = c.state.step(&spec, input, now_ms());
        if let Ok((next, effects)) = step {
            if let Err(e) = c.apply(next, effects, &http) {
                eprintln!("canaryctl: could not save state, transition dropped: {e}");
            }
        }
    }
}

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

async fn status(State(app): State<AppState>) -> Json<serde_json::Value> {
    let c = app.controller.lock().await;
    Json(status_json(&c))
}

async fn filter_config(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let mut c = app.controller.lock().await;
    let etag = c.etag();
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == etag)
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    match c.filter_config_json() {
        Ok(json) => (
            StatusCode::OK,
            [
                (header::ETAG, etag),
                (header::CONTENT_TYPE, "application/json".to_string()),
            ],
            json,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn metrics(State(app): State<AppState>) -> Response {
    let c = app.controller.lock().await;
    let r = &c.spec.name;
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, labels: String, value: f64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{labels}}} {value}\n"
        ));
    };
    gauge(
        "canary_controller_weight_bp",
        "Canary weight served to the filters, in basis points.",
        format!("rollout=\"{r}\""),
        f64::from(c.state.weight_bp),
    );
    gauge(
        "canary_controller_stage",
        "Current stage, 1-based.",
        format!("rollout=\"{r}\""),
        (c.state.stage + 1) as f64,
    );
    gauge(
        "canary_controller_config_version",
        "Version of the served filter configuration.",
        format!("rollout=\"{r}\""),
        c.state.config_version as f64,
    );
    if let Some(q) = &c.spec.quota {
        gauge(
            "canary_controller_quota_tokens_per_minute",
            "Tokens per minute over every proxy in the last window.",
            format!("rollout=\"{r}\""),
            c.quota.last_tokens_per_minute.unwrap_or(0.0),
        );
        gauge(
            "canary_controller_quota_limit_tokens_per_minute",
            "The configured quota (quota.tokens_per_minute).",
            format!("rollout=\"{r}\""),
            q.tokens_per_minute as f64,
        );
        gauge(
            "canary_controller_quota_throttled",
            "1 while the quota sentinel throttles non-priority requests.",
            format!("rollout=\"{r}\""),
            f64::from(u8::from(c.quota.throttled)),
        );
    }
    gauge(
        "canary_controller_breaker_open",
        "Envoys whose circuit breaker was open at the end of the last analysis window.",
        format!("rollout=\"{r}\""),
        c.breaker.open as f64,
    );
    if let Some(s) = &c.state.shadow {
        gauge(
            "canary_controller_shadow_active",
            "1 while the rollout is in its shadow phase (weight 0, copies to the candidate).",
            format!("rollout=\"{r}\""),
            f64::from(u8::from(s.active)),
        );
        if let Some(a) = s.counts.agreement() {
            gauge(
                "canary_controller_shadow_agreement_ratio",
                "Share of compared shadow answers that agree with stable's, over the phase.",
                format!("rollout=\"{r}\""),
                a,
            );
        }
        gauge(
            "canary_controller_shadow_compared",
            "Shadow answers compared over the phase.",
            format!("rollout=\"{r}\""),
            s.counts.compared as f64,
        );
        gauge(
            "canary_controller_shadow_gate_failures",
            "Consecutive failed shadow gate decisions.",
            format!("rollout=\"{r}\""),
            f64::from(s.gate_failures),
        );
    }
    for (name, help, value) in [
        (
            "canary_controller_breaker_trips_total",
            "Circuit breaker trips seen in analysis windows.",
            c.breaker.trips,
        ),
        (
            "canary_controller_breaker_diverted_total",
            "Canary requests the circuit breakers sent to stable, seen in analysis windows.",
            c.breaker.diverted,
        ),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{rollout=\"{r}\"}} {value}\n"
        ));
    }
    type TierValue = fn(&crate::stats::TierStats) -> u64;
    let tier_series: [(&str, &str, &str, TierValue); 4] = [
        ("canary_controller_tier_breaker_open", "gauge", "Envoys whose breaker of this fallback tier was open at the end of the last analysis window.", |t| t.open),
        ("canary_controller_tier_breaker_half_open", "gauge", "Envoys whose breaker of this fallback tier was half-open at the end of the last analysis window.", |t| t.half_open),
        ("canary_controller_tier_breaker_trips_total", "counter", "Trips of this fallback tier's breakers seen in analysis windows.", |t| t.trips),
        ("canary_controller_tier_requests_total", "counter", "Requests this fallback tier served, seen in analysis windows.", |t| t.requests),
    ];
    for (name, kind, help, value) in tier_series {
        if c.tiers.is_empty() {
            break;
        }
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (tier, t) in &c.tiers {
            out.push_str(&format!(
                "{name}{{rollout=\"{r}\",tier=\"{tier}\"}} {}\n",
                value(t)
            ));
        }
    }
    out.push_str("# HELP canary_controller_phase Current phase (1 for the active one).\n# TYPE canary_controller_phase gauge\n");
    for phase in Phase::ALL {
        out.push_str(&format!(
            "canary_controller_phase{{rollout=\"{r}\",phase=\"{}\"}} {}\n",
            phase.as_str(),
            u8::from(phase == c.state.phase)
        ));
    }
    out.push_str("# HELP canary_controller_verdicts_total Analyses by outcome.\n# TYPE canary_controller_verdicts_total counter\n");
    for outcome in ["pass", "fail", "inconclusive"] {
        out.push_str(&format!(
            "canary_controller_verdicts_total{{rollout=\"{r}\",outcome=\"{outcome}\"}} {}\n",
            c.verdict_counts.get(outcome).copied().unwrap_or(0)
        ));
    }
    out.push_str("# HELP canary_controller_stats_source_errors_total Failed scrapes by source.\n# TYPE canary_controller_stats_source_errors_total counter\n");
    let mut sources: std::collections::BTreeSet<&str> = c
        .spec
        .sources
        .envoy_admin
        .iter()
        .map(String::as_str)
        .collect();
    if c.spec.sources.prometheus.is_some() {
        sources.insert("prometheus");
    }
    sources.extend(c.source_errors.keys().map(String::as_str));
    for source in sources {
        out.push_str(&format!(
            "canary_controller_stats_source_errors_total{{rollout=\"{r}\",source=\"{source}\"}} {}\n",
            c.source_errors.get(source).copied().unwrap_or(0)
        ));
    }
    // Per check of the last judged window: each version's value and its samples.
    type CheckSeries = fn(&crate::judge::CheckResult) -> [Option<String>; 2];
    let check_series: [(&str, &str, CheckSeries); 2] = [
        (
            "canary_controller_check_value",
            "Each version's value in the last judged window, per check (error_rate, latency_p99, cost_per_response in nano-USD, refusal_rate, quality_<signal>, task_success_rate, thumbs_down_rate, ttft_p95 in ms, eval_score).",
            |check| [check.canary, check.stable].map(|v| v.map(|v| v.to_string())),
        ),
        (
            "canary_controller_check_samples",
            "Samples behind each version's value in the last judged window, per check.",
            |check| [check.canary_n, check.stable_n].map(|n| n.map(|n| n.to_string())),
        ),
    ];
    for (name, help, values) in check_series {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for check in &c.last_checks {
            for (version, value) in ["canary", "stable"].into_iter().zip(values(check)) {
                if let Some(value) = value {
                    out.push_str(&format!(
                        "{name}{{rollout=\"{r}\",check=\"{}\",version=\"{version}\"}} {value}\n",
                        check.check
                    ));
                }
            }
        }
    }
    out.push_str("# HELP canary_controller_feedback_total User ratings received at POST /feedback, by the version they were attributed to.\n# TYPE canary_controller_feedback_total counter\n");
    for version in ["stable", "canary"] {
        for rating in ["up", "down"] {
            out.push_str(&format!(
                "canary_controller_feedback_total{{rollout=\"{r}\",version=\"{version}\",rating=\"{rating}\"}} {}\n",
                c.feedback_total.get(&(version, rating)).copied().unwrap_or(0)
            ));
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// `POST /feedback`: a user's thumbs up or down, counted for the version that user is on.
async fn feedback(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !authorized(&app, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": "a valid bearer token is required"})),
        )
            .into_response();
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

fn authorized(app: &AppState, headers: &HeaderMap) -> bool {
    let Some(token) = &app.token else {
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

async fn command(
    State(app): State<AppState>,
    axum::extract::Path(command): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&app, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": "a valid bearer token is required"})),
        )
            .into_response();
    }
    let input = match command.as_str() {
        "promote" => Input::Promote,
        "pause" => Input::Pause,
        "resume" => Input::Resume,
        "abort" | "rollback" => Input::Abort,
        other => {
            return (
                StatusCode::NOT_FOUND,
                Json(json!({"error": format!("unknown command {other:?}: promote, pause, resume, abort or rollback")})),
            )
                .into_response()
        }
    };
    let mut c = app.controller.lock().await;
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
