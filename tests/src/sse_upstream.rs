//! An LLM upstream for the rate-limit benchmark (`bench_ratelimit`): it answers every call
//! with an OpenAI-style event stream (content events, usage at the end, `[DONE]`) written
//! in `CHUNK_BYTES`-byte body frames, or, for a request with `x-bench-fill: 1`, with one
//! small JSON answer whose usage is `FILL_TOKENS` (filling a table with users in debt).
//!
//! Envoy coalesces what is waiting on its upstream socket into one read, so frames written
//! back to back would reach the filter as a few large chunks (the more so under callgrind).
//! A request that carries an `x-bench-id` from [`SseUpstream::expect`] is therefore served
//! in lockstep: frame `k + 1` is written only once the client says it received every byte up
//! to frame `k` through the proxy. No two frames are ever on the wire at once, so each one
//! is a read of its own in Envoy and a body callback of its own in the filter.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::fake_llm::Body;

pub const CHUNK_BYTES: usize = 16;
/// Tokens a fill answer reports: far more than a user's allowance, so the bucket is in debt.
pub const FILL_TOKENS: u64 = 1_000_000;
pub const PROMPT_TOKENS: u64 = 40;
pub const COMPLETION_TOKENS: u64 = 120;
const CONTENT_EVENTS: usize = 4;
/// How long a frame waits for the client's acknowledgement of the one before it.
const ACK_TIMEOUT: Duration = Duration::from_secs(20);

type Acks = mpsc::UnboundedReceiver<usize>;

/// A running upstream; stops when dropped.
pub struct SseUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Shared {
    /// Lockstep requests announced by the client and not yet arrived, by `x-bench-id`.
    expected: Mutex<HashMap<u64, Acks>>,
    next_id: AtomicU64,
    /// Frames written without the client's acknowledgement of the previous one in time.
    ack_timeouts: AtomicU64,
}

/// The event stream every call gets.
pub fn stream_body() -> Vec<u8> {
    let mut out = Vec::new();
    let mut event = |data: serde_json::Value| {
        out.extend_from_slice(format!("data: {data}\n\n").as_bytes());
    };
    for i in 0..CONTENT_EVENTS {
        event(
            json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": format!("tok{i} ")}, "finish_reason": null}]}),
        );
    }
    event(
        json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
    );
    event(
        json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "choices": [],
        "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS}}),
    );
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

fn fill_body() -> Vec<u8> {
    json!({"id": "chatcmpl-fill", "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": FILL_TOKENS, "completion_tokens": 0}})
    .to_string()
    .into_bytes()
}

impl SseUpstream {
    pub async fn start() -> Result<SseUpstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let accepted = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = accepted.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(shared.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(SseUpstream { addr, shared, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Announces a lockstep request: send it with `x-bench-id: <id>`, and after each body
    /// chunk received, the total of body bytes received so far on the sender.
    pub fn expect(&self) -> (u64, mpsc::UnboundedSender<usize>) {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut expected) = self.shared.expected.lock() {
            expected.insert(id, rx);
        }
        (id, tx)
    }

    /// Frames written without waiting for the previous one's acknowledgement (0 when every
    /// frame reached the proxy alone).
    pub fn ack_timeouts(&self) -> u64 {
        self.shared.ack_timeouts.load(Ordering::Relaxed)
    }
}

impl Drop for SseUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let fill = header("x-bench-fill").is_some();
    let acks = header("x-bench-id")
        .and_then(|v| v.parse::<u64>().ok())
        .and_then(|id| shared.expected.lock().ok()?.remove(&id));
    // The request body is read to its end before answering, as a real service would.
    let _ = req.into_body().collect().await;
    let response = Response::builder().status(200);
    let response = if fill {
        response
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(fill_body())).boxed_unsync())
    } else {
        response
            .header("content-type", "text/event-stream")
            .body(lockstep(stream_body(), acks, shared))
    };
    Ok(response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed_unsync())))
}

/// `body` in `CHUNK_BYTES` frames, each after the client has received the ones before it
/// (when `acks` is given).
fn lockstep(body: Vec<u8>, acks: Option<Acks>, shared: Arc<Shared>) -> Body {
    let frames: Vec<Bytes> = body
        .chunks(CHUNK_BYTES)
        .map(Bytes::copy_from_slice)
        .collect();
    let state = (frames.into_iter(), 0usize, acks, shared);
    let stream =
        futures::stream::unfold(state, |(mut frames, sent, mut acks, shared)| async move {
            let frame = frames.next()?;
            let mut client_gone = false;
            if let Some(rx) = acks.as_mut().filter(|_| sent > 0) {
                loop {
                    match tokio::time::timeout(ACK_TIMEOUT, rx.recv()).await {
                        Ok(Some(received)) if received >= sent => break,
                        Ok(Some(_)) => continue,
                        Ok(None) => {
                            client_gone = true;
                            break;
                        }
                        Err(_) => {
                            shared.ack_timeouts.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            }
            // The client went away: the rest is written without waiting.
            if client_gone {
                acks = None;
            }
            let sent = sent + frame.len();
            Some((
                Ok::<_, Infallible>(Frame::data(frame)),
                (frames, sent, acks, shared),
            ))
        });
    StreamBody::new(stream).boxed_unsync()
}
