//! A complete canary set-up: a stable and a canary upstream, and one or more Envoys running
//! the filter in front of them.

use anyhow::{Context, Result};
use canary_contract::FilterConfig;

use crate::bootstrap::{CanaryBootstrap, FailurePolicy, Listener, ListenerSource, Routing};
use crate::envoy::{Envoy, EnvoyOptions};
use crate::paths;
use crate::upstream::{Upstream, UpstreamSpec};

/// Stats flush period for rigs: histograms reach the admin endpoint only at a flush.
pub const STATS_FLUSH_MS: u64 = 500;

pub struct CanaryRig {
    pub stable: Upstream,
    pub canary: Upstream,
    pub envoys: Vec<Envoy>,
    /// Listener base URL of each Envoy, in the same order.
    pub bases: Vec<String>,
}

/// How many Envoys, with how many workers each, and how the upstreams behave.
#[derive(Debug, Clone)]
pub struct RigOptions {
    pub envoys: usize,
    pub concurrency: u32,
    pub stable: UpstreamSpec,
    pub canary: UpstreamSpec,
    pub failure_policy: FailurePolicy,
}

impl Default for RigOptions {
    fn default() -> Self {
        RigOptions {
            envoys: 1,
            concurrency: 1,
            stable: UpstreamSpec::new("stable"),
            canary: UpstreamSpec::new("canary"),
            failure_policy: FailurePolicy::FailOpen,
        }
    }
}

/// The listener every rig Envoy uses: the filter with `config`, header-matched routes.
pub fn filter_listener(config: &FilterConfig, failure_policy: FailurePolicy) -> Result<Listener> {
    let route_header = config
        .rollouts
        .first()
        .map(|r| r.route_header.clone())
        .context("a rig needs at least one rollout")?;
    Ok(Listener {
        port: 0,
        routing: Routing::Filter {
            wasm: paths::filter_wasm()?,
            config_json: config.to_json(),
            route_header,
            failure_policy,
        },
    })
}

impl CanaryRig {
    pub async fn start(config: &FilterConfig, options: RigOptions) -> Result<CanaryRig> {
        let stable = Upstream::start(options.stable.clone()).await?;
        let canary = Upstream::start(options.canary.clone()).await?;
        let bootstrap = CanaryBootstrap {
            listener: ListenerSource::Static(filter_listener(config, options.failure_policy)?),
            stable: stable.addr(),
            canary: canary.addr(),
            stats_flush_ms: STATS_FLUSH_MS,
        }
        .to_json();
        let mut envoys = Vec::new();
        let mut bases = Vec::new();
        for i in 0..options.envoys {
            let envoy = Envoy::start(
                &bootstrap,
                EnvoyOptions {
                    concurrency: options.concurrency,
                    name: format!("envoy-{i}"),
                },
            )
            .await?;
            bases.push(envoy.url().await?);
            envoys.push(envoy);
        }
        Ok(CanaryRig {
            stable,
            canary,
            envoys,
            bases,
        })
    }

    pub fn envoy(&self) -> &Envoy {
        &self.envoys[0]
    }

    pub fn base(&self) -> &str {
        &self.bases[0]
    }
}
