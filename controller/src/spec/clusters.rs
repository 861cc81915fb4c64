//! `sources.clusters` of the rollout spec: lean mode (docs/lean-mode.md). Each version's
//! status and latency are its Envoy cluster's own stats (`upstream_rq_*`,
//! `upstream_rq_time`), read from the `envoy_admin` endpoints, and the filter only routes:
//! the served configuration says `"stats": "clusters"`, and must be one the filter's lean
//! build takes (no anonymous cookie, no breaker, none of the LLM build's fields).

use canary_contract::FilterConfig;
use serde::{Deserialize, Serialize};

use super::{RolloutSpec, SpecError};

/// `sources.clusters`: the Envoy cluster of each version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionClusters {
    pub stable: String,
    pub canary: String,
}

/// The filter configuration's fields the lean build does not have (the LLM build's).
const NOT_IN_LEAN: [&str; 5] = ["llm", "rate_limit", "shadow", "eval", "fallback"];

/// Spec checks of `sources.clusters` (field paths as in the spec). The lean build's own
/// checks of the served configuration run with the rest of it (see [`super::filter`]).
pub fn validate(spec: &RolloutSpec, errors: &mut Vec<SpecError>) {
    let Some(c) = &spec.sources.clusters else {
        return;
    };
    let mut push = |field: &str, reason: String| {
        errors.push(SpecError {
            field: field.into(),
            reason,
        })
    };
    for (field, name) in [
        ("sources.clusters.stable", &c.stable),
        ("sources.clusters.canary", &c.canary),
    ] {
        if name.is_empty() || name.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
            push(field, format!("{name:?} is not an Envoy cluster name"));
        }
    }
    if c.stable == c.canary {
        push(
            "sources.clusters.canary",
            "must differ from stable: one cluster's stats cannot tell the versions apart".into(),
        );
    }
    if spec.sources.prometheus.is_some() {
        push(
            "sources.clusters",
            "cluster stats are read from envoy_admin endpoints (not through prometheus)".into(),
        );
    }
    for field in NOT_IN_LEAN {
        if spec.filter.contains_key(field) {
            push(
                &format!("filter.{field}"),
                "the lean filter (sources.clusters) does not have it".into(),
            );
        }
    }
    for (field, set) in [
        ("shadow", spec.shadow.is_some()),
        ("quota", spec.quota.is_some()),
    ] {
        if set {
            push(
                field,
                "needs the filter's own stats, and sources.clusters reads the clusters'".into(),
            );
        }
    }
}

/// The served configuration in lean mode: every rollout reads its stats from the clusters.
pub(super) fn mark_lean(spec: &RolloutSpec, config: &mut FilterConfig) {
    if spec.sources.clusters.is_some() {
        for r in &mut config.rollouts {
            r.stats = canary_contract::StatsFrom::Clusters;
        }
    }
}

#[cfg(test)]
mod tests {
    use canary_contract::StatsFrom;

    use super::*;

    const LEAN: &str = "name: checkout\nsources:\n  envoy_admin: [\"http://127.0.0.1:9901\"]\n  \
                        clusters: {stable: checkout-v1, canary: checkout-v2}\n";

    fn fields(yaml: &str) -> Vec<String> {
        let err = RolloutSpec::from_yaml(yaml).expect_err(yaml);
        err.0.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_lean_spec_serves_a_configuration_the_lean_filter_takes() {
        let yaml = format!("{LEAN}filter: {{anonymous_cookie: {{enabled: false}}}}\n");
        let spec = RolloutSpec::from_yaml(&yaml).expect("valid");
        let config = spec.filter_config(500, false).expect("served");
        assert_eq!(config.rollouts[0].stats, StatsFrom::Clusters);
        config.validate_lean().expect("the lean build takes it");
        let clusters = spec.sources.clusters.expect("set");
        assert_eq!(
            (clusters.stable.as_str(), clusters.canary.as_str()),
            ("checkout-v1", "checkout-v2")
        );
        // Without clusters the filter keeps its own stats, as before.
        let full = RolloutSpec::from_yaml(
            "name: checkout\nsources: {envoy_admin: [\"http://127.0.0.1:9901\"]}\n",
        )
        .expect("valid");
        let served = full.filter_config(500, false).expect("served");
        assert_eq!(served.rollouts[0].stats, StatsFrom::Filter);
    }

    #[test]
    fn errors_name_what_lean_mode_cannot_do() {
        // The lean build sets no cookie: an anonymous cookie must be switched off.
        assert_eq!(fields(LEAN), ["filter.anonymous_cookie.enabled"]);
        let off = "filter: {anonymous_cookie: {enabled: false}";
        let cases: [(String, &[&str]); 5] = [
            (
                LEAN.replace("canary: checkout-v2", "canary: checkout-v1") + off + "}\n",
                &["sources.clusters.canary"],
            ),
            (
                LEAN.replace("checkout-v2", "\"a b\"") + off + "}\n",
                &["sources.clusters.canary"],
            ),
            (format!("{LEAN}{off}, stats: filter}}\n"), &["filter.stats"]),
            (format!("{LEAN}{off}, llm: {{}}}}\n"), &["filter.llm"]),
            (
                format!("{LEAN}{off}, circuit_breaker: {{}}}}\n"),
                &["filter.circuit_breaker"],
            ),
        ];
        for (yaml, want) in cases {
            assert_eq!(fields(&yaml), want, "{yaml}");
        }
        let with_prometheus = "name: a\nsources: {prometheus: {url: \"http://p:9090\"}, \
                               clusters: {stable: s, canary: c}}\n\
                               filter: {anonymous_cookie: {enabled: false}}\n";
        assert_eq!(fields(with_prometheus), ["sources.clusters"]);
    }
}
