//! The filter's configuration: JSON, versioned by `schema_version`, validated on load.
//!
//! Errors name the field they are about (`rollouts[1].weight_bp`), so a log line from
//! Envoy or a message from the controller points at the exact thing to fix.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::bucket::{bucket_of_hash, key_hash, version_for_bucket};
pub use crate::controller_source::ControllerSource;
use crate::keys::{entry_hash, KeyHash, KeyLists, KEY_HASH_SCHEME};
pub use crate::lean::StatsFrom;
use crate::lean::{validate_lean_rollout, LeanRollout};
use crate::validate::{
    field, first_common, is_header_name, is_rollout_name, is_token, repeats, Validator,
    MAX_NAME_LEN,
};
use crate::Version;

// Their old home: `canary_contract::config::{ConfigError, FieldError, MAX_WEIGHT_BP}`.
pub use crate::validate::{ConfigError, FieldError, MAX_WEIGHT_BP};

/// The only schema this build understands. A config with another value is refused
/// rather than half-understood.
pub const SCHEMA_VERSION: u32 = 1;
/// Longest accepted user key by default; longer values are treated as absent.
pub const DEFAULT_MAX_KEY_BYTES: usize = 256;
/// The length of the filter's anonymous ids (128 random bits as hex): a key limit below it
/// would refuse every anonymous cookie the filter sets, and no anonymous user would stay put.
pub const ANONYMOUS_ID_BYTES: usize = 32;
const MAX_KEY_BYTES_LIMIT: usize = 4096;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    pub schema_version: u32,
    /// Tried in order; the first rollout whose `match` fits a request decides it.
    pub rollouts: Vec<RolloutConfig>,
    /// Where to poll for newer configurations (the controller). Without it the plugin
    /// configuration is all there is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<ControllerSource>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    /// Stat tag and identity of the rollout: `[a-z0-9][a-z0-9_-]*`, at most 63 bytes.
    pub name: String,
    #[serde(default, rename = "match")]
    pub request_match: RequestMatch,
    /// Where the sticky user key comes from, tried in order.
    #[serde(default = "default_key_sources")]
    pub key_sources: Vec<KeySource>,
    /// Mixed into the hash so rollouts do not all pick the same users. Defaults to `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// Canary share in basis points, 0..=10000.
    pub weight_bp: u32,
    /// Request header the filter sets to `stable` or `canary`; routes match on it.
    #[serde(default = "default_route_header")]
    pub route_header: String,
    /// Keys that always get canary (opt-in and internal users). An entry of the form
    /// `fnv1a64:<16 lowercase hex digits>` is a key's salted hash (see [`crate::keys`]): how
    /// the controller publishes the lists, so the served configuration lists no user ids.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub allow: BTreeSet<String>,
    /// Keys that never get canary (e.g. VIP accounts), in clear or hashed as in `allow`.
    /// Wins over everything else.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub deny: BTreeSet<String>,
    /// When set, a request header with this name and value `always` or `never` forces the
    /// version. Off by default so users cannot choose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_header: Option<String>,
    #[serde(default)]
    pub anonymous_cookie: AnonymousCookie,
    #[serde(default = "default_max_key_bytes")]
    pub max_key_bytes: usize,
    /// Where the controller reads this rollout's per-version stats: the filter's own
    /// (default), or the stable and canary clusters' (lean mode, see [`crate::lean`]).
    #[serde(default, skip_serializing_if = "StatsFrom::is_filter")]
    pub stats: StatsFrom,
    /// Sends the canary's users to stable at once when the canary's error rate in this
    /// proxy crosses a limit (see [`crate::breaker`]). Absent: no breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<crate::breaker::CircuitBreaker>,
    /// LLM signals to read from responses (tokens, cost, time to first token, refusals,
    /// quality headers). Absent: response bodies are not looked at.
    #[cfg(feature = "llm")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<crate::llm::LlmSignals>,
    /// Lighter tiers and a deterministic response for when this rollout's service fails
    /// (see [`crate::fallback`]). Absent: no chain.
    #[cfg(feature = "fallback")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<crate::fallback::Fallback>,
    /// Per-user token and request buckets and the quota sentinel's throttle.
    #[cfg(feature = "llm")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<crate::ratelimit::RateLimit>,
    /// Copy a sample of the LLM calls to a candidate and compare its answers (shadow mode).
    #[cfg(feature = "llm")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<crate::shadow::Shadow>,
    /// Send a share of each version's LLM calls with their answers to an evaluator and
    /// record its scores as a quality signal (continuous eval sampling).
    #[cfg(feature = "llm")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<crate::eval::EvalSampling>,
}

/// Which requests a rollout applies to. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestMatch {
    /// Exact host names (case-insensitive, port ignored), or `*.suffix` wildcards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum KeySource {
    /// A request header, e.g. `{"header": "x-user-id"}`.
    Header(String),
    /// A cookie, e.g. `{"cookie": "session_user"}`.
    Cookie(String),
}

/// The cookie that makes users without a key sticky: the filter generates a random id,
/// routes on it and sets it on the response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnonymousCookie {
    pub enabled: bool,
    pub name: String,
    pub max_age_s: u64,
    pub path: String,
    pub secure: bool,
    pub http_only: bool,
    pub same_site: SameSite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

impl Default for AnonymousCookie {
    fn default() -> Self {
        AnonymousCookie {
            enabled: true,
            name: "canary_uid".to_string(),
            max_age_s: 30 * 24 * 3600,
            path: "/".to_string(),
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
        }
    }
}

fn default_key_sources() -> Vec<KeySource> {
    vec![KeySource::Header("x-user-id".to_string())]
}

fn default_route_header() -> String {
    "x-canary-version".to_string()
}

fn default_max_key_bytes() -> usize {
    DEFAULT_MAX_KEY_BYTES
}

impl RolloutConfig {
    /// A rollout with every optional field at its default.
    pub fn new(name: &str, weight_bp: u32) -> Self {
        RolloutConfig {
            name: name.to_string(),
            request_match: RequestMatch::default(),
            key_sources: default_key_sources(),
            salt: None,
            weight_bp,
            route_header: default_route_header(),
            allow: BTreeSet::new(),
            deny: BTreeSet::new(),
            force_header: None,
            anonymous_cookie: AnonymousCookie::default(),
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
            stats: StatsFrom::Filter,
            circuit_breaker: None,
            #[cfg(feature = "llm")]
            llm: None,
            #[cfg(feature = "fallback")]
            fallback: None,
            #[cfg(feature = "llm")]
            rate_limit: None,
            #[cfg(feature = "llm")]
            shadow: None,
            #[cfg(feature = "llm")]
            eval: None,
        }
    }

    pub fn salt(&self) -> &str {
        self.salt.as_deref().unwrap_or(&self.name)
    }

    /// The version a user key gets from configuration alone: deny list, then allow list,
    /// then the sticky hash. (The filter may additionally honour a force header.)
    pub fn version_for_key(&self, key: &str) -> Version {
        self.assign(key).0
    }

    /// Like [`version_for_key`](Self::version_for_key), also saying which rule decided.
    pub fn assign(&self, key: &str) -> (Version, Assignment) {
        self.assign_at_weight(key, self.weight_bp)
    }

    /// [`assign`](Self::assign) with the hash compared to `weight_bp` instead of the
    /// configured weight (the filter holds a raise back until every worker has it).
    pub fn assign_at_weight(&self, key: &str, weight_bp: u32) -> (Version, Assignment) {
        // The lists' rule, whatever form their entries are in (not the filter's hot path).
        let lists = self.key_lists();
        lists.assign(key_hash(self.salt(), key.as_bytes()), weight_bp)
    }

    /// The allow and deny lists, clear and hashed, as one set each of key hashes: what the
    /// filter looks a request's key hash up in.
    pub fn key_lists(&self) -> KeyLists {
        let salt = self.salt();
        // Malformed hash entries were refused by validation.
        let hashes = |list: &BTreeSet<String>| {
            let hashes = list.iter().filter_map(|e| entry_hash(salt, e));
            hashes.collect::<Vec<u64>>()
        };
        KeyLists::new(hashes(&self.allow), hashes(&self.deny))
    }

    /// Replaces every clear key of `allow` and `deny` by its hash (how the controller
    /// publishes them): the same users match, and no key is left in clear.
    pub fn hash_key_lists(&mut self) {
        let salt = self.salt().to_string();
        for list in [&mut self.allow, &mut self.deny] {
            *list = std::mem::take(list)
                .into_iter()
                .map(|e| match entry_hash(&salt, &e) {
                    Some(h) => KeyHash(h).to_string(),
                    None => e,
                })
                .collect();
        }
    }
}

impl KeyLists {
    /// The version for a request whose key hashes to `hash`, at `weight_bp`: the deny list,
    /// then the allow list, then the bucket (the rule of [`RolloutConfig::assign_at_weight`]).
    pub fn assign(&self, hash: u64, weight_bp: u32) -> (Version, Assignment) {
        assign_listed(self.denies(hash), self.allows(hash), hash, weight_bp)
    }
}

/// Deny wins over allow, and both over the hash.
fn assign_listed(denied: bool, allowed: bool, hash: u64, weight_bp: u32) -> (Version, Assignment) {
    if denied {
        (Version::Stable, Assignment::DenyList)
    } else if allowed {
        (Version::Canary, Assignment::AllowList)
    } else {
        let b = bucket_of_hash(hash);
        (version_for_bucket(b, weight_bp), Assignment::Hash)
    }
}

/// Which rule put a user key on its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment {
    DenyList,
    AllowList,
    Hash,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        }
    }
}

impl FilterConfig {
    /// Parses and validates a configuration: one JSON document, whitespace around it.
    /// Type errors name the field path; all validation problems are reported together.
    pub fn from_json(bytes: &[u8]) -> Result<FilterConfig, ConfigError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let config: FilterConfig =
            serde_path_to_error::deserialize(&mut *de).map_err(ConfigError::from_path_error)?;
        // Only whitespace may follow the document.
        de.end()
            .map_err(|e| ConfigError::single("(root)", e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// [`from_json`](Self::from_json) for a configuration held as a JSON value: the same
    /// checks and field paths, without a trip through a string.
    pub fn from_value(value: serde_json::Value) -> Result<FilterConfig, ConfigError> {
        let config: FilterConfig =
            serde_path_to_error::deserialize(value).map_err(ConfigError::from_path_error)?;
        config.validate()?;
        Ok(config)
    }

    pub fn to_json(&self) -> String {
        // Serializing plain structs of strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Every check of [`from_json`](Self::from_json) but the types, on a configuration
    /// built in code (e.g. by the controller); all problems are reported together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut v = Validator::default();
        if self.schema_version != SCHEMA_VERSION {
            v.push(
                "schema_version",
                format!(
                    "unsupported schema version {}, this build reads {SCHEMA_VERSION}",
                    self.schema_version
                ),
            );
        }
        if let Some(c) = &self.controller {
            if c.cluster.is_empty() {
                v.push("controller.cluster", "must name an Envoy cluster");
            }
            if !c.path.starts_with('/') {
                v.push(
                    "controller.path",
                    format!("must start with '/', got {:?}", c.path),
                );
            }
            if c.authority.is_empty() || c.authority.bytes().any(|b| b.is_ascii_whitespace()) {
                v.push("controller.authority", "must be a host name");
            }
            if !(100..=60_000).contains(&c.poll_interval_ms) {
                v.push(
                    "controller.poll_interval_ms",
                    format!("must be within 100..=60000, got {}", c.poll_interval_ms),
                );
            }
            if c.timeout_ms < 10 || c.timeout_ms > c.poll_interval_ms.max(10) {
                v.push(
                    "controller.timeout_ms",
                    format!("must be within 10..=poll_interval_ms, got {}", c.timeout_ms),
                );
            }
            if c.fail_safe_after_s == Some(0) {
                v.push(
                    "controller.fail_safe_after_s",
                    "must be at least 1 when set",
                );
            }
        }
        let repeated = repeats(&self.rollouts, |r| r.name.as_str());
        for (i, (r, repeated)) in self.rollouts.iter().zip(repeated).enumerate() {
            let at = format!("rollouts[{i}]");
            if repeated {
                v.push(
                    field(&at, ".name"),
                    format!("duplicate rollout name {:?}", r.name),
                );
            }
            validate_rollout(&mut v, &at, r);
        }
        v.finish()
    }

    /// What the filter's lean build checks on top of [`validate`](Self::validate): every
    /// rollout reads its stats from the clusters and needs no response callback (see
    /// [`crate::lean`]); all problems are reported together, each naming its field.
    pub fn validate_lean(&self) -> Result<(), ConfigError> {
        let mut v = Validator::default();
        for (i, r) in self.rollouts.iter().enumerate() {
            let rollout = LeanRollout {
                stats: r.stats,
                anonymous_cookie: r.anonymous_cookie.enabled,
                circuit_breaker: r.circuit_breaker.is_some(),
            };
            validate_lean_rollout(&mut v, &format!("rollouts[{i}]"), rollout);
        }
        v.finish()
    }

    /// A configuration of `rollouts` with no controller.
    pub fn new(rollouts: Vec<RolloutConfig>) -> FilterConfig {
        FilterConfig {
            schema_version: SCHEMA_VERSION,
            rollouts,
            controller: None,
        }
    }

    pub fn rollout(&self, name: &str) -> Option<&RolloutConfig> {
        self.rollouts.iter().find(|r| r.name == name)
    }
}

fn validate_rollout(v: &mut Validator, at: &str, r: &RolloutConfig) {
    v.check(
        is_rollout_name(&r.name),
        field(at, ".name"),
        format!(
            "{:?} must be 1-{MAX_NAME_LEN} bytes of [a-z0-9_-], starting with a letter or digit",
            r.name
        ),
    );
    v.check(
        r.weight_bp <= MAX_WEIGHT_BP,
        field(at, ".weight_bp"),
        format!(
            "must be at most {MAX_WEIGHT_BP} (100%), got {}",
            r.weight_bp
        ),
    );
    if let Some(salt) = &r.salt {
        v.check(
            !salt.is_empty() && !salt.contains('\0'),
            field(at, ".salt"),
            "must be non-empty and contain no NUL byte",
        );
    }
    for (j, host) in r.request_match.hosts.iter().enumerate() {
        let h = host.strip_prefix("*.").unwrap_or(host);
        v.check(
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'),
            format!("{at}.match.hosts[{j}]"),
            format!(
                "{host:?} is not a host name (letters, digits, '-', '.', optional leading '*.')"
            ),
        );
    }
    if let Some(prefix) = &r.request_match.path_prefix {
        v.check(
            prefix.starts_with('/'),
            field(at, ".match.path_prefix"),
            format!("{prefix:?} must start with '/'"),
        );
    }
    v.check(
        !r.key_sources.is_empty() || r.anonymous_cookie.enabled,
        field(at, ".key_sources"),
        "must name at least one header or cookie when anonymous_cookie is disabled",
    );
    for (j, source) in r.key_sources.iter().enumerate() {
        match source {
            KeySource::Header(name) => v.check(
                is_header_name(name),
                format!("{at}.key_sources[{j}].header"),
                format!("{name:?} is not a lowercase HTTP header name"),
            ),
            KeySource::Cookie(name) => v.check(
                is_token(name),
                format!("{at}.key_sources[{j}].cookie"),
                format!("{name:?} is not a cookie name"),
            ),
        }
    }
    v.check(
        is_header_name(&r.route_header),
        field(at, ".route_header"),
        format!("{:?} is not a lowercase HTTP header name", r.route_header),
    );
    if let Some(force) = &r.force_header {
        v.check(
            is_header_name(force),
            field(at, ".force_header"),
            format!("{force:?} is not a lowercase HTTP header name"),
        );
        v.check(
            force != &r.route_header,
            field(at, ".force_header"),
            "must differ from route_header",
        );
    }
    // A key in clear in one list and hashed in the other is not looked for: deny wins.
    for (list, keys) in [("allow", &r.allow), ("deny", &r.deny)] {
        for key in keys {
            if key.starts_with(KEY_HASH_SCHEME) {
                if KeyHash::parse(key).is_none() {
                    let reason = "an entry with the fnv1a64: prefix must have 16 lowercase hex digits after it";
                    v.push(format!("{at}.{list}"), reason);
                }
                continue;
            }
            v.check(
                !key.is_empty() && key.len() <= r.max_key_bytes,
                format!("{at}.{list}"),
                format!(
                    "key {key:?} must be 1-{} bytes (max_key_bytes)",
                    r.max_key_bytes
                ),
            );
        }
    }
    if let Some(both) = first_common(&r.allow, &r.deny) {
        v.push(
            field(at, ".allow"),
            format!("key {both:?} is in both allow and deny"),
        );
    }
    let c = &r.anonymous_cookie;
    v.check(
        is_token(&c.name),
        field(at, ".anonymous_cookie.name"),
        format!("{:?} is not a cookie name", c.name),
    );
    v.check(
        c.path.starts_with('/')
            && c.path
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b';' && b != b','),
        field(at, ".anonymous_cookie.path"),
        format!(
            "{:?} must start with '/' and contain no ';', ',' or spaces",
            c.path
        ),
    );
    v.check(
        c.same_site != SameSite::None || c.secure,
        field(at, ".anonymous_cookie.same_site"),
        "None requires secure: true (browsers drop it otherwise)",
    );
    v.check(
        (1..=MAX_KEY_BYTES_LIMIT).contains(&r.max_key_bytes),
        field(at, ".max_key_bytes"),
        format!("must be 1-{MAX_KEY_BYTES_LIMIT}, got {}", r.max_key_bytes),
    );
    v.check(
        !c.enabled || r.max_key_bytes >= ANONYMOUS_ID_BYTES,
        field(at, ".max_key_bytes"),
        format!(
            "must be at least {ANONYMOUS_ID_BYTES} (an anonymous id) while anonymous_cookie is \
             enabled, got {}",
            r.max_key_bytes
        ),
    );
    if let Some(b) = &r.circuit_breaker {
        crate::breaker::validate_breaker(v, &field(at, ".circuit_breaker"), b);
    }
    #[cfg(feature = "llm")]
    if let Some(llm) = &r.llm {
        crate::llm::validate_llm(v, &field(at, ".llm"), llm);
    }
    #[cfg(feature = "fallback")]
    if let Some(f) = &r.fallback {
        crate::fallback::validate_fallback(v, &field(at, ".fallback"), f);
    }
    #[cfg(feature = "llm")]
    if let Some(limit) = &r.rate_limit {
        let at = field(at, ".rate_limit");
        crate::ratelimit::validate_rate_limit(v, &at, limit, r.llm.is_some());
    }
    #[cfg(feature = "llm")]
    if let Some(shadow) = &r.shadow {
        crate::shadow::validate_shadow(v, &field(at, ".shadow"), shadow, r.llm.is_some());
    }
    #[cfg(feature = "llm")]
    if let Some(eval) = &r.eval {
        crate::eval::validate_eval(v, &field(at, ".eval"), eval, r.llm.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<FilterConfig, ConfigError> {
        FilterConfig::from_json(json.as_bytes())
    }

    fn fields(err: ConfigError) -> Vec<String> {
        err.errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(r#"{"schema_version":1,"rollouts":[{"name":"checkout","weight_bp":500}]}"#)
            .expect("valid");
        let r = &c.rollouts[0];
        assert_eq!(r.route_header, "x-canary-version");
        assert_eq!(r.key_sources, vec![KeySource::Header("x-user-id".into())]);
        assert_eq!(r.salt(), "checkout");
        assert_eq!(r.anonymous_cookie.name, "canary_uid");
        assert!(r.anonymous_cookie.secure && r.anonymous_cookie.http_only);
        assert_eq!(r.force_header, None);
    }

    #[test]
    fn round_trips_through_json() {
        let mut r = RolloutConfig::new("a", 2500);
        r.allow.insert("alice".into());
        r.deny.insert("vip".into());
        r.force_header = Some("x-canary-user".into());
        r.key_sources = vec![
            KeySource::Cookie("sid".into()),
            KeySource::Header("x-u".into()),
        ];
        let c = FilterConfig::new(vec![r]);
        assert_eq!(parse(&c.to_json()).expect("valid"), c);
    }

    /// A configuration built in code, with every part set: serializing it and parsing it
    /// back (from text or from a JSON value) gives the same value, and it validates as built.
    #[test]
    fn a_typed_config_with_every_part_round_trips() {
        let mut r = RolloutConfig::new("chat", 2500);
        r.salt = Some("s1".into());
        r.request_match = RequestMatch {
            hosts: vec!["api.example".into(), "*.example".into()],
            path_prefix: Some("/v1".into()),
        };
        r.allow.insert("alice".into());
        r.deny.insert("vip".into());
        r.force_header = Some("x-canary-user".into());
        r.anonymous_cookie.same_site = SameSite::Strict;
        r.circuit_breaker = Some(crate::breaker::CircuitBreaker::default());
        #[cfg(feature = "llm")]
        {
            let mut llm = crate::llm::LlmSignals::default();
            llm.quality_headers.push(crate::llm::QualityHeader {
                header: "x-task-success".into(),
                signal: "task_success".into(),
            });
            llm.prices.canary.output_nano_usd_per_token = 2_000;
            r.llm = Some(llm);
            let mut limit = crate::ratelimit::RateLimit {
                tokens_per_minute: Some(10_000),
                ..Default::default()
            };
            limit.priority.header = Some("x-priority".into());
            limit.priority.values.insert("high".into());
            r.rate_limit = Some(limit);
            r.shadow = Some(crate::shadow::Shadow::new("candidate"));
            r.eval = Some(crate::eval::EvalSampling::new("judge"));
        }
        #[cfg(feature = "fallback")]
        {
            r.fallback = Some(crate::fallback::Fallback {
                circuit_breaker: crate::breaker::CircuitBreaker::default(),
                tiers: vec![crate::fallback::Tier {
                    name: "lite".into(),
                    route_value: "lite".into(),
                    circuit_breaker: crate::breaker::CircuitBreaker::default(),
                    cluster: Some("chat-lite".into()),
                }],
                half_open_probes: 3,
                response: crate::fallback::FallbackResponse::default(),
                retry: Some(crate::fallback::Retry::default()),
            });
        }
        let mut c = FilterConfig::new(vec![r, RolloutConfig::new("checkout", 0)]);
        let mut controller = ControllerSource::new("canary-controller");
        controller.fail_safe_after_s = Some(60);
        c.controller = Some(controller);

        c.validate().expect("valid as built");
        assert_eq!(parse(&c.to_json()).expect("valid"), c);
        let value = serde_json::to_value(&c).expect("serializes");
        assert_eq!(FilterConfig::from_value(value).expect("valid"), c);
    }

    #[test]
    fn a_typed_config_is_refused_as_its_json_would_be() {
        let mut r = RolloutConfig::new("A", 20_000);
        r.route_header = "Bad".into();
        let c = FilterConfig::new(vec![r]);
        let built = c.validate().expect_err("invalid");
        assert_eq!(parse(&c.to_json()).expect_err("invalid"), built);
        assert_eq!(
            fields(built),
            vec![
                "rollouts[0].name",
                "rollouts[0].weight_bp",
                "rollouts[0].route_header"
            ]
        );
    }

    #[test]
    fn errors_name_the_field() {
        // (config, expected field paths) — table-driven.
        let cases: &[(&str, &[&str])] = &[
            (r#"{"schema_version":2,"rollouts":[]}"#, &["schema_version"]),
            (
                r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":10001}]}"#,
                &["rollouts[0].weight_bp"],
            ),
            (
                r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":-1}]}"#,
                &["rollouts[0].weight_bp"],
            ),
            (
                r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":"5%"}]}"#,
                &["rollouts[0].weight_bp"],
            ),
            (
                r#"{"schema_version":1,"rollouts":[{"name":"a","wieght_bp":5}]}"#,
                &["rollouts[0].wieght_bp"],
            ),
            (
                r#"{"schema_version":1,"rollouts":[{"name":"Bad.Name","weight_bp":5}]}"#,
                &["rollouts[0].name"],
            ),
            (
                r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":5},{"name":"a","weight_bp":5}]}"#,
                &["rollouts[1].name"],
            ),
            (
                r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":5,"route_header":"X-Canary"}]}"#,
                &["rollouts[0].route_header"],
            ),
            (
                r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":5,"key_sources":[{"header":"bad header"}]}]}"#,
                &["rollouts[0].key_sources[0].header"],
            ),
            (
                r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":5,"key_sources":[{"query":"u"}]}]}"#,
                &["rollouts[0].key_sources[0]"],
            ),
            (
                r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":5,"allow":["x"],"deny":["x"]}]}"#,
                &["rollouts[0].allow"],
            ),
            (
                r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":5,"match":{"path_prefix":"api"}}]}"#,
                &["rollouts[0].match.path_prefix"],
            ),
            (
                r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":5,"match":{"hosts":["a b"]}}]}"#,
                &["rollouts[0].match.hosts[0]"],
            ),
            (
                r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":5,"salt":""}]}"#,
                &["rollouts[0].salt"],
            ),
            (
                r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":5,"force_header":"x-canary-version"}]}"#,
                &["rollouts[0].force_header"],
            ),
            (
                r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":5,"anonymous_cookie":{"same_site":"None","secure":false}}]}"#,
                &["rollouts[0].anonymous_cookie.same_site"],
            ),
            (
                r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":5,"anonymous_cookie":{"path":"x"}}]}"#,
                &["rollouts[0].anonymous_cookie.path"],
            ),
            (
                r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":5,"max_key_bytes":0}]}"#,
                &["rollouts[0].max_key_bytes", "rollouts[0].max_key_bytes"],
            ),
            // Found by the `routing` fuzz target: anonymous users were never sticky.
            (
                r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":5,"max_key_bytes":31}]}"#,
                &["rollouts[0].max_key_bytes"],
            ),
            (
                r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":5,"key_sources":[],"anonymous_cookie":{"enabled":false}}]}"#,
                &["rollouts[0].key_sources"],
            ),
            (r#"{"rollouts":[]}"#, &["(root)"]),
            (r#"not json"#, &["(root)"]),
            // Bytes after the document (found by the `config` fuzz target: they were ignored).
            (r#"{"schema_version":1,"rollouts":[]}]"#, &["(root)"]),
            (
                "{\"schema_version\":1,\"rollouts\":[]}\n\u{fffd}",
                &["(root)"],
            ),
        ];
        let llm_cases: &[(&str, &[&str])] = &[
            (
                r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":5,"llm":{"path_prefixes":["v1"],"max_body_bytes":0}}]}"#,
                &[
                    "rollouts[0].llm.path_prefixes[0]",
                    "rollouts[0].llm.max_body_bytes",
                ],
            ),
            (
                r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":5,"llm":{"prices":{"canary":{"output_nano_usd_per_token":1000000001}}}}]}"#,
                &["rollouts[0].llm.prices.canary.output_nano_usd_per_token"],
            ),
            (
                r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":5,"llm":{"prices":{"beta":{}}}}]}"#,
                &["rollouts[0].llm.prices.beta"],
            ),
            (
                r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":5,"llm":{"quality_headers":[{"header":"x-q","signal":"Task"},{"header":"X-Q","signal":"ok"},{"header":"x-r","signal":"ok"}]}}]}"#,
                &[
                    "rollouts[0].llm.quality_headers[0].signal",
                    "rollouts[0].llm.quality_headers[1].header",
                    "rollouts[0].llm.quality_headers[2].signal",
                ],
            ),
        ];
        let llm_cases = if cfg!(feature = "llm") {
            llm_cases
        } else {
            &[]
        };
        for (json, expected) in cases.iter().chain(llm_cases) {
            let err = parse(json).expect_err(json);
            assert_eq!(fields(err.clone()), *expected, "{json}: {err}");
            if let Ok(value) = serde_json::from_str(json) {
                let from_value = FilterConfig::from_value(value).expect_err(json);
                assert_eq!(fields(from_value), *expected, "{json} as a value");
            }
            let text = err.to_string();
            for field in *expected {
                assert!(text.contains(field), "{text} should name {field}");
            }
        }
    }

    /// Without the `llm` feature (the plain filter), a rollout with `llm` or `shadow` is
    /// refused naming the field, so it cannot silently lose its checks or its shadow.
    #[cfg(not(feature = "llm"))]
    #[test]
    fn the_plain_build_refuses_llm_and_shadow() {
        for field in ["llm", "shadow", "eval"] {
            let json = format!(
                r#"{{"schema_version":1,"rollouts":[{{"name":"a","weight_bp":5,"{field}":{{}}}}]}}"#
            );
            let err = parse(&json).expect_err(&json);
            assert_eq!(
                fields(err.clone()),
                [format!("rollouts[0].{field}")],
                "{err}"
            );
        }
    }

    /// Lean mode: `stats` round-trips (absent when it is the default), and the lean build's
    /// checks name each field a lean filter cannot honour.
    #[test]
    fn lean_rollouts_read_cluster_stats_and_need_no_responses() {
        let plain = parse(r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":5}]}"#)
            .expect("valid");
        assert_eq!(plain.rollouts[0].stats, StatsFrom::Filter);
        assert!(!plain.to_json().contains("stats"), "{}", plain.to_json());
        let err = plain
            .validate_lean()
            .expect_err("filter stats in a lean build");
        assert_eq!(
            fields(err.clone()),
            ["rollouts[0].stats", "rollouts[0].anonymous_cookie.enabled"],
            "{err}"
        );
        assert!(err.to_string().contains("\"clusters\""), "{err}");

        let lean = parse(
            r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":5,"stats":"clusters",
                "anonymous_cookie":{"enabled":false}}]}"#,
        )
        .expect("valid");
        assert_eq!(lean.rollouts[0].stats, StatsFrom::Clusters);
        lean.validate_lean().expect("a lean rollout");
        assert_eq!(parse(&lean.to_json()).expect("round trip"), lean);

        let mut breaker = lean.clone();
        breaker.rollouts[0].circuit_breaker = Some(Default::default());
        let err = breaker
            .validate_lean()
            .expect_err("a breaker needs filter stats");
        assert_eq!(fields(err), ["rollouts[0].circuit_breaker"]);

        let err = parse(
            r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":5,"stats":"envoy"}]}"#,
        )
        .expect_err("unknown source");
        assert_eq!(fields(err), ["rollouts[0].stats"]);
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let err = parse(
            r#"{"schema_version":1,"rollouts":[{"name":"A","weight_bp":20000,"route_header":"Bad"}]}"#,
        )
        .expect_err("invalid");
        assert_eq!(
            fields(err),
            vec![
                "rollouts[0].name",
                "rollouts[0].weight_bp",
                "rollouts[0].route_header"
            ]
        );
    }

    /// The controller's published form: the same users match, no key is left in clear,
    /// and the filter's lookup by hash agrees with the contract's rule for every user.
    #[test]
    fn hashed_lists_match_the_same_users() {
        let mut r = RolloutConfig::new("r", 5_000);
        r.salt = Some("s1".into());
        r.allow.insert("alice".into());
        r.deny.insert("vip-42".into());
        let clear = r.clone();
        r.hash_key_lists();
        let hashed_form = |list: &BTreeSet<String>| {
            list.len() == 1 && list.iter().all(|e| KeyHash::parse(e).is_some())
        };
        assert!(hashed_form(&r.allow) && hashed_form(&r.deny), "{r:?}");
        let again = r.clone();
        r.hash_key_lists();
        assert_eq!(r, again, "hashing twice changes nothing");
        let json = FilterConfig::new(vec![r]).to_json();
        assert!(
            !json.contains("alice") && !json.contains("vip-42"),
            "{json}"
        );
        assert!(json.contains("\"deny\":[\"fnv1a64:"), "{json}");
        let hashed = parse(&json).expect("valid").rollouts.remove(0);
        let (clear_lists, hashed_lists) = (clear.key_lists(), hashed.key_lists());
        for user in ["alice", "vip-42", "bob", "carol", "dave"] {
            let h = key_hash("s1", user.as_bytes());
            let want = clear.assign(user);
            assert_eq!(hashed.assign(user), want, "{user}");
            assert_eq!(clear_lists.assign(h, 5_000), want, "{user}");
            assert_eq!(hashed_lists.assign(h, 5_000), want, "{user}");
        }
        assert_eq!(hashed.assign("vip-42").1, Assignment::DenyList);
        assert_eq!(hashed.assign("alice").1, Assignment::AllowList);
    }

    #[test]
    fn hashed_lists_are_validated() {
        let json = r#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":5,"deny":["fnv1a64:123"]}]}"#;
        let err = parse(json).expect_err(json);
        assert_eq!(fields(err.clone()), ["rollouts[0].deny"], "{err}");
        // A key in clear in one list and hashed in the other: deny wins, as for clear keys.
        let vip = KeyHash::of("a", "vip");
        let json = format!(
            r#"{{"schema_version":1,"rollouts":[{{"name":"a","weight_bp":10000,"allow":["vip"],"deny":["{vip}"]}}]}}"#
        );
        let r = parse(&json).expect("valid").rollouts.remove(0);
        assert_eq!(r.assign("vip"), (Version::Stable, Assignment::DenyList));
    }

    #[test]
    fn lists_win_over_the_hash_and_deny_wins_over_allow() {
        let mut r = RolloutConfig::new("r", 0);
        r.allow.insert("alice".into());
        r.deny.insert("vip".into());
        assert_eq!(r.version_for_key("alice"), Version::Canary);
        assert_eq!(r.version_for_key("bob"), Version::Stable);
        r.weight_bp = MAX_WEIGHT_BP;
        assert_eq!(r.version_for_key("vip"), Version::Stable);
        assert_eq!(r.version_for_key("bob"), Version::Canary);
    }

    #[test]
    fn duplicate_names_are_found_among_many_rollouts() {
        // 32k rollouts took seconds with the pairwise check; now a sort (the work is
        // counted in `validate::repeats`' own test).
        let mut rollouts: Vec<RolloutConfig> = (0..32_768)
            .map(|i| RolloutConfig::new(&format!("r{i}"), 0))
            .collect();
        FilterConfig::new(rollouts.clone())
            .validate()
            .expect("unique names");
        rollouts[20_000].name = "r7".into();
        rollouts[30_000].name = "r7".into();
        let err = FilterConfig::new(rollouts)
            .validate()
            .expect_err("duplicates");
        assert_eq!(
            fields(err),
            vec!["rollouts[20000].name", "rollouts[30000].name"]
        );
    }
}
