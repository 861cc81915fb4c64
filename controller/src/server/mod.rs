//! The running controller, the I/O floor: the rollouts it runs ([`fleet`]: one
//! [`Controller`] behind a mutex per rollout spec), the analysis loop that feeds each
//! windows ([`analysis_loop`]), the HTTP API ([`api`]), `/metrics`
//! ([`metrics`]), what it publishes ([`publication`]: the filter configuration) and the
//! webhooks that hear about events ([`notify`]: signed, retried).
//! May import every other module of the crate; none imports it.
//!
//! Every change of a rollout's state goes through its mutex, is saved before it becomes visible, and the
//! filter configuration served at `/filter-config` is derived from the saved state, so a
//! restarted controller serves exactly what it served before. That configuration is
//! published, with every other rollout's, as one snapshot ([`publication::Served`], in a
//! `watch` channel) after each change: polls read it without the mutex, so they never wait behind an analysis (nor does
//! the analysis loop hold the mutex while it scrapes or judges).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::routing::{get, post};
use axum::Router;
use tokio::sync::Mutex;

use crate::machine::{Effect, RolloutState};
use crate::spec::RolloutSpec;
use crate::store::{StateStore, StoreError};

mod analysis_loop;
mod api;
mod fleet;
mod metrics;
mod notify;
mod publication;
#[cfg(test)]
mod tests;

pub use fleet::{Refusal, SpecSource};
pub use notify::read_secret_file;

pub struct ServeOptions {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    /// Bearer token for the operator's calls (promote, pause, resume, abort); `None`
    /// refuses them.
    pub operator_token: Option<String>,
    /// Bearer token for `POST /feedback` only. `None`: the operator token is taken there too
    /// (one token, as before separate tokens existed).
    pub feedback_token: Option<String>,
    /// A PEM bundle of CA certificates trusted besides the built-in public roots (webhooks,
    /// Prometheus, Envoy admin endpoints behind a private CA).
    pub ca_file: Option<PathBuf>,
}

struct Controller {
    spec: RolloutSpec,
    state: RolloutState,
    store: StateStore,
    verdict_counts: BTreeMap<&'static str, u64>,
    /// Failed readings by source and reason (see `stats::window::ReadError`).
    source_errors: BTreeMap<(String, &'static str), u64>,
    breaker: BreakerSeen,
    /// The fallback chain's tiers as the analysis windows saw them: counters summed since
    /// this process started, breaker gauges as at the end of the last window.
    tiers: BTreeMap<String, crate::stats::TierStats>,
    /// Where this rollout's part of the served filter configuration goes: every proxy
    /// fetches the same bytes after a change, so they are built once per change
    /// ([`Controller::publish`]).
    publisher: Arc<publication::Publisher>,
    /// The last configuration published that the contract's validator accepted (the
    /// fallback's base if the spec's own is ever refused).
    last_good: Option<canary_contract::FilterConfig>,
    /// Configurations built from the spec that the validator refused (for /metrics).
    config_refused: u64,
    /// Weights served over time, for ratings that arrive late.
    weights: crate::feedback::WeightHistory,
    /// Ratings not yet in an analysis window.
    feedback: crate::feedback::PendingFeedback,
    /// Ratings received, by version and rating (for /metrics).
    feedback_total: BTreeMap<(&'static str, &'static str), u64>,
    /// The last judged window's checks (for /metrics).
    last_checks: Vec<crate::judge::CheckResult>,
    /// The global quota sentinel (`quota` in the spec); not saved: a restarted controller
    /// measures again.
    quota: crate::machine::quota::Sentinel,
    /// Proxies read in the last round (for `quota.per_user`, divided among them).
    proxies: usize,
    /// The stats sources known before any reading (for `/metrics`).
    source_names: Vec<String>,
    webhooks: notify::Webhooks,
}

/// The filters' circuit breakers as the analysis windows saw them (since this process
/// started).
#[derive(Debug, Default, Clone, Copy)]
struct BreakerSeen {
    trips: u64,
    diverted: u64,
    /// Envoys whose breaker was open at the end of the last window.
    open: u64,
}

type Shared = Arc<Mutex<Controller>>;

#[derive(Clone)]
struct AppState {
    fleet: Arc<Mutex<fleet::Fleet>>,
    /// The published filter configuration, read without the controller's mutex.
    served: tokio::sync::watch::Receiver<Arc<publication::Served>>,
    operator_token: Option<Arc<String>>,
    feedback_token: Option<Arc<String>>,
    http: reqwest::Client,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Controller {
    /// A controller for `spec` in `state`, its configuration published at once.
    fn new(
        spec: RolloutSpec,
        state: RolloutState,
        store: StateStore,
        webhooks: notify::Webhooks,
        publisher: Arc<publication::Publisher>,
    ) -> Controller {
        let mut c = Controller {
            proxies: spec.sources.envoy_admin.len().max(1),
            spec,
            state,
            store,
            verdict_counts: BTreeMap::new(),
            source_errors: BTreeMap::new(),
            breaker: BreakerSeen::default(),
            tiers: BTreeMap::new(),
            publisher,
            last_good: None,
            config_refused: 0,
            weights: crate::feedback::WeightHistory::default(),
            feedback: crate::feedback::PendingFeedback::default(),
            feedback_total: BTreeMap::new(),
            last_checks: Vec::new(),
            quota: crate::machine::quota::Sentinel::default(),
            source_names: Vec::new(),
            webhooks,
        };
        c.publish();
        c
    }

    /// Carries out a transition: save first (an ended run to the history, then the state),
    /// then notify (publication is the saved state).
    fn apply(
        &mut self,
        next: RolloutState,
        effects: Vec<Effect>,
        http: &reqwest::Client,
    ) -> Result<(), StoreError> {
        for effect in &effects {
            if let Effect::Archive(run) = effect {
                self.store.archive(run)?;
            }
        }
        self.store.save(&next)?;
        if next.run != self.state.run {
            // Ratings not yet judged were about the run that ended, not the new one.
            self.feedback = crate::feedback::PendingFeedback::default();
        }
        self.state = next;
        for effect in effects {
            match effect {
                Effect::PublishWeight(bp) => {
                    self.weights.record(now_ms(), bp);
                    eprintln!(
                        "canaryctl: {}: weight {} (config version {})",
                        self.spec.name,
                        crate::machine::pct(bp),
                        self.state.config_version
                    );
                }
                Effect::Notify(event) => {
                    eprintln!("canaryctl: {}: {}", self.spec.name, event.message);
                    self.notify_webhooks(&event, http);
                }
                Effect::Archive(_) => {} // saved above
            }
        }
        self.publish();
        Ok(())
    }
}

/// The client for webhooks and stats sources: TLS by rustls (no OpenSSL, so the static musl
/// build has it too) with the public roots built in, plus the CAs of `ca_file`.
fn http_client(ca_file: Option<&std::path::Path>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(2));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("--ca-file {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| anyhow::anyhow!("--ca-file {}: {e}", path.display()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "--ca-file {}: no PEM certificate in it",
            path.display()
        );
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder.build()?)
}

/// Runs the controller for the rollouts of `specs` until the process is stopped. With one
/// spec file, a spec refused at start stops the start; a directory starts with whatever in
/// it is valid.
pub async fn serve(specs: SpecSource, options: ServeOptions) -> anyhow::Result<()> {
    let http = http_client(options.ca_file.as_deref())?;
    let (publisher, served) = publication::Publisher::held();
    let mut fleet = fleet::Fleet::new(options.state_dir.clone(), http.clone(), publisher.clone());
    let files = specs
        .read()
        .map_err(|e| anyhow::anyhow!("reading the specs ({specs:?}): {e}"))?;
    fleet.reconcile(files).await;
    if let (SpecSource::File(path), Some(refused)) = (&specs, fleet.refused().next()) {
        anyhow::bail!("{}: {}", path.display(), refused.error);
    }
    publisher.release();
    let fleet = Arc::new(Mutex::new(fleet));
    tokio::spawn(fleet::watch(fleet.clone(), specs));
    let app = AppState {
        fleet,
        served,
        feedback_token: options
            .feedback_token
            .or_else(|| options.operator_token.clone())
            .map(Arc::new),
        operator_token: options.operator_token.map(Arc::new),
        http,
    };
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/status", get(api::status))
        .route("/rollouts", get(api::list))
        .route("/rollouts/{name}", get(api::rollout_status))
        .route("/rollouts/{name}/history", get(api::rollout_history))
        .route("/rollouts/{name}/{command}", post(api::rollout_command))
        .route("/metrics", get(metrics::metrics))
        .route("/filter-config", get(api::filter_config))
        .route("/history", get(api::history))
        .route("/rollout/{command}", post(api::command))
        .route("/feedback", post(api::feedback))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(options.listen).await?;
    eprintln!("canaryctl: listening on http://{}", listener.local_addr()?);
    axum::serve(listener, router).await?;
    Ok(())
}
