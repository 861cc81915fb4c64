//! The native request path over a fake stream: the same routing and the same stats as the
//! wasm filter's, by name and by count.

use std::cell::RefCell;
use std::collections::BTreeMap;

use canary_contract::stats::{bucket_stat_name, latency_buckets_us, stat_name, Metric, MetricKind};
use canary_contract::{FilterConfig, RolloutConfig, Version};
use canary_filter::metrics::{MetricHost, RolloutMetrics};
use canary_filter::routing::RequestHeaders;

use std::sync::Arc;

use canary_contract::native_route::NativeRouteConfig;

use super::{Config, HttpStream, Request};
use crate::envoy::{DefineMetric, NativeMetric};
use crate::route_time::{self, Specifier};

/// Envoy as far as `config_new` sees it: every definition by kind and name.
#[derive(Default)]
struct FakeDefinitions {
    names: Vec<(MetricKind, String)>,
}

impl DefineMetric for FakeDefinitions {
    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Result<usize, String> {
        self.names.push((kind, name.to_string()));
        Ok(self.names.len() - 1)
    }

    fn define_family(
        &mut self,
        kind: MetricKind,
        name: &str,
        labels: &[&str],
    ) -> Result<usize, String> {
        self.names
            .push((kind, format!("{name}{{{}}}", labels.join(","))));
        Ok(self.names.len() - 1)
    }
}

/// The wasm filter's definitions of the same rollout (its `MetricHost`).
#[derive(Default)]
struct WasmDefinitions(Vec<(MetricKind, String)>);

impl MetricHost for WasmDefinitions {
    fn define(&mut self, kind: MetricKind, name: &str) -> Result<u32, String> {
        self.0.push((kind, name.to_string()));
        Ok(self.0.len() as u32 - 1)
    }
}

/// One request's stream: headers in and out, and the metric updates, by Envoy id.
#[derive(Default)]
struct FakeStream {
    request: RefCell<BTreeMap<String, Vec<u8>>>,
    response: BTreeMap<String, Vec<u8>>,
    code_details: Option<Vec<u8>>,
    added_response: RefCell<Vec<(String, Vec<u8>)>>,
    route_cache_cleared: RefCell<u32>,
    route_cluster: Option<String>,
    updates: RefCell<Vec<(NativeMetric, u64)>>,
    labeled: RefCell<Vec<(NativeMetric, Vec<String>, u64)>>,
}

impl RequestHeaders for FakeStream {
    fn header(&self, name: &str) -> Option<std::borrow::Cow<'_, [u8]>> {
        self.request
            .borrow()
            .get(name)
            .cloned()
            .map(std::borrow::Cow::Owned)
    }
}

impl HttpStream for FakeStream {
    fn set_request_header(&self, name: &str, value: &[u8]) {
        self.request
            .borrow_mut()
            .insert(name.to_string(), value.to_vec());
    }
    fn remove_request_header(&self, name: &str) {
        self.request.borrow_mut().remove(name);
    }
    fn clear_route_cache(&self) {
        *self.route_cache_cleared.borrow_mut() += 1;
    }
    fn routes_to(&self, cluster: &str) -> bool {
        self.route_cluster.as_deref() == Some(cluster)
    }
    fn response_code(&self) -> Option<u64> {
        None
    }
    fn response_header(&self, name: &str) -> Option<std::borrow::Cow<'_, [u8]>> {
        (self.response.get(name)).map(|v| std::borrow::Cow::Borrowed(v.as_slice()))
    }
    fn response_trailer(&self, _name: &str) -> Option<Vec<u8>> {
        None
    }
    fn add_response_header(&self, name: &str, value: &[u8]) {
        (self.added_response.borrow_mut()).push((name.to_string(), value.to_vec()));
    }
    fn response_code_details(&self) -> Option<Vec<u8>> {
        self.code_details.clone()
    }
    fn update(&self, metric: NativeMetric, value: u64) {
        self.updates.borrow_mut().push((metric, value));
    }
    fn update_labeled(&self, metric: NativeMetric, labels: &[&[u8]], value: u64) {
        let labels = (labels.iter())
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        (self.labeled.borrow_mut()).push((metric, labels, value));
    }
}

fn config(rollout: &RolloutConfig) -> (Config, FakeDefinitions) {
    let mut defs = FakeDefinitions::default();
    let json = FilterConfig::new(vec![rollout.clone()]).to_json();
    let (config, _) = Config::new(json.as_bytes(), &mut defs).expect("valid configuration");
    (config, defs)
}

/// The stat names of the updates a stream received, with their values.
fn updated(defs: &FakeDefinitions, stream: &FakeStream) -> Vec<(String, u64)> {
    let updates = stream.updates.borrow();
    updates
        .iter()
        .map(|(m, v)| (defs.names[m.id].1.clone(), *v))
        .collect()
}

fn user_stream(user: &str) -> FakeStream {
    let stream = FakeStream::default();
    stream.set_request_header("x-user-id", user.as_bytes());
    stream
}

#[test]
fn defines_the_wasm_filters_stats_by_name_and_kind() {
    let rollout = RolloutConfig::new("shop", 3_000);
    let (_, native) = config(&rollout);
    let mut wasm = WasmDefinitions::default();
    RolloutMetrics::define(&mut wasm, &rollout).expect("defined");
    assert_eq!(native.names, wasm.0);
    assert!(native.names.contains(&(
        MetricKind::Counter,
        stat_name(Metric::RqTotal, "shop", Version::Canary)
    )));
}

#[test]
fn routes_as_the_contract_and_counts_the_exchange() {
    let rollout = RolloutConfig::new("shop", 5_000);
    let (config, defs) = config(&rollout);
    for user in ["ann", "bob", "cy", "dee", "eve", "fay"] {
        let mut stream = user_stream(user);
        // A client trying to pick a version: overwritten by the filter's choice.
        stream.set_request_header(&rollout.route_header, b"canary");
        let version = rollout.version_for_key(user);
        let mut request = Request::default();
        request.on_request_headers(&config, &stream);
        assert_eq!(
            stream.header(&rollout.route_header).as_deref(),
            Some(version.as_str().as_bytes()),
            "{user}"
        );
        assert_eq!(*stream.route_cache_cleared.borrow(), 1);
        stream.response.insert(":status".into(), b"200".to_vec());
        request.on_response_headers(&config, &stream, true);
        request.on_stream_complete(&config, &stream);
        let names: Vec<String> = updated(&defs, &stream)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        // The test takes well under 1 ms: 0 or 1 ms (if the clock's ms turned), the first
        // bucket or the one holding 1 ms, after the sum.
        let bucket = |us| bucket_stat_name(Metric::RqTimeMs, "shop", version, Some(us));
        assert!(
            names.len() == 4 && [bucket(500), bucket(1_060)].contains(&names[3]),
            "{user}: {names:?}"
        );
        let expect = [
            stat_name(Metric::RqTotal, "shop", version),
            stat_name(Metric::Rq2xx, "shop", version),
            stat_name(Metric::RqTimeMs, "shop", version),
            names[3].clone(),
        ];
        assert_eq!(names, expect, "{user}");
        assert!(
            stream.added_response.borrow().is_empty(),
            "a keyed user gets no cookie"
        );
    }
}

#[test]
fn an_upstream_reset_is_a_5xx_and_a_reset() {
    let rollout = RolloutConfig::new("shop", 10_000);
    let (config, defs) = config(&rollout);
    let mut stream = user_stream("ann");
    let mut request = Request::default();
    request.on_request_headers(&config, &stream);
    stream.response.insert(":status".into(), b"503".to_vec());
    stream.code_details = Some(b"upstream_reset_before_response_started{remote_reset}".to_vec());
    request.on_response_headers(&config, &stream, true);
    let names: Vec<String> = updated(&defs, &stream)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(names.contains(&stat_name(Metric::Rq5xx, "shop", Version::Canary)));
    assert!(names.contains(&stat_name(Metric::RqReset, "shop", Version::Canary)));
}

#[test]
fn an_anonymous_user_gets_a_cookie_and_a_stream_ended_early_counts_as_a_reset() {
    let mut rollout = RolloutConfig::new("shop", 5_000);
    rollout.anonymous_cookie.enabled = true;
    let (config, defs) = config(&rollout);
    let stream = FakeStream::default();
    let mut request = Request::default();
    request.on_request_headers(&config, &stream);
    let routed = stream.header(&rollout.route_header);
    assert!(routed.is_some(), "an anonymous user is routed");
    // No response: the client went away.
    request.on_stream_complete(&config, &stream);
    let names: Vec<String> = updated(&defs, &stream)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(names.iter().any(|n| n.starts_with("canary_rq_reset.")));
    let mut request = Request::default();
    let mut stream = FakeStream::default();
    request.on_request_headers(&config, &stream);
    stream.response.insert(":status".into(), b"200".to_vec());
    request.on_response_headers(&config, &stream, true);
    let cookies = stream.added_response.borrow();
    assert_eq!(cookies.len(), 1);
    assert_eq!(cookies[0].0, "set-cookie");
    assert!(cookies[0]
        .1
        .starts_with(rollout.anonymous_cookie.name.as_bytes()));
}

#[test]
fn an_unmatched_request_loses_a_spoofed_header_and_counts_nothing() {
    let mut rollout = RolloutConfig::new("shop", 10_000);
    rollout.request_match.path_prefix = Some("/shop/".into());
    let (config, _) = config(&rollout);
    let stream = user_stream("ann");
    stream.set_request_header(":path", b"/elsewhere");
    stream.set_request_header(&rollout.route_header, b"canary");
    let mut request = Request::default();
    request.on_request_headers(&config, &stream);
    assert_eq!(stream.header(&rollout.route_header), None);
    assert_eq!(*stream.route_cache_cleared.borrow(), 1);
    request.on_stream_complete(&config, &stream);
    assert!(stream.updates.borrow().is_empty());
    // Without a routing header to strip, the request and its route are left alone.
    let stream = user_stream("ann");
    stream.set_request_header(":path", b"/elsewhere");
    Request::default().on_request_headers(&config, &stream);
    assert_eq!(*stream.route_cache_cleared.borrow(), 0);
}

#[test]
fn an_invalid_configuration_is_refused_naming_its_field() {
    let mut defs = FakeDefinitions::default();
    let json = br#"{"schema_version":1,"rollouts":[{"name":"cfg","weight_bp":10001}]}"#;
    let Err(e) = Config::new(json, &mut defs) else {
        panic!("accepted an invalid configuration");
    };
    assert!(
        e.starts_with("invalid plugin configuration: rollouts[0].weight_bp"),
        "{e}"
    );
    assert!(
        defs.names.is_empty(),
        "no metric defined for a refused configuration"
    );
}

#[test]
fn a_rollout_published_later_counts_in_the_families_under_the_same_names() {
    let rollout = RolloutConfig::new("shop", 0);
    let mut config_json = FilterConfig::new(vec![rollout.clone()]);
    config_json.controller = Some(canary_contract::ControllerSource::new("controller"));
    let mut defs = FakeDefinitions::default();
    let (config, _) = Config::new(config_json.to_json().as_bytes(), &mut defs).expect("valid");
    assert!(defs.names.contains(&(
        MetricKind::Counter,
        "canary_rq_total{rollout,version}".into()
    )));
    // The controller adds a rollout: its counters come into being at 0, then count.
    let mut later = config_json.clone();
    later.rollouts.push(RolloutConfig::new("cart", 10_000));
    let fresh = config.activate(later);
    let family = |name: &str| {
        (defs.names.iter())
            .position(|(_, n)| n == name)
            .expect("family")
    };
    let labels = |l: &[&str]| l.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    assert!(fresh.contains(&(
        family("canary_rq_total{rollout,version}"),
        labels(&["cart", "canary"])
    )));
    // The latency buckets and their sum too, as the wasm filter defines them all.
    let buckets = family("canary_rq_time_ms_in_bucket{rollout,version,upper_us}");
    assert!(fresh.contains(&(buckets, labels(&["cart", "stable", "550"]))));
    assert!(fresh.contains(&(buckets, labels(&["cart", "canary", "inf"]))));
    assert_eq!(
        fresh.iter().filter(|(id, _)| *id == buckets).count(),
        2 * (latency_buckets_us().len() + 1)
    );
    assert!(fresh.contains(&(
        family("canary_rq_time_ms_sum{rollout,version}"),
        labels(&["cart", "stable"])
    )));
    let mut stream = user_stream("ann");
    stream.set_request_header(":path", b"/");
    let mut request = Request::default();
    request.on_request_headers(&config, &stream);
    // The first matching rollout wins: "shop" at 0 bp sends ann to stable, counted as defined.
    assert_eq!(
        stream.header(&rollout.route_header).as_deref(),
        Some(&b"stable"[..])
    );
    let mut second = FilterConfig::new(vec![RolloutConfig::new("cart", 10_000)]);
    second.controller = config_json.controller.clone();
    config.activate(second);
    let stream2 = user_stream("bob");
    let mut request2 = Request::default();
    request2.on_request_headers(&config, &stream2);
    assert_eq!(
        stream2.header("x-canary-version").as_deref(),
        Some(&b"canary"[..])
    );
    let labeled = stream2.labeled.borrow();
    assert_eq!(labeled.len(), 1);
    assert_eq!(
        defs.names[labeled[0].0.id].1,
        "canary_rq_total{rollout,version}"
    );
    assert_eq!(labeled[0].1, ["cart".to_string(), "canary".to_string()]);
    drop(labeled);
    // Its end (no answer: a reset): a latency sample to the sum and to a bucket of the family.
    request2.on_stream_complete(&config, &stream2);
    let labeled = stream2.labeled.borrow();
    let names: Vec<(&str, &[String])> = (labeled.iter())
        .map(|(m, l, _)| (defs.names[m.id].1.as_str(), &l[..]))
        .collect();
    let upper_us = labeled[2].1.get(2).map(String::as_str);
    // 0 ms, or 1 ms if the clock's ms turned.
    assert!(matches!(upper_us, Some("500" | "1060")), "{names:?}");
    let bucket = labels(&["cart", "canary", upper_us.unwrap_or_default()]);
    let sum = labeled[1].2;
    assert_eq!(
        names[1..],
        [
            (
                "canary_rq_time_ms_sum{rollout,version}",
                &labels(&["cart", "canary"])[..]
            ),
            (
                "canary_rq_time_ms_in_bucket{rollout,version,upper_us}",
                &bucket[..]
            ),
            (
                "canary_rq_reset{rollout,version}",
                &labels(&["cart", "canary"])[..]
            ),
        ][..],
        "{names:?}"
    );
    assert!(sum <= 1 && labeled[2].2 == 1, "{labeled:?}");
    // A request under way keeps the configuration it was routed by.
    stream.response.insert(":status".into(), b"200".to_vec());
    request.on_response_headers(&config, &stream, true);
    assert!(updated(&defs, &stream)
        .iter()
        .any(|(n, _)| *n == stat_name(Metric::Rq2xx, "shop", Version::Stable)));
}

/// A route-time specifier over `config`, bound under `name` (unique per test: the bindings
/// are the process's).
fn specifier(name: &str, config: &Arc<Config>) -> Arc<Specifier> {
    route_time::bind(name, config);
    Arc::new(Specifier {
        route: Arc::new(NativeRouteConfig {
            filter_name: name.to_string(),
            stable_cluster: "s".into(),
            canary_cluster: "c".into(),
            rollout: None,
        }),
        binding: route_time::binding(name),
    })
}

#[test]
fn routed_at_route_time_sets_the_header_and_counts_without_a_second_pick() {
    let rollout = RolloutConfig::new("shop", 5_000);
    let (config, defs) = config(&rollout);
    let config = Arc::new(config);
    let spec = specifier("t-routed", &config);
    for (i, user) in ["ann", "bob", "cy", "dee", "eve", "fay"]
        .into_iter()
        .enumerate()
    {
        let mut stream = user_stream(user);
        stream.set_request_header(&rollout.route_header, b"canary");
        let handoff = route_time::select(&spec, &stream, i as u64);
        let version = rollout.version_for_key(user);
        let cluster = if version == Version::Canary { "c" } else { "s" };
        assert_eq!(handoff.cluster(), cluster, "{user}");
        stream.route_cluster = Some(cluster.to_string());
        let mut request = Request::routed_at_route_time(Some(handoff));
        request.on_request_headers(&config, &stream);
        assert_eq!(
            stream.header(&rollout.route_header).as_deref(),
            Some(version.as_str().as_bytes()),
            "{user}"
        );
        assert_eq!(*stream.route_cache_cleared.borrow(), 0, "no second pick");
        assert_eq!(
            updated(&defs, &stream),
            [(stat_name(Metric::RqTotal, "shop", version), 1)]
        );
    }
}

#[test]
fn the_version_counted_is_the_one_the_route_sends_to() {
    let rollout = RolloutConfig::new("shop", 10_000);
    let (config, defs) = config(&rollout);
    let config = Arc::new(config);
    let spec = specifier("t-route-wins", &config);
    let mut stream = user_stream("ann");
    let handoff = route_time::select(&spec, &stream, 7);
    assert_eq!(handoff.cluster(), "c");
    // The route was picked again, by a newer configuration, to stable.
    stream.route_cluster = Some("s".into());
    let mut request = Request::routed_at_route_time(Some(handoff));
    request.on_request_headers(&config, &stream);
    assert_eq!(
        stream.header(&rollout.route_header).as_deref(),
        Some(&b"stable"[..])
    );
    assert_eq!(
        updated(&defs, &stream),
        [(stat_name(Metric::RqTotal, "shop", Version::Stable), 1)]
    );
    // A route to neither cluster: not counted, the routing header stripped.
    let mut stream = user_stream("bob");
    stream.set_request_header(&rollout.route_header, b"canary");
    let handoff = route_time::select(&spec, &stream, 8);
    stream.route_cluster = Some("elsewhere".into());
    let mut request = Request::routed_at_route_time(Some(handoff));
    request.on_request_headers(&config, &stream);
    assert_eq!(stream.header(&rollout.route_header), None);
    assert!(updated(&defs, &stream).is_empty());
}

#[test]
fn a_decision_goes_to_its_own_configurations_next_filter_once() {
    let rollout = RolloutConfig::new("shop", 5_000);
    let (config, _) = config(&rollout);
    let config = Arc::new(config);
    let spec = specifier("t-handoff", &config);
    let stream = user_stream("ann");
    let other = Arc::new(self::config(&rollout).0);
    route_time::leave(route_time::select(&spec, &stream, 1), 1);
    assert!(route_time::take(Arc::as_ptr(&other)).is_none(), "not ours");
    route_time::leave(route_time::select(&spec, &stream, 1), 1);
    assert!(route_time::take(Arc::as_ptr(&config)).is_some());
    assert!(
        route_time::take(Arc::as_ptr(&config)).is_none(),
        "taken once"
    );
    // The same stream's route picked again: its filter has its decision already.
    route_time::leave(route_time::select(&spec, &stream, 1), 1);
    assert!(route_time::take(Arc::as_ptr(&config)).is_none());
    route_time::leave(route_time::select(&spec, &stream, 2), 2);
    assert!(route_time::take(Arc::as_ptr(&config)).is_some());
    // A newer configuration decides; dropped, the one before does again.
    route_time::bind("t-handoff", &other);
    route_time::leave(route_time::select(&spec, &stream, 3), 3);
    assert!(route_time::take(Arc::as_ptr(&other)).is_some());
    route_time::unbind("t-handoff", &other);
    route_time::leave(route_time::select(&spec, &stream, 4), 4);
    assert!(route_time::take(Arc::as_ptr(&config)).is_some());
    // Unbound: requests route to stable and count nothing.
    route_time::unbind("t-handoff", &config);
    let handoff = route_time::select(&spec, &stream, 3);
    assert!(handoff.decided.is_none());
    assert_eq!(handoff.cluster(), "s");
}

#[test]
fn a_new_anonymous_id_is_the_same_on_a_second_pick_and_set_as_a_cookie() {
    let rollout = RolloutConfig::new("anon", 5_000);
    let (config, _) = config(&rollout);
    let config = Arc::new(config);
    let spec = specifier("t-anon", &config);
    let mut stream = FakeStream::default();
    let id = |random| {
        let handoff = route_time::select(&spec, &stream, random);
        handoff.decided.and_then(|d| d.new_anonymous_id)
    };
    let first = id(11).expect("an anonymous user gets an id");
    assert_eq!(first.len(), 32);
    assert_eq!(id(11).as_deref(), Some(first.as_str()));
    assert_ne!(id(12).as_deref(), Some(first.as_str()));
    let handoff = route_time::select(&spec, &stream, 11);
    stream.route_cluster = Some(handoff.cluster().to_string());
    let version = rollout.version_for_key(&first);
    assert_eq!(
        handoff.cluster(),
        if version == Version::Canary { "c" } else { "s" }
    );
    let mut request = Request::routed_at_route_time(Some(handoff));
    request.on_request_headers(&config, &stream);
    stream.response.insert(":status".into(), b"200".to_vec());
    request.on_response_headers(&config, &stream, true);
    let added = stream.added_response.borrow();
    assert_eq!(added.len(), 1);
    assert!(String::from_utf8_lossy(&added[0].1).starts_with(&format!("canary_uid={first};")));
}
