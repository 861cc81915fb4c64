//! Lean mode's source (`sources.clusters`): each Envoy admin endpoint's stats of the stable
//! and canary clusters (`/stats/prometheus`), read into the same [`Reading`]s as
//! [`super::envoy_admin`]'s, so windows and the judge are the same for both.

use futures::future::BoxFuture;

use super::envoy_admin::regex_escape;
use super::StatsSource;
use crate::spec::clusters::VersionClusters;
use crate::stats::clusters::{parse_envoy_cluster_stats, ClusterNames};
use crate::stats::window::{ReadError, Reading};

pub struct EnvoyClusters {
    /// e.g. `http://127.0.0.1:9901`.
    pub endpoints: Vec<String>,
    pub clusters: VersionClusters,
}

impl StatsSource for EnvoyClusters {
    fn names(&self) -> Vec<String> {
        self.endpoints.clone()
    }

    fn read<'a>(
        &'a self,
        http: &'a reqwest::Client,
        rollout: &'a str,
    ) -> BoxFuture<'a, Vec<Reading>> {
        super::read_each(&self.endpoints, |endpoint| {
            self.read_one(http, endpoint, rollout)
        })
    }
}

impl EnvoyClusters {
    async fn read_one(&self, http: &reqwest::Client, source: &str, rollout: &str) -> Reading {
        let url = format!("{}/stats/prometheus", source.trim_end_matches('/'));
        let unreachable = |e: reqwest::Error| ReadError::unreachable(e.to_string());
        let c = &self.clusters;
        let result = async {
            // Only the two clusters' request stats (Envoy matches the regex against the stat
            // name, `cluster.<name>.upstream_rq_total`).
            let filter = format!(
                r"^cluster\.({}|{})\.upstream_rq_",
                regex_escape(&c.stable),
                regex_escape(&c.canary)
            );
            let request = http.get(&url).query(&[("filter", filter)]);
            let response = request.send().await.map_err(unreachable)?;
            if !response.status().is_success() {
                let status = response.status();
                return Err(ReadError::unreachable(format!("{url} returned {status}")));
            }
            let text = response.text().await.map_err(unreachable)?;
            let names = ClusterNames {
                stable: &c.stable,
                canary: &c.canary,
            };
            Ok(parse_envoy_cluster_stats(&text, rollout, names)?)
        }
        .await;
        Reading {
            source: source.to_string(),
            result,
        }
    }
}
