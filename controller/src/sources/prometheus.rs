//! A Prometheus server that scrapes the Envoys' `/stats/prometheus` (in a mesh): one instant
//! query gives every scraped Envoy's counters, told apart by their `instance` label.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use futures::FutureExt;

use super::StatsSource;
use crate::stats::window::{ReadError, Reading};
use crate::stats::{parse_prometheus_query_per_instance, prometheus_query};

pub struct Prometheus {
    /// e.g. `http://prometheus.istio-system:9090`.
    pub url: String,
    /// How far behind "now" to read (at least one scrape interval).
    pub lag: Duration,
}

impl StatsSource for Prometheus {
    fn names(&self) -> Vec<String> {
        vec!["prometheus".to_string()]
    }

    fn read<'a>(
        &'a self,
        http: &'a reqwest::Client,
        rollout: &'a str,
    ) -> BoxFuture<'a, Vec<Reading>> {
        self.query(http, rollout).boxed()
    }
}

impl Prometheus {
    /// One instant query at `now - lag` (so every target's last scrape has landed), giving
    /// each scraped Envoy's cumulative counters. An Envoy whose series are gone (down,
    /// stale) is simply absent, and the window drops it.
    async fn query(&self, http: &reqwest::Client, rollout: &str) -> Vec<Reading> {
        let at = SystemTime::now()
            .checked_sub(self.lag)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or(Duration::ZERO);
        let url = format!("{}/api/v1/query", self.url.trim_end_matches('/'));
        let unreachable = |e: reqwest::Error| ReadError::unreachable(e.to_string());
        let result = async {
            let response = http
                .get(&url)
                .query(&[
                    ("query", prometheus_query(rollout)),
                    ("time", format!("{:.3}", at.as_secs_f64())),
                ])
                .send()
                .await
                .map_err(unreachable)?;
            let status = response.status();
            let body = response.bytes().await.map_err(unreachable)?;
            if !status.is_success() {
                return Err(ReadError::unreachable(format!(
                    "{url} returned {status}: {}",
                    String::from_utf8_lossy(&body)
                )));
            }
            Ok(parse_prometheus_query_per_instance(&body, rollout)?)
        }
        .await;
        match result {
            // An Envoy whose series are invalid is refused on its own; the others count.
            Ok(per_instance) => per_instance
                .into_iter()
                .map(|(instance, stats)| Reading {
                    source: format!("prometheus/{instance}"),
                    result: stats.map_err(ReadError::from),
                })
                .collect(),
            Err(e) => vec![Reading {
                source: "prometheus".to_string(),
                result: Err(e),
            }],
        }
    }
}
