//! `webhooks`: where events are POSTed, in which payload format, and the secret their
//! signature is made with (read by the server at start-up: a file, e.g. a mounted
//! Kubernetes Secret, or an environment variable). How deliveries are signed and retried is
//! the server's (`server::notify`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::SpecError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// `http://` or `https://`.
    pub url: String,
    /// `json` (the event with the rollout's state) or `slack` (`{"text": ...}`, which Slack,
    /// Mattermost and Teams incoming webhooks take).
    #[serde(default)]
    pub format: WebhookFormat,
    /// A file holding the HMAC-SHA256 signing secret (surrounding whitespace ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// An environment variable holding the signing secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    #[default]
    Json,
    Slack,
}

/// Whether `url` names a scheme the controller speaks (`http://`, `https://`) and a host.
pub fn is_http_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace))
}

pub(super) fn validate(hooks: &[Webhook]) -> Vec<SpecError> {
    let mut errors = Vec::new();
    for (i, hook) in hooks.iter().enumerate() {
        let at = format!("webhooks[{i}]");
        if !is_http_url(&hook.url) {
            errors.push(SpecError {
                field: format!("{at}.url"),
                reason: format!("must be an http:// or https:// URL, got {:?}", hook.url),
            });
        }
        if hook.secret_file.is_some() && hook.secret_env.is_some() {
            errors.push(SpecError {
                field: format!("{at}.secret_env"),
                reason: "give the secret once: secret_file or secret_env".into(),
            });
        }
        if let Some(name) = &hook.secret_env {
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                errors.push(SpecError {
                    field: format!("{at}.secret_env"),
                    reason: format!("{name:?} is not an environment variable name"),
                });
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        for good in [
            "http://a",
            "https://hooks.example/x?y=1",
            "https://127.0.0.1:8443/h",
        ] {
            assert!(is_http_url(good), "{good}");
        }
        for bad in [
            "ftp://x",
            "https://",
            "https:///x",
            "hooks.example",
            "http://a b",
        ] {
            assert!(!is_http_url(bad), "{bad}");
        }
    }
}
