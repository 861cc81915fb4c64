//! Envoy bootstrap templates: the canary filter in front of `stable` / `canary` clusters, the
//! native hashed split it is compared with, and a `direct_response` upstream for benchmarks;
//! HTTP/2 upstreams for gRPC.
//!
//! Every listener and the admin endpoint bind loopback port 0 unless told otherwise; the
//! harness reads the real ports back from the admin endpoint.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use canary_contract::stats::{
    latency_buckets_ms, CLUSTER_RQ_TIME_STAT_SUFFIX, ENVOY_STATS_TAGS, ENVOY_STAT_PREFIX,
    ENVOY_WASM_PREFIX,
};
use serde_json::{json, Value};

/// Cluster names the routes send to; an Istio VirtualService would use subsets instead.
pub const STABLE_CLUSTER: &str = "stable";
pub const CANARY_CLUSTER: &str = "canary";
/// Name of the HTTP listener in every template.
pub const LISTENER_NAME: &str = "ingress";

/// What Envoy does with a request when the filter's VM has failed (Envoy's
/// `PluginConfig.failure_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Requests fail with 503 while the VM is broken (Envoy's default).
    FailClosed,
    /// Requests skip the filter: no routing header is set, so they take the default
    /// route to `stable`.
    FailOpen,
    /// A new VM is started for the next request.
    FailReload,
}

impl FailurePolicy {
    fn as_envoy(self) -> &'static str {
        match self {
            FailurePolicy::FailClosed => "FAIL_CLOSED",
            FailurePolicy::FailOpen => "FAIL_OPEN",
            FailurePolicy::FailReload => "FAIL_RELOAD",
        }
    }
}

/// Which build of the filter a listener runs: the same routing and stats either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FilterBuild {
    /// `canary_filter.wasm` on Envoy's V8 (`envoy.filters.http.wasm`).
    #[default]
    Wasm,
    /// `libcanary_filter.so`, an Envoy Dynamic Module (`envoy.filters.http.dynamic_modules`),
    /// its routes' cluster picked by the module's cluster specifier.
    Native,
    /// The same module on the wasm build's header-matched routes.
    NativeHeaderRoutes,
}

impl FilterBuild {
    pub const ALL: [FilterBuild; 2] = [FilterBuild::Wasm, FilterBuild::Native];

    /// The listener routing of this build with `module` (its `.wasm` or `.so`) and the
    /// plugin configuration. The native filter has no failure policy: it cannot fail the
    /// way a VM does.
    pub fn routing(
        self,
        module: PathBuf,
        config_json: String,
        route_header: String,
        failure_policy: FailurePolicy,
    ) -> Routing {
        match self {
            FilterBuild::Wasm => Routing::Filter {
                wasm: module,
                config_json,
                route_header,
                failure_policy,
            },
            FilterBuild::Native | FilterBuild::NativeHeaderRoutes => Routing::NativeFilter {
                module,
                config_json,
                route_header,
                routes: if self == FilterBuild::Native {
                    NativeRoutes::Specifier
                } else {
                    NativeRoutes::Header
                },
            },
        }
    }
}

/// How the listener picks between the `stable` and `canary` clusters.
#[derive(Debug, Clone)]
pub enum Routing {
    /// The canary filter sets `route_header`; routes match on it (default route: stable).
    Filter {
        wasm: PathBuf,
        /// The plugin configuration (the contract's JSON), passed as a string.
        config_json: String,
        route_header: String,
        failure_policy: FailurePolicy,
    },
    /// The same filter built as an Envoy Dynamic Module; the same configuration.
    NativeFilter {
        module: PathBuf,
        config_json: String,
        route_header: String,
        routes: NativeRoutes,
    },
    /// Header-matched routes with no filter at all: the cheapest possible routing.
    HeaderOnly { route_header: String },
    /// Envoy's own sticky split: `weighted_clusters` with `use_hash_policy` and a route
    /// `hash_policy` on the user header.
    NativeHashSplit {
        user_header: String,
        canary_weight_bp: u32,
    },
}

/// How the native build's routes pick the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeRoutes {
    /// One route whose cluster the module's `wasm-canary` cluster specifier picks, by the
    /// filter's configuration, as Envoy picks the route: nothing picks it again. The filter
    /// still sets the routing header, for the upstream to see.
    Specifier,
    /// The wasm build's header-matched routes: the filter sets the header and has Envoy pick
    /// the route again.
    Header,
}

/// The listener half of a canary Envoy's configuration.
#[derive(Debug, Clone)]
pub struct Listener {
    pub port: u16,
    pub routing: Routing,
}

impl Listener {
    pub fn to_json(&self) -> Value {
        let mut http_filters = Vec::new();
        let routes = match &self.routing {
            Routing::Filter {
                wasm,
                config_json,
                route_header,
                failure_policy,
            } => {
                http_filters.push(wasm_filter(wasm, config_json, *failure_policy));
                header_routes(route_header)
            }
            Routing::NativeFilter {
                module,
                config_json,
                route_header,
                routes,
            } => {
                http_filters.push(native_filter(module, config_json));
                match routes {
                    NativeRoutes::Specifier => specifier_routes(module),
                    NativeRoutes::Header => header_routes(route_header),
                }
            }
            Routing::HeaderOnly { route_header } => header_routes(route_header),
            Routing::NativeHashSplit {
                user_header,
                canary_weight_bp,
            } => native_split_routes(user_header, *canary_weight_bp),
        };
        http_filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
        }));
        json!({
            "name": LISTENER_NAME,
            // Port 0 would otherwise name the stats `listener.127.0.0.1_0.*`.
            "stat_prefix": LISTENER_NAME,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": self.port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": LISTENER_NAME,
                    "route_config": {
                        "name": "local",
                        "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]
                    },
                    "http_filters": http_filters
                }
            }]}]
        })
    }
}

/// The wasm HTTP filter running our module on V8.
fn wasm_filter(wasm: &Path, config_json: &str, failure_policy: FailurePolicy) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "wasm-canary",
                "failure_policy": failure_policy.as_envoy(),
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": config_json
                },
                "vm_config": {
                    "vm_id": "wasm-canary",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm.display().to_string()}}
                }
            }
        }
    })
}

/// The native filter's `filter_name`, which its routes' cluster specifier names.
pub const NATIVE_FILTER_NAME: &str = "wasm-canary";

/// The dynamic-modules HTTP filter loading our `.so` by path, with the plugin configuration
/// as its `filter_config`. Its metrics go under the wasm filter's namespace, so both builds'
/// stats have the same names, tags and Prometheus series.
fn native_filter(module: &Path, config_json: &str) -> Value {
    json!({
        "name": "envoy.filters.http.dynamic_modules",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": {
                "module": {"local": {"filename": module.display().to_string()}},
                "metrics_namespace": ENVOY_WASM_PREFIX.trim_end_matches('.'),
            },
            "filter_name": NATIVE_FILTER_NAME,
            "filter_config": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": config_json
            }
        }
    })
}

/// `route_header: canary` goes to the canary cluster; anything else (including no header)
/// to stable.
fn header_routes(route_header: &str) -> Vec<Value> {
    vec![
        json!({
            "match": {"prefix": "/", "headers": [{"name": route_header, "string_match": {"exact": "canary"}}]},
            "route": {"cluster": CANARY_CLUSTER}
        }),
        json!({"match": {"prefix": "/"}, "route": {"cluster": STABLE_CLUSTER}}),
    ]
}

/// One route to the cluster the module's cluster specifier picks: the version the
/// `wasm-canary` filter's configuration decides, `canary` to the canary cluster, anything
/// else to stable.
fn specifier_routes(module: &Path) -> Vec<Value> {
    let route = canary_contract::native_route::NativeRouteConfig {
        filter_name: NATIVE_FILTER_NAME.to_string(),
        stable_cluster: STABLE_CLUSTER.to_string(),
        canary_cluster: CANARY_CLUSTER.to_string(),
        rollout: None,
    };
    vec![json!({
        "match": {"prefix": "/"},
        "route": {"inline_cluster_specifier_plugin": {"extension": {
            "name": "wasm-canary",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.router.cluster_specifiers.dynamic_modules.v3.DynamicModuleClusterSpecifier",
                "dynamic_module_config": {"module": {"local": {"filename": module.display().to_string()}}},
                "specifier_name": "wasm-canary",
                "specifier_config": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": route.to_json()
                }
            }
        }}}
    })]
}

fn native_split_routes(user_header: &str, canary_weight_bp: u32) -> Vec<Value> {
    vec![json!({
        "match": {"prefix": "/"},
        "route": {
            "weighted_clusters": {
                "use_hash_policy": true,
                "clusters": [
                    {"name": CANARY_CLUSTER, "weight": canary_weight_bp},
                    {"name": STABLE_CLUSTER, "weight": 10_000 - canary_weight_bp.min(10_000)}
                ]
            },
            "hash_policy": [{"header": {"header_name": user_header}}]
        }
    })]
}

fn static_cluster(name: &str, addr: SocketAddr) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": addr.ip().to_string(), "port_value": addr.port()
            }}}}]}]
        }
    })
}

/// Makes the `stable` and `canary` clusters of a [`CanaryBootstrap`] speak HTTP/2 to their
/// upstreams (gRPC servers). The listener needs nothing: its codec (Envoy's default, AUTO)
/// takes HTTP/2 with prior knowledge, as gRPC clients speak it without TLS.
pub fn use_http2_upstreams(bootstrap: &mut Value) {
    let Some(clusters) = bootstrap["static_resources"]["clusters"].as_array_mut() else {
        return;
    };
    for cluster in clusters
        .iter_mut()
        .filter(|c| c["name"] == STABLE_CLUSTER || c["name"] == CANARY_CLUSTER)
    {
        cluster["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        });
    }
}

/// Where the listener comes from.
#[derive(Debug, Clone)]
pub enum ListenerSource {
    /// Part of the bootstrap: fixed for the life of the process.
    Static(Listener),
    /// Read from an LDS file that the test may rewrite (atomically, by rename) to change the
    /// filter configuration of a running Envoy.
    File(PathBuf),
}

/// A whole bootstrap for an Envoy that routes to two upstreams.
#[derive(Debug, Clone)]
pub struct CanaryBootstrap {
    pub listener: ListenerSource,
    pub stable: SocketAddr,
    pub canary: SocketAddr,
    /// Histograms only change at the admin endpoint at each flush.
    pub stats_flush_ms: u64,
    /// More static clusters, e.g. the controller the filter polls.
    pub extra_clusters: Vec<(String, SocketAddr)>,
}

impl CanaryBootstrap {
    pub fn to_json(&self) -> Value {
        let mut clusters = vec![
            static_cluster(STABLE_CLUSTER, self.stable),
            static_cluster(CANARY_CLUSTER, self.canary),
        ];
        for (name, addr) in &self.extra_clusters {
            clusters.push(static_cluster(name, *addr));
        }
        let mut bootstrap = json!({
            "node": {"id": "wasm-canary-e2e", "cluster": "wasm-canary"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "stats_config": stats_config(),
            "stats_flush_interval": format!("{}s", self.stats_flush_ms as f64 / 1000.0),
            "static_resources": {"clusters": clusters}
        });
        match &self.listener {
            ListenerSource::Static(listener) => {
                bootstrap["static_resources"]["listeners"] = json!([listener.to_json()]);
            }
            ListenerSource::File(path) => {
                let dir = path.parent().unwrap_or(Path::new("."));
                bootstrap["dynamic_resources"] = json!({"lds_config": {
                    "resource_api_version": "V3",
                    "path_config_source": {
                        "path": path.display().to_string(),
                        "watched_directory": {"path": dir.display().to_string()}
                    }
                }});
            }
        }
        bootstrap
    }
}

/// The bootstrap's `stats_config`: the contract's tag rules, and its fine latency buckets
/// for the filter's histograms (the LLM build's) and the clusters' request time.
pub fn stats_config() -> Value {
    json!({
        "stats_tags": stats_tags(),
        "histogram_bucket_settings": [{
            "match": {"prefix": ENVOY_STAT_PREFIX},
            "buckets": latency_buckets_ms(),
        }, {
            // Lean mode: the clusters' request time is each version's latency.
            "match": {"suffix": CLUSTER_RQ_TIME_STAT_SUFFIX},
            "buckets": latency_buckets_ms(),
        }],
    })
}

/// The tag extraction rules that turn our stat names into `rollout` / `version` (and a latency
/// bucket's `upper_us`) labels.
pub fn stats_tags() -> Value {
    Value::Array(
        ENVOY_STATS_TAGS
            .iter()
            .map(|(name, regex)| json!({"tag_name": name, "regex": regex}))
            .collect(),
    )
}

/// Whether a bootstrap's `stats_config` (written by hand: a manifest, an example) carries the
/// contract's tag rules, in order, and the fine latency buckets for the filter's histograms.
pub fn check_stats_config(stats_config: &Value) -> anyhow::Result<()> {
    let tags = stats_config["stats_tags"].as_array();
    let got: Vec<(&str, &str)> = (tags.into_iter().flatten())
        .filter_map(|t| Some((t["tag_name"].as_str()?, t["regex"].as_str()?)))
        .collect();
    anyhow::ensure!(
        got == ENVOY_STATS_TAGS.to_vec(),
        "stats_tags {got:?} are not the contract's {ENVOY_STATS_TAGS:?}"
    );
    let settings = &stats_config["histogram_bucket_settings"][0];
    anyhow::ensure!(
        settings["match"] == json!({"prefix": ENVOY_STAT_PREFIX}),
        "histogram_bucket_settings[0].match is {}, not the prefix {ENVOY_STAT_PREFIX}",
        settings["match"]
    );
    let buckets: Vec<f64> = serde_json::from_value(settings["buckets"].clone())
        .map_err(|e| anyhow::anyhow!("histogram_bucket_settings[0].buckets: {e}"))?;
    anyhow::ensure!(
        buckets == latency_buckets_ms(),
        "histogram_bucket_settings[0].buckets are not canary_contract::stats::latency_buckets_ms()"
    );
    Ok(())
}

/// An LDS file (a `DiscoveryResponse`) holding one listener.
pub fn lds_file(listener: &Listener) -> Value {
    let mut resource = listener.to_json();
    resource["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
    json!({"version_info": "0", "resources": [resource]})
}

/// An upstream Envoy that answers every request itself (`direct_response`): the benchmark's
/// upstream, so the load generator measures the proxy under test and not a test server.
pub fn direct_response_bootstrap(body: &str) -> Value {
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [{
            "name": LISTENER_NAME,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "upstream",
                    "route_config": {"virtual_hosts": [{
                        "name": "all", "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": body}}}]
                    }]},
                    "http_filters": [{
                        "name": "envoy.filters.http.router",
                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                    }]
                }
            }]}]
        }]}
    })
}
