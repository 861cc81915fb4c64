//! The contract's configuration parser and validator: `FilterConfig::from_json`,
//! `from_value`, `validate`.

use canary_contract::FilterConfig;

use crate::Target;

pub const TARGET: Target = Target {
    name: "config",
    about: "FilterConfig::from_json/from_value on JSON bytes: an accepted config validates, \
            round-trips through to_json and through a serde_json::Value, and from_value \
            accepts the same document; a refusal names a field",
    run,
    max_len: 8 * 1024,
    dict: DICT,
};

/// Every field name and enum value of the format, and JSON's punctuation.
pub const DICT: &[&str] = &[
    "\"schema_version\":1",
    "\"rollouts\":[",
    "\"controller\":{",
    "\"cluster\":",
    "\"path\":",
    "\"authority\":",
    "\"poll_interval_ms\":",
    "\"timeout_ms\":",
    "\"fail_safe_after_s\":",
    "\"name\":",
    "\"match\":{",
    "\"hosts\":[",
    "\"path_prefix\":",
    "\"key_sources\":[",
    "{\"header\":",
    "{\"cookie\":",
    "\"salt\":",
    "\"weight_bp\":",
    "\"route_header\":",
    "\"allow\":[",
    "\"deny\":[",
    "\"force_header\":",
    "\"anonymous_cookie\":{",
    "\"enabled\":",
    "\"max_age_s\":",
    "\"secure\":",
    "\"http_only\":",
    "\"same_site\":",
    "\"Strict\"",
    "\"Lax\"",
    "\"None\"",
    "\"max_key_bytes\":",
    "\"circuit_breaker\":{",
    "\"error_rate_bp\":",
    "\"min_requests\":",
    "\"window_s\":",
    "\"open_s\":",
    "\"llm\":{",
    "\"path_prefixes\":[",
    "\"max_body_bytes\":",
    "\"prices\":{",
    "\"stable\":{",
    "\"canary\":{",
    "\"input_nano_usd_per_token\":",
    "\"output_nano_usd_per_token\":",
    "\"refusal_reasons\":[",
    "\"quality_headers\":[",
    "\"signal\":",
    "\"fallback\":{",
    "\"tiers\":[",
    "\"route_value\":",
    "\"half_open_probes\":",
    "\"response\":{",
    "\"status\":",
    "\"headers\":[",
    "\"body_json\":",
    "\"retry\":{",
    "\"methods\":[",
    "\"max_request_bytes\":",
    "\"rate_limit\":{",
    "\"tokens_per_minute\":",
    "\"requests_per_minute\":",
    "\"refill_period_ms\":",
    "\"estimate_tokens\":",
    "\"max_users\":",
    "\"workers\":",
    "\"priority\":{",
    "\"values\":[",
    "\"keys\":[",
    "\"throttled\":",
    "\"throttle_retry_after_s\":",
    "\"shadow\":{",
    "\"sample_bp\":",
    "\"max_in_flight\":",
    "\"text_normalisation\":",
    "\"exact\"",
    "\"trim_whitespace\"",
    "\"collapse_whitespace\"",
    "\"collapse_whitespace_lowercase\"",
    "\"eval\":{",
    "true",
    "false",
    "null",
    "10000",
    "10001",
    "4294967296",
    "18446744073709551616",
    "-1",
    "1e3",
    "0.5",
    "\"\\u0000\"",
    "\"x-user-id\"",
    "\"x-canary-version\"",
    "\"*.example.com\"",
    "\"/\"",
    "{}",
    "[]",
    ",",
    ":",
];

fn run(data: &[u8]) {
    let parsed = FilterConfig::from_json(data);
    let config = match parsed {
        Ok(config) => config,
        Err(e) => {
            // A refusal says where: every error names a field (or the root).
            let text = e.to_string();
            assert!(!text.is_empty(), "an empty refusal");
            return;
        }
    };
    assert_eq!(
        config.validate(),
        Ok(()),
        "accepted, then refused by validate"
    );

    let json = config.to_json();
    let again = FilterConfig::from_json(json.as_bytes())
        .unwrap_or_else(|e| panic!("its own serialization is refused: {e}\n{json}"));
    assert_eq!(again, config, "to_json/from_json changed it\n{json}");

    let value = serde_json::to_value(&config).expect("a config serializes to a Value");
    let from_value = FilterConfig::from_value(value)
        .unwrap_or_else(|e| panic!("its Value is refused by from_value: {e}"));
    assert_eq!(from_value, config, "to_value/from_value changed it");

    // The same document held as a Value (the controller's path) reads the same.
    let document: serde_json::Value =
        serde_json::from_slice(data).expect("from_json accepted it, so it is JSON");
    match FilterConfig::from_value(document) {
        Ok(c) => assert_eq!(c, config, "from_value and from_json read it differently"),
        Err(e) => panic!("from_json accepts, from_value refuses: {e}"),
    }
}
