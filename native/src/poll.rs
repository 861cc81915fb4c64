//! Polling the controller, host-free: what to do on each tick of the poll timer and with
//! each answer, by the wasm filter's rules (`canary_filter::control`: how an answer is read,
//! when the controller counts as gone, what fail-safe means). Simpler than the wasm
//! filter's `host/poll.rs`: one configuration object serves every worker, so there is no
//! shared-data lease among VMs and no delay before a raise; a new configuration is in
//! force for every worker's next request at once.

use canary_contract::{ControllerSource, FilterConfig};
use canary_filter::control::{fail_safe, interpret, is_stale, summary, PollOutcome};

/// What the poller asks of the hook that runs it.
#[derive(Debug, Default)]
pub struct Step {
    /// Put this configuration in force.
    pub activate: Option<FilterConfig>,
    /// Send the poll request with these headers.
    pub call: Option<Vec<(&'static str, String)>>,
    /// Log this (at warning level) once.
    pub warn: Option<String>,
    pub info: Option<String>,
}

pub struct Poll {
    pub source: ControllerSource,
    initial: FilterConfig,
    /// The last configuration the controller published.
    latest: Option<FilterConfig>,
    etag: String,
    last_ok_ms: Option<u64>,
    in_fail_safe: bool,
    pub in_flight: Option<u64>,
    last_problem: Option<String>,
}

impl Poll {
    pub fn new(source: ControllerSource, initial: FilterConfig) -> Poll {
        Poll {
            source,
            initial,
            latest: None,
            etag: String::new(),
            last_ok_ms: None,
            in_fail_safe: false,
            in_flight: None,
            last_problem: None,
        }
    }

    /// A tick of the poll timer at `now_ms`.
    pub fn tick(&mut self, now_ms: u64) -> Step {
        let mut step = self.check_fail_safe(now_ms);
        if self.in_flight.is_none() {
            let mut headers = vec![
                (":method", "GET".to_string()),
                (":path", self.source.path.clone()),
                (":authority", self.source.authority.clone()),
            ];
            if !self.etag.is_empty() {
                headers.push(("if-none-match", self.etag.clone()));
            }
            step.call = Some(headers);
        }
        step
    }

    /// The poll request could not be sent.
    pub fn not_sent(&mut self, problem: String) -> Step {
        Step {
            warn: self.problem(problem),
            ..Step::default()
        }
    }

    /// The answer to callout `id` (`None` status: no answer, e.g. a reset or a timeout).
    pub fn answered(
        &mut self,
        id: u64,
        status: Option<&[u8]>,
        etag: Option<&[u8]>,
        body: &[u8],
        now_ms: u64,
    ) -> Step {
        if self.in_flight != Some(id) {
            return Step::default();
        }
        self.in_flight = None;
        let body = (!body.is_empty()).then_some(body);
        match interpret(status, etag, body) {
            PollOutcome::Updated { etag, config, .. } => {
                self.last_problem = None;
                self.last_ok_ms = Some(now_ms);
                let info = format!(
                    "wasm-canary (native): configuration {etag} from the controller: {}",
                    summary(&config)
                );
                self.etag = etag;
                self.latest = Some(config.clone());
                let mut step = self.check_fail_safe(now_ms);
                if !self.in_fail_safe {
                    step.activate = Some(config);
                }
                step.info = Some(info);
                step
            }
            PollOutcome::NotModified => {
                self.last_problem = None;
                self.last_ok_ms = Some(now_ms);
                self.check_fail_safe(now_ms)
            }
            PollOutcome::Failed(problem) => Step {
                warn: self.problem(problem),
                ..Step::default()
            },
        }
    }

    /// Enters or leaves fail-safe (everyone to stable) as the controller goes and comes back.
    fn check_fail_safe(&mut self, now_ms: u64) -> Step {
        let stale = is_stale(&self.source, self.last_ok_ms, now_ms);
        if stale == self.in_fail_safe {
            return Step::default();
        }
        self.in_fail_safe = stale;
        let config = self.latest.clone().unwrap_or_else(|| self.initial.clone());
        if stale {
            Step {
                warn: Some(format!(
                    "wasm-canary (native): no answer from the controller for {}s: everyone to stable",
                    self.source.fail_safe_after_s.unwrap_or(0)
                )),
                activate: Some(fail_safe(config)),
                ..Step::default()
            }
        } else {
            Step {
                info: Some(format!(
                    "wasm-canary (native): controller reachable again: {}",
                    summary(&config)
                )),
                activate: Some(config),
                ..Step::default()
            }
        }
    }

    /// A problem worth a log line the first time it happens.
    fn problem(&mut self, problem: String) -> Option<String> {
        if self.last_problem.as_ref() == Some(&problem) {
            return None;
        }
        self.last_problem = Some(problem.clone());
        Some(format!(
            "wasm-canary (native): poll failed: {problem} (keeping the current configuration)"
        ))
    }
}
