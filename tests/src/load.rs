//! A background load generator: simulated users spread over several Envoys, every answer
//! recorded so tests can check stickiness over a whole rollout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use canary_contract::{RolloutConfig, Version};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{http_client, send, Probe};

#[derive(Debug, Clone)]
pub struct Observation {
    /// When the request was sent, and when its answer came back.
    pub at: Instant,
    pub done: Instant,
    pub envoy: usize,
    pub user: u32,
    pub version: Option<Version>,
    pub status: u16,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Vec<Observation>>>,
}

pub fn user_id(user: u32) -> String {
    format!("load-user-{user}")
}

/// The first `n` load users that `rollout` puts on canary at `weight_bp` (and so on stable
/// at 0): the users whose answers show which weight an Envoy applies.
pub fn canary_users(rollout: &str, weight_bp: u32, n: usize) -> Vec<String> {
    let rollout = RolloutConfig::new(rollout, weight_bp);
    (0..100_000)
        .map(user_id)
        .filter(|u| rollout.version_for_key(u) == Version::Canary)
        .take(n)
        .collect()
}

impl Load {
    /// `workers` loops, each sending one request at a time (at most `rps_per_worker` per
    /// second) for a random one of `users` to a random Envoy.
    pub fn start(bases: Vec<String>, users: u32, workers: usize, rps_per_worker: u32) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let bases = Arc::new(bases);
        let workers = (0..workers)
            .map(|w| {
                let stop = stop.clone();
                let bases = bases.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let Ok(client) = http_client(1) else {
                        return seen;
                    };
                    let mut rng = 0x2545_f491_4f6c_dd1du64 ^ ((w as u64 + 1) << 17);
                    let pause = Duration::from_secs_f64(1.0 / f64::from(rps_per_worker.max(1)));
                    while !stop.load(Ordering::Relaxed) {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let user = (rng % u64::from(users.max(1))) as u32;
                        let envoy = ((rng >> 32) % bases.len() as u64) as usize;
                        let started = Instant::now();
                        let probe = Probe::user(&bases[envoy], "/", &user_id(user));
                        if let Ok(answer) = send(&client, &probe).await {
                            seen.push(Observation {
                                at: started,
                                done: Instant::now(),
                                envoy,
                                user,
                                version: match answer.served_by.as_deref() {
                                    Some("stable") => Some(Version::Stable),
                                    Some("canary") => Some(Version::Canary),
                                    _ => None,
                                },
                                status: answer.status,
                            });
                        }
                        if let Some(rest) = pause.checked_sub(started.elapsed()) {
                            tokio::time::sleep(rest).await;
                        }
                    }
                    seen
                })
            })
            .collect();
        Load { stop, workers }
    }

    /// Stops the load and returns every observation, in time order.
    pub async fn stop(self) -> Vec<Observation> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for w in self.workers {
            if let Ok(seen) = w.await {
                all.extend(seen);
            }
        }
        all.sort_by_key(|o| o.at);
        all
    }
}
