//! Per-request version choice, independent of proxy-wasm so it is unit-tested natively.

use std::borrow::Cow;

use canary_contract::{
    Assignment, FilterConfig, KeyLists, KeySource, RolloutConfig, SaltedHasher, Version,
};

use crate::cookie::find_cookie;

/// Read access to request headers (`:authority` and `:path` included), as raw bytes:
/// borrowed where the host can lend them for the callback (no allocation per read).
pub trait RequestHeaders {
    fn header(&self, name: &str) -> Option<Cow<'_, [u8]>>;
}

/// Why a request got its version; useful in logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Decided by the rollout's configuration (deny list, allow list or hash).
    Config(Assignment),
    ForceHeader,
    /// No usable key and anonymous cookies disabled: the safe choice.
    NoKey,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Index of the rollout in the configuration.
    pub rollout: usize,
    pub version: Version,
    pub reason: Reason,
    /// A freshly generated anonymous id to set as a cookie on the response.
    pub new_anonymous_id: Option<String>,
    /// The user key the request was routed by, if any (rate limits are per user).
    #[cfg(feature = "llm")]
    pub key: Option<String>,
}

/// The validated configuration, prepared for per-request lookups.
pub struct Router {
    rollouts: Vec<RolloutConfig>,
    /// Every configured routing header: stripped from all client requests so nobody can
    /// pick a version by sending it.
    route_headers: Vec<String>,
    /// Whether any rollout matches on host / path: each header read is a call into the
    /// host, so requests skip the ones no rollout looks at.
    needs_authority: bool,
    needs_path: bool,
    /// Whether routing a request may read more than one header that is usually there
    /// (host or path beside the key, two key sources, a key in a cookie): then the host
    /// hands over all of them at once (see `crate::header_map`).
    reads_several: bool,
    /// Per rollout, a raise not in force yet.
    raises: Vec<Option<PendingRaise>>,
    /// Per rollout, its allow and deny lists by key hash: a request hashes its key once,
    /// for the bucket and both lists, from the rollout's salt hashed once here.
    lists: Vec<KeyLists>,
    hashers: Vec<SaltedHasher>,
    /// Per rollout, the other rollouts' routing headers (stripped from its requests; its
    /// own is replaced).
    strip: Vec<Vec<String>>,
}

/// A weight raise waiting for an instant every worker agrees on: until `at_ms` the rollout
/// keeps `previous_bp`. Workers see a new configuration at their own ticks; applied at
/// once, a raise would send a user to canary on one worker and back to stable on another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PendingRaise {
    previous_bp: u32,
    at_ms: u64,
}

impl Router {
    pub fn new(config: FilterConfig) -> Router {
        // Usually one header for all rollouts; a linear de-duplication keeps a sort
        // routine out of the module.
        let mut route_headers: Vec<String> = Vec::new();
        for r in &config.rollouts {
            if !route_headers.contains(&r.route_header) {
                route_headers.push(r.route_header.clone());
            }
        }
        let rollouts = config
            .rollouts
            .into_iter()
            .map(|mut r| {
                for h in &mut r.request_match.hosts {
                    h.make_ascii_lowercase();
                }
                r
            })
            .collect();
        let rollouts: Vec<RolloutConfig> = rollouts;
        let needs_authority = rollouts.iter().any(|r| !r.request_match.hosts.is_empty());
        let needs_path = rollouts
            .iter()
            .any(|r| r.request_match.path_prefix.is_some());
        let key_reads = |r: &RolloutConfig| {
            let cookie = r
                .key_sources
                .iter()
                .any(|s| matches!(s, KeySource::Cookie(_)));
            let headers = r
                .key_sources
                .iter()
                .filter(|s| matches!(s, KeySource::Header(_)));
            headers.count() + usize::from(cookie)
        };
        let most_key_reads = rollouts.iter().map(key_reads).max().unwrap_or(0);
        let reads = usize::from(needs_authority) + usize::from(needs_path) + most_key_reads;
        Router {
            reads_several: reads >= 2,
            raises: vec![None; rollouts.len()],
            lists: rollouts.iter().map(RolloutConfig::key_lists).collect(),
            hashers: rollouts
                .iter()
                .map(|r| SaltedHasher::new(r.salt()))
                .collect(),
            strip: rollouts
                .iter()
                .map(|r| {
                    let others = route_headers.iter().filter(|h| **h != r.route_header);
                    others.cloned().collect()
                })
                .collect(),
            needs_authority,
            needs_path,
            rollouts,
            route_headers,
        }
    }

    /// `config` taking over from `previous` at `now_ms`. Lower weights apply at once (a
    /// rollback must not wait, and a user only ever leaves canary then); raises wait until
    /// `raise_at_ms`, an instant every worker of the proxy gets with the configuration.
    pub fn succeeding(
        config: FilterConfig,
        previous: &Router,
        now_ms: u64,
        raise_at_ms: u64,
    ) -> Router {
        let mut router = Router::new(config);
        for (r, raise) in router.rollouts.iter().zip(&mut router.raises) {
            let Some(index) = previous.rollouts.iter().position(|p| p.name == r.name) else {
                continue;
            };
            let previous_bp = previous.weight_bp(index, now_ms);
            if r.weight_bp > previous_bp && now_ms < raise_at_ms {
                *raise = Some(PendingRaise {
                    previous_bp,
                    at_ms: raise_at_ms,
                });
            }
        }
        router
    }

    /// The weight rollout `index` routes by at `now_ms`.
    pub fn weight_bp(&self, index: usize, now_ms: u64) -> u32 {
        match self.raises.get(index).copied().flatten() {
            Some(raise) if now_ms < raise.at_ms => raise.previous_bp,
            _ => self.rollouts.get(index).map_or(0, |r| r.weight_bp),
        }
    }

    /// Until when a raise waits (the latest of them), if any does: from then on the weights
    /// are the configured ones at any time.
    pub fn raises_until_ms(&self) -> Option<u64> {
        self.raises.iter().flatten().map(|r| r.at_ms).max()
    }

    pub fn rollouts(&self) -> &[RolloutConfig] {
        &self.rollouts
    }

    /// Whether to read a request's headers all at once (see the field).
    pub fn reads_several_headers(&self) -> bool {
        self.reads_several
    }

    /// The routing headers to strip from a request routed by rollout `index` (the other
    /// rollouts'; its own is replaced), or from one no rollout routes (all of them).
    pub fn headers_to_strip(&self, index: Option<usize>) -> &[String] {
        match index {
            Some(i) => self.strip.get(i).map_or(&[], Vec::as_slice),
            None => &self.route_headers,
        }
    }

    /// The first rollout that applies to the request at `now_ms`, and the version for it.
    /// `new_id` is called only when an anonymous user needs a new id.
    pub fn decide(
        &self,
        req: &impl RequestHeaders,
        now_ms: u64,
        new_id: impl FnOnce() -> String,
    ) -> Option<Decision> {
        let (index, rollout) = if self.needs_authority || self.needs_path {
            let authority = self
                .needs_authority
                .then(|| req.header(":authority"))
                .flatten();
            let path = self.needs_path.then(|| req.header(":path")).flatten();
            self.rollouts.iter().enumerate().find(|(_, r)| {
                matches_request(r, authority.as_deref(), path.as_deref().unwrap_or(b"/"))
            })?
        } else {
            // No rollout matches on host or path: the first takes every request.
            (0, self.rollouts.first()?)
        };

        // The key, as the header's bytes where it came from a header (no copy); a cookie's
        // is copied out of the cookie header, read at most once.
        let max_key_bytes = rollout.max_key_bytes;
        let mut cookies: Option<Option<Cow<'_, [u8]>>> = None;
        let mut cookie = |name: &str| -> Option<Cow<'_, [u8]>> {
            let header = cookies.get_or_insert_with(|| req.header("cookie"));
            let value = header.as_deref().and_then(|h| find_cookie(h, name))?;
            usable_key(value, max_key_bytes).then(|| Cow::Owned(value.to_vec()))
        };
        let mut key = rollout.key_sources.iter().find_map(|source| match source {
            KeySource::Header(name) => req.header(name).filter(|v| usable_key(v, max_key_bytes)),
            KeySource::Cookie(name) => cookie(name),
        });
        let mut new_anonymous_id = None;
        if key.is_none() && rollout.anonymous_cookie.enabled {
            key = cookie(&rollout.anonymous_cookie.name);
            if key.is_none() {
                let id = new_id();
                key = Some(Cow::Owned(id.clone().into_bytes()));
                new_anonymous_id = Some(id);
            }
        }

        let forced = rollout
            .force_header
            .as_deref()
            .and_then(|name| req.header(name))
            .and_then(|v| match &*v {
                b"always" => Some(Version::Canary),
                b"never" => Some(Version::Stable),
                _ => None,
            });

        // Operator lists beat the client's force header; the force header beats the hash.
        let weight_bp = self.weight_bp(index, now_ms);
        let lists = self.lists.get(index).zip(self.hashers.get(index));
        let assigned = key.as_deref().zip(lists).map(|(k, (lists, hasher))| {
            // One hash for the bucket and both lists.
            lists.assign(hasher.hash(k), weight_bp)
        });
        let (version, reason) = match (assigned, forced) {
            (Some((v, a @ (Assignment::DenyList | Assignment::AllowList))), _) => {
                (v, Reason::Config(a))
            }
            (_, Some(v)) => (v, Reason::ForceHeader),
            (Some((v, a)), None) => (v, Reason::Config(a)),
            (None, None) => (Version::Stable, Reason::NoKey),
        };
        Some(Decision {
            rollout: index,
            version,
            reason,
            new_anonymous_id,
            // A usable key is valid UTF-8.
            #[cfg(feature = "llm")]
            key: key.and_then(|k| String::from_utf8(k.into_owned()).ok()),
        })
    }
}

/// A key is usable when it is non-empty, not longer than the limit, valid UTF-8 and free
/// of control characters. Anything else takes the anonymous path rather than failing.
fn usable_key(value: &[u8], max_bytes: usize) -> bool {
    if value.is_empty() || value.len() > max_bytes {
        return false;
    }
    // Keys are nearly always printable ASCII (0x20..0x7f: no control character, valid
    // UTF-8): one pass over the bytes instead of decoding characters.
    if value.iter().all(|b| (0x20..0x7f).contains(b)) {
        return true;
    }
    std::str::from_utf8(value).is_ok_and(|s| !s.chars().any(char::is_control))
}

fn matches_request(r: &RolloutConfig, authority: Option<&[u8]>, path: &[u8]) -> bool {
    if let Some(prefix) = &r.request_match.path_prefix {
        if !path.starts_with(prefix.as_bytes()) {
            return false;
        }
    }
    if r.request_match.hosts.is_empty() {
        return true;
    }
    let Some(authority) = authority else {
        return false;
    };
    let host = host_without_port(authority);
    r.request_match.hosts.iter().any(|pattern| {
        match pattern.strip_prefix("*.") {
            // `*.example.com` matches `a.example.com`, not `example.com`.
            Some(suffix) => {
                host.len() > suffix.len() + 1
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
                    && host[host.len() - suffix.len() - 1] == b'.'
            }
            None => host.eq_ignore_ascii_case(pattern.as_bytes()),
        }
    })
}

fn host_without_port(authority: &[u8]) -> &[u8] {
    if authority.first() == Some(&b'[') {
        // IPv6 literal: keep up to the closing bracket.
        return match authority.iter().position(|&b| b == b']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.iter().rposition(|&b| b == b':') {
        Some(colon) => &authority[..colon],
        None => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use canary_contract::RequestMatch;
    use std::collections::HashMap;

    struct Req(HashMap<String, Vec<u8>>);

    impl Req {
        fn new(headers: &[(&str, &[u8])]) -> Req {
            Req(headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect())
        }
    }

    impl RequestHeaders for Req {
        fn header(&self, name: &str) -> Option<Cow<'_, [u8]>> {
            self.0.get(name).map(|v| Cow::Borrowed(v.as_slice()))
        }
    }

    fn router(rollouts: Vec<RolloutConfig>) -> Router {
        let config = FilterConfig::new(rollouts);
        config.validate().expect("test config is valid");
        Router::new(config)
    }

    #[test]
    fn reads_all_headers_at_once_only_when_it_may_read_several() {
        let plain = RolloutConfig::new("a", 100);
        assert!(!router(vec![plain.clone()]).reads_several_headers());
        let mut by_host = plain.clone();
        by_host.request_match.hosts = vec!["shop.example.com".into()];
        assert!(router(vec![by_host]).reads_several_headers());
        let mut by_path = RolloutConfig::new("b", 100);
        by_path.request_match.path_prefix = Some("/api/".into());
        assert!(router(vec![plain.clone(), by_path]).reads_several_headers());
        let mut two_keys = plain.clone();
        two_keys.key_sources = vec![
            KeySource::Header("x-user-id".into()),
            KeySource::Cookie("uid".into()),
        ];
        assert!(router(vec![two_keys]).reads_several_headers());
        let mut one_cookie = plain;
        one_cookie.key_sources = vec![KeySource::Cookie("uid".into())];
        assert!(!router(vec![one_cookie]).reads_several_headers());
    }

    fn no_id() -> String {
        panic!("no anonymous id expected")
    }

    #[test]
    fn raises_wait_for_their_instant_and_rollbacks_do_not() {
        let at_10 = router(vec![RolloutConfig::new("r", 1_000)]);
        let config = |weight_bp| FilterConfig::new(vec![RolloutConfig::new("r", weight_bp)]);
        // Seen at 100 ms, in force at 300 ms.
        let at_50 = Router::succeeding(config(5_000), &at_10, 100, 300);
        assert_eq!(at_50.weight_bp(0, 100), 1_000);
        assert_eq!(at_50.weight_bp(0, 299), 1_000);
        assert_eq!(at_50.weight_bp(0, 300), 5_000);
        let moving = (0..10_000)
            .map(|i| format!("user-{i}"))
            .find(|u| {
                (1_000..5_000).contains(&canary_contract::bucket(
                    &at_10.rollouts()[0].name,
                    u.as_bytes(),
                ))
            })
            .expect("a user between 10% and 50%");
        let version_at = |r: &Router, now| {
            r.decide(&Req::new(&[("x-user-id", moving.as_bytes())]), now, no_id)
                .map(|d| d.version)
        };
        assert_eq!(version_at(&at_50, 299), Some(Version::Stable));
        assert_eq!(version_at(&at_50, 300), Some(Version::Canary));
        // Past the last raise's instant any time routes the same (the lean build routes
        // by u64::MAX then, reading no clock).
        assert_eq!(at_50.raises_until_ms(), Some(300));
        assert_eq!(at_10.raises_until_ms(), None);
        assert_eq!(version_at(&at_50, u64::MAX), Some(Version::Canary));

        // A second raise before the first is in force starts from the weight in force.
        let at_100 = Router::succeeding(config(10_000), &at_50, 200, 400);
        assert_eq!(at_100.weight_bp(0, 399), 1_000);
        assert_eq!(at_100.weight_bp(0, 400), 10_000);
        // A raise seen after its instant (a late tick) applies at once.
        assert_eq!(
            Router::succeeding(config(5_000), &at_10, 500, 300).weight_bp(0, 500),
            5_000
        );
        // Lower weights apply at once, even while a raise is pending.
        let rolled_back = Router::succeeding(config(0), &at_50, 200, 9_999);
        assert_eq!(rolled_back.weight_bp(0, 200), 0);
        // A rollout that was not there before starts at its weight.
        let new = Router::succeeding(
            FilterConfig::new(vec![RolloutConfig::new("other", 5_000)]),
            &at_10,
            100,
            300,
        );
        assert_eq!(new.weight_bp(0, 100), 5_000);
    }

    #[test]
    fn hashed_choice_agrees_with_the_contract() {
        let r = router(vec![RolloutConfig::new("r", 2_500)]);
        let cfg = &r.rollouts()[0];
        for i in 0..5_000 {
            let user = format!("user-{i}");
            let d = r
                .decide(&Req::new(&[("x-user-id", user.as_bytes())]), 0, no_id)
                .expect("matches");
            assert_eq!(d.version, cfg.version_for_key(&user));
            assert_eq!(d.reason, Reason::Config(Assignment::Hash));
        }
    }

    #[test]
    fn key_sources_are_tried_in_order() {
        let mut cfg = RolloutConfig::new("r", 5_000);
        cfg.key_sources = vec![
            KeySource::Header("x-user-id".into()),
            KeySource::Cookie("sid".into()),
        ];
        cfg.allow.insert("from-cookie".into());
        cfg.deny.insert("from-header".into());
        let r = router(vec![cfg]);
        let both = Req::new(&[
            ("x-user-id", b"from-header"),
            ("cookie", b"a=b; sid=from-cookie"),
        ]);
        assert_eq!(
            r.decide(&both, 0, no_id).map(|d| d.reason),
            Some(Reason::Config(Assignment::DenyList))
        );
        let cookie_only = Req::new(&[("cookie", b"sid=from-cookie")]);
        assert_eq!(
            r.decide(&cookie_only, 0, no_id).map(|d| d.reason),
            Some(Reason::Config(Assignment::AllowList))
        );
    }

    /// Lists as the controller publishes them (key hashes) route like lists in clear.
    #[test]
    fn hashed_lists_route_like_clear_ones() {
        let mut cfg = RolloutConfig::new("r", 5_000);
        cfg.allow.insert("qa-alice".into());
        cfg.deny.insert("vip-42".into());
        let mut hashed = cfg.clone();
        hashed.hash_key_lists();
        let (clear, hashed) = (router(vec![cfg]), router(vec![hashed]));
        let users = ["qa-alice", "vip-42", "bob", "carol"].map(String::from);
        for user in users
            .iter()
            .cloned()
            .chain((0..2_000).map(|i| format!("u{i}")))
        {
            let req = Req::new(&[("x-user-id", user.as_bytes())]);
            let (a, b) = (clear.decide(&req, 0, no_id), hashed.decide(&req, 0, no_id));
            assert_eq!(
                a.map(|d| (d.version, d.reason)),
                b.map(|d| (d.version, d.reason))
            );
        }
        let vip = Req::new(&[("x-user-id", b"vip-42")]);
        assert_eq!(
            hashed.decide(&vip, 0, no_id).map(|d| d.reason),
            Some(Reason::Config(Assignment::DenyList))
        );
    }

    #[test]
    fn bad_keys_take_the_anonymous_path() {
        let r = router(vec![RolloutConfig::new("r", 5_000)]);
        let huge = vec![b'a'; 257];
        let bad: [&[u8]; 4] = [b"", &huge, b"\xff\xfe\xfd", b"a\x01b"];
        for value in bad {
            let d = r
                .decide(&Req::new(&[("x-user-id", value)]), 0, || {
                    "fresh".to_string()
                })
                .expect("matches");
            assert_eq!(d.new_anonymous_id.as_deref(), Some("fresh"));
            let cfg = &r.rollouts()[0];
            assert_eq!(d.version, cfg.version_for_key("fresh"));
        }
    }

    #[test]
    fn anonymous_cookie_is_reused() {
        let r = router(vec![RolloutConfig::new("r", 5_000)]);
        let d = r
            .decide(&Req::new(&[("cookie", b"canary_uid=abc123")]), 0, no_id)
            .expect("matches");
        assert_eq!(d.new_anonymous_id, None);
        assert_eq!(d.version, r.rollouts()[0].version_for_key("abc123"));
    }

    #[test]
    fn without_key_or_anonymous_cookie_the_user_gets_stable() {
        let mut cfg = RolloutConfig::new("r", 10_000);
        cfg.anonymous_cookie.enabled = false;
        let r = router(vec![cfg]);
        let d = r.decide(&Req::new(&[]), 0, no_id).expect("matches");
        assert_eq!((d.version, d.reason), (Version::Stable, Reason::NoKey));
    }

    #[test]
    fn force_header_only_when_enabled_and_lists_win() {
        let plain = router(vec![RolloutConfig::new("r", 0)]);
        let forced_req = Req::new(&[("x-user-id", b"u1"), ("x-canary-user", b"always")]);
        assert_eq!(
            plain.decide(&forced_req, 0, no_id).map(|d| d.version),
            Some(Version::Stable)
        );

        let mut cfg = RolloutConfig::new("r", 0);
        cfg.force_header = Some("x-canary-user".into());
        cfg.deny.insert("vip".into());
        let r = router(vec![cfg]);
        let d = r.decide(&forced_req, 0, no_id).expect("matches");
        assert_eq!(
            (d.version, d.reason),
            (Version::Canary, Reason::ForceHeader)
        );
        let vip = Req::new(&[("x-user-id", b"vip"), ("x-canary-user", b"always")]);
        assert_eq!(
            r.decide(&vip, 0, no_id).map(|d| d.reason),
            Some(Reason::Config(Assignment::DenyList))
        );
        let junk = Req::new(&[("x-user-id", b"u1"), ("x-canary-user", b"yes please")]);
        assert_eq!(
            r.decide(&junk, 0, no_id).map(|d| d.reason),
            Some(Reason::Config(Assignment::Hash))
        );
    }

    #[test]
    fn first_matching_rollout_wins() {
        let mut api = RolloutConfig::new("api", 10_000);
        api.request_match = RequestMatch {
            hosts: vec!["Shop.Example".into(), "*.example.org".into()],
            path_prefix: Some("/api".into()),
        };
        let all = RolloutConfig::new("all", 0);
        let r = router(vec![api, all]);
        let table: &[(&[u8], &[u8], usize)] = &[
            (b"shop.example", b"/api/cart", 0),
            (b"SHOP.example:8080", b"/api", 0),
            (b"a.example.org", b"/api", 0),
            (b"example.org", b"/api", 1),
            (b"badexample.org", b"/api", 1),
            (b"shop.example", b"/web", 1),
            (b"other", b"/api", 1),
            (b"[::1]:80", b"/api", 1),
        ];
        for (host, path, want) in table {
            let req = Req::new(&[(":authority", host), (":path", path), ("x-user-id", b"u")]);
            assert_eq!(
                r.decide(&req, 0, no_id).map(|d| d.rollout),
                Some(*want),
                "{:?} {:?}",
                String::from_utf8_lossy(host),
                String::from_utf8_lossy(path)
            );
        }
    }

    #[test]
    fn unmatched_requests_are_left_alone() {
        let mut cfg = RolloutConfig::new("r", 10_000);
        cfg.request_match.path_prefix = Some("/only".into());
        let r = router(vec![cfg]);
        assert_eq!(r.decide(&Req::new(&[(":path", b"/other")]), 0, no_id), None);
    }

    #[test]
    fn route_headers_are_deduplicated() {
        let mut b = RolloutConfig::new("b", 0);
        b.route_header = "x-other".into();
        let r = router(vec![
            RolloutConfig::new("a", 0),
            b,
            RolloutConfig::new("c", 0),
        ]);
        assert_eq!(r.headers_to_strip(None), ["x-canary-version", "x-other"]);
        // A rollout's request strips the other rollouts' headers, not its own.
        assert_eq!(r.headers_to_strip(Some(0)), ["x-other"]);
        assert_eq!(r.headers_to_strip(Some(1)), ["x-canary-version"]);
        assert_eq!(r.headers_to_strip(Some(2)), ["x-other"]);
    }
}
