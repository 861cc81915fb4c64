//! The native build's route-time routing: the `specifier_config` of a route's
//! dynamic-module cluster specifier (`libcanary_filter.so`'s `wasm-canary` specifier). It
//! names the `DynamicModuleFilter` whose configuration decides (its `filter_name`; that
//! filter polls the controller and keeps the stats), and the two clusters the versions go
//! to. The specifier runs when Envoy picks the route, so nothing picks it again.
//!
//! Imports `validate`; nothing imports it but the native build.

use serde::{Deserialize, Serialize};

use crate::validate::{ConfigError, Validator};
use crate::Version;

/// Longest cluster or filter name taken: Envoy's names are not bounded, ours are.
const MAX_CLUSTER_NAME_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NativeRouteConfig {
    /// The `filter_name` of the `DynamicModuleFilter` (in the same listener) whose
    /// configuration routes this route's requests.
    pub filter_name: String,
    /// The cluster of the `stable` version, and of every request no rollout routes.
    pub stable_cluster: String,
    pub canary_cluster: String,
    /// Only this rollout's `canary` goes to `canary_cluster`; absent: any rollout's. The same
    /// as header routes matching one rollout's `route_header`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
}

impl NativeRouteConfig {
    pub fn from_json(bytes: &[u8]) -> Result<NativeRouteConfig, ConfigError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let config: NativeRouteConfig =
            serde_path_to_error::deserialize(&mut *de).map_err(ConfigError::from_path_error)?;
        de.end()
            .map_err(|e| ConfigError::single("(root)", e.to_string()))?;
        let mut v = Validator::default();
        for (field, name) in [
            ("filter_name", &config.filter_name),
            ("stable_cluster", &config.stable_cluster),
            ("canary_cluster", &config.canary_cluster),
        ] {
            v.check(
                !name.is_empty() && name.len() <= MAX_CLUSTER_NAME_LEN,
                field,
                "must be 1 to 255 bytes",
            );
        }
        if let Some(rollout) = &config.rollout {
            v.check(
                crate::validate::is_rollout_name(rollout),
                "rollout",
                "must be a rollout name",
            );
        }
        v.finish()?;
        Ok(config)
    }

    /// The cluster for `version` of rollout `rollout`.
    pub fn cluster(&self, rollout: &str, version: Version) -> &str {
        let ours = self.rollout.as_deref().is_none_or(|r| r == rollout);
        match version {
            Version::Canary if ours => &self.canary_cluster,
            _ => &self.stable_cluster,
        }
    }

    pub fn to_json(&self) -> String {
        // Plain strings cannot fail to serialize.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_picks_clusters() {
        let c = NativeRouteConfig::from_json(
            br#"{"filter_name":"wasm-canary","stable_cluster":"s","canary_cluster":"c"}"#,
        )
        .unwrap();
        assert_eq!(c.cluster("any", Version::Canary), "c");
        assert_eq!(c.cluster("any", Version::Stable), "s");
        let one = NativeRouteConfig {
            rollout: Some("checkout".into()),
            ..c
        };
        assert_eq!(one.cluster("checkout", Version::Canary), "c");
        assert_eq!(one.cluster("search", Version::Canary), "s");
        assert_eq!(
            NativeRouteConfig::from_json(one.to_json().as_bytes()),
            Ok(one)
        );
    }

    #[test]
    fn refuses_by_field() {
        let e = NativeRouteConfig::from_json(
            br#"{"filter_name":"","stable_cluster":"s","canary_cluster":"c","rollout":"A B"}"#,
        )
        .unwrap_err();
        let fields: Vec<&str> = e.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["filter_name", "rollout"]);
        assert!(NativeRouteConfig::from_json(br#"{"filter_name":"f"}"#).is_err());
        assert!(NativeRouteConfig::from_json(
            br#"{"filter_name":"f","stable_cluster":"s","canary_cluster":"c","x":1}"#
        )
        .is_err());
    }
}
