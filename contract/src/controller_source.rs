//! Where a filter polls for newer configurations: the controller's cluster, path and timing
//! (the `controller` block of a filter configuration). A leaf: imports only serde.

use serde::{Deserialize, Serialize};

/// The controller the filter polls for its configuration (`GET`, conditional on the ETag).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerSource {
    /// Envoy cluster that reaches the controller.
    pub cluster: String,
    #[serde(default = "default_controller_path")]
    pub path: String,
    /// `:authority` of the poll request.
    #[serde(default = "default_controller_authority")]
    pub authority: String,
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    #[serde(default = "default_poll_timeout_ms")]
    pub timeout_ms: u64,
    /// If set: after this long without a successful poll, every rollout routes to stable.
    /// Unset: the last good configuration stays in force however long the controller is away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_safe_after_s: Option<u64>,
}

impl ControllerSource {
    pub fn new(cluster: &str) -> ControllerSource {
        ControllerSource {
            cluster: cluster.to_string(),
            path: default_controller_path(),
            authority: default_controller_authority(),
            poll_interval_ms: default_poll_interval_ms(),
            timeout_ms: default_poll_timeout_ms(),
            fail_safe_after_s: None,
        }
    }
}

fn default_controller_path() -> String {
    "/filter-config".to_string()
}

fn default_controller_authority() -> String {
    "canary-controller".to_string()
}

fn default_poll_interval_ms() -> u64 {
    1_000
}

fn default_poll_timeout_ms() -> u64 {
    500
}
