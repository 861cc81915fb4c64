//! A TCP proxy to the controller that holds the filters' first polls, for the start-up hold
//! tests (a fresh Envoy's requests wait for the controller's first answer), and the check
//! those tests share.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use crate::client::{http_client, send_all, Probe};
use crate::controller::ControlledRig;

/// A TCP proxy to the controller that holds each connection (the filter's first poll) until
/// the test opens its gate or `max_hold` passes, and says when it first let one through.
pub struct GatedProxy {
    pub addr: std::net::SocketAddr,
    gate: std::sync::Arc<tokio::sync::Notify>,
    first_through: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl GatedProxy {
    pub async fn start(target: std::net::SocketAddr, max_hold: Duration) -> Result<GatedProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let gate = std::sync::Arc::new(tokio::sync::Notify::new());
        let first_through = std::sync::Arc::new(std::sync::Mutex::new(None));
        let (g, first) = (gate.clone(), first_through.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (g, first) = (g.clone(), first.clone());
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(max_hold, g.notified()).await;
                    if let Ok(mut f) = first.lock() {
                        f.get_or_insert_with(Instant::now);
                    }
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Ok(GatedProxy {
            addr,
            gate,
            first_through,
            task,
        })
    }

    pub fn open(&self) {
        self.gate.notify_waiters();
        self.gate.notify_one();
    }

    pub fn first_through(&self) -> Option<Instant> {
        self.first_through.lock().ok().and_then(|f| *f)
    }
}

impl Drop for GatedProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The start-up hold, end to end: a fresh Envoy of `rig` whose first poll is held (at most
/// 350 ms, under the 500 ms poll timeout) while the requests of `users`, all on canary at the
/// controller's weight, are in flight. Every one must be served by canary, within 2 s.
pub async fn fresh_envoy_sends_canary_users_to_canary(
    rig: &ControlledRig,
    users: &[String],
) -> Result<()> {
    let proxy = GatedProxy::start(rig.controller_addr, Duration::from_millis(350)).await?;
    let envoy = rig.start_envoy_via(proxy.addr, "fresh").await?;
    let base = envoy.url().await?;
    let client = http_client(40)?;
    let sent = Instant::now();
    let probes: Vec<Probe> = users.iter().map(|u| Probe::user(&base, "/", u)).collect();
    let open_later = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        proxy.open();
    };
    let (answers, ()) = tokio::join!(send_all(&client, &probes, 40), open_later);
    let answers = answers?;
    let waited = sent.elapsed();
    ensure!(
        proxy.first_through().is_some_and(|t| t > sent),
        "the first poll was answered before the requests were sent: nothing was tested"
    );
    let on_stable: Vec<_> = users
        .iter()
        .zip(&answers)
        .filter(|(_, a)| a.served_by.as_deref() != Some("canary"))
        .map(|(u, a)| (u.clone(), a.status, a.served_by.clone()))
        .collect();
    eprintln!("{} canary users answered within {waited:?}", users.len());
    ensure!(
        on_stable.is_empty(),
        "canary users not served by canary: {on_stable:?}"
    );
    ensure!(waited < Duration::from_secs(2), "{waited:?}");
    Ok(())
}
