//! A real Prometheus server (Debian's `prometheus` package) scraping Envoys' admin
//! `/stats/prometheus`, as it would scrape sidecars in a mesh.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{bail, Result};

use crate::controller::free_port;
use crate::process::{spawn_logged, wait_http_ok};

pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

pub fn prometheus_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PROMETHEUS_BIN") {
        return Ok(PathBuf::from(path));
    }
    let path = PathBuf::from("/usr/bin/prometheus");
    if !path.is_file() {
        bail!("prometheus not found (run `make setup` or set PROMETHEUS_BIN)");
    }
    Ok(path)
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (host:port of Envoy admin endpoints) every
    /// `scrape_interval`, and waits until it is ready.
    pub async fn start(targets: &[SocketAddr], scrape_interval: Duration) -> Result<Prometheus> {
        let dir = tempfile::Builder::new()
            .prefix("canary-prometheus-")
            .tempdir()?;
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let interval = format!("{}ms", scrape_interval.as_millis());
        let config = format!(
            "global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n\
             scrape_configs:\n  - job_name: envoy\n    metrics_path: /stats/prometheus\n    \
             scrape_interval: {interval}\n    scrape_timeout: {interval}\n    \
             static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let log_path = dir.path().join("prometheus.log");
        let mut command = Command::new(prometheus_bin()?);
        command
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"));
        let child = spawn_logged(&mut command, &log_path, "prometheus")?;
        let mut prometheus = Prometheus {
            child,
            addr,
            log_path,
            _dir: dir,
        };
        let url = format!("{}/-/ready", prometheus.url());
        wait_http_ok(
            &mut prometheus.child,
            &url,
            Duration::from_secs(30),
            "prometheus",
            &prometheus.log_path,
        )
        .await?;
        Ok(prometheus)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
