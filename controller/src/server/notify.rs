//! Webhooks: every event is POSTed to each hook of the spec in the hook's format, signed when
//! the hook has a secret, and retried with backoff in a task of its own, so a slow or failing
//! receiver never holds the controller's lock or the analysis loop.
//!
//! Signature (when the hook has `secret_file` or `secret_env`), on every attempt:
//! - `X-Canary-Timestamp: <unix seconds at which this attempt was sent>`
//! - `X-Canary-Signature: sha256=<lowercase hex of HMAC-SHA256(secret, timestamp "." body)>`
//!
//! and, signed or not, `X-Canary-Delivery: <id>`, the same on every attempt of one delivery.
//! A receiver recomputes the HMAC over the raw body bytes, compares in constant time, refuses
//! a timestamp more than 5 minutes away from its clock and a delivery id it has already
//! processed: a captured request cannot be replayed later, and a retry is not acted on twice.
//!
//! Retries: at most [`ATTEMPTS`] attempts, after a connection error, a timeout, a 5xx, a 408
//! or a 429; waits of about 1, 2, 4 and 8 s (each drawn from half to one and a half of that),
//! so a delivery gives up within about 30 s including the 2 s request timeouts. Other
//! answers end the delivery (a 4xx will not get better by repeating it). Deliveries are
//! independent, so a retried one may arrive after a later event: order by `at_ms`.

use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde_json::json;

use super::Controller;
use crate::machine::Event;
use crate::spec::{Webhook, WebhookFormat};

/// Attempts per delivery, the first included.
pub const ATTEMPTS: u32 = 5;
/// The wait after the first failed attempt; doubled after each further one.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The spec's webhooks with their secrets, read once at start-up.
#[derive(Default)]
pub(super) struct Webhooks {
    hooks: Vec<Hook>,
}

struct Hook {
    url: String,
    format: WebhookFormat,
    key: Option<Arc<ring::hmac::Key>>,
}

impl Webhooks {
    /// Reads every hook's secret; an error names the hook's field.
    pub(super) fn from_spec(hooks: &[Webhook]) -> Result<Webhooks> {
        let mut out = Vec::with_capacity(hooks.len());
        for (i, hook) in hooks.iter().enumerate() {
            let secret = match (&hook.secret_file, &hook.secret_env) {
                (Some(path), _) => Some(
                    read_secret_file(path).with_context(|| format!("webhooks[{i}].secret_file"))?,
                ),
                (None, Some(name)) => {
                    let value = std::env::var(name).with_context(|| {
                        format!("webhooks[{i}].secret_env: environment variable {name} not set")
                    })?;
                    let value = value.trim().to_string();
                    anyhow::ensure!(
                        !value.is_empty(),
                        "webhooks[{i}].secret_env: environment variable {name} is empty"
                    );
                    Some(value)
                }
                (None, None) => None,
            };
            out.push(Hook {
                url: hook.url.clone(),
                format: hook.format,
                key: secret
                    .map(|s| Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s.as_bytes()))),
            });
        }
        Ok(Webhooks { hooks: out })
    }
}

/// A secret from a file (a mounted Kubernetes Secret): its content without surrounding
/// whitespace, which must not be empty.
pub fn read_secret_file(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the secret in {}", path.display()))?;
    let secret = text.trim();
    anyhow::ensure!(!secret.is_empty(), "{} is empty", path.display());
    Ok(secret.to_string())
}

/// `sha256=<hex>` of HMAC-SHA256(key, `timestamp "." body`).
fn sign(key: &ring::hmac::Key, timestamp: u64, body: &[u8]) -> String {
    let mut context = ring::hmac::Context::with_key(key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    format!("sha256={}", hex(context.sign().as_ref()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random number for jitter and delivery ids (no need for a cryptographic source).
fn random() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// The wait after failed attempt `attempt` (1-based): `FIRST_BACKOFF · 2^(attempt-1)`,
/// scaled by a factor in [0.5, 1.5) drawn from `random`.
fn backoff(attempt: u32, random: u64) -> Duration {
    let base = FIRST_BACKOFF * 2u32.saturating_pow(attempt.saturating_sub(1).min(10));
    base.mul_f64(0.5 + (random % 1_000) as f64 / 1_000.0)
}

/// Whether an answer is worth another attempt.
fn retryable(status: reqwest::StatusCode) -> bool {
    status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429
}

impl Controller {
    /// POSTs `event` to every webhook of the spec, in the background.
    pub(super) fn notify_webhooks(&self, event: &Event, http: &reqwest::Client) {
        for hook in &self.webhooks.hooks {
            let body = match hook.format {
                WebhookFormat::Json => json!({
                    "rollout": self.spec.name,
                    "event": event.kind,
                    "message": event.message,
                    "at_ms": event.at_ms,
                    "weight_bp": self.state.weight_bp,
                    "stage": self.state.stage,
                    "phase": self.state.phase,
                }),
                WebhookFormat::Slack => json!({
                    "text": format!("canary {}: {}", self.spec.name, event.message),
                }),
            };
            let delivery = format!("{}-{:x}-{:016x}", self.spec.name, event.at_ms, random());
            tokio::spawn(deliver(
                http.clone(),
                hook.url.clone(),
                hook.key.clone(),
                body.to_string().into_bytes(),
                delivery,
            ));
        }
    }
}

/// One delivery: up to [`ATTEMPTS`] attempts, re-signed each time (a fresh timestamp).
async fn deliver(
    http: reqwest::Client,
    url: String,
    key: Option<Arc<ring::hmac::Key>>,
    body: Vec<u8>,
    delivery: String,
) {
    for attempt in 1..=ATTEMPTS {
        let mut request = http
            .post(&url)
            .header("content-type", "application/json")
            .header("x-canary-delivery", &delivery);
        if let Some(key) = &key {
            let timestamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            request = request
                .header("x-canary-timestamp", timestamp.to_string())
                .header("x-canary-signature", sign(key, timestamp, &body));
        }
        let problem = match request.body(body.clone()).send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) if !retryable(r.status()) => {
                eprintln!(
                    "canaryctl: webhook {url}: answered {}; not retried",
                    r.status()
                );
                return;
            }
            Ok(r) => format!("answered {}", r.status()),
            Err(e) => e.to_string(),
        };
        if attempt == ATTEMPTS {
            eprintln!("canaryctl: webhook {url}: {problem}; gave up after {ATTEMPTS} attempts");
            return;
        }
        let wait = backoff(attempt, random());
        eprintln!(
            "canaryctl: webhook {url}: {problem} (attempt {attempt}/{ATTEMPTS}, next in {wait:.1?})"
        );
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_documented_scheme() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        let mut context = ring::hmac::Context::with_key(&key);
        context.update(b"what do ya want for nothing?");
        assert_eq!(
            hex(context.sign().as_ref()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // The signed payload is `timestamp "." body`.
        let signed = sign(&key, 1_700_000_000, br#"{"a":1}"#);
        let mut context = ring::hmac::Context::with_key(&key);
        context.update(br#"1700000000.{"a":1}"#);
        assert_eq!(signed, format!("sha256={}", hex(context.sign().as_ref())));
        assert_ne!(signed, sign(&key, 1_700_000_001, br#"{"a":1}"#));
    }

    #[test]
    fn backoff_doubles_with_jitter_and_stays_bounded() {
        let mut total = Duration::ZERO;
        for attempt in 1..ATTEMPTS {
            let base = FIRST_BACKOFF * 2u32.pow(attempt - 1);
            for r in [0, 499, 999, u64::MAX] {
                let wait = backoff(attempt, r);
                assert!(
                    wait >= base / 2 && wait < base * 3 / 2,
                    "{attempt}: {wait:?}"
                );
            }
            total += backoff(attempt, 999);
        }
        assert!(total < Duration::from_secs(23), "{total:?}");
    }

    #[test]
    fn only_transient_answers_are_retried() {
        for (code, retry) in [
            (500, true),
            (503, true),
            (429, true),
            (408, true),
            (400, false),
        ] {
            let status = reqwest::StatusCode::from_u16(code).expect("status");
            assert_eq!(retryable(status), retry, "{code}");
        }
    }

    #[test]
    fn secrets_come_from_files_or_the_environment_and_errors_name_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").expect("write");
        assert_eq!(read_secret_file(&path).expect("read"), "s3cret");
        let hook = |file: Option<&Path>, env: Option<&str>| Webhook {
            url: "https://h".into(),
            format: WebhookFormat::Slack,
            secret_file: file.map(Path::to_path_buf),
            secret_env: env.map(String::from),
        };
        assert!(Webhooks::from_spec(&[hook(Some(&path), None)]).is_ok());
        let missing = dir.path().join("missing");
        let err = Webhooks::from_spec(&[hook(None, None), hook(Some(&missing), None)])
            .err()
            .expect("refused");
        assert!(
            format!("{err:#}").contains("webhooks[1].secret_file"),
            "{err:#}"
        );
        let err = Webhooks::from_spec(&[hook(None, Some("CANARY_TEST_SURELY_UNSET_9"))])
            .err()
            .expect("refused");
        assert!(
            format!("{err:#}").contains("webhooks[0].secret_env"),
            "{err:#}"
        );
    }
}
