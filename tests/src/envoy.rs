//! Real Envoy processes: start from a bootstrap, wait for admin readiness, read ports, stats
//! and logs, and kill on drop so a failing test leaves no process behind.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use tokio::sync::{Mutex, MutexGuard};

use crate::bootstrap::LISTENER_NAME;
use crate::paths;
use crate::process::{die_with_parent, log_tail, pin_to_cpus, wait_http_ok};
use crate::prom::{self, Sample};
use crate::wait::wait_until;

/// How long Envoy gets to become ready: V8 compiles the module at start, which takes a few
/// seconds on a busy 2-core machine.
const READY_DEADLINE: Duration = Duration::from_secs(60);

static ENVOY_SLOT: Mutex<()> = Mutex::const_new(());

/// Held while a test runs its Envoys: see [`exclusive`].
pub struct EnvoySlot {
    _in_process: MutexGuard<'static, ()>,
    /// An advisory lock on a file shared by every test process on the machine; released when
    /// the file is closed, also if the process dies.
    _machine: std::fs::File,
}

/// Serialises tests that start Envoys: on a 2-core machine, several Envoys compiling wasm at
/// once make every deadline flaky. Hold the guard for the whole test. The in-process mutex
/// orders a binary's tests; the file lock orders test processes of other checkouts (or a
/// `make bench` beside a `make test`).
pub async fn exclusive() -> EnvoySlot {
    let in_process = ENVOY_SLOT.lock().await;
    let path = std::env::temp_dir().join("wasm-canary-envoy.lock");
    let machine = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        // flock(2) rather than File::lock, which is newer than the workspace's MSRV.
        use std::os::fd::AsRawFd;
        // SAFETY: a plain syscall on a descriptor this closure owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(file)
    })
    .await
    .expect("the lock task does not panic")
    .unwrap_or_else(|e| panic!("cannot lock {}: {e}", std::env::temp_dir().display()));
    EnvoySlot {
        _in_process: in_process,
        _machine: machine,
    }
}

/// Options for one Envoy process.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// Worker threads (`--concurrency`).
    pub concurrency: u32,
    /// A label for logs and error messages.
    pub name: String,
    /// CPUs the process may run on (benchmarks pin proxies away from the load generator).
    pub cpus: Option<Vec<usize>>,
    /// A command Envoy runs under (e.g. `valgrind --tool=callgrind`), empty for none.
    pub wrapper: Vec<String>,
    /// How often Envoy writes its log file out (`--file-flush-interval-msec`; its default is
    /// 10 s), for tests that wait for a log line. `None` leaves Envoy's default.
    pub log_flush_ms: Option<u64>,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        EnvoyOptions {
            concurrency: 1,
            name: "envoy".to_string(),
            cpus: None,
            wrapper: Vec::new(),
            log_flush_ms: None,
        }
    }
}

/// A running Envoy. Dropping it kills the process.
pub struct Envoy {
    child: Child,
    name: String,
    admin: SocketAddr,
    log_path: PathBuf,
    http: reqwest::Client,
    // Holds the bootstrap and logs; removed with the Envoy.
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts Envoy with `bootstrap` and waits until its admin endpoint reports `LIVE`.
    pub async fn start(bootstrap: &Value, options: EnvoyOptions) -> Result<Envoy> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("canary-{}-", options.name))
            .tempdir()?;
        let config_path = dir.path().join("bootstrap.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(bootstrap)?)?;
        Self::start_with_config(&config_path, dir, options).await
    }

    /// Starts Envoy with a bootstrap written in YAML (e.g. an example file), read by Envoy
    /// itself as written.
    pub async fn start_yaml(bootstrap_yaml: &str, options: EnvoyOptions) -> Result<Envoy> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("canary-{}-", options.name))
            .tempdir()?;
        let config_path = dir.path().join("bootstrap.yaml");
        std::fs::write(&config_path, bootstrap_yaml)?;
        Self::start_with_config(&config_path, dir, options).await
    }

    async fn start_with_config(
        config_path: &Path,
        dir: tempfile::TempDir,
        options: EnvoyOptions,
    ) -> Result<Envoy> {
        let envoy_bin = paths::envoy_bin()?;
        let admin_path = dir.path().join("admin-address");
        let log_path = dir.path().join("envoy.log");
        let mut command = match options.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&envoy_bin);
                command
            }
            None => Command::new(&envoy_bin),
        };
        command
            .arg("--config-path")
            .arg(config_path)
            .arg("--concurrency")
            .arg(options.concurrency.to_string())
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--log-path")
            .arg(&log_path)
            .args(["--log-level", "info", "--disable-hot-restart"])
            .args(options.log_flush_ms.map_or_else(Vec::new, |ms| {
                vec!["--file-flush-interval-msec".to_string(), ms.to_string()]
            }))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut command);
        if let Some(cpus) = options.cpus.clone() {
            pin_to_cpus(&mut command, cpus);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", envoy_bin.display()))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let mut envoy = Envoy {
            child,
            name: options.name,
            admin: "127.0.0.1:0".parse()?,
            log_path,
            http,
            _dir: dir,
        };
        envoy.admin = envoy.wait_for_admin(&admin_path).await?;
        envoy.wait_ready().await?;
        Ok(envoy)
    }

    async fn wait_for_admin(&mut self, admin_path: &Path) -> Result<SocketAddr> {
        let mut addr = None;
        let result = wait_until(READY_DEADLINE, Duration::from_millis(50), || {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(anyhow!("exited with {status}"));
            }
            addr = std::fs::read_to_string(admin_path)
                .ok()
                .and_then(|s| s.trim().parse::<SocketAddr>().ok());
            Ok(addr.is_some())
        })
        .await;
        match (result, addr) {
            (Ok(()), Some(addr)) => Ok(addr),
            (Err(e), _) => bail!("{} did not start: {e}\n{}", self.name, self.log_tail(40)),
            (Ok(()), None) => bail!("{} wrote no admin address", self.name),
        }
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let url = format!("http://{}/ready", self.admin);
        wait_http_ok(
            &mut self.child,
            &url,
            READY_DEADLINE,
            &self.name,
            &self.log_path,
        )
        .await
    }

    /// CPU time the process has used so far (user + system), from `/proc`.
    pub fn cpu_time(&self) -> Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // Fields after the command name (which may contain spaces) start at field 3.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .context("malformed /proc/<pid>/stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| -> Result<u64> {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .context("malformed /proc/<pid>/stat")
        };
        // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after the name.
        let total = ticks(11)? + ticks(12)?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Ok(Duration::from_micros(total * 1_000_000 / hz))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The address the HTTP listener actually bound (its configured port may be 0).
    pub async fn listener_addr(&self) -> Result<SocketAddr> {
        let listeners: Value = self.admin_json("/listeners?format=json").await?;
        let statuses = listeners["listener_statuses"]
            .as_array()
            .ok_or_else(|| anyhow!("{}: no listener_statuses in /listeners", self.name))?;
        for status in statuses {
            if status["name"] == LISTENER_NAME {
                let socket = &status["local_address"]["socket_address"];
                let ip = socket["address"].as_str().unwrap_or("127.0.0.1");
                let port = socket["port_value"]
                    .as_u64()
                    .ok_or_else(|| anyhow!("{}: listener without port", self.name))?;
                return Ok(format!("{ip}:{port}").parse()?);
            }
        }
        bail!("{}: listener {LISTENER_NAME} not found", self.name)
    }

    /// Base URL of the HTTP listener.
    pub async fn url(&self) -> Result<String> {
        Ok(format!("http://{}", self.listener_addr().await?))
    }

    pub async fn admin_text(&self, path: &str) -> Result<String> {
        self.admin_query(path, &[]).await
    }

    /// GET `path` with `query` parameters (encoded by the client) from the admin endpoint.
    async fn admin_query(&self, path: &str, query: &[(&str, &str)]) -> Result<String> {
        let resp = self
            .http
            .get(format!("http://{}{path}", self.admin))
            .query(query)
            .send()
            .await
            .with_context(|| format!("{}: GET {path}", self.name))?;
        let status = resp.status();
        let body = resp.text().await?;
        if !status.is_success() {
            bail!("{}: GET {path} returned {status}: {body}", self.name);
        }
        Ok(body)
    }

    pub async fn admin_json(&self, path: &str) -> Result<Value> {
        let text = self.admin_text(path).await?;
        serde_json::from_str(&text).with_context(|| format!("{}: parsing {path}", self.name))
    }

    /// Counters and gauges by full name, from `/stats?format=json`.
    pub async fn counter(&self, name: &str) -> Result<Option<u64>> {
        let filter = format!("^{}$", regex::escape(name));
        let text = self
            .admin_query("/stats", &[("format", "json"), ("filter", &filter)])
            .await?;
        let stats: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: parsing /stats?format=json", self.name))?;
        Ok(stats["stats"].as_array().and_then(|stats| {
            stats
                .iter()
                .find(|s| s["name"] == name)
                .and_then(|s| s["value"].as_u64())
        }))
    }

    /// Every sample of `/stats/prometheus`.
    pub async fn prometheus(&self) -> Result<Vec<Sample>> {
        let text = self.admin_text("/stats/prometheus").await?;
        prom::parse(&text).with_context(|| format!("{}: parsing /stats/prometheus", self.name))
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
