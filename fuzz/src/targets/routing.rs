//! The filter's per-request routing (`routing::Router::decide`): host and path matching,
//! user keys from headers and cookies, the anonymous id, the force header.

use std::collections::BTreeSet;

use canary_contract::{Assignment, FilterConfig, KeySource, RequestMatch, RolloutConfig, Version};
use canary_filter::routing::{Reason, RequestHeaders, Router};

use crate::input::Input;
use crate::Target;

pub const TARGET: Target = Target {
    name: "routing",
    about: "routing::Router::decide on fuzzed request headers over a few configurations: a \
            key it routes by is usable (non-empty, within max_key_bytes, no control \
            characters), the version is what the contract assigns, the deny list always \
            wins, and a canary user stays canary at every higher weight",
    run,
    max_len: 2 * 1024,
    dict: &[
        "\n",
        "canary_uid=",
        "session_user=",
        "; ",
        "always",
        "never",
        "example.com",
        "a.example.com",
        ":8080",
        "[::1]:80",
        "/api/",
        "/",
        "vip",
        "qa",
        "\u{0}",
        "\u{7f}",
    ],
};

/// Headers the rollouts below look at, one a line of the input after its first byte.
const HEADERS: [&str; 6] = [
    "cookie",
    "x-user-id",
    ":authority",
    ":path",
    "x-canary-force",
    "x-tenant",
];

struct Request<'a>(Vec<(&'static str, &'a [u8])>);

impl RequestHeaders for Request<'_> {
    fn header(&self, name: &str) -> Option<std::borrow::Cow<'_, [u8]>> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| std::borrow::Cow::Borrowed(*v))
    }
}

/// The configurations routed over: every kind of key source and match, lists, a force
/// header, anonymous cookies on and off, a short key limit.
fn configs() -> Vec<FilterConfig> {
    let mut by_header = RolloutConfig::new("by-header", 2_500);
    by_header.force_header = Some("x-canary-force".into());
    by_header.deny = BTreeSet::from(["vip".to_string()]);
    by_header.allow = BTreeSet::from(["qa".to_string()]);
    // A short key limit needs the anonymous cookie off (its ids are 32 bytes).
    by_header.max_key_bytes = 8;
    by_header.anonymous_cookie.enabled = false;

    let mut by_cookie = RolloutConfig::new("by-cookie", 7_000);
    by_cookie.key_sources = vec![
        KeySource::Cookie("session_user".into()),
        KeySource::Header("x-tenant".into()),
    ];
    by_cookie.salt = Some("pepper".into());
    by_cookie.request_match = RequestMatch {
        hosts: vec!["*.example.com".into(), "Example.COM".into()],
        path_prefix: Some("/api/".into()),
    };
    let mut no_anonymous = RolloutConfig::new("no-anonymous", 10_000);
    no_anonymous.anonymous_cookie.enabled = false;
    no_anonymous.force_header = Some("x-canary-force".into());

    vec![
        FilterConfig::new(vec![by_header]),
        FilterConfig::new(vec![by_cookie, no_anonymous]),
        FilterConfig::new(vec![RolloutConfig::new("all-stable", 0)]),
    ]
}

/// Input: which configuration and a weight step, then the header values one a line (an
/// empty line: the header is absent).
fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let choice = input.byte();
    let mut headers = Vec::new();
    for name in HEADERS {
        match input.field(b'\n') {
            Some(b"") | None => {}
            Some(value) => headers.push((name, value)),
        }
    }
    let request = Request(headers);
    let mut configs = configs();
    let config = configs.swap_remove(usize::from(choice) % 3);
    assert_eq!(config.validate(), Ok(()));
    let router = Router::new(config);
    let mut minted = None;
    let decision = router.decide(&request, 0, || {
        let id = "0123456789abcdef0123456789abcdef".to_string();
        minted = Some(id.clone());
        id
    });
    let Some(d) = decision else {
        return;
    };
    let rollout = &router.rollouts()[d.rollout];
    assert_eq!(
        d.new_anonymous_id, minted,
        "an id minted but not set, or set twice"
    );
    if let Some(id) = &d.new_anonymous_id {
        assert!(rollout.anonymous_cookie.enabled);
        assert_eq!(
            d.key.as_ref(),
            Some(id),
            "routed by another key than the new id"
        );
        // Sent back as the cookie, the new id routes the next request the same way: the
        // user is sticky (the contract refuses max_key_bytes under 32 with the cookie on).
        if rollout.max_key_bytes >= id.len() {
            let cookie = format!("{}={id}", rollout.anonymous_cookie.name);
            let mut next = Request(vec![("cookie", cookie.as_bytes())]);
            next.0
                .extend(request.0.iter().filter(|(name, _)| *name != "cookie"));
            let again = router.decide(&next, 0, || panic!("a second id for the same user"));
            let again = again.map(|a| (a.rollout, a.version, a.key));
            assert_eq!(
                again,
                Some((d.rollout, d.version, d.key.clone())),
                "not sticky"
            );
        }
    }
    match (&d.key, d.reason) {
        (None, reason) => {
            assert!(
                !rollout.anonymous_cookie.enabled,
                "no key with anonymous ids on"
            );
            assert!(matches!(reason, Reason::NoKey | Reason::ForceHeader));
            if reason == Reason::NoKey {
                assert_eq!(d.version, Version::Stable);
            }
        }
        (Some(key), reason) => {
            // The filter's own new id is exempt from max_key_bytes (32 bytes, and see
            // `sticky` below); a key from the request obeys it.
            let minted = d.new_anonymous_id.is_some();
            assert!(!key.is_empty() && (minted || key.len() <= rollout.max_key_bytes));
            assert!(
                !key.chars().any(char::is_control),
                "a key with control characters"
            );
            let (version, assignment) = rollout.assign(key);
            match reason {
                Reason::Config(a) => assert_eq!((d.version, a), (version, assignment)),
                Reason::ForceHeader => assert_eq!(assignment, Assignment::Hash),
                Reason::NoKey => panic!("NoKey with a key"),
            }
            if rollout.deny.contains(key) {
                assert_eq!(d.version, Version::Stable, "a denied key on canary");
            }
            // The ramp only ever moves this user from stable to canary.
            let step = u32::from(choice >> 2) * 40;
            let mut was_canary = false;
            for weight in (0..=10_000).step_by(500).map(|w| (w + step).min(10_000)) {
                let canary = rollout.assign_at_weight(key, weight).0 == Version::Canary;
                assert!(
                    canary || !was_canary,
                    "left canary as the weight rose to {weight}"
                );
                was_canary = canary;
            }
        }
    }
}
