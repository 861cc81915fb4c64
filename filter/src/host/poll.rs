//! Polling the controller (when the plugin configuration names one; see `crate::control`):
//! one root per VM takes the lease and polls, the answer goes to shared data, and every root
//! applies it from there, or the fail-safe when the controller has been silent too long.

use std::time::Duration;

use canary_contract::ControllerSource;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};

use super::active::Current;
use super::calls::now_ms;
use crate::control::{
    decode_ms, decode_shared, encode_ms, encode_shared, fail_safe, interpret, is_stale,
    jittered_interval, lease_expired, parse_config, raise_delay_ms, summary, sync_period_ms,
    PollOutcome, SharedKeys,
};

/// Polling the controller (when the plugin configuration names one).
pub(super) struct Controlled {
    source: ControllerSource,
    keys: SharedKeys,
    /// `source.poll_interval_ms` with this proxy's jitter.
    poll_interval_ms: u64,
    /// The plugin configuration (JSON, validated): in force until the controller answers.
    /// Kept as bytes and parsed again when needed: cloning typed configurations costs
    /// more module size than parsing, which the module has anyway.
    plugin_config: Vec<u8>,
    /// Shared-data version of the configuration this root applied last.
    applied_cas: Option<u32>,
    applied_etag: String,
    /// The controller's latest configuration (JSON, validated).
    latest: Option<Vec<u8>>,
    in_fail_safe: bool,
    poll_in_flight: Option<u32>,
    /// The last poll problem logged, so a down controller is logged once, not every poll.
    last_problem: Option<String>,
}

impl Controlled {
    /// Polling `source`, with the plugin configuration (`plugin_config`, valid) in force
    /// until the controller answers.
    pub(super) fn new(source: ControllerSource, plugin_config: Vec<u8>) -> Controlled {
        let mut random = [0u8; 8];
        // Without randomness the period is just not jittered.
        let _ = getrandom::fill(&mut random);
        Controlled {
            keys: SharedKeys::new(&source),
            poll_interval_ms: jittered_interval(
                source.poll_interval_ms,
                u64::from_le_bytes(random),
            ),
            source,
            plugin_config,
            applied_cas: None,
            applied_etag: String::new(),
            latest: None,
            in_fail_safe: false,
            poll_in_flight: None,
            last_problem: None,
        }
    }

    /// Applies the controller's configuration from shared data if another root (or this
    /// one) stored a newer one. While requests wait for the first answer (`holding`), its
    /// raises apply at once: no request was routed by the older weight, so no user can see
    /// the two on two workers.
    pub(super) fn sync_from_shared(&mut self, current: &mut Current, holding: bool) {
        let Ok((Some(bytes), cas)) = hostcalls::get_shared_data(&self.keys.config) else {
            return;
        };
        if cas.is_some() && cas == self.applied_cas {
            return;
        }
        self.applied_cas = cas;
        let Some(shared) = decode_shared(&bytes) else {
            return;
        };
        // Stored only after validation, but shared data is host data: check again.
        let Ok(config) = parse_config(shared.body) else {
            return;
        };
        self.applied_etag = shared.etag;
        self.latest = Some(shared.body.to_vec());
        if !self.in_fail_safe {
            let raise_at_ms = (!holding).then_some(shared.raise_at_ms);
            if let Err(e) = current.activate(config, raise_at_ms) {
                log::error!("wasm-canary: cannot apply the controller's configuration: {e}");
            }
        }
    }

    /// Routes everyone to stable while the controller has been silent for too long.
    pub(super) fn check_fail_safe(&mut self, current: &mut Current) {
        let last_ok = hostcalls::get_shared_data(&self.keys.last_ok)
            .ok()
            .and_then(|(bytes, _)| decode_ms(bytes.as_deref()));
        let stale = is_stale(&self.source, last_ok, now_ms());
        if stale == self.in_fail_safe {
            return;
        }
        self.in_fail_safe = stale;
        let config = self.latest.as_deref().unwrap_or(&self.plugin_config);
        let Ok(config) = parse_config(config) else {
            return;
        };
        // Each worker notices the controller's return at its own tick: the raise back to the
        // controller's weights waits as long as a raise from a poll would.
        let raise_at_ms = now_ms() + raise_delay_ms(self.source.poll_interval_ms);
        let config = if stale {
            log::warn!(
                "wasm-canary: no answer from the controller for {}s: everyone to stable",
                self.source.fail_safe_after_s.unwrap_or(0)
            );
            fail_safe(config)
        } else {
            log::info!(
                "wasm-canary: controller reachable again: {}",
                summary(&config)
            );
            config
        };
        if let Err(e) = current.activate(config, Some(raise_at_ms)) {
            log::error!("wasm-canary: {e}");
        }
    }

    /// Polls the controller if no root in this VM did within the poll interval.
    pub(super) fn maybe_poll(&mut self) {
        if self.poll_in_flight.is_some() {
            return;
        }
        let now = now_ms();
        let Ok((last, cas)) = hostcalls::get_shared_data(&self.keys.lease) else {
            return;
        };
        if !lease_expired(decode_ms(last.as_deref()), now, self.poll_interval_ms) {
            return;
        }
        if hostcalls::set_shared_data(&self.keys.lease, Some(&encode_ms(now)), cas).is_err() {
            return; // another root took the lease
        }
        let mut headers = vec![
            (":method", "GET"),
            (":path", self.source.path.as_str()),
            (":authority", self.source.authority.as_str()),
        ];
        if !self.applied_etag.is_empty() {
            headers.push(("if-none-match", self.applied_etag.as_str()));
        }
        match hostcalls::dispatch_http_call(
            &self.source.cluster,
            headers,
            None,
            vec![],
            Duration::from_millis(self.source.timeout_ms),
        ) {
            Ok(token) => self.poll_in_flight = Some(token),
            Err(status) => {
                let problem = format!("cannot call cluster {}: {status:?}", self.source.cluster);
                if self.last_problem.as_ref() != Some(&problem) {
                    log::warn!("wasm-canary: {problem} (keeping the current configuration)");
                    self.last_problem = Some(problem);
                }
            }
        }
    }

    /// Whether this root has applied a configuration from the controller (its own poll's
    /// or, through shared data, another root's).
    pub(super) fn heard(&self) -> bool {
        self.latest.is_some()
    }

    /// How long requests may be held at start-up for the first answer: the poll's timeout,
    /// plus a sync period for the first poll to go out and its answer to reach this worker.
    pub(super) fn hold_ms(&self) -> u64 {
        self.source.timeout_ms + sync_period_ms(self.source.poll_interval_ms)
    }

    /// A call's answer: if it is this root's poll, stores a new configuration in shared
    /// data for every root and applies it. Whether it was this root's poll.
    pub(super) fn answered(
        &mut self,
        token_id: u32,
        body_size: usize,
        current: &mut Current,
        holding: bool,
    ) -> bool {
        if self.poll_in_flight != Some(token_id) {
            return false;
        }
        self.poll_in_flight = None;
        let header = |name: &str| {
            hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name)
                .ok()
                .flatten()
        };
        let status = header(":status");
        let etag = header("etag");
        let body = if body_size > 0 {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
        } else {
            None
        };
        let outcome = interpret(status.as_deref(), etag.as_deref(), body.as_deref());
        let polled_ms = now_ms();
        let now = encode_ms(polled_ms);
        match outcome {
            PollOutcome::Updated { etag, body, config } => {
                log::info!(
                    "wasm-canary: configuration {etag} from the controller: {}",
                    summary(&config)
                );
                self.last_problem = None;
                let raise_at_ms = polled_ms + raise_delay_ms(self.source.poll_interval_ms);
                let _ = hostcalls::set_shared_data(
                    &self.keys.config,
                    Some(&encode_shared(&etag, raise_at_ms, &body)),
                    None,
                );
                let _ = hostcalls::set_shared_data(&self.keys.last_ok, Some(&now), None);
                self.sync_from_shared(current, holding);
                self.check_fail_safe(current);
            }
            PollOutcome::NotModified => {
                self.last_problem = None;
                let _ = hostcalls::set_shared_data(&self.keys.last_ok, Some(&now), None);
                self.check_fail_safe(current);
            }
            PollOutcome::Failed(problem) => {
                if self.last_problem.as_ref() != Some(&problem) {
                    log::warn!(
                        "wasm-canary: poll failed: {problem} (keeping the current configuration)"
                    );
                    self.last_problem = Some(problem);
                }
            }
        }
        true
    }
}
