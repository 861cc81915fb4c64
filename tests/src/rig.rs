//! A complete canary set-up: a stable and a canary upstream, and one or more Envoys running
//! the filter in front of them.

use anyhow::{Context, Result};
use canary_contract::FilterConfig;

use std::path::PathBuf;

use crate::bootstrap::{
    lds_file, CanaryBootstrap, FailurePolicy, FilterBuild, Listener, ListenerSource,
};
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
    /// Set for rigs whose listener comes from an LDS file (see [`CanaryRig::start_with_lds`]).
    lds: Option<LdsFile>,
}

/// The LDS file a rig's Envoys watch, and what goes in it.
struct LdsFile {
    dir: tempfile::TempDir,
    version: u64,
    failure_policy: FailurePolicy,
    route_header: String,
    build: FilterBuild,
    module: PathBuf,
}

impl LdsFile {
    const NAME: &'static str = "lds.json";

    fn path(&self) -> PathBuf {
        self.dir.path().join(Self::NAME)
    }

    /// Writes the listener with `config_json` (any string, valid or not) as the plugin
    /// configuration. Written to a temporary file and renamed, as Envoy's file watch expects.
    fn publish(&mut self, config_json: &str) -> Result<()> {
        self.version += 1;
        let listener = Listener {
            port: 0,
            routing: self.build.routing(
                self.module.clone(),
                config_json.to_string(),
                self.route_header.clone(),
                self.failure_policy,
            ),
        };
        let mut lds = lds_file(&listener);
        lds["version_info"] = serde_json::json!(self.version.to_string());
        let tmp = self.dir.path().join(".lds.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&lds)?)?;
        std::fs::rename(&tmp, self.path())?;
        Ok(())
    }
}

/// How many Envoys, with how many workers each, and how the upstreams behave.
#[derive(Debug, Clone)]
pub struct RigOptions {
    pub envoys: usize,
    pub concurrency: u32,
    pub stable: UpstreamSpec,
    pub canary: UpstreamSpec,
    pub failure_policy: FailurePolicy,
    /// Which build of the filter the Envoys run (default: wasm).
    pub build: FilterBuild,
    /// The wasm module; `None` means the shipped one ([`paths::filter_wasm`]). The native
    /// build is always [`paths::native_module`].
    pub wasm: Option<PathBuf>,
    /// More static clusters, e.g. an evaluator.
    pub extra_clusters: Vec<(String, std::net::SocketAddr)>,
}

impl RigOptions {
    /// The module of the build the rig runs.
    fn module(&self) -> Result<PathBuf> {
        match self.build {
            FilterBuild::Wasm => self.wasm.clone().map_or_else(paths::filter_wasm, Ok),
            FilterBuild::Native | FilterBuild::NativeHeaderRoutes => paths::native_module(),
        }
    }

    /// The default options with the given build.
    pub fn with_build(build: FilterBuild) -> RigOptions {
        RigOptions {
            build,
            ..RigOptions::default()
        }
    }
}

impl Default for RigOptions {
    fn default() -> Self {
        RigOptions {
            envoys: 1,
            concurrency: 1,
            stable: UpstreamSpec::new("stable"),
            canary: UpstreamSpec::new("canary"),
            failure_policy: FailurePolicy::FailReload,
            build: FilterBuild::Wasm,
            wasm: None,
            extra_clusters: Vec::new(),
        }
    }
}

/// The listener every rig Envoy uses: the wasm filter with `config`, header-matched routes.
pub fn filter_listener(
    config: &FilterConfig,
    wasm: PathBuf,
    failure_policy: FailurePolicy,
) -> Result<Listener> {
    build_listener(config, FilterBuild::Wasm, wasm, failure_policy)
}

/// [`filter_listener`] for either build of the filter (`module` is its `.wasm` or `.so`).
pub fn build_listener(
    config: &FilterConfig,
    build: FilterBuild,
    module: PathBuf,
    failure_policy: FailurePolicy,
) -> Result<Listener> {
    let route_header = config
        .rollouts
        .first()
        .map(|r| r.route_header.clone())
        .context("a rig needs at least one rollout")?;
    Ok(Listener {
        port: 0,
        routing: build.routing(module, config.to_json(), route_header, failure_policy),
    })
}

impl CanaryRig {
    pub async fn start(config: &FilterConfig, options: RigOptions) -> Result<CanaryRig> {
        let stable = Upstream::start(options.stable.clone()).await?;
        let canary = Upstream::start(options.canary.clone()).await?;
        let bootstrap = CanaryBootstrap {
            listener: ListenerSource::Static(build_listener(
                config,
                options.build,
                options.module()?,
                options.failure_policy,
            )?),
            stable: stable.addr(),
            canary: canary.addr(),
            stats_flush_ms: STATS_FLUSH_MS,
            extra_clusters: options.extra_clusters.clone(),
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
                    ..Default::default()
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
            lds: None,
        })
    }

    /// A rig whose single Envoy reads its listener from an LDS file, so the test can change
    /// the filter configuration of the running process with [`CanaryRig::publish`]. The first
    /// configuration may be invalid: then Envoy runs with no listener until a valid one comes.
    pub async fn start_with_lds(
        initial_config_json: &str,
        route_header: &str,
        options: RigOptions,
    ) -> Result<CanaryRig> {
        let stable = Upstream::start(options.stable.clone()).await?;
        let canary = Upstream::start(options.canary.clone()).await?;
        let mut lds = LdsFile {
            dir: tempfile::Builder::new().prefix("canary-lds-").tempdir()?,
            version: 0,
            failure_policy: options.failure_policy,
            route_header: route_header.to_string(),
            build: options.build,
            module: options.module()?,
        };
        lds.publish(initial_config_json)?;
        let bootstrap = CanaryBootstrap {
            listener: ListenerSource::File(lds.path()),
            stable: stable.addr(),
            canary: canary.addr(),
            stats_flush_ms: STATS_FLUSH_MS,
            extra_clusters: options.extra_clusters.clone(),
        }
        .to_json();
        let envoy = Envoy::start(
            &bootstrap,
            EnvoyOptions {
                concurrency: options.concurrency,
                name: "envoy-lds".to_string(),
                // The configuration tests read refusals from the log.
                log_flush_ms: Some(100),
                ..Default::default()
            },
        )
        .await?;
        let bases = match envoy.url().await {
            Ok(base) => vec![base],
            Err(_) => Vec::new(),
        };
        Ok(CanaryRig {
            stable,
            canary,
            envoys: vec![envoy],
            bases,
            lds: Some(lds),
        })
    }

    /// Publishes a new plugin configuration through the LDS file (LDS rigs only).
    pub fn publish(&mut self, config_json: &str) -> Result<()> {
        self.lds
            .as_mut()
            .context("publish needs a rig started with start_with_lds")?
            .publish(config_json)
    }

    pub fn envoy(&self) -> &Envoy {
        &self.envoys[0]
    }

    pub fn base(&self) -> &str {
        &self.bases[0]
    }
}
