//! Real HTTP upstreams for tests and the demo: each says which version answered and can be
//! told, per server or per request, to fail, slow down, or reset the connection.
//!
//! Per-request controls (request headers, so a test can produce an exact, known mix):
//! - `x-upstream-status: 503` answers with that status;
//! - `x-upstream-delay-ms: 20` waits before answering;
//! - `x-upstream-reset: 1` closes the connection without any response.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::fake_llm::{self, LlmBehaviour, LlmCounters};
use crate::share::in_share;

/// Response header naming the upstream that answered.
pub const SERVED_BY: &str = "x-served-by";
/// Response header echoing the routing header the upstream received (or `-`).
pub const SEEN_ROUTE: &str = "x-seen-route";
/// Response header echoing the force header the upstream received (or `-`).
pub const SEEN_FORCE: &str = "x-seen-force";

/// How one upstream behaves when a request does not say otherwise.
#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    /// What it answers in `x-served-by`, e.g. `stable`.
    pub name: String,
    /// Share of requests answered with `error_status`, in basis points. Which requests fail
    /// is decided by a counter over the requests that carry no per-request override, so over
    /// N such requests exactly `N * error_rate_bp / 10000` (rounded down) fail.
    pub error_rate_bp: u32,
    /// If set, only requests whose path starts with it can fail (one rollout's service of
    /// several behind the same upstream).
    pub error_path_prefix: Option<String>,
    pub error_status: u16,
    pub delay: Duration,
    /// Share of requests (basis points, spread evenly like errors) that take `slow_delay`
    /// instead of `delay`: a tail without moving the rest.
    pub slow_share_bp: u32,
    pub slow_delay: Duration,
    /// Which request header the upstream echoes back in `x-seen-route`.
    pub route_header: String,
    pub force_header: String,
    /// Answer as a fake LLM service instead (see [`fake_llm`]); errors and delays still apply.
    pub llm: Option<LlmBehaviour>,
}

impl UpstreamSpec {
    pub fn new(name: &str) -> UpstreamSpec {
        UpstreamSpec {
            name: name.to_string(),
            error_rate_bp: 0,
            error_path_prefix: None,
            error_status: 503,
            delay: Duration::ZERO,
            slow_share_bp: 0,
            slow_delay: Duration::ZERO,
            route_header: "x-canary-version".to_string(),
            force_header: "x-canary-user".to_string(),
            llm: None,
        }
    }
}

/// A running upstream; stops when dropped.
pub struct Upstream {
    addr: SocketAddr,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Counters {
    /// Every request received.
    requests: AtomicU64,
    /// Live behaviour, changeable while running (fault injection mid-test).
    error_rate_bp: AtomicU32,
    delay_ms: AtomicU64,
    /// Requests answered by the spec's default behaviour (the error-rate pattern's index).
    patterned: AtomicU64,
    /// Requests timed by the spec's default delay (the slow share's index).
    timed: AtomicU64,
    llm: LlmCounters,
}

impl Upstream {
    pub async fn start(spec: UpstreamSpec) -> Result<Upstream> {
        Self::start_on("127.0.0.1:0".parse()?, spec).await
    }

    /// Like [`Upstream::start`], on a given address (e.g. to stand where a controller was).
    pub async fn start_on(addr: SocketAddr, spec: UpstreamSpec) -> Result<Upstream> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        counters
            .error_rate_bp
            .store(spec.error_rate_bp, Ordering::Relaxed);
        counters
            .delay_ms
            .store(spec.delay.as_millis() as u64, Ordering::Relaxed);
        let spec = Arc::new(spec);
        let counter = counters.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let spec = spec.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        counter.requests.fetch_add(1, Ordering::Relaxed);
                        answer(spec.clone(), counter.clone(), req)
                    });
                    // Errors here are resets we asked for, or clients going away.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Upstream {
            addr,
            counters,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the share of requests answered with the error status, from now on.
    pub fn set_error_rate_bp(&self, rate_bp: u32) {
        self.counters
            .error_rate_bp
            .store(rate_bp, Ordering::Relaxed);
    }

    /// Changes the delay before answering, from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.counters
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Requests received so far (including those answered with errors or resets).
    pub fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::Relaxed)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug)]
struct ResetRequested;

impl std::fmt::Display for ResetRequested {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reset requested by x-upstream-reset")
    }
}

impl std::error::Error for ResetRequested {}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn answer(
    spec: Arc<UpstreamSpec>,
    counters: Arc<Counters>,
    req: Request<Incoming>,
) -> Result<Response<fake_llm::Body>, Box<dyn std::error::Error + Send + Sync>> {
    if header(&req, "x-upstream-reset").is_some() {
        return Err(Box::new(ResetRequested));
    }
    let delay = header(&req, "x-upstream-delay-ms")
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or_else(|| {
            let n = counters.timed.fetch_add(1, Ordering::Relaxed);
            if in_share(n, spec.slow_share_bp) {
                spec.slow_delay
            } else {
                Duration::from_millis(counters.delay_ms.load(Ordering::Relaxed))
            }
        });
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let status = match header(&req, "x-upstream-status").and_then(|v| v.parse::<u16>().ok()) {
        Some(status) => status,
        None if spec
            .error_path_prefix
            .as_ref()
            .is_some_and(|p| !req.uri().path().starts_with(p.as_str())) =>
        {
            200
        }
        None => {
            let n = counters.patterned.fetch_add(1, Ordering::Relaxed);
            if in_share(n, counters.error_rate_bp.load(Ordering::Relaxed)) {
                spec.error_status
            } else {
                200
            }
        }
    };
    let seen_route = header(&req, &spec.route_header).unwrap_or("-").to_string();
    let seen_force = header(&req, &spec.force_header).unwrap_or("-").to_string();
    let mut response = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(SERVED_BY, spec.name.as_str())
        .header(SEEN_ROUTE, seen_route)
        .header(SEEN_FORCE, seen_force);
    let body = match &spec.llm {
        Some(behaviour) if status == 200 => {
            let (headers, body) = fake_llm::answer(behaviour, &counters.llm, req).await;
            for (name, value) in headers {
                response = response.header(name, value);
            }
            body
        }
        _ => Full::new(Bytes::from(format!("{}\n", spec.name))).boxed_unsync(),
    };
    Ok(response.body(body)?)
}

#[cfg(test)]
mod tests {
    use crate::share::in_share;

    #[test]
    fn error_rate_is_exact_over_any_10k_window() {
        for rate in [0, 1, 250, 1000, 3333, 10_000] {
            for start in [0u64, 17, 9999] {
                let n = (start..start + 10_000)
                    .filter(|&n| in_share(n, rate))
                    .count();
                assert_eq!(n as u32, rate, "rate {rate} from {start}");
            }
        }
    }
}
