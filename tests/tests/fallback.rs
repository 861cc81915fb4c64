//! Issue test 7: the fallback chain. The rollout's own service (here: everyone on a canary
//! that fails every request) trips its breaker and its users are served by the `lite` tier
//! with 200s; when `lite` fails too and its breaker opens, they get the filter's own
//! degraded response. After the breakers opened users never see an error while a lower
//! tier can answer — except half-open probes, which the filter marks (`x-canary-probe`).
//! When both recover, half-open probes close the breakers and users are back on canary.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use canary_contract::fallback::{
    tier_stat_name, Fallback, FallbackResponse, Retry, Tier, TierMetric, DEGRADED_HEADER,
};
use canary_contract::stats::ENVOY_WASM_PREFIX;
use canary_contract::{CircuitBreaker, FilterConfig, RolloutConfig};
use canary_e2e::bootstrap::{CanaryBootstrap, FailurePolicy, ListenerSource};
use canary_e2e::client::header_text;
use canary_e2e::controller::{free_port, wait_status, Canaryctl};
use canary_e2e::envoy::{self, Envoy, EnvoyOptions};
use canary_e2e::load;
use canary_e2e::paths;
use canary_e2e::rig::{filter_listener, CanaryRig, RigOptions};
use canary_e2e::upstream::{Upstream, UpstreamSpec, SERVED_BY};
use canary_e2e::wait::eventually;
use futures::stream::{self, StreamExt};
use serde_json::json;

const ROLLOUT: &str = "fb";
const BATCH: usize = 40;
/// A breaker trips only on a window of at least this many requests.
const MIN_REQUESTS: u32 = 20;
const PRIMARY_OPEN_S: u32 = 6;
const LITE_OPEN_S: u32 = 4;
const BODY: &str = r#"{"answer":"rules","source":"deterministic_fallback","degraded":true}"#;

fn breaker(open_s: u32) -> CircuitBreaker {
    CircuitBreaker {
        error_rate_bp: 5_000,
        window_s: 5,
        min_requests: MIN_REQUESTS,
        open_s,
    }
}

fn config() -> FilterConfig {
    // Everyone on canary: the rollout's own service is the failing canary.
    let mut rollout = RolloutConfig::new(ROLLOUT, 10_000);
    rollout.fallback = Some(Fallback {
        circuit_breaker: breaker(PRIMARY_OPEN_S),
        tiers: vec![Tier {
            name: "lite".to_string(),
            route_value: "lite".to_string(),
            circuit_breaker: breaker(LITE_OPEN_S),
            cluster: None,
        }],
        half_open_probes: 3,
        response: FallbackResponse {
            status: 200,
            headers: vec![("x-fallback-source".to_string(), "rules".to_string())],
            body_json: BODY.to_string(),
        },
        retry: None,
    });
    FilterConfig::new(vec![rollout])
}

/// [`config`] with retries of `methods` on `lite` (its cluster named), and a primary breaker
/// that never trips within a test: every failed request meets the retry, not the breaker.
fn retry_config(methods: &[&str]) -> FilterConfig {
    let mut c = config();
    if let Some(f) = c.rollouts[0].fallback.as_mut() {
        f.circuit_breaker.min_requests = 1_000_000;
        f.tiers[0].cluster = Some("lite".to_string());
        f.retry = Some(Retry {
            methods: methods.iter().map(|m| m.to_string()).collect(),
            ..Retry::default()
        });
    }
    c
}

#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    served_by: Option<String>,
    degraded: bool,
    probe: Option<String>,
    source: Option<String>,
    body: String,
}

impl Reply {
    fn is_fallback_response(&self) -> bool {
        self.status == 200
            && self.degraded
            && self.served_by.is_none()
            && self.source.as_deref() == Some("rules")
            && self.body == BODY
    }

    fn served_by(&self, who: &str) -> bool {
        self.status == 200 && self.served_by.as_deref() == Some(who) && !self.degraded
    }
}

async fn send(client: &reqwest::Client, base: &str, user: &str) -> Result<Reply> {
    let response = client
        .get(format!("{base}/"))
        .header("x-user-id", user)
        .header("connection", "close")
        .send()
        .await
        .context("GET through Envoy")?;
    let text = |name: &str| header_text(response.headers(), name);
    let (status, served_by, degraded, probe, source) = (
        response.status().as_u16(),
        text(SERVED_BY),
        text(DEGRADED_HEADER).as_deref() == Some("1"),
        text("x-canary-probe"),
        text("x-fallback-source"),
    );
    let body = response.text().await.unwrap_or_default();
    Ok(Reply {
        status,
        served_by,
        degraded,
        probe,
        source,
        body,
    })
}

/// A batch from 20 users, each request on a fresh connection so both workers get some.
async fn batch(base: &str) -> Result<Vec<Reply>> {
    batch_of(base, BATCH).await
}

/// [`batch`] of `size` requests.
async fn batch_of(base: &str, size: usize) -> Result<Vec<Reply>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let users: Vec<String> = (0..20).map(load::user_id).collect();
    stream::iter(
        users
            .iter()
            .cycle()
            .take(size)
            .map(|u| send(&client, base, u)),
    )
    .buffered(8)
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .collect()
}

async fn stat(envoy: &Envoy, metric: TierMetric, tier: &str) -> Result<u64> {
    let name = format!(
        "{ENVOY_WASM_PREFIX}{}",
        tier_stat_name(metric, ROLLOUT, tier)
    );
    Ok(envoy.counter(&name).await?.unwrap_or(0))
}

/// The rig's bootstrap plus a `lite` cluster and a route sending `x-canary-version: lite`
/// to it, ahead of the stable/canary routes.
fn bootstrap(
    config: &FilterConfig,
    stable: &Upstream,
    canary: &Upstream,
    lite: &Upstream,
) -> Result<serde_json::Value> {
    let listener = filter_listener(config, paths::llm_filter_wasm()?, FailurePolicy::FailReload)?;
    let mut bootstrap = CanaryBootstrap {
        listener: ListenerSource::Static(listener),
        stable: stable.addr(),
        canary: canary.addr(),
        stats_flush_ms: 500,
        extra_clusters: vec![("lite".to_string(), lite.addr())],
    }
    .to_json();
    let routes = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
        .as_array_mut()
        .context("the rig's routes")?;
    routes.insert(
        0,
        json!({
            "match": {"prefix": "/", "headers": [{"name": "x-canary-version", "string_match": {"exact": "lite"}}]},
            "route": {"cluster": "lite"}
        }),
    );
    Ok(bootstrap)
}

/// Every answer after the tiers' breakers opened is a 200 from a tier that can answer or a
/// marked probe.
fn no_unmarked_errors(replies: &[Reply]) -> Result<usize> {
    let errors: Vec<&Reply> = replies.iter().filter(|r| r.status != 200).collect();
    ensure!(
        errors.iter().all(|r| r.probe.is_some()),
        "errors that were not probes: {errors:?}"
    );
    Ok(errors.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chain_serves_lite_then_the_degraded_response_then_recovers() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let stable = Upstream::start(UpstreamSpec::new("stable")).await?;
    let mut canary_spec = UpstreamSpec::new("canary");
    canary_spec.error_rate_bp = 10_000;
    let canary = Upstream::start(canary_spec).await?;
    let lite = Upstream::start(UpstreamSpec::new("lite")).await?;
    let envoy = Envoy::start(
        &bootstrap(&config(), &stable, &canary, &lite)?,
        EnvoyOptions {
            concurrency: 2,
            name: "fallback".to_string(),
            ..Default::default()
        },
    )
    .await?;
    let base = envoy.url().await?;
    // The controller reads this Envoy's stats (the filter does not poll it here): it shows
    // the tiers' breakers.
    let state_dir = tempfile::Builder::new().prefix("canaryctl-fb-").tempdir()?;
    let ctl = Canaryctl::start(
        &format!(
            "name: {ROLLOUT}\nsources: {{envoy_admin: [\"http://{}\"]}}\n\
             analysis: {{interval: 1s, failure_limit: 1000, min_window_requests: 1000000}}\n\
             stages:\n  - {{weight_pct: 50, hold: 1h}}\n  - {{weight_pct: 100}}\n",
            envoy.admin_addr()
        ),
        format!("127.0.0.1:{}", free_port()?).parse()?,
        state_dir.path(),
        "token",
    )
    .await?;
    wait_status(&ctl, "a first analysis", Duration::from_secs(30), |s| {
        s["analyses"].as_u64() >= Some(1)
    })
    .await?;

    // The canary fails every request until the primary tier's breaker trips. Fewer
    // requests than a window needs cannot trip it, however the ticks fall: all reach the
    // canary. The next batch crosses the minimum, and the breaker trips at a tick, perhaps
    // in the middle of it.
    let first = batch_of(&base, MIN_REQUESTS as usize - 1).await?;
    ensure!(
        first
            .iter()
            .all(|r| r.status == 503 && r.served_by.as_deref() == Some("canary")),
        "before the trip: {first:?}"
    );
    batch(&base).await?;
    let tripped = eventually(
        "the primary tier's breaker trips",
        Duration::from_secs(20),
        || async { stat(&envoy, TierMetric::BreakerTrips, "primary").await },
        |&t| t >= 1,
    )
    .await?;
    let tripped_at = Instant::now();
    ensure!(tripped == 1, "one trip per proxy, got {tripped}");

    // Open: the users are served by lite, with 200s, on every worker.
    eventually(
        "every user served by lite",
        Duration::from_secs(5),
        || batch(&base),
        |replies| replies.iter().all(|r| r.served_by("lite")),
    )
    .await?;
    let mut lite_batches = 0;
    while tripped_at.elapsed() < Duration::from_secs(u64::from(PRIMARY_OPEN_S) / 2) {
        let replies = batch(&base).await?;
        ensure!(
            replies
                .iter()
                .all(|r| r.served_by("lite") || r.probe.is_some()),
            "while the primary is open: {replies:?}"
        );
        lite_batches += 1;
    }
    eprintln!("primary open: {lite_batches} batches of {BATCH} all served by lite");

    // Lite fails too: once its breaker opens, the filter answers with the degraded response.
    lite.set_error_rate_bp(10_000);
    eventually(
        "the lite tier's breaker trips",
        Duration::from_secs(20),
        || async {
            batch(&base).await?;
            stat(&envoy, TierMetric::BreakerTrips, "lite").await
        },
        |&t| t >= 1,
    )
    .await?;
    let lite_tripped_at = Instant::now();
    eventually(
        "every user gets the degraded response",
        Duration::from_secs(5),
        || batch(&base),
        |replies| replies.iter().all(Reply::is_fallback_response),
    )
    .await?;
    // Through at least one half-open round of each breaker (both tiers still failing):
    // nothing but the degraded response and marked probes.
    let (mut answers, mut probe_errors, mut degraded) = (0, 0, 0);
    while lite_tripped_at.elapsed() < Duration::from_secs(u64::from(PRIMARY_OPEN_S) + 2) {
        let replies = batch(&base).await?;
        probe_errors += no_unmarked_errors(&replies)?;
        ensure!(
            replies
                .iter()
                .all(|r| r.is_fallback_response() || r.probe.is_some()),
            "while both tiers fail: {replies:?}"
        );
        answers += replies.len();
        degraded += replies.iter().filter(|r| r.is_fallback_response()).count();
    }
    eprintln!(
        "both tiers failing: {answers} answers, {degraded} degraded responses, {probe_errors} failed probes"
    );
    let responses = stat(&envoy, TierMetric::RqTotal, "response").await?;
    ensure!(
        responses as usize >= degraded,
        "{responses} counted, {degraded} seen"
    );

    // The controller shows both breakers tripped and not closed (without traffic, a
    // half-open breaker stays half-open), and the filter's responses.
    let status = wait_status(&ctl, "the tiers in /status", Duration::from_secs(30), |s| {
        let tier = |t: &str| &s["fallback"][t];
        ["primary", "lite"]
            .iter()
            .all(|t| tier(t)["trips"].as_u64() >= Some(1) && tier(t)["state"] != "closed")
            && tier("response")["requests"].as_u64() >= Some(1)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", ctl.log()))?;
    eprintln!("controller: {}", status["fallback"]);
    let metrics = ctl.metrics().await?;
    ensure!(
        metrics.lines().any(|l| l
            .strip_prefix(
                "canary_controller_tier_breaker_trips_total{rollout=\"fb\",tier=\"lite\"} "
            )
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v >= 1.0)),
        "{metrics}"
    );
    let text = ctl.status_text()?;
    ensure!(
        text.lines()
            .any(|l| l.starts_with("fallback tier lite: ") && !l.contains("closed")),
        "canaryctl status: {text}"
    );

    // Both recover: half-open probes close the breakers and users are back on canary.
    canary.set_error_rate_bp(0);
    lite.set_error_rate_bp(0);
    let recovering = Instant::now();
    // (served by, status) of every answer while recovering.
    let seen = std::sync::Mutex::new(Vec::new());
    eventually(
        "users back on canary",
        Duration::from_secs(u64::from(PRIMARY_OPEN_S) + 30),
        || async {
            let replies = batch(&base).await?;
            if let Ok(mut seen) = seen.lock() {
                seen.extend(replies.iter().map(|r| (r.served_by.clone(), r.status)));
            }
            Ok(replies)
        },
        |replies| replies.iter().all(|r| r.served_by("canary")),
    )
    .await?;
    let mut seen = seen.into_inner().unwrap_or_default();
    ensure!(
        seen.iter().all(|(_, status)| *status == 200),
        "errors while recovering: {seen:?}"
    );
    seen.sort();
    seen.dedup();
    eprintln!(
        "back on canary {:?} after both recovered; served meanwhile by {seen:?}",
        recovering.elapsed()
    );
    let state = eventually(
        "primary breaker closed",
        Duration::from_secs(5),
        || async { stat(&envoy, TierMetric::BreakerState, "primary").await },
        |&s| s == 0,
    )
    .await?;
    ensure!(state == 0);
    let lite_served = stat(&envoy, TierMetric::RqTotal, "lite").await?;
    let lite_5xx = stat(&envoy, TierMetric::Rq5xx, "lite").await?;
    eprintln!(
        "stats: lite {lite_served} requests ({lite_5xx} 5xx), response {responses}, primary trips {}",
        stat(&envoy, TierMetric::BreakerTrips, "primary").await?
    );
    ensure!(lite_served > 0 && lite_5xx > 0);
    Ok(())
}

/// One request: its method, body and per-request upstream override.
async fn call(
    base: &str,
    method: &str,
    user: &str,
    fail_lite_too: bool,
) -> Result<(u16, String, String)> {
    let client = reqwest::Client::new();
    let mut request = client
        .request(method.parse()?, format!("{base}/v1/chat/completions"))
        .header("x-user-id", user)
        .body(r#"{"messages":[{"role":"user","content":"hi"}]}"#);
    if fail_lite_too {
        // Goes on the retry too: lite fails it as well.
        request = request.header("x-upstream-status", "502");
    }
    let response = request.send().await?;
    let header = |name: &str| header_text(response.headers(), name).unwrap_or_else(|| "-".into());
    let (served_by, retried) = (header(SERVED_BY), header("x-canary-retried"));
    Ok((response.status().as_u16(), served_by, retried))
}

/// Issue 7's retries: a request the rollout's own service fails (5xx) is sent again to the
/// next tier with a cluster and the user gets that tier's answer instead, with no error —
/// only for the methods the configuration allows (by default the idempotent ones: a `POST`
/// gets its error unless `POST` is listed). When the tier fails too, the user gets the
/// first answer. The primary breaker never trips here: these are retries, not the breaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_requests_are_retried_on_lite_only_where_allowed() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let stable = Upstream::start(UpstreamSpec::new("stable")).await?;
    let mut canary_spec = UpstreamSpec::new("canary");
    canary_spec.error_rate_bp = 10_000;
    let canary = Upstream::start(canary_spec).await?;
    let lite = Upstream::start(UpstreamSpec::new("lite")).await?;
    for (methods, post_retried) in [(&["GET", "HEAD"][..], false), (&["GET", "POST"][..], true)] {
        let envoy = Envoy::start(
            &bootstrap(&retry_config(methods), &stable, &canary, &lite)?,
            EnvoyOptions {
                concurrency: 2,
                name: "fallback-retry".to_string(),
                ..Default::default()
            },
        )
        .await?;
        let base = envoy.url().await?;
        let mut retried = 0;
        for i in 0..20 {
            let user = load::user_id(i);
            let get = call(&base, "GET", &user, false).await?;
            ensure!(
                get == (200, "lite".into(), "lite".into()),
                "{methods:?} GET: {get:?}"
            );
            let post = call(&base, "POST", &user, false).await?;
            if post_retried {
                ensure!(
                    post == (200, "lite".into(), "lite".into()),
                    "{methods:?} POST: {post:?}"
                );
            } else {
                ensure!(
                    post == (503, "canary".into(), "-".into()),
                    "{methods:?} POST: {post:?}"
                );
            }
            retried += 1 + u64::from(post_retried);
        }
        // Lite fails the retry too: the user gets the canary's own error.
        let both_fail = call(&base, "GET", "u-both", true).await?;
        ensure!(
            both_fail == (502, "canary".into(), "-".into()),
            "{both_fail:?}"
        );
        let counted = eventually(
            "the retries counted on lite",
            Duration::from_secs(10),
            || async {
                Ok((
                    stat(&envoy, TierMetric::RqTotal, "lite").await?,
                    stat(&envoy, TierMetric::Rq5xx, "lite").await?,
                ))
            },
            |&(total, errors)| total == retried + 1 && errors == 1,
        )
        .await?;
        eprintln!("{methods:?}: {counted:?} (lite requests, 5xx)");
        ensure!(stat(&envoy, TierMetric::BreakerTrips, "primary").await? == 0);
    }
    Ok(())
}

/// The chain is in the LLM module only: the plain module refuses the field by name and
/// serves nothing from that configuration; the same rollout without it is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_module_refuses_the_fallback_field() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let mut rig = CanaryRig::start_with_lds(
        &config().to_json(),
        "x-canary-version",
        RigOptions {
            wasm: Some(paths::filter_wasm()?),
            ..RigOptions::default()
        },
    )
    .await?;
    eventually(
        "the plain module's refusal in Envoy's log",
        Duration::from_secs(20),
        || async {
            Ok(rig.envoy().log().contains(
                "invalid plugin configuration: rollouts[0].fallback: unknown field `fallback`",
            ))
        },
        |&refused| refused,
    )
    .await?;
    let mut plain = config();
    plain.rollouts[0].fallback = None;
    rig.publish(&plain.to_json())?;
    let answer = eventually(
        "the configuration without the chain serves",
        Duration::from_secs(20),
        || async {
            let client = reqwest::Client::new();
            let base = rig.envoy().url().await?;
            send(&client, &base, "u1").await
        },
        |r| r.served_by.is_some(),
    )
    .await?;
    ensure!(answer.served_by.as_deref() == Some("canary"), "{answer:?}");
    Ok(())
}
