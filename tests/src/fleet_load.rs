//! The judge loop at fleet scale (`bench_rollout`): one controller running many rollouts,
//! each reading many proxies. The proxies are one stand-in admin server that answers
//! `/p<i>/stats/prometheus?filter=…` as an Envoy would for the rollout the filter names: its
//! counters and latency bucket counters, growing with time, for both versions.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;

use canary_contract::stats::{latency_buckets_us, Metric, BUCKET_LABEL, BUCKET_OVERFLOW};

/// Requests per second each stand-in proxy saw for one rollout (stable, canary).
const RATE: (u64, u64) = (90, 10);

/// A stand-in for every proxy's admin endpoint; stops when dropped.
pub struct FakeAdmins {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for FakeAdmins {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeAdmins {
    pub async fn start() -> Result<FakeAdmins> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let started = Instant::now();
        let shape = Arc::new(bucket_shape());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shape = shape.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let body = stats_text(&req, started.elapsed(), &shape);
                        async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(FakeAdmins { addr, task })
    }

    /// The `envoy_admin` list of `proxies` stand-in proxies.
    pub fn sources_yaml(&self, proxies: usize) -> String {
        let urls: Vec<String> = (0..proxies)
            .map(|i| format!("\"http://{}/p{i}\"", self.addr))
            .collect();
        format!("sources: {{envoy_admin: [{}]}}\n", urls.join(", "))
    }
}

/// Each latency bucket's `upper_us` label and the share of requests at or below its bound:
/// a log-normal around 40 ms (the overflow bucket: all of them).
fn bucket_shape() -> Vec<(String, f64)> {
    let shares = latency_buckets_us().into_iter().map(|us| {
        let z = ((us as f64 / 1_000.0).ln() - 40f64.ln()) / 0.6;
        (
            us.to_string(),
            0.5 * (1.0 + erf(z / std::f64::consts::SQRT_2)),
        )
    });
    shares.chain([(BUCKET_OVERFLOW.to_string(), 1.0)]).collect()
}

/// Abramowitz and Stegun 7.1.26 (|error| < 1.5e-7): enough for a bucket shape.
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let y = 1.0 - poly * (-x * x).exp();
    if x < 0.0 {
        -y
    } else {
        y
    }
}

/// What an Envoy's `/stats/prometheus?filter=\.rollout\.<name>\.` would answer after
/// `elapsed` of steady traffic.
fn stats_text(
    req: &Request<hyper::body::Incoming>,
    elapsed: Duration,
    shape: &[(String, f64)],
) -> Bytes {
    // `filter=%5C.rollout%5C.<name>%5C.`: the name, percent-decoded.
    let filter = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("filter=")))
        .map(percent_decoded)
        .unwrap_or_default();
    let rollout = filter
        .strip_prefix("\\.rollout\\.")
        .and_then(|rest| rest.strip_suffix("\\."))
        .unwrap_or_default();
    let secs = elapsed.as_secs_f64();
    let mut out = String::with_capacity(64 * 1024);
    for (version, rate) in [("stable", RATE.0), ("canary", RATE.1)] {
        let total = (secs * rate as f64) as u64;
        let errors = total / 200;
        let l = format!("rollout=\"{rollout}\",version=\"{version}\"");
        for (metric, value) in [
            ("canary_rq_total", total),
            ("canary_rq_2xx", total - errors),
            ("canary_rq_3xx", 0),
            ("canary_rq_4xx", 0),
            ("canary_rq_5xx", errors),
            ("canary_rq_reset", 0),
        ] {
            out.push_str(&format!(
                "# TYPE {metric} counter\n{metric}{{{l}}} {value}\n"
            ));
        }
        // The filter's latency: a counter per bucket (each its own bucket's requests) and
        // the sum.
        let (Some(buckets), Some(sum)) = (
            Metric::RqTimeMs.in_bucket_name(),
            Metric::RqTimeMs.sum_name(),
        ) else {
            continue;
        };
        out.push_str(&format!("# TYPE {buckets} counter\n"));
        let mut below = 0;
        // Each bucket's requests at the middle of the bucket (the overflow's at its lower
        // bound): a sum the buckets can hold, as the controller checks.
        let (mut lower_ms, mut sum_ms) = (0.0, 0.0);
        for (upper_us, share) in shape {
            let at_or_below = (total as f64 * share) as u64;
            let n = at_or_below.saturating_sub(below);
            below = below.max(at_or_below);
            // ("inf" would parse as a float: the overflow bucket has no upper bound.)
            let upper_ms = match upper_us.parse::<u64>() {
                Ok(us) => us as f64 / 1_000.0,
                Err(_) => lower_ms,
            };
            sum_ms += n as f64 * (lower_ms + upper_ms) / 2.0;
            lower_ms = upper_ms;
            out.push_str(&format!(
                "{buckets}{{{l},{BUCKET_LABEL}=\"{upper_us}\"}} {n}\n"
            ));
        }
        out.push_str(&format!(
            "# TYPE {sum} counter\n{sum}{{{l}}} {}\n",
            sum_ms.ceil() as u64
        ));
    }
    Bytes::from(out)
}

fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// CPU seconds (user + system) process `pid` has used.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) end with ')'.
    let rest = stat.rsplit_once(')').context("/proc/<pid>/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i)
            .context("/proc/<pid>/stat fields")?
            .parse::<f64>()?)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the ')'.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? + ticks(12)?) / hz.max(1.0))
}
