//! A TCP proxy to the controller that holds the filters' first polls, for the start-up hold
//! tests (a fresh Envoy's requests wait for the controller's first answer).

use std::time::{Duration, Instant};

use anyhow::Result;

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
