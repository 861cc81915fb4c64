//! A complete controlled set-up: two upstreams, Envoys whose filters poll the controller,
//! and the controller (a real process, [`crate::canaryctl`]) judging them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use canary_contract::{ControllerSource, FilterConfig, RolloutConfig};
use serde_json::Value;

use crate::bootstrap::{CanaryBootstrap, FailurePolicy, FilterBuild, ListenerSource};
pub use crate::canaryctl::{free_port, Canaryctl, CtlOptions};
use crate::client::{http_client, send_all, Probe};
use crate::envoy::{Envoy, EnvoyOptions};
use crate::paths;
use crate::rig::{build_listener, STATS_FLUSH_MS};
use crate::upstream::{Upstream, UpstreamSpec};
use crate::wait::eventually;

/// Envoy cluster name through which filters reach the controller.
pub const CONTROLLER_CLUSTER: &str = "canary-controller";

/// Upstreams, Envoys polling a controller address, and (once started) the controller.
pub struct ControlledRig {
    pub stable: Upstream,
    pub canary: Upstream,
    pub envoys: Vec<Envoy>,
    pub bases: Vec<String>,
    pub controller_addr: SocketAddr,
    pub state_dir: tempfile::TempDir,
    pub rollout: String,
    /// What the Envoys were started from, for [`ControlledRig::start_envoy_via`].
    filter_config: FilterConfig,
    build: FilterBuild,
    wasm: std::path::PathBuf,
    other_clusters: Vec<(String, SocketAddr)>,
}

pub const TOKEN: &str = "test-token";

/// A stable and a canary upstream failing the given shares of requests (basis points).
pub fn upstream_pair(stable_error_bp: u32, canary_error_bp: u32) -> (UpstreamSpec, UpstreamSpec) {
    let mut stable = UpstreamSpec::new("stable");
    stable.error_rate_bp = stable_error_bp;
    let mut canary = UpstreamSpec::new("canary");
    canary.error_rate_bp = canary_error_bp;
    (stable, canary)
}

/// What a controlled rig runs besides the controller: the filter module, the upstreams,
/// more static clusters.
struct RigParts {
    build: FilterBuild,
    /// The module of `build`: its `.wasm` or `.so`.
    wasm: std::path::PathBuf,
    stable: UpstreamSpec,
    canary: UpstreamSpec,
    extra_clusters: Vec<(String, SocketAddr)>,
}

impl RigParts {
    /// `build`'s module `wasm` between `stable` and `canary`, no other cluster.
    fn new(build: FilterBuild, wasm: PathBuf, stable: UpstreamSpec, canary: UpstreamSpec) -> Self {
        RigParts {
            build,
            wasm,
            stable,
            canary,
            extra_clusters: Vec::new(),
        }
    }

    /// The plain wasm filter between `stable` and `canary`, no other cluster.
    fn plain(stable: UpstreamSpec, canary: UpstreamSpec) -> Result<RigParts> {
        let wasm = paths::filter_wasm()?;
        Ok(RigParts::new(FilterBuild::Wasm, wasm, stable, canary))
    }
}

impl ControlledRig {
    /// Starts upstreams and `envoys` Envoys (2 workers each) whose filter starts at weight 0
    /// and polls the controller every `poll_ms`.
    pub async fn start(
        rollout: &str,
        envoys: usize,
        poll_ms: u64,
        stable: UpstreamSpec,
        canary: UpstreamSpec,
    ) -> Result<ControlledRig> {
        Self::start_with_fail_safe(rollout, envoys, poll_ms, None, stable, canary).await
    }

    /// [`ControlledRig::start`] with either build of the filter.
    pub async fn start_build(
        build: FilterBuild,
        rollout: &str,
        envoys: usize,
        poll_ms: u64,
        stable: UpstreamSpec,
        canary: UpstreamSpec,
    ) -> Result<ControlledRig> {
        let module = match build {
            FilterBuild::Wasm => paths::filter_wasm()?,
            FilterBuild::Native | FilterBuild::NativeHeaderRoutes => paths::native_module()?,
        };
        let parts = RigParts::new(build, module, stable, canary);
        Self::start_inner(rollout, envoys, poll_ms, None, parts).await
    }

    /// [`ControlledRig::start`] with the lean build of the filter (docs/lean-mode.md): its
    /// rollout reads its stats from the clusters and has no anonymous cookie. Its controller
    /// reads the clusters' stats ([`ControlledRig::lean_sources_yaml`]).
    pub async fn start_lean(
        rollout: &str,
        envoys: usize,
        poll_ms: u64,
        stable: UpstreamSpec,
        canary: UpstreamSpec,
    ) -> Result<ControlledRig> {
        let wasm = paths::lean_filter_wasm()?;
        let parts = RigParts::new(FilterBuild::Wasm, wasm, stable, canary);
        let mut lean = RolloutConfig::new(rollout, 0);
        lean.stats = canary_contract::StatsFrom::Clusters;
        lean.anonymous_cookie.enabled = false;
        Self::start_rollouts(vec![lean], envoys, poll_ms, None, parts).await
    }

    /// [`ControlledRig::start`] with the LLM build of the filter (for specs whose `filter`
    /// has `llm`) and the upstreams answering as fake LLM services.
    pub async fn start_llm(
        rollout: &str,
        envoys: usize,
        poll_ms: u64,
        stable: crate::fake_llm::LlmBehaviour,
        canary: crate::fake_llm::LlmBehaviour,
    ) -> Result<ControlledRig> {
        Self::start_llm_with(rollout, envoys, poll_ms, stable, canary, Vec::new()).await
    }

    /// [`ControlledRig::start_llm`] with more static clusters (e.g. an evaluator).
    pub async fn start_llm_with(
        rollout: &str,
        envoys: usize,
        poll_ms: u64,
        stable: crate::fake_llm::LlmBehaviour,
        canary: crate::fake_llm::LlmBehaviour,
        extra_clusters: Vec<(String, SocketAddr)>,
    ) -> Result<ControlledRig> {
        let mut stable_spec = UpstreamSpec::new("stable");
        stable_spec.llm = Some(stable);
        let mut canary_spec = UpstreamSpec::new("canary");
        canary_spec.llm = Some(canary);
        let wasm = paths::llm_filter_wasm()?;
        let parts = RigParts {
            extra_clusters,
            ..RigParts::new(FilterBuild::Wasm, wasm, stable_spec, canary_spec)
        };
        Self::start_inner(rollout, envoys, poll_ms, None, parts).await
    }

    /// [`ControlledRig::start`] with the filter's `fail_safe_after_s` set.
    pub async fn start_with_fail_safe(
        rollout: &str,
        envoys: usize,
        poll_ms: u64,
        fail_safe_after_s: Option<u64>,
        stable: UpstreamSpec,
        canary: UpstreamSpec,
    ) -> Result<ControlledRig> {
        let parts = RigParts::plain(stable, canary)?;
        Self::start_inner(rollout, envoys, poll_ms, fail_safe_after_s, parts).await
    }

    /// Envoys whose filter runs several `rollouts` (each at its weight, with its `match`),
    /// all polling one controller.
    pub async fn start_many(
        rollouts: Vec<RolloutConfig>,
        envoys: usize,
        poll_ms: u64,
        stable: UpstreamSpec,
        canary: UpstreamSpec,
    ) -> Result<ControlledRig> {
        let parts = RigParts::plain(stable, canary)?;
        Self::start_rollouts(rollouts, envoys, poll_ms, None, parts).await
    }

    async fn start_inner(
        rollout: &str,
        envoys: usize,
        poll_ms: u64,
        fail_safe_after_s: Option<u64>,
        parts: RigParts,
    ) -> Result<ControlledRig> {
        let rollouts = vec![RolloutConfig::new(rollout, 0)];
        Self::start_rollouts(rollouts, envoys, poll_ms, fail_safe_after_s, parts).await
    }

    async fn start_rollouts(
        rollouts: Vec<RolloutConfig>,
        envoys: usize,
        poll_ms: u64,
        fail_safe_after_s: Option<u64>,
        parts: RigParts,
    ) -> Result<ControlledRig> {
        let rollout = rollouts.first().map(|r| r.name.clone()).unwrap_or_default();
        let RigParts {
            build,
            wasm,
            stable,
            canary,
            mut extra_clusters,
        } = parts;
        let stable = Upstream::start(stable).await?;
        let canary = Upstream::start(canary).await?;
        let controller_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let mut config = FilterConfig::new(rollouts);
        let mut source = ControllerSource::new(CONTROLLER_CLUSTER);
        source.poll_interval_ms = poll_ms;
        source.timeout_ms = poll_ms.min(500);
        source.fail_safe_after_s = fail_safe_after_s;
        config.controller = Some(source);
        let other_clusters = extra_clusters.clone();
        let bootstrap = CanaryBootstrap {
            listener: ListenerSource::Static(build_listener(
                &config,
                build,
                wasm.clone(),
                FailurePolicy::FailReload,
            )?),
            stable: stable.addr(),
            canary: canary.addr(),
            stats_flush_ms: STATS_FLUSH_MS,
            extra_clusters: {
                extra_clusters.push((CONTROLLER_CLUSTER.to_string(), controller_addr));
                extra_clusters
            },
        }
        .to_json();
        let mut started = Vec::new();
        let mut bases = Vec::new();
        for i in 0..envoys {
            let envoy = Envoy::start(
                &bootstrap,
                EnvoyOptions {
                    concurrency: 2,
                    name: format!("envoy-{i}"),
                    ..Default::default()
                },
            )
            .await?;
            bases.push(envoy.url().await?);
            started.push(envoy);
        }
        Ok(ControlledRig {
            stable,
            canary,
            envoys: started,
            bases,
            controller_addr,
            state_dir: tempfile::Builder::new()
                .prefix("canaryctl-state-")
                .tempdir()?,
            rollout,
            filter_config: config,
            build,
            wasm,
            other_clusters,
        })
    }

    /// One more Envoy like the rig's, whose filter reaches the controller at `controller`
    /// (e.g. through a proxy that delays it). Not added to `envoys`.
    pub async fn start_envoy_via(&self, controller: SocketAddr, name: &str) -> Result<Envoy> {
        let mut clusters = self.other_clusters.clone();
        clusters.push((CONTROLLER_CLUSTER.to_string(), controller));
        let bootstrap = CanaryBootstrap {
            listener: ListenerSource::Static(build_listener(
                &self.filter_config,
                self.build,
                self.wasm.clone(),
                FailurePolicy::FailReload,
            )?),
            stable: self.stable.addr(),
            canary: self.canary.addr(),
            stats_flush_ms: STATS_FLUSH_MS,
            extra_clusters: clusters,
        }
        .to_json();
        let options = EnvoyOptions {
            concurrency: 2,
            name: name.to_string(),
            ..Default::default()
        };
        Envoy::start(&bootstrap, options).await
    }

    /// The `sources:` block naming every Envoy's admin endpoint.
    pub fn sources_yaml(&self) -> String {
        let admins: Vec<String> = self
            .envoys
            .iter()
            .map(|e| format!("\"http://{}\"", e.admin_addr()))
            .collect();
        format!("sources: {{envoy_admin: [{}]}}\n", admins.join(", "))
    }

    /// The `sources:` block of lean mode: every Envoy's admin endpoint, read for the rig's
    /// `stable` and `canary` clusters' stats.
    pub fn lean_sources_yaml(&self) -> String {
        let admin = self.sources_yaml();
        let admin = admin.trim_end().trim_end_matches('}');
        format!("{admin}, clusters: {{stable: stable, canary: canary}}}}\n")
    }

    /// Whether every Envoy routes `users` exactly as the contract does at `weight_bp`.
    pub async fn routes_at(&self, weight_bp: u32, users: &[String]) -> Result<bool> {
        let rollout = RolloutConfig::new(&self.rollout, weight_bp);
        let client = http_client(8)?;
        for base in &self.bases {
            let probes: Vec<Probe> = users.iter().map(|u| Probe::user(base, "/", u)).collect();
            let answers = send_all(&client, &probes, 8).await?;
            for (user, answer) in users.iter().zip(&answers) {
                let want = rollout.version_for_key(user).as_str();
                if answer.served_by.as_deref() != Some(want) {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Waits until every Envoy routes `users` as at `weight_bp`; returns how long that took.
    pub async fn wait_for_weight(
        &self,
        weight_bp: u32,
        users: &[String],
        deadline: Duration,
    ) -> Result<Duration> {
        let start = tokio::time::Instant::now();
        loop {
            if self.routes_at(weight_bp, users).await? {
                return Ok(start.elapsed());
            }
            if start.elapsed() > deadline {
                anyhow::bail!("weight {weight_bp}bp not reached on every Envoy in {deadline:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the controller reading the Envoys' admin endpoints.
    pub async fn start_controller(&self, spec_body: &str) -> Result<Canaryctl> {
        self.start_controller_with_sources(&self.sources_yaml(), spec_body)
            .await
    }

    /// Starts the controller with its own `sources:` block (e.g. a Prometheus server).
    pub async fn start_controller_with_sources(
        &self,
        sources_yaml: &str,
        spec_body: &str,
    ) -> Result<Canaryctl> {
        let spec = format!("name: {}\n{sources_yaml}{spec_body}", self.rollout);
        Canaryctl::start(&spec, self.controller_addr, self.state_dir.path(), TOKEN).await
    }

    /// [`ControlledRig::start_controller`] started as `options` say.
    pub async fn start_controller_with(
        &self,
        spec_body: &str,
        options: CtlOptions,
    ) -> Result<Canaryctl> {
        let spec = format!("name: {}\n{}{spec_body}", self.rollout, self.sources_yaml());
        Canaryctl::start_with(&spec, self.controller_addr, self.state_dir.path(), options).await
    }
}

/// Waits until the controller's status satisfies `done`; returns it.
pub async fn wait_status(
    ctl: &Canaryctl,
    what: &str,
    deadline: Duration,
    done: impl Fn(&Value) -> bool,
) -> Result<Value> {
    eventually(what, deadline, || ctl.status(), |s| done(s)).await
}

/// The checks of every passing analysis in a status (`canaryctl status` JSON).
pub fn passing_checks(status: &Value) -> Vec<Value> {
    status["verdicts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["verdict"]["outcome"] == "pass")
        .flat_map(|v| {
            v["verdict"]["checks"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

/// The message of the rollback event in a status's timeline (empty if there is none).
pub fn rollback_message(status: &Value) -> String {
    status["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["kind"] == "rolled_back")
        .and_then(|e| e["message"].as_str())
        .unwrap_or("")
        .to_string()
}
