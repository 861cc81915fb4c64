//! `/metrics`: the controller's own series in Prometheus' text format, as one table of
//! families ([`FAMILIES`]), each with its samples read from the [`Controller`].

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::{AppState, Controller};
use crate::judge::CheckResult;
use crate::machine::Phase;
use crate::stats::TierStats;

const GAUGE: &str = "gauge";
/// Every `reason` of a refused reading (`stats::window::ReadError`), each series from zero.
const READ_FAILURES: [&str; 4] = ["unreachable", "unparsable", "missing_series", "invalid"];
const COUNTER: &str = "counter";

/// Each sample's labels after `rollout` (e.g. `,tier="lite"`) and its value; `None` when the
/// family does not apply to this rollout (no header either).
type Samples = Option<Vec<(String, String)>>;

struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: fn(&Controller) -> Samples,
}

/// The one sample of a family without labels beyond `rollout`.
fn one(value: impl ToString) -> Samples {
    Some(vec![(String::new(), value.to_string())])
}

/// One sample per fallback tier; the family is left out without a chain.
fn per_tier(c: &Controller, value: fn(&TierStats) -> u64) -> Samples {
    (!c.tiers.is_empty()).then(|| {
        c.tiers
            .iter()
            .map(|(tier, t)| (format!(",tier=\"{tier}\""), value(t).to_string()))
            .collect()
    })
}

/// Per check of the last judged window: each version's value (or samples), where it has one.
fn per_check(c: &Controller, values: fn(&CheckResult) -> [Option<String>; 2]) -> Samples {
    let mut out = Vec::new();
    for check in &c.last_checks {
        for (version, value) in ["canary", "stable"].into_iter().zip(values(check)) {
            if let Some(value) = value {
                let labels = format!(",check=\"{}\",version=\"{version}\"", check.check);
                out.push((labels, value));
            }
        }
    }
    Some(out)
}

/// Every series, in the order they are written.
const FAMILIES: &[Family] = &[
    Family {
        name: "canary_controller_weight_bp",
        kind: GAUGE,
        help: "Canary weight served to the filters, in basis points.",
        samples: |c| one(c.state.weight_bp),
    },
    Family {
        name: "canary_controller_stage",
        kind: GAUGE,
        help: "Current stage, 1-based.",
        samples: |c| one(c.state.stage + 1),
    },
    Family {
        name: "canary_controller_config_version",
        kind: GAUGE,
        help: "Version of the served filter configuration.",
        samples: |c| one(c.state.config_version),
    },
    Family {
        name: "canary_controller_quota_tokens_per_minute",
        kind: GAUGE,
        help: "Tokens per minute over every proxy in the last window.",
        samples: |c| {
            c.spec.quota.as_ref()?;
            one(c.quota.last_tokens_per_minute.unwrap_or(0.0))
        },
    },
    Family {
        name: "canary_controller_quota_limit_tokens_per_minute",
        kind: GAUGE,
        help: "The configured quota (quota.tokens_per_minute).",
        samples: |c| one(c.spec.quota.as_ref()?.tokens_per_minute),
    },
    Family {
        name: "canary_controller_quota_throttled",
        kind: GAUGE,
        help: "1 while the quota sentinel throttles non-priority requests.",
        samples: |c| {
            c.spec.quota.as_ref()?;
            one(u8::from(c.quota.throttled))
        },
    },
    Family {
        name: "canary_controller_breaker_open",
        kind: GAUGE,
        help: "Envoys whose circuit breaker was open at the end of the last analysis window.",
        samples: |c| one(c.breaker.open),
    },
    Family {
        name: "canary_controller_shadow_active",
        kind: GAUGE,
        help: "1 while the rollout is in its shadow phase (weight 0, copies to the candidate).",
        samples: |c| one(u8::from(c.state.shadow.as_ref()?.active)),
    },
    Family {
        name: "canary_controller_shadow_agreement_ratio",
        kind: GAUGE,
        help: "Share of compared shadow answers that agree with stable's, over the phase.",
        samples: |c| one(c.state.shadow.as_ref()?.counts.agreement()?),
    },
    Family {
        name: "canary_controller_shadow_compared",
        kind: GAUGE,
        help: "Shadow answers compared over the phase.",
        samples: |c| one(c.state.shadow.as_ref()?.counts.compared),
    },
    Family {
        name: "canary_controller_shadow_gate_failures",
        kind: GAUGE,
        help: "Consecutive failed shadow gate decisions.",
        samples: |c| one(c.state.shadow.as_ref()?.gate_failures),
    },
    Family {
        name: "canary_controller_breaker_trips_total",
        kind: COUNTER,
        help: "Circuit breaker trips seen in analysis windows.",
        samples: |c| one(c.breaker.trips),
    },
    Family {
        name: "canary_controller_breaker_diverted_total",
        kind: COUNTER,
        help: "Canary requests the circuit breakers sent to stable, seen in analysis windows.",
        samples: |c| one(c.breaker.diverted),
    },
    Family {
        name: "canary_controller_tier_breaker_open",
        kind: GAUGE,
        help: "Envoys whose breaker of this fallback tier was open at the end of the last analysis window.",
        samples: |c| per_tier(c, |t| t.open),
    },
    Family {
        name: "canary_controller_tier_breaker_half_open",
        kind: GAUGE,
        help: "Envoys whose breaker of this fallback tier was half-open at the end of the last analysis window.",
        samples: |c| per_tier(c, |t| t.half_open),
    },
    Family {
        name: "canary_controller_tier_breaker_trips_total",
        kind: COUNTER,
        help: "Trips of this fallback tier's breakers seen in analysis windows.",
        samples: |c| per_tier(c, |t| t.trips),
    },
    Family {
        name: "canary_controller_tier_requests_total",
        kind: COUNTER,
        help: "Requests this fallback tier served, seen in analysis windows.",
        samples: |c| per_tier(c, |t| t.requests),
    },
    Family {
        name: "canary_controller_phase",
        kind: GAUGE,
        help: "Current phase (1 for the active one).",
        samples: |c| {
            let phase = |p: Phase| (format!(",phase=\"{}\"", p.as_str()), u8::from(p == c.state.phase).to_string());
            Some(Phase::ALL.map(phase).to_vec())
        },
    },
    Family {
        name: "canary_controller_verdicts_total",
        kind: COUNTER,
        help: "Analyses by outcome.",
        samples: |c| {
            let outcome = |o: &str| {
                let n = c.verdict_counts.get(o).copied().unwrap_or(0);
                (format!(",outcome=\"{o}\""), n.to_string())
            };
            Some(["pass", "fail", "inconclusive"].map(outcome).to_vec())
        },
    },
    Family {
        name: "canary_controller_stats_source_errors_total",
        kind: COUNTER,
        help: "Readings refused by source and reason: unreachable (no answer, or not a success), unparsable (not stats), missing_series (the rollout's series absent), invalid (values no filter could have counted: NaN, beyond 2^64, more 5xx than requests, inconsistent histograms or shadow counts).",
        samples: |c| {
            let mut sources: std::collections::BTreeSet<&str> =
                c.source_names.iter().map(String::as_str).collect();
            sources.extend(c.source_errors.keys().map(|(s, _)| s.as_str()));
            let mut out = Vec::new();
            for source in sources {
                for reason in READ_FAILURES {
                    let key = (source.to_string(), reason);
                    let n = c.source_errors.get(&key).copied().unwrap_or(0);
                    out.push((format!(",source=\"{source}\",reason=\"{reason}\""), n.to_string()));
                }
            }
            Some(out)
        },
    },
    Family {
        name: "canary_controller_config_refused_total",
        kind: COUNTER,
        help: "Filter configurations built from the spec that the contract's validator refused; the last good one, with the new weight, was served instead.",
        samples: |c| one(c.config_refused),
    },
    Family {
        name: "canary_controller_check_value",
        kind: GAUGE,
        help: "Each version's value in the last judged window, per check (error_rate, latency_p99, cost_per_response in nano-USD, refusal_rate, quality_<signal>, task_success_rate, thumbs_down_rate, ttft_p95 in ms, eval_score).",
        samples: |c| {
            per_check(c, |check| {
                [check.canary, check.stable].map(|v| v.map(|v| v.to_string()))
            })
        },
    },
    Family {
        name: "canary_controller_check_samples",
        kind: GAUGE,
        help: "Samples behind each version's value in the last judged window, per check.",
        samples: |c| {
            per_check(c, |check| {
                [check.canary_n, check.stable_n].map(|n| n.map(|n| n.to_string()))
            })
        },
    },
    Family {
        name: "canary_controller_feedback_total",
        kind: COUNTER,
        help: "User ratings received at POST /feedback, by the version they were attributed to.",
        samples: |c| {
            let mut out = Vec::new();
            for version in ["stable", "canary"] {
                for rating in ["up", "down"] {
                    let n = c.feedback_total.get(&(version, rating)).copied().unwrap_or(0);
                    let labels = format!(",version=\"{version}\",rating=\"{rating}\"");
                    out.push((labels, n.to_string()));
                }
            }
            Some(out)
        },
    },
];

/// The text of `/metrics`: each family once (one `# TYPE` line), with every rollout's samples.
pub(super) fn render(controllers: &[&Controller]) -> String {
    let mut out = String::new();
    for family in FAMILIES {
        let Family {
            name, kind, help, ..
        } = family;
        let mut header = Some(format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for c in controllers {
            let Some(samples) = (family.samples)(c) else {
                continue;
            };
            out.extend(header.take());
            let r = &c.spec.name;
            for (labels, value) in samples {
                out.push_str(&format!("{name}{{rollout=\"{r}\"{labels}}} {value}\n"));
            }
        }
    }
    out
}

/// The fleet's own families: rollouts running, and spec files refused.
fn render_fleet(out: &mut String, running: usize, refused: &[super::Refusal], refusals: u64) {
    out.push_str(&format!(
        "# HELP canary_controller_rollouts Rollouts this controller runs.\n\
         # TYPE canary_controller_rollouts gauge\ncanary_controller_rollouts {running}\n\
         # HELP canary_controller_spec_refused 1 for each spec file whose current version is refused (the previous version, if any, keeps running).\n\
         # TYPE canary_controller_spec_refused gauge\n"
    ));
    for r in refused {
        let file = r.file.replace('\\', "\\\\").replace('"', "\\\"");
        out.push_str(&format!(
            "canary_controller_spec_refused{{file=\"{file}\"}} 1\n"
        ));
    }
    out.push_str(&format!(
        "# HELP canary_controller_spec_refusals_total Spec file versions refused since start.\n\
         # TYPE canary_controller_spec_refusals_total counter\n\
         canary_controller_spec_refusals_total {refusals}\n"
    ));
}

pub(super) async fn metrics(State(app): State<AppState>) -> Response {
    let (shared, refused, refusals) = {
        let fleet = app.fleet.lock().await;
        let shared: Vec<_> = fleet.controllers().map(|(_, c)| c.clone()).collect();
        (
            shared,
            fleet.refused().cloned().collect::<Vec<_>>(),
            fleet.refusals_total,
        )
    };
    let mut guards = Vec::with_capacity(shared.len());
    for c in &shared {
        guards.push(c.lock().await);
    }
    let controllers: Vec<&Controller> = guards.iter().map(|g| &**g).collect();
    let mut text = render(&controllers);
    render_fleet(&mut text, controllers.len(), &refused, refusals);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
