//! Shadow mode (issue 5, test 4) on real Envoy with the LLM build of the filter and the fake
//! LLM service as stable (primary) and canary (candidate): users only ever get the primary's
//! answers, byte for byte, however the candidate behaves; the measured agreement is the
//! candidate's configured one; the candidate's own answers are counted as the canary's.

use std::time::{Duration, Instant};

use anyhow::Result;
use canary_contract::{FilterConfig, LlmSignals, RolloutConfig, Shadow};
use canary_e2e::bootstrap::CANARY_CLUSTER;
use canary_e2e::envoy;
use canary_e2e::envoy::Envoy;
use canary_e2e::fake_llm::LlmBehaviour;
use canary_e2e::paths;
use canary_e2e::rig::{CanaryRig, RigOptions};
use canary_e2e::upstream::{UpstreamSpec, SERVED_BY};
use canary_e2e::wait::eventually;
use futures::StreamExt;
use prometheus_parse::Value;
use std::collections::BTreeMap;

const ROLLOUT: &str = "chat";
const PATHS: [&str; 2] = ["/v1/chat/completions", "/v1/messages"];

fn rollout(shadow: Shadow) -> RolloutConfig {
    let mut r = RolloutConfig::new(ROLLOUT, 0);
    r.llm = Some(LlmSignals {
        path_prefixes: vec!["/v1/".into()],
        ..LlmSignals::default()
    });
    r.shadow = Some(shadow);
    r
}

async fn shadow_rig(shadow: Shadow, candidate: LlmBehaviour) -> Result<CanaryRig> {
    let mut stable = UpstreamSpec::new("stable");
    stable.llm = Some(LlmBehaviour::default());
    let mut canary = UpstreamSpec::new("canary");
    canary.llm = Some(candidate);
    CanaryRig::start(
        &FilterConfig::new(vec![rollout(shadow)]),
        RigOptions {
            concurrency: 2,
            stable,
            canary,
            wasm: Some(paths::llm_filter_wasm()?),
            ..RigOptions::default()
        },
    )
    .await
}

/// One chat request: who answered, every header, the whole body.
async fn chat(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    user: &str,
    stream: bool,
) -> Result<(String, reqwest::header::HeaderMap, Vec<u8>)> {
    let response = client
        .post(format!("{base}{path}"))
        .header("x-user-id", user)
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"model":"fake","stream":{stream},"messages":[{{"role":"user","content":"hi {user}"}}]}}"#
        ))
        .send()
        .await?;
    let served_by = response
        .headers()
        .get(SERVED_BY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let headers = response.headers().clone();
    let body = response.bytes().await?.to_vec();
    Ok((served_by, headers, body))
}

/// The rollout's counters tagged `version="canary"` (the shadow counters and the
/// candidate's own signals), by name: small enough to print when a wait times out.
type CanaryView = BTreeMap<String, f64>;

async fn canary_view(envoy: &Envoy) -> Result<CanaryView> {
    let samples = envoy.prometheus().await?;
    Ok(samples
        .iter()
        .filter(|s| {
            s.metric.starts_with("canary_")
                && s.labels.get("rollout") == Some(ROLLOUT)
                && s.labels.get("version") == Some("canary")
        })
        .filter_map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some((s.metric.clone(), v)),
            _ => None,
        })
        .collect())
}

fn shadow_value(view: &CanaryView, metric: &str) -> f64 {
    view.get(metric).copied().unwrap_or(0.0)
}

/// Sends every (path, stream) combination for `users` users, `parallel` at a time, and
/// checks each answer is the stable service's, byte for byte. Returns how many were sent.
async fn send_and_check(
    rig: &CanaryRig,
    users: std::ops::Range<u32>,
    parallel: usize,
    max_duration: Option<Duration>,
) -> Result<u64> {
    let client = reqwest::Client::new();
    let direct = format!("http://{}", rig.stable.addr());
    let mut expected = std::collections::HashMap::new();
    for path in PATHS {
        for stream in [false, true] {
            let (_, _, body) = chat(&client, &direct, path, "ref", stream).await?;
            expected.insert((path, stream), body);
        }
    }
    let requests: Vec<(String, &str, bool)> = users
        .flat_map(|u| {
            PATHS
                .into_iter()
                .flat_map(move |p| [false, true].map(|s| (format!("user-{u}"), p, s)))
        })
        .collect();
    let results = futures::stream::iter(requests.iter().map(|(user, path, stream)| {
        let client = client.clone();
        async move {
            let started = Instant::now();
            let answer = chat(&client, rig.base(), path, user, *stream).await;
            (*path, *stream, started.elapsed(), answer)
        }
    }))
    .buffer_unordered(parallel)
    .collect::<Vec<_>>()
    .await;
    let mut sent = 0;
    for (path, stream, took, answer) in results {
        let (served_by, headers, body) = answer?;
        assert_eq!(served_by, "stable", "{path} stream={stream}");
        assert_eq!(
            Some(&body),
            expected.get(&(path, stream)),
            "{path} stream={stream}: the user got something else than the primary's answer"
        );
        assert!(
            headers.keys().all(|k| !k.as_str().contains("shadow")),
            "{headers:?}"
        );
        if let Some(max) = max_duration {
            assert!(
                took < max,
                "{path} stream={stream} took {took:?}: waited for the candidate?"
            );
        }
        sent += 1;
    }
    Ok(sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_only_ever_see_the_primary() -> Result<()> {
    let _slot = envoy::exclusive().await;
    // A candidate that always disagrees, then is slow, then fails.
    let shadow = Shadow {
        timeout_ms: 3_000,
        ..Shadow::new(CANARY_CLUSTER)
    };
    let candidate = LlmBehaviour {
        agreement_bp: 0,
        ..LlmBehaviour::default()
    };
    let rig = shadow_rig(shadow, candidate).await?;
    let envoy = rig.envoy();

    let disagreeing = send_and_check(&rig, 0..10, 4, None).await?;
    let samples = eventually(
        "every copy compared",
        Duration::from_secs(30),
        || canary_view(envoy),
        |s| {
            shadow_value(s, "canary_shadow_compared") == disagreeing as f64
                && shadow_value(s, "canary_llm_responses") == disagreeing as f64
        },
    )
    .await?;
    assert_eq!(
        shadow_value(&samples, "canary_shadow_agree_status"),
        disagreeing as f64
    );
    assert_eq!(
        shadow_value(&samples, "canary_shadow_agree_structure"),
        disagreeing as f64
    );
    assert_eq!(shadow_value(&samples, "canary_shadow_agree_text"), 0.0);
    assert_eq!(shadow_value(&samples, "canary_shadow_agree"), 0.0);
    assert_eq!(rig.canary.requests(), disagreeing, "one copy per request");

    // Late: the candidate answers 1.5 s after the user got the primary's answer and the
    // user's stream is gone; its answers are still compared (the root context holds the
    // call, not the user's stream).
    rig.canary.set_delay(Duration::from_millis(1_500));
    let late = send_and_check(&rig, 10..14, 8, Some(Duration::from_millis(1_200))).await?;
    let samples = eventually(
        "late answers compared",
        Duration::from_secs(30),
        || canary_view(envoy),
        |s| shadow_value(s, "canary_shadow_compared") == (disagreeing + late) as f64,
    )
    .await?;
    assert_eq!(shadow_value(&samples, "canary_shadow_failed"), 0.0);
    // Too slow: the candidate answers after 5 s, past the 3 s timeout; users do not wait.
    rig.canary.set_delay(Duration::from_secs(5));
    let slow = send_and_check(&rig, 14..18, 8, Some(Duration::from_secs(2))).await?;
    // Failing: every answer is a 503.
    rig.canary.set_delay(Duration::ZERO);
    rig.canary.set_error_rate_bp(10_000);
    let failing = send_and_check(&rig, 18..24, 4, None).await?;

    let samples = eventually(
        "timeouts and failures counted",
        Duration::from_secs(30),
        || canary_view(envoy),
        |s| {
            shadow_value(s, "canary_shadow_failed") == slow as f64
                && shadow_value(s, "canary_shadow_compared")
                    == (disagreeing + late + failing) as f64
                && shadow_value(s, "canary_rq_total")
                    == (disagreeing + late + slow + failing) as f64
        },
    )
    .await?;
    let total = disagreeing + late + slow + failing;
    assert_eq!(
        shadow_value(&samples, "canary_shadow_requests"),
        total as f64
    );
    assert_eq!(
        shadow_value(&samples, "canary_shadow_agree_status"),
        (disagreeing + late) as f64
    );
    assert_eq!(shadow_value(&samples, "canary_shadow_dropped"), 0.0);
    // The candidate's own answers are the canary's signals (its weight is 0).
    let canary = |metric: &str| shadow_value(&samples, metric);
    assert_eq!(canary("canary_rq_total"), total as f64);
    assert_eq!(canary("canary_rq_5xx"), (slow + failing) as f64);
    assert_eq!(canary("canary_rq_reset"), slow as f64);
    assert_eq!(canary("canary_llm_responses"), (disagreeing + late) as f64);
    assert!(!envoy.log().contains("panicked"), "{}", envoy.log_tail(30));
    eprintln!(
        "shadow: {disagreeing} disagreeing, {late} late (compared after the user's stream ended), {slow} slow (timed out), {failing} failing copies; every user answer was the primary's"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measured_agreement_is_the_candidates() -> Result<()> {
    let _slot = envoy::exclusive().await;
    let agreement_bp = 8_500;
    let shadow = Shadow {
        sample_bp: 5_000,
        ..Shadow::new(CANARY_CLUSTER)
    };
    let candidate = LlmBehaviour {
        agreement_bp,
        ..LlmBehaviour::default()
    };
    let rig = shadow_rig(shadow, candidate).await?;
    let envoy = rig.envoy();
    let sent = send_and_check(&rig, 0..100, 8, None).await?;
    let samples = eventually(
        "every copy answered and compared",
        Duration::from_secs(60),
        || canary_view(envoy),
        |s| {
            let requests = shadow_value(s, "canary_shadow_requests");
            requests > 0.0
                && shadow_value(s, "canary_shadow_compared") == requests
                && shadow_value(s, "canary_rq_total") == requests
        },
    )
    .await?;
    let requests = shadow_value(&samples, "canary_shadow_requests");
    let compared = shadow_value(&samples, "canary_shadow_compared");
    let agree = shadow_value(&samples, "canary_shadow_agree");
    // Every other request of each worker is copied.
    let half = sent as f64 / 2.0;
    assert!(
        (requests - half).abs() <= 2.0,
        "{requests} copies of {sent}"
    );
    assert_eq!(rig.canary.requests() as f64, requests);
    let measured = agree / compared;
    let configured = f64::from(agreement_bp) / 10_000.0;
    assert!(
        (measured - configured).abs() <= 0.02,
        "measured agreement {measured:.4}, configured {configured}"
    );
    assert_eq!(
        shadow_value(&samples, "canary_shadow_agree_status"),
        compared
    );
    assert_eq!(
        shadow_value(&samples, "canary_shadow_agree_structure"),
        compared
    );
    assert_eq!(shadow_value(&samples, "canary_shadow_agree_text"), agree);
    let canary = |metric: &str| shadow_value(&samples, metric);
    assert_eq!(canary("canary_rq_2xx"), requests);
    assert_eq!(canary("canary_llm_responses"), requests);
    eprintln!(
        "shadow: {sent} requests, {requests} copies, {compared} compared, agreement {:.2}% (configured {:.2}%)",
        measured * 100.0,
        configured * 100.0
    );
    Ok(())
}
