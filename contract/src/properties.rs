//! Property tests (proptest) of the invariants everything else relies on: the ramp only
//! moves users from stable to canary, and a valid configuration survives its own
//! serialization. Test-only; imports the crate's public items.

use std::collections::BTreeSet;

use proptest::collection::{btree_set, vec};
use proptest::prelude::*;

use crate::{
    bucket, version_for_bucket, AnonymousCookie, FilterConfig, KeySource, RequestMatch,
    RolloutConfig, SameSite, Version, BUCKETS,
};

/// Salts the contract accepts: non-empty, no NUL.
fn salt() -> impl Strategy<Value = String> {
    "[^\u{0}]{1,40}"
}

fn weights() -> impl Strategy<Value = (u32, u32)> {
    (0..=BUCKETS, 0..=BUCKETS).prop_map(|(a, b)| (a.min(b), a.max(b)))
}

proptest! {
    /// A key on canary at weight `w` stays on canary at any `w' >= w`, for any salt and key.
    #[test]
    fn the_ramp_is_monotone(salt in salt(), key in vec(any::<u8>(), 0..64), (w, w2) in weights()) {
        let b = bucket(&salt, &key);
        prop_assert!(b < BUCKETS);
        prop_assert_eq!(b, bucket(&salt, &key), "not deterministic");
        if version_for_bucket(b, w) == Version::Canary {
            prop_assert_eq!(version_for_bucket(b, w2), Version::Canary);
        }
        // At the ends everyone is on one side.
        prop_assert_eq!(version_for_bucket(b, 0), Version::Stable);
        prop_assert_eq!(version_for_bucket(b, BUCKETS), Version::Canary);
    }

    /// The same through a rollout's lists: deny and allow hold at every weight, and the
    /// hash is monotone in between.
    #[test]
    fn a_rollouts_assignment_is_monotone(
        salt in salt(),
        key in "[ -~]{1,24}",
        listed in 0..3u8,
        (w, w2) in weights(),
    ) {
        let mut r = RolloutConfig::new("r", w);
        r.salt = Some(salt);
        match listed {
            1 => { r.allow.insert(key.clone()); }
            2 => { r.deny.insert(key.clone()); }
            _ => {}
        }
        let at = |weight| r.assign_at_weight(&key, weight).0;
        if at(w) == Version::Canary {
            prop_assert_eq!(at(w2), Version::Canary);
        }
        match listed {
            1 => prop_assert!(at(0) == Version::Canary && at(BUCKETS) == Version::Canary),
            2 => prop_assert!(at(0) == Version::Stable && at(BUCKETS) == Version::Stable),
            _ => {}
        }
    }

    /// Any valid configuration validates, and `to_json` → `from_json` and `to_value` →
    /// `from_value` give it back unchanged.
    #[test]
    fn valid_configs_round_trip(config in filter_config()) {
        prop_assert_eq!(config.validate(), Ok(()));
        let json = config.to_json();
        prop_assert_eq!(&FilterConfig::from_json(json.as_bytes()).unwrap(), &config);
        let value = serde_json::to_value(&config).unwrap();
        prop_assert_eq!(&FilterConfig::from_value(value).unwrap(), &config);
    }

    /// A weight past 100% is refused, and the refusal names that rollout's field.
    #[test]
    fn weights_past_100_percent_are_refused(
        mut config in filter_config(),
        at in any::<prop::sample::Index>(),
        weight in BUCKETS + 1..,
    ) {
        prop_assume!(!config.rollouts.is_empty());
        let i = at.index(config.rollouts.len());
        config.rollouts[i].weight_bp = weight;
        let err = FilterConfig::from_json(config.to_json().as_bytes()).unwrap_err();
        let field = format!("rollouts[{i}].weight_bp");
        prop_assert!(err.errors.iter().any(|e| e.field == field), "{}", err);
    }
}

fn header_name() -> impl Strategy<Value = String> {
    "x-[a-z0-9-]{1,20}"
}

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_!#$%&'*+.^`|~-]{1,20}"
}

fn rollout() -> impl Strategy<Value = RolloutConfig> {
    let keys = btree_set("[ -~]{1,16}", 0..4);
    (
        (0..=BUCKETS, proptest::option::of(salt()), 16usize..=4096),
        (
            vec("(\\*\\.)?[a-z0-9-]{1,10}(\\.[a-z]{2,5}){0,2}", 0..3),
            proptest::option::of("/[a-z0-9/_-]{0,12}"),
        ),
        (
            vec(
                prop_oneof![
                    header_name().prop_map(KeySource::Header),
                    token().prop_map(KeySource::Cookie),
                ],
                1..3,
            ),
            header_name(),
            proptest::option::of(header_name()),
        ),
        (keys.clone(), keys),
        (
            any::<bool>(),
            token(),
            any::<u64>(),
            "/[!-~&&[^;,]]{0,12}",
            any::<bool>(),
            0..3u8,
        ),
    )
        .prop_map(|(basic, matching, headers, lists, cookie)| {
            let (weight_bp, salt, max_key_bytes) = basic;
            let (hosts, path_prefix) = matching;
            let (key_sources, route_header, force_header) = headers;
            let (allow, deny) = lists;
            let (enabled, name, max_age_s, path, http_only, same_site) = cookie;
            let mut r = RolloutConfig::new("r", weight_bp);
            r.salt = salt;
            // The anonymous cookie's ids are 32 bytes: a shorter limit is refused with it on.
            r.max_key_bytes = if enabled {
                max_key_bytes.max(crate::config::ANONYMOUS_ID_BYTES)
            } else {
                max_key_bytes
            };
            r.request_match = RequestMatch { hosts, path_prefix };
            r.key_sources = key_sources;
            r.force_header = force_header.filter(|f| *f != route_header);
            r.route_header = route_header;
            let deny: BTreeSet<String> = deny.difference(&allow).cloned().collect();
            r.allow = allow;
            r.deny = deny;
            let same_site =
                [SameSite::Strict, SameSite::Lax, SameSite::None][usize::from(same_site)];
            r.anonymous_cookie = AnonymousCookie {
                enabled,
                name,
                max_age_s,
                path,
                // SameSite=None needs Secure.
                secure: same_site == SameSite::None || max_age_s % 2 == 0,
                http_only,
                same_site,
            };
            r
        })
}

/// Valid configurations: distinct valid names, the rest from `rollout`.
fn filter_config() -> impl Strategy<Value = FilterConfig> {
    (
        btree_set("[a-z0-9][a-z0-9_-]{0,20}", 0..4),
        vec(rollout(), 4),
    )
        .prop_map(|(names, rollouts)| {
            let rollouts = names
                .into_iter()
                .zip(rollouts)
                .map(|(name, mut r)| {
                    r.name = name;
                    r
                })
                .collect();
            FilterConfig::new(rollouts)
        })
}
