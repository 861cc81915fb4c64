//! Simulated users: send requests through Envoy and record which version answered.

use std::time::Duration;

use anyhow::{Context, Result};
use futures::stream::{self, StreamExt};

use crate::upstream::{SEEN_FORCE, SEEN_ROUTE, SERVED_BY};

/// One request to send.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    /// Base URL of the Envoy listener, e.g. `http://127.0.0.1:10000`.
    pub base: String,
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Probe {
    pub fn new(base: &str, path: &str) -> Probe {
        Probe {
            base: base.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Probe {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// A request from a user identified by `x-user-id`.
    pub fn user(base: &str, path: &str, user: &str) -> Probe {
        Probe::new(base, path).header("x-user-id", user)
    }
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// `stable` / `canary` from the upstream, or `None` if Envoy answered itself.
    pub served_by: Option<String>,
    /// The routing header value the upstream received.
    pub seen_route: Option<String>,
    pub seen_force: Option<String>,
    pub set_cookie: Vec<String>,
}

/// An HTTP client sized for `concurrency` parallel users.
pub fn http_client(concurrency: usize) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()?)
}

pub async fn send(client: &reqwest::Client, probe: &Probe) -> Result<Answer> {
    let mut request = client.get(format!("{}{}", probe.base, probe.path));
    for (name, value) in &probe.headers {
        let value = reqwest::header::HeaderValue::from_bytes(value)
            .with_context(|| format!("header {name} is not a valid header value"))?;
        request = request.header(name.as_str(), value);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("GET {}{}", probe.base, probe.path))?;
    let text = |name: &str| header_text(response.headers(), name);
    let answer = Answer {
        status: response.status().as_u16(),
        served_by: text(SERVED_BY),
        seen_route: text(SEEN_ROUTE),
        seen_force: text(SEEN_FORCE),
        set_cookie: response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect(),
    };
    // Read the body so the connection goes back to the pool.
    let _ = response.bytes().await;
    Ok(answer)
}

/// A response header as text: `None` when absent or not visible ASCII.
pub fn header_text(headers: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Sends every probe, `concurrency` at a time, and returns the answers in probe order.
pub async fn send_all(
    client: &reqwest::Client,
    probes: &[Probe],
    concurrency: usize,
) -> Result<Vec<Answer>> {
    stream::iter(probes.iter().map(|p| send(client, p)))
        .buffered(concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}
