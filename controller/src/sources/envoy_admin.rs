//! Envoy admin endpoints, read directly (`/stats/prometheus`), where the controller can reach
//! them (not inside a mesh).

use futures::future::BoxFuture;

use super::StatsSource;
use crate::stats::parse_envoy_prometheus;
use crate::stats::window::{ReadError, Reading};

pub struct EnvoyAdmin {
    /// e.g. `http://127.0.0.1:9901`.
    pub endpoints: Vec<String>,
}

impl StatsSource for EnvoyAdmin {
    fn names(&self) -> Vec<String> {
        self.endpoints.clone()
    }

    fn read<'a>(
        &'a self,
        http: &'a reqwest::Client,
        rollout: &'a str,
    ) -> BoxFuture<'a, Vec<Reading>> {
        super::read_each(&self.endpoints, |endpoint| {
            read_one(http, endpoint, rollout)
        })
    }
}

async fn read_one(http: &reqwest::Client, source: &str, rollout: &str) -> Reading {
    let url = format!("{}/stats/prometheus", source.trim_end_matches('/'));
    let unreachable = |e: reqwest::Error| ReadError::unreachable(e.to_string());
    let result = async {
        // Only this rollout's stats (Envoy matches the regex against the full stat name,
        // `…canary_rq_total.rollout.<name>.version.canary`): with many rollouts on a proxy,
        // each reads its own, not every rollout's.
        let filter = format!(r"\.rollout\.{}\.", regex_escape(rollout));
        let request = http.get(&url).query(&[("filter", filter)]);
        let response = request.send().await.map_err(unreachable)?;
        if !response.status().is_success() {
            let status = response.status();
            return Err(ReadError::unreachable(format!("{url} returned {status}")));
        }
        let text = response.text().await.map_err(unreachable)?;
        Ok(parse_envoy_prometheus(&text, rollout)?)
    }
    .await;
    Reading {
        source: source.to_string(),
        result,
    }
}

/// `name` with every character outside `[A-Za-z0-9_-]` escaped for Envoy's (RE2) regex.
pub(super) fn regex_escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if !(c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn rollout_names_are_matched_literally() {
        assert_eq!(super::regex_escape("chat-v2"), "chat-v2");
        assert_eq!(super::regex_escape("a.b+c"), "a\\.b\\+c");
    }
}
