//! Where the filter's stats come from, as Flagger's metric providers: one small trait,
//! [`StatsSource`], and one implementation per kind of source: [`envoy_admin`] (each
//! Envoy's admin endpoint), [`envoy_clusters`] (lean mode: the same endpoints' stable and
//! canary cluster stats) and [`prometheus`] (a Prometheus server that scrapes them; in a
//! mesh the admin port is not reachable from outside the pod). Both give one
//! [`Reading`] of cumulative counters per Envoy; [`crate::stats::window`] turns successive
//! readings into windows the same way for both. The I/O edge of the `stats` floor: imports
//! `spec` and `stats`; only `server` imports it.

use std::future::Future;

use futures::future::{BoxFuture, FutureExt};

use crate::spec::Sources;
use crate::stats::window::Reading;

pub mod envoy_admin;
pub mod envoy_clusters;
pub mod prometheus;

/// One kind of stats source.
pub trait StatsSource: Send + Sync {
    /// The sources known before any reading (`/metrics` shows their errors from zero).
    fn names(&self) -> Vec<String>;

    /// Reads every Envoy behind this source once: one [`Reading`] per Envoy, an error
    /// reading for one that could not be read.
    fn read<'a>(
        &'a self,
        http: &'a reqwest::Client,
        rollout: &'a str,
    ) -> BoxFuture<'a, Vec<Reading>>;
}

/// Every admin endpoint read at once, one [`Reading`] each, in the endpoints' order: the
/// `read` of the sources that ask each Envoy directly.
fn read_each<'a, F, R>(endpoints: &'a [String], read_one: F) -> BoxFuture<'a, Vec<Reading>>
where
    F: Fn(&'a str) -> R,
    R: Future<Output = Reading> + Send + 'a,
{
    futures::future::join_all(endpoints.iter().map(|e| read_one(e))).boxed()
}

/// The source the spec names (the spec allows exactly one kind).
pub fn from_spec(sources: &Sources) -> Box<dyn StatsSource> {
    match (&sources.prometheus, &sources.clusters) {
        (Some(p), _) => Box::new(prometheus::Prometheus {
            url: p.url.clone(),
            lag: p.lag,
        }),
        (None, Some(clusters)) => Box::new(envoy_clusters::EnvoyClusters {
            endpoints: sources.envoy_admin.clone(),
            clusters: clusters.clone(),
        }),
        (None, None) => Box::new(envoy_admin::EnvoyAdmin {
            endpoints: sources.envoy_admin.clone(),
        }),
    }
}
