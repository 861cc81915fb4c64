//! The `canaryctl` controller as a real process: started on a spec file or a spec directory,
//! asked for its status and metrics, sent commands, killed.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::paths;
use crate::process::{spawn_logged, wait_http_ok};

/// A loopback port that was free a moment ago, for processes that must know each other's
/// addresses before they start. Chosen below the kernel's ephemeral range, so the many
/// outgoing connections of a test cannot take it before its process binds it.
pub fn free_port() -> Result<u16> {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|p| p.parse::<u16>().ok())
        })
        .unwrap_or(32_768);
    let low = 20_000u16.min(ephemeral_start.saturating_sub(2_000));
    let span = u32::from(ephemeral_start.saturating_sub(low)).max(1);
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().rotate_left(16);
    for _ in 0..100 {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let port = low + (seed % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port found in {low}..{ephemeral_start}")
}

/// How a [`Canaryctl`] is started besides its spec, address and state.
#[derive(Default, Clone)]
pub struct CtlOptions {
    /// `CANARY_TOKEN`: the operator token (and the feedback token unless one is given).
    pub legacy_token: Option<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cpus: Option<Vec<usize>>,
}

impl CtlOptions {
    pub fn token(token: &str) -> CtlOptions {
        CtlOptions {
            legacy_token: Some(token.to_string()),
            ..Default::default()
        }
    }
}

/// A running `canaryctl serve`; killed on drop.
pub struct Canaryctl {
    child: Child,
    addr: SocketAddr,
    log_path: PathBuf,
    http: reqwest::Client,
}

impl Canaryctl {
    /// Starts `canaryctl serve` with `spec_yaml` on `addr`, keeping state in `state_dir`,
    /// and waits for `/healthz`.
    pub async fn start(
        spec_yaml: &str,
        addr: SocketAddr,
        state_dir: &Path,
        token: &str,
    ) -> Result<Canaryctl> {
        Self::start_on_cpus(spec_yaml, addr, state_dir, token, None).await
    }

    /// [`Canaryctl::start`], restricted to `cpus` (benchmarks).
    pub async fn start_on_cpus(
        spec_yaml: &str,
        addr: SocketAddr,
        state_dir: &Path,
        token: &str,
        cpus: Option<Vec<usize>>,
    ) -> Result<Canaryctl> {
        let options = CtlOptions {
            cpus,
            ..CtlOptions::token(token)
        };
        Self::start_with(spec_yaml, addr, state_dir, options).await
    }

    /// [`Canaryctl::start`] with more arguments and environment variables.
    pub async fn start_with(
        spec_yaml: &str,
        addr: SocketAddr,
        state_dir: &Path,
        options: CtlOptions,
    ) -> Result<Canaryctl> {
        std::fs::create_dir_all(state_dir)?;
        let spec_path = state_dir.join("rollout.yaml");
        std::fs::write(&spec_path, spec_yaml)?;
        Self::start_serving(
            ["--spec".as_ref(), spec_path.as_os_str()],
            addr,
            state_dir,
            options,
        )
        .await
    }

    /// `canaryctl serve --spec-dir spec_dir`: one rollout per `*.yaml` in it.
    pub async fn start_dir(
        spec_dir: &Path,
        addr: SocketAddr,
        state_dir: &Path,
        options: CtlOptions,
    ) -> Result<Canaryctl> {
        std::fs::create_dir_all(state_dir)?;
        Self::start_serving(
            ["--spec-dir".as_ref(), spec_dir.as_os_str()],
            addr,
            state_dir,
            options,
        )
        .await
    }

    async fn start_serving(
        specs: [&std::ffi::OsStr; 2],
        addr: SocketAddr,
        state_dir: &Path,
        options: CtlOptions,
    ) -> Result<Canaryctl> {
        let log_path = state_dir.join(format!("canaryctl-{}.log", addr.port()));
        let mut command = Command::new(paths::canaryctl_bin()?);
        command
            .arg("serve")
            .args(specs)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--state-dir")
            .arg(state_dir)
            .args(&options.args)
            .envs(options.env.iter().map(|(k, v)| (k, v)));
        if let Some(token) = &options.legacy_token {
            command.env("CANARY_TOKEN", token);
        }
        if let Some(cpus) = options.cpus {
            crate::process::pin_to_cpus(&mut command, cpus);
        }
        let child = spawn_logged(&mut command, &log_path, "canaryctl")?;
        let mut ctl = Canaryctl {
            child,
            addr,
            log_path,
            // A hang detector, not a latency goal: a command answers once its state is
            // fsynced, and reads wait behind a save holding the rollout's lock. On a busy
            // CI disk one fsync took seconds and 5 s failed `make test` (reproduced with
            // fsync delayed 1.5 s under strace).
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
        };
        let url = format!("http://{addr}/healthz");
        wait_http_ok(
            &mut ctl.child,
            &url,
            Duration::from_secs(20),
            "canaryctl",
            &ctl.log_path,
        )
        .await?;
        Ok(ctl)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Peak resident set size so far (VmHWM), in KiB.
    pub fn peak_rss_kb(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM in /proc/<pid>/status")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub async fn status(&self) -> Result<Value> {
        Ok(self
            .http
            .get(format!("{}/status", self.url()))
            .send()
            .await?
            .json()
            .await?)
    }

    /// POSTs a user rating to `/feedback`; returns the status code and the JSON answer.
    pub async fn feedback(&self, body: &Value, token: Option<&str>) -> Result<(u16, Value)> {
        let mut request = self
            .http
            .post(format!("{}/feedback", self.url()))
            .json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let code = response.status().as_u16();
        Ok((code, response.json().await.unwrap_or(Value::Null)))
    }

    pub async fn metrics(&self) -> Result<String> {
        Ok(self
            .http
            .get(format!("{}/metrics", self.url()))
            .send()
            .await?
            .text()
            .await?)
    }

    /// What `canaryctl status --controller <url>` prints; an error (with its stderr) when
    /// the command fails.
    pub fn status_text(&self) -> Result<String> {
        let out = Command::new(paths::canaryctl_bin()?)
            .args(["status", "--controller", &self.url()])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "canaryctl status failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// GETs `path` of the controller as JSON (e.g. `/rollouts`).
    pub async fn get_json(&self, path: &str) -> Result<Value> {
        Ok(self
            .http
            .get(format!("{}{path}", self.url()))
            .send()
            .await?
            .json()
            .await?)
    }

    /// What `canaryctl <args> --controller <url>` prints; an error when the command fails.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(paths::canaryctl_bin()?)
            .args(args)
            .args(["--controller", &self.url()])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "canaryctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// POSTs to `path` with the bearer `token`; returns the HTTP status code.
    pub async fn http_post(&self, path: &str, token: &str) -> Result<u16> {
        let url = format!("{}{path}", self.url());
        let request = self.http.post(url).bearer_auth(token);
        Ok(request.send().await?.status().as_u16())
    }

    /// POSTs a command; returns the HTTP status code.
    pub async fn command(&self, command: &str, token: Option<&str>) -> Result<u16> {
        let mut request = self.http.post(format!("{}/rollout/{command}", self.url()));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        Ok(request.send().await?.status().as_u16())
    }

    /// SIGKILL, no goodbye: the crash case.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Canaryctl {
    fn drop(&mut self) {
        self.kill();
    }
}
