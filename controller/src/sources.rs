//! Where the filter's stats come from: Envoy admin endpoints, or a Prometheus server that
//! scrapes them (in a mesh the admin port is not reachable from outside the pod). Both give
//! one [`Reading`] of cumulative counters per Envoy; [`crate::window`] turns successive
//! readings into windows the same way for both.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::shadow::prometheus_query;
use crate::spec::{PrometheusSource, Sources};
use crate::stats::{parse_envoy_prometheus, parse_prometheus_query};
use crate::window::Reading;

/// Reads every source once.
pub async fn read(http: &reqwest::Client, sources: &Sources, rollout: &str) -> Vec<Reading> {
    match &sources.prometheus {
        Some(prometheus) => read_prometheus(http, prometheus, rollout).await,
        None => {
            futures::future::join_all(
                sources
                    .envoy_admin
                    .iter()
                    .map(|s| read_admin(http, s, rollout)),
            )
            .await
        }
    }
}

async fn read_admin(http: &reqwest::Client, source: &str, rollout: &str) -> Reading {
    let url = format!("{}/stats/prometheus", source.trim_end_matches('/'));
    let result = async {
        let response = http.get(&url).send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("{url} returned {}", response.status()));
        }
        let text = response.text().await.map_err(|e| e.to_string())?;
        parse_envoy_prometheus(&text, rollout).map_err(|e| e.to_string())
    }
    .await;
    Reading {
        source: source.to_string(),
        result,
    }
}

/// One instant query at `now - lag` (so every target's last scrape has landed), giving each
/// scraped Envoy's cumulative counters. An Envoy whose series are gone (down, stale) is simply
/// absent, and the window drops it.
async fn read_prometheus(
    http: &reqwest::Client,
    prometheus: &PrometheusSource,
    rollout: &str,
) -> Vec<Reading> {
    let at = SystemTime::now()
        .checked_sub(prometheus.lag)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or(Duration::ZERO);
    let url = format!("{}/api/v1/query", prometheus.url.trim_end_matches('/'));
    let result = async {
        let response = http
            .get(&url)
            .query(&[
                ("query", prometheus_query(rollout)),
                ("time", format!("{:.3}", at.as_secs_f64())),
            ])
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!(
                "{url} returned {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        parse_prometheus_query(&body, rollout).map_err(|e| e.to_string())
    }
    .await;
    match result {
        Ok(per_instance) => per_instance
            .into_iter()
            .map(|(instance, stats)| Reading {
                source: format!("prometheus/{instance}"),
                result: Ok(stats),
            })
            .collect(),
        Err(e) => vec![Reading {
            source: "prometheus".to_string(),
            result: Err(e),
        }],
    }
}
