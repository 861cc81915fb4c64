//! A fake LLM service for tests and the demo: answers `POST /v1/chat/completions` in
//! OpenAI's shape and `POST /v1/messages` in Anthropic's, as JSON or, when the request body
//! says `"stream": true`, as server-sent events with real pauses between chunks. Token
//! counts, refusals and quality headers follow [`LlmBehaviour`], so a test knows exactly
//! what the filter must have counted.
//!
//! Per-request control: `x-llm-broken: truncated | garbage | oversized` breaks the body.
//!
//! As a shadow candidate, `agreement_bp` makes an exact, evenly spread share of its answers
//! say the same text as a default service; the rest say something else in the same shape.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::stream;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::Request;
use serde_json::{json, Value};

use crate::share::in_share;

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// How the fake model answers.
#[derive(Debug, Clone)]
pub struct LlmBehaviour {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Share of answers that refuse (basis points, spread evenly over the answers).
    pub refusal_rate_bp: u32,
    /// Share of answers with `x-task-success: 1` (the rest say `0`).
    pub task_success_bp: u32,
    /// `x-quality-score` on every answer, in thousandths.
    pub quality_score_milli: u32,
    /// Before the first body bytes (time to first token).
    pub first_token_delay: Duration,
    /// Between stream chunks.
    pub chunk_delay: Duration,
    /// Content chunks in a stream (before the final event with usage).
    pub stream_chunks: usize,
    /// Share of answers (basis points, spread evenly) whose text is the usual one; the others
    /// say something else, in the same structure and with the same status.
    pub agreement_bp: u32,
}

impl Default for LlmBehaviour {
    fn default() -> Self {
        LlmBehaviour {
            prompt_tokens: 40,
            completion_tokens: 120,
            refusal_rate_bp: 0,
            task_success_bp: 10_000,
            quality_score_milli: 900,
            first_token_delay: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            stream_chunks: 4,
            agreement_bp: 10_000,
        }
    }
}

/// Per-upstream counters that make the refusal and success patterns exact.
#[derive(Debug, Default)]
pub struct LlmCounters {
    answers: AtomicU64,
    agreeing: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    OpenAi,
    Anthropic,
}

impl Shape {
    pub fn for_path(path: &str) -> Shape {
        if path.starts_with("/v1/messages") {
            Shape::Anthropic
        } else {
            Shape::OpenAi
        }
    }
}

/// The answer: status, headers, body frames (sent with the behaviour's pauses).
pub async fn answer(
    behaviour: &LlmBehaviour,
    counters: &LlmCounters,
    req: Request<Incoming>,
) -> (Vec<(&'static str, String)>, Body) {
    let shape = Shape::for_path(req.uri().path());
    let broken = req
        .headers()
        .get("x-llm-broken")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let stream_requested = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("stream").and_then(Value::as_bool))
        .unwrap_or(false);
    let n = counters.answers.fetch_add(1, Ordering::Relaxed);
    let refuse = in_share(n, behaviour.refusal_rate_bp);
    let success = in_share(n, behaviour.task_success_bp);
    let agree = in_share(
        counters.agreeing.fetch_add(1, Ordering::Relaxed),
        behaviour.agreement_bp,
    );
    let text = if agree {
        "Sure."
    } else {
        "Certainly not that."
    };
    let token = if agree { "tok" } else { "other" };
    let mut headers = vec![
        (
            "x-task-success",
            if success { "1" } else { "0" }.to_string(),
        ),
        (
            "x-quality-score",
            format!("{:.3}", f64::from(behaviour.quality_score_milli) / 1000.0),
        ),
    ];
    let mut chunks = if stream_requested {
        headers.push(("content-type", "text/event-stream".to_string()));
        stream_events(shape, behaviour, refuse, token)
    } else {
        headers.push(("content-type", "application/json".to_string()));
        vec![json_body(shape, behaviour, refuse, text)
            .to_string()
            .into_bytes()]
    };
    match broken.as_deref() {
        Some("truncated") => {
            // Half of the body: the final usage never arrives.
            let all: Vec<u8> = chunks.concat();
            chunks = vec![all[..all.len() / 2].to_vec()];
        }
        Some("garbage") => chunks = vec![b"{\"usage\": {\"prompt_tokens\": 1,,, \xff\xfe".to_vec()],
        Some("oversized") => {
            // Valid, but padded far beyond any sensible cap.
            let mut padded = json_body(shape, behaviour, refuse, text);
            padded["padding"] = Value::String("x".repeat(2 << 20));
            chunks = vec![padded.to_string().into_bytes()];
        }
        _ => {}
    }
    (headers, paced(chunks, behaviour))
}

/// Sends `chunks` as separate body frames: the first after `first_token_delay`, the rest
/// `chunk_delay` apart.
fn paced(chunks: Vec<Vec<u8>>, behaviour: &LlmBehaviour) -> Body {
    let first = behaviour.first_token_delay;
    let gap = behaviour.chunk_delay;
    if first.is_zero() && gap.is_zero() && chunks.len() == 1 {
        let bytes = chunks.into_iter().next().unwrap_or_default();
        return Full::new(Bytes::from(bytes)).boxed_unsync();
    }
    let frames = stream::unfold(
        (chunks.into_iter(), true),
        move |(mut rest, is_first)| async move {
            let chunk = rest.next()?;
            let pause = if is_first { first } else { gap };
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from(chunk))),
                (rest, false),
            ))
        },
    );
    StreamBody::new(frames).boxed_unsync()
}

fn json_body(shape: Shape, b: &LlmBehaviour, refuse: bool, text: &str) -> Value {
    match shape {
        Shape::OpenAi => json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "model": "fake",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": if refuse { Value::Null } else { text.into() },
                            "refusal": if refuse { "I can't help with that.".into() } else { Value::Null }},
                "finish_reason": if refuse { "content_filter" } else { "stop" }
            }],
            "usage": {"prompt_tokens": b.prompt_tokens, "completion_tokens": b.completion_tokens,
                      "total_tokens": b.prompt_tokens + b.completion_tokens}
        }),
        Shape::Anthropic => json!({
            "id": "msg_fake", "type": "message", "role": "assistant", "model": "fake",
            "content": [{"type": "text", "text": text}],
            "stop_reason": if refuse { "refusal" } else { "end_turn" },
            "usage": {"input_tokens": b.prompt_tokens, "output_tokens": b.completion_tokens}
        }),
    }
}

fn event(name: Option<&str>, data: &Value) -> Vec<u8> {
    let mut out = String::new();
    if let Some(name) = name {
        out.push_str(&format!("event: {name}\n"));
    }
    out.push_str(&format!("data: {data}\n\n"));
    out.into_bytes()
}

/// A stream in the service's own event format, one element per body frame.
fn stream_events(shape: Shape, b: &LlmBehaviour, refuse: bool, token: &str) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    match shape {
        Shape::OpenAi => {
            for i in 0..b.stream_chunks {
                frames.push(event(
                    None,
                    &json!({"choices": [{"index": 0, "delta": {"content": format!("{token}{i} ")}, "finish_reason": null}], "usage": null}),
                ));
            }
            let reason = if refuse { "content_filter" } else { "stop" };
            frames.push(event(
                None,
                &json!({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}], "usage": null}),
            ));
            let mut last = event(
                None,
                &json!({"choices": [], "usage": {"prompt_tokens": b.prompt_tokens, "completion_tokens": b.completion_tokens}}),
            );
            last.extend_from_slice(b"data: [DONE]\n\n");
            frames.push(last);
        }
        Shape::Anthropic => {
            frames.push(event(
                Some("message_start"),
                &json!({"type": "message_start", "message": {"id": "msg_fake", "usage": {"input_tokens": b.prompt_tokens, "output_tokens": 1}}}),
            ));
            for i in 0..b.stream_chunks {
                frames.push(event(
                    Some("content_block_delta"),
                    &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": format!("{token}{i} ")}}),
                ));
            }
            let reason = if refuse { "refusal" } else { "end_turn" };
            let mut last = event(
                Some("message_delta"),
                &json!({"type": "message_delta", "delta": {"stop_reason": reason}, "usage": {"output_tokens": b.completion_tokens}}),
            );
            last.extend(event(
                Some("message_stop"),
                &json!({"type": "message_stop"}),
            ));
            frames.push(last);
        }
    }
    frames
}
