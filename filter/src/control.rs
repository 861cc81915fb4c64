//! Configuration from the controller, independent of proxy-wasm so it is unit-tested natively.
//!
//! One root context at a time (whichever wins a lease in shared data) polls the controller;
//! a good answer goes to shared data, where every worker's root context picks it up on its
//! next tick. Raises take effect at an instant stored with the configuration, so every
//! worker switches together. A bad or missing answer changes nothing: the last good
//! configuration stays.

use std::fmt::Write as _;

use canary_contract::{ConfigError, ControllerSource, FilterConfig};

/// Parses and validates a configuration as this build of the filter takes it: the
/// contract's checks, and in the lean build (feature `lean`) its own on top (every rollout
/// reads its stats from the clusters and needs no response callback), so a configuration
/// that relies on what the lean filter does not do is refused naming the field.
pub fn parse_config(bytes: &[u8]) -> Result<FilterConfig, ConfigError> {
    let config = FilterConfig::from_json(bytes)?;
    #[cfg(feature = "lean")]
    config.validate_lean()?;
    Ok(config)
}

/// Shared-data keys for one controller source (shared data is per VM id, across workers).
pub struct SharedKeys {
    pub config: String,
    pub lease: String,
    pub last_ok: String,
}

impl SharedKeys {
    pub fn new(source: &ControllerSource) -> SharedKeys {
        let base = format!("wasm-canary/{}{}", source.cluster, source.path);
        SharedKeys {
            config: format!("{base}/config"),
            lease: format!("{base}/lease"),
            last_ok: format!("{base}/last_ok"),
        }
    }
}

/// What the polling root stores for every worker: the configuration as the controller sent
/// it, and the instant from which raises in it apply (the same on every worker).
#[derive(Debug, PartialEq)]
pub struct SharedConfig<'a> {
    pub etag: String,
    pub raise_at_ms: u64,
    pub body: &'a [u8],
}

/// `etag \n raise_at_ms \n body`.
pub fn encode_shared(etag: &str, raise_at_ms: u64, body: &[u8]) -> Vec<u8> {
    let at = raise_at_ms.to_string();
    let mut out = Vec::with_capacity(etag.len() + at.len() + 2 + body.len());
    out.extend_from_slice(etag.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(at.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

pub fn decode_shared(bytes: &[u8]) -> Option<SharedConfig<'_>> {
    let mut parts = bytes.splitn(3, |&b| b == b'\n');
    let etag = std::str::from_utf8(parts.next()?).ok()?.to_string();
    let raise_at_ms = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    Some(SharedConfig {
        etag,
        raise_at_ms,
        body: parts.next()?,
    })
}

/// How often each worker looks for a new configuration in shared data.
pub fn sync_period_ms(poll_interval_ms: u64) -> u64 {
    (poll_interval_ms / 10).clamp(10, 50)
}

/// How long after it is stored a raise waits: every worker has looked at shared data by
/// then, even one whose tick runs a period late on a busy machine.
pub fn raise_delay_ms(poll_interval_ms: u64) -> u64 {
    3 * sync_period_ms(poll_interval_ms)
}

pub fn encode_ms(ms: u64) -> [u8; 8] {
    ms.to_le_bytes()
}

pub fn decode_ms(bytes: Option<&[u8]>) -> Option<u64> {
    bytes
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
}

/// This proxy's poll period: up to 10% shorter than configured, by a random amount drawn
/// once per configuration, so proxies that started together drift apart instead of polling
/// the controller in lockstep.
pub fn jittered_interval(interval_ms: u64, random: u64) -> u64 {
    interval_ms - random % (interval_ms / 10 + 1)
}

/// Whether the poll lease (the time of the last poll by anyone) has expired.
pub fn lease_expired(last_poll_ms: Option<u64>, now_ms: u64, interval_ms: u64) -> bool {
    last_poll_ms.is_none_or(|last| now_ms.saturating_sub(last) >= interval_ms || last > now_ms)
}

#[derive(Debug, PartialEq)]
pub enum PollOutcome {
    /// A new, valid configuration.
    Updated {
        etag: String,
        body: Vec<u8>,
        config: FilterConfig,
    },
    NotModified,
    /// Nothing usable; the reason is for the log.
    Failed(String),
}

/// Makes sense of the controller's answer to a poll.
pub fn interpret(status: Option<&[u8]>, etag: Option<&[u8]>, body: Option<&[u8]>) -> PollOutcome {
    match status {
        Some(b"304") => return PollOutcome::NotModified,
        Some(b"200") => {}
        Some(other) => return PollOutcome::Failed(format!("controller answered {}", lossy(other))),
        None => return PollOutcome::Failed("no answer (timeout or connection failure)".into()),
    }
    let Some(body) = body else {
        return PollOutcome::Failed("empty configuration".into());
    };
    let config = match parse_config(body) {
        Ok(c) => c,
        Err(e) => {
            return PollOutcome::Failed(format!("invalid configuration from the controller: {e}"))
        }
    };
    if config.controller.is_some() {
        return PollOutcome::Failed(
            "invalid configuration from the controller: controller: may only be set in the plugin configuration".into(),
        );
    }
    let etag = etag
        .and_then(|e| std::str::from_utf8(e).ok())
        .filter(|e| !e.chars().any(char::is_control))
        .unwrap_or("")
        .to_string();
    PollOutcome::Updated {
        etag,
        body: body.to_vec(),
        config,
    }
}

/// `String::from_utf8_lossy` by `str::from_utf8`, which the module has anyway: the same text
/// (each invalid sequence `Utf8Error::error_len` names is one U+FFFD), without the 1 KB of
/// `Utf8Chunks` code.
pub(crate) fn lossy(mut bytes: &[u8]) -> String {
    let mut text = String::new();
    loop {
        match std::str::from_utf8(bytes) {
            Ok(valid) => {
                text.push_str(valid);
                return text;
            }
            Err(e) => {
                let (valid, rest) = bytes.split_at(e.valid_up_to());
                text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                text.push(char::REPLACEMENT_CHARACTER);
                match e.error_len() {
                    Some(len) => bytes = rest.get(len..).unwrap_or_default(),
                    None => return text,
                }
            }
        }
    }
}

/// Whether the controller has been unreachable for longer than the source allows.
pub fn is_stale(source: &ControllerSource, last_ok_ms: Option<u64>, now_ms: u64) -> bool {
    match (source.fail_safe_after_s, last_ok_ms) {
        (None, _) => false,
        // Never heard from the controller: the plugin configuration is what an operator
        // wrote, so it stands.
        (Some(_), None) => false,
        (Some(after_s), Some(last)) => now_ms.saturating_sub(last) > after_s.saturating_mul(1_000),
    }
}

/// Everyone on stable: weight 0 and no allow list (the deny list already means stable).
pub fn fail_safe(mut config: FilterConfig) -> FilterConfig {
    for r in &mut config.rollouts {
        r.weight_bp = 0;
        r.allow.clear();
        r.force_header = None;
    }
    config
}

/// A configuration's rollouts and weights, for the log: `[a=500bp, b=0bp]`.
pub fn summary(config: &FilterConfig) -> String {
    // Pushed piece by piece: `[..].join` costs the wasm module 1 KB.
    let mut out = String::from("[");
    for (i, r) in config.rollouts.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{}={}bp", r.name, r.weight_bp);
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use canary_contract::RolloutConfig;

    #[test]
    fn lossy_replaces_each_broken_sequence_once() {
        for bytes in [
            &b"503"[..],
            b"",
            b"5\xff3",
            b"\xe2\x82",
            b"a\xe2\x82b",
            b"\xf0\x9f\x98\x80!",
            b"\xed\xa0\x80",
            b"\xc0\xaf\xf8\x88\x80\x80\x80",
        ] {
            assert_eq!(lossy(bytes), String::from_utf8_lossy(bytes), "{bytes:?}");
        }
        assert_eq!(lossy(b"5\xff3"), "5\u{fffd}3");
    }

    #[test]
    fn shared_encoding_round_trips() {
        let bytes = encode_shared("\"7\"", 1_234, b"{\"a\":1}\n");
        assert_eq!(
            decode_shared(&bytes),
            Some(SharedConfig {
                etag: "\"7\"".to_string(),
                raise_at_ms: 1_234,
                body: &b"{\"a\":1}\n"[..],
            })
        );
        assert_eq!(decode_shared(b"no newline"), None);
        assert_eq!(decode_shared(b"etag\nnot a time\n{}"), None);
        assert_eq!(decode_ms(Some(&encode_ms(42))), Some(42));
        assert_eq!(decode_ms(Some(b"short")), None);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for random in [0, 1, 99, 100, 101, u64::MAX] {
            let ms = jittered_interval(1_000, random);
            assert!((900..=1_000).contains(&ms), "{ms}");
        }
        assert_ne!(jittered_interval(1_000, 7), jittered_interval(1_000, 8));
    }

    #[test]
    fn lease() {
        assert!(lease_expired(None, 5, 1_000));
        assert!(!lease_expired(Some(1_000), 1_500, 1_000));
        assert!(lease_expired(Some(1_000), 2_000, 1_000));
        assert!(lease_expired(Some(9_000), 2_000, 1_000), "clock went back");
    }

    /// A rollout every build of the filter takes (the lean one included).
    fn rollout(name: &str, weight_bp: u32) -> RolloutConfig {
        let mut r = RolloutConfig::new(name, weight_bp);
        if cfg!(feature = "lean") {
            r.stats = canary_contract::StatsFrom::Clusters;
            r.anonymous_cookie.enabled = false;
        }
        r
    }

    #[test]
    fn answers() {
        let good = FilterConfig::new(vec![rollout("a", 2_500)]).to_json();
        match interpret(Some(b"200"), Some(b"\"3\""), Some(good.as_bytes())) {
            PollOutcome::Updated { etag, config, .. } => {
                assert_eq!(etag, "\"3\"");
                assert_eq!(config.rollouts[0].weight_bp, 2_500);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            interpret(Some(b"304"), None, None),
            PollOutcome::NotModified
        );
        // (status, body, what the reason must mention)
        type Case<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, &'a str);
        let cases: [Case; 5] = [
            (Some(b"503"), Some(good.as_bytes()), "answered 503"),
            (None, None, "no answer"),
            (Some(b"200"), None, "empty"),
            (Some(b"200"), Some(b"<html>"), "invalid configuration"),
            (
                Some(b"200"),
                Some(br#"{"schema_version":1,"rollouts":[{"name":"a","weight_bp":20000}]}"#),
                "rollouts[0].weight_bp",
            ),
        ];
        for (status, body, want) in cases {
            match interpret(status, None, body) {
                PollOutcome::Failed(reason) => assert!(reason.contains(want), "{reason}"),
                other => panic!("{other:?}"),
            }
        }
    }

    /// The lean build refuses, naming the fields, a configuration that relies on the
    /// filter's own stats or on seeing responses; the full build takes it.
    #[test]
    fn the_lean_build_refuses_what_it_cannot_do() {
        let full = FilterConfig::new(vec![RolloutConfig::new("a", 2_500)]).to_json();
        let parsed = parse_config(full.as_bytes());
        if cfg!(feature = "lean") {
            let err = parsed.expect_err("filter stats and an anonymous cookie");
            let fields: Vec<_> = err.errors.iter().map(|e| e.field.as_str()).collect();
            assert_eq!(
                fields,
                ["rollouts[0].stats", "rollouts[0].anonymous_cookie.enabled"]
            );
            match interpret(Some(b"200"), None, Some(full.as_bytes())) {
                PollOutcome::Failed(reason) => {
                    assert!(reason.contains("rollouts[0].stats"), "{reason}")
                }
                other => panic!("{other:?}"),
            }
        } else {
            parsed.expect("the full build keeps its own stats");
        }
        let lean = FilterConfig::new(vec![rollout("a", 2_500)]).to_json();
        parse_config(lean.as_bytes()).expect("every build takes a lean rollout");
    }

    #[test]
    fn fail_safe_after_silence() {
        let mut source = ControllerSource::new("ctl");
        assert!(!is_stale(&source, Some(0), u64::MAX / 2), "off by default");
        source.fail_safe_after_s = Some(10);
        assert!(!is_stale(&source, None, 1_000_000));
        assert!(!is_stale(&source, Some(100_000), 110_000));
        assert!(is_stale(&source, Some(100_000), 110_001));
        let mut r = RolloutConfig::new("a", 5_000);
        r.allow.insert("qa".into());
        (r.allow).insert(canary_contract::KeyHash::of("a", "qa-2").to_string());
        let safe = fail_safe(FilterConfig::new(vec![r]));
        assert_eq!(safe.rollouts[0].weight_bp, 0);
        assert!(safe.rollouts[0].allow.is_empty());
    }

    #[test]
    fn summary_lists_rollouts_and_weights() {
        let config = FilterConfig::new(vec![
            RolloutConfig::new("a", 500),
            RolloutConfig::new("b", 0),
        ]);
        assert_eq!(summary(&config), "[a=500bp, b=0bp]");
        assert_eq!(summary(&FilterConfig::new(vec![])), "[]");
    }
}
