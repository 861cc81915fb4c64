//! Real gRPC on both ends, for the gRPC e2e tests: grpcio servers as the stable and canary
//! upstreams (`tests/fixtures/grpc_server.py`: the health service and an echo service that
//! fails a share of calls), a grpcio client (`grpc_client.py`) sending calls through Envoy
//! over HTTP/2, and Envoys with the filter, HTTP/2 upstream clusters and an access log that
//! shows where each answer's `grpc-status` travelled (response headers or trailers).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use canary_contract::{ControllerSource, FilterConfig, RolloutConfig};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::bootstrap::{use_http2_upstreams, CanaryBootstrap, FailurePolicy, ListenerSource};
use crate::controller::{free_port, Canaryctl, CONTROLLER_CLUSTER, TOKEN};
use crate::envoy::{Envoy, EnvoyOptions};
use crate::paths;
use crate::process::{die_with_parent, log_tail, spawn_logged};
use crate::rig::{filter_listener, STATS_FLUSH_MS};
use crate::wait::wait_until;

/// gRPC status codes the tests use.
pub const OK: u32 = 0;
pub const INVALID_ARGUMENT: u32 = 3;
pub const UNAVAILABLE: u32 = 14;

fn fixture(name: &str) -> PathBuf {
    paths::project_root().join("tests/fixtures").join(name)
}

/// A running `grpc_server.py`; killed on drop.
pub struct GrpcServer {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl GrpcServer {
    /// Starts the server answering as `name`; of the calls that do not name their own code,
    /// exactly `fail_bp` / 10000 end with `fail_code`.
    pub async fn start(name: &str, fail_bp: u32, fail_code: u32) -> Result<GrpcServer> {
        let dir = tempfile::Builder::new().prefix("grpc-server-").tempdir()?;
        let log_path = dir.path().join("server.log");
        let mut command = Command::new(paths::venv_python()?);
        command
            .arg(fixture("grpc_server.py"))
            .args(["--name", name])
            .args(["--fail-bp", &fail_bp.to_string()])
            .args(["--fail-code", &fail_code.to_string()]);
        let mut child = spawn_logged(&mut command, &log_path, "grpc_server.py")?;
        // The first line of its output is the port it bound.
        let mut port = None;
        let waited = wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
            if let Ok(Some(status)) = child.try_wait() {
                bail!("grpc_server.py exited with {status}");
            }
            port = std::fs::read_to_string(&log_path)
                .ok()
                .and_then(|log| log.lines().next()?.trim().parse::<u16>().ok());
            Ok(port.is_some())
        })
        .await;
        let Some(port) = port.filter(|_| waited.is_ok()) else {
            let _ = child.kill();
            bail!(
                "grpc_server.py {name} did not start: {waited:?}\n{}",
                log_tail(&log_path, 30)
            );
        };
        Ok(GrpcServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which method a call uses: how a failing call reaches the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Unary echo; fails before any message: a trailers-only answer.
    Say,
    /// Server-streaming echo; fails after one message: `grpc-status` in trailers.
    Stream,
    /// `grpc.health.v1.Health/Check` for the whole server.
    Health,
}

/// One call of the client's plan.
#[derive(Debug, Clone, Serialize)]
pub struct Call {
    pub user: String,
    pub method: Method,
    /// The code the echo server must end the call with (`None`: the server's own share).
    pub code: Option<u32>,
}

impl Call {
    pub fn new(user: &str, method: Method, code: Option<u32>) -> Call {
        Call {
            user: user.to_string(),
            method,
            code,
        }
    }
}

/// What the client saw of one call.
#[derive(Debug, Clone, Deserialize)]
pub struct Outcome {
    pub user: String,
    pub method: Method,
    /// The gRPC status code the call ended with.
    pub code: u32,
    /// The `x-served-by` trailing metadata: which upstream answered.
    pub served_by: Option<String>,
    pub messages: u32,
    /// The health status, for health checks.
    pub health: Option<String>,
}

/// A running `grpc_client.py`, writing its outcomes to a file.
pub struct GrpcClient {
    child: Child,
    out_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl GrpcClient {
    /// Starts sending `calls` to `target` (`host:port`) over `connections` HTTP/2
    /// connections, once, or again and again for `duration` if given.
    pub fn start(
        target: &str,
        calls: &[Call],
        connections: usize,
        duration: Option<Duration>,
    ) -> Result<GrpcClient> {
        let dir = tempfile::Builder::new().prefix("grpc-client-").tempdir()?;
        let plan_path = dir.path().join("plan.json");
        let plan = json!({
            "calls": calls,
            "connections": connections,
            "duration_s": duration.map(|d| d.as_secs_f64()),
        });
        std::fs::write(&plan_path, serde_json::to_vec(&plan)?)?;
        let out_path = dir.path().join("outcomes.jsonl");
        let mut command = Command::new(paths::venv_python()?);
        command
            .arg(fixture("grpc_client.py"))
            .arg(target)
            .arg(&plan_path)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path)?)
            .stderr(std::fs::File::create(dir.path().join("client.log"))?);
        die_with_parent(&mut command);
        let child = command.spawn().context("starting grpc_client.py")?;
        Ok(GrpcClient {
            child,
            out_path,
            _dir: dir,
        })
    }

    /// Waits for the client to finish (within `deadline`) and returns every outcome.
    pub async fn finish(mut self, deadline: Duration) -> Result<Vec<Outcome>> {
        let mut exit = None;
        let waited = wait_until(deadline, Duration::from_millis(50), || {
            exit = self.child.try_wait()?;
            Ok(exit.is_some())
        })
        .await;
        if let Err(e) = waited {
            let _ = self.child.kill();
            bail!("grpc_client.py: {e}");
        }
        if exit.is_some_and(|s| !s.success()) {
            bail!("grpc_client.py failed: {}", self.log());
        }
        self.outcomes()
    }

    /// Stops a client sending for a duration; returns the outcomes so far.
    pub fn stop(mut self) -> Result<Vec<Outcome>> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.outcomes()
    }

    fn log(&self) -> String {
        log_tail(&self.out_path.with_file_name("client.log"), 30)
    }

    /// Outcomes written so far (a last line cut by a kill is left out).
    fn outcomes(&self) -> Result<Vec<Outcome>> {
        let text = std::fs::read_to_string(&self.out_path)?;
        let complete = text.rsplit_once('\n').map_or("", |(done, _)| done);
        complete
            .lines()
            .map(|line| serde_json::from_str(line).with_context(|| format!("outcome {line}")))
            .collect()
    }
}

/// Sends `calls` once to `target` and returns what the client saw of each (in completion
/// order).
pub async fn call_all(target: &str, calls: &[Call], connections: usize) -> Result<Vec<Outcome>> {
    GrpcClient::start(target, calls, connections, None)?
        .finish(Duration::from_secs(120))
        .await
}

/// One access log line per request: user, HTTP status, `grpc-status` in the response
/// headers and in the trailers (`-` where absent).
const ACCESS_LOG_FORMAT: &str =
    "%REQ(x-user-id)% %RESPONSE_CODE% headers:%RESP(grpc-status)% trailers:%TRAILER(grpc-status)%\n";

/// Envoys with the filter in front of two gRPC servers.
pub struct GrpcRig {
    pub stable: GrpcServer,
    pub canary: GrpcServer,
    pub envoys: Vec<Envoy>,
    /// Each Envoy's listener as `host:port`, in order.
    pub targets: Vec<String>,
    /// Where the filter polls a controller, for rigs started with [`GrpcRig::start_controlled`].
    pub controller_addr: Option<SocketAddr>,
    rollout: String,
    dir: tempfile::TempDir,
}

impl GrpcRig {
    /// One Envoy with 2 workers running `wasm` with `config`.
    pub async fn start(
        config: &FilterConfig,
        wasm: PathBuf,
        stable: GrpcServer,
        canary: GrpcServer,
    ) -> Result<GrpcRig> {
        let rollout = config
            .rollouts
            .first()
            .map(|r| r.name.clone())
            .context("a rig needs a rollout")?;
        Self::start_inner(config, wasm, stable, canary, rollout, None).await
    }

    /// One Envoy whose filter starts `rollout` at weight 0 and polls a controller (started
    /// later with [`GrpcRig::start_controller`]) every `poll_ms`.
    pub async fn start_controlled(
        rollout: &str,
        poll_ms: u64,
        stable: GrpcServer,
        canary: GrpcServer,
    ) -> Result<GrpcRig> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let mut config = FilterConfig::new(vec![RolloutConfig::new(rollout, 0)]);
        let mut source = ControllerSource::new(CONTROLLER_CLUSTER);
        source.poll_interval_ms = poll_ms;
        source.timeout_ms = poll_ms.min(500);
        config.controller = Some(source);
        let wasm = paths::filter_wasm()?;
        Self::start_inner(&config, wasm, stable, canary, rollout.into(), Some(addr)).await
    }

    async fn start_inner(
        config: &FilterConfig,
        wasm: PathBuf,
        stable: GrpcServer,
        canary: GrpcServer,
        rollout: String,
        controller_addr: Option<SocketAddr>,
    ) -> Result<GrpcRig> {
        let dir = tempfile::Builder::new().prefix("grpc-rig-").tempdir()?;
        let listener = filter_listener(config, wasm, FailurePolicy::FailReload)?;
        let mut bootstrap = CanaryBootstrap {
            listener: ListenerSource::Static(listener),
            stable: stable.addr(),
            canary: canary.addr(),
            stats_flush_ms: STATS_FLUSH_MS,
            extra_clusters: controller_addr
                .map(|a| (CONTROLLER_CLUSTER.to_string(), a))
                .into_iter()
                .collect(),
        }
        .to_json();
        use_http2_upstreams(&mut bootstrap);
        add_access_log(&mut bootstrap, &dir.path().join("access-0.log"))?;
        let envoy = Envoy::start(
            &bootstrap,
            EnvoyOptions {
                concurrency: 2,
                name: "envoy-grpc".into(),
                ..Default::default()
            },
        )
        .await?;
        let targets = vec![envoy.listener_addr().await?.to_string()];
        Ok(GrpcRig {
            stable,
            canary,
            envoys: vec![envoy],
            targets,
            controller_addr,
            rollout,
            dir,
        })
    }

    pub fn envoy(&self) -> &Envoy {
        &self.envoys[0]
    }

    pub fn target(&self) -> &str {
        &self.targets[0]
    }

    /// The access log lines written so far: (user, HTTP status, `grpc-status` in headers,
    /// in trailers), `None` where absent.
    pub fn access_log(&self) -> Vec<AccessLine> {
        let text = std::fs::read_to_string(self.dir.path().join("access-0.log"));
        text.unwrap_or_default()
            .lines()
            .filter_map(AccessLine::parse)
            .collect()
    }

    /// Starts the controller (controlled rigs) on the Envoys' admin endpoints.
    pub async fn start_controller(&self, spec_body: &str) -> Result<Canaryctl> {
        let addr = self
            .controller_addr
            .context("start_controller needs a rig from start_controlled")?;
        let admins: Vec<String> = (self.envoys.iter())
            .map(|e| format!("\"http://{}\"", e.admin_addr()))
            .collect();
        let spec = format!(
            "name: {}\nsources: {{envoy_admin: [{}]}}\n{spec_body}",
            self.rollout,
            admins.join(", ")
        );
        Canaryctl::start(&spec, addr, &self.dir.path().join("state"), TOKEN).await
    }
}

/// One request in the rig's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLine {
    pub user: String,
    pub http_status: u16,
    pub header_grpc_status: Option<u32>,
    pub trailer_grpc_status: Option<u32>,
}

impl AccessLine {
    fn parse(line: &str) -> Option<AccessLine> {
        let mut fields = line.split_whitespace();
        let user = fields.next()?.to_string();
        let http_status = fields.next()?.parse().ok()?;
        let code = |field: Option<&str>, prefix: &str| -> Option<Option<u32>> {
            let value = field?.strip_prefix(prefix)?;
            Some(value.parse().ok())
        };
        Some(AccessLine {
            user,
            http_status,
            header_grpc_status: code(fields.next(), "headers:")?,
            trailer_grpc_status: code(fields.next(), "trailers:")?,
        })
    }
}

/// Adds a file access log in [`ACCESS_LOG_FORMAT`] to the bootstrap's listener.
fn add_access_log(bootstrap: &mut Value, path: &Path) -> Result<()> {
    let manager = bootstrap
        .pointer_mut("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config")
        .context("no static listener's connection manager in the bootstrap")?;
    manager["access_log"] = json!([{
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path.display().to_string(),
            "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}}
        }
    }]);
    Ok(())
}
