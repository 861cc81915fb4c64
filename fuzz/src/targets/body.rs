//! The filter's LLM response body reader (`llm::BodyReader`, JSON and server-sent events)
//! and the exchange around it, with chunk boundaries chosen by the fuzzer.

use canary_contract::{LlmSignals, Version};
use canary_filter::llm::{BodyReader, LlmExchange, Reading};

use crate::input::{scaled, Input};
use crate::Target;

pub const TARGET: Target = Target {
    name: "body",
    about: "llm::BodyReader and LlmExchange on a fuzzed body (repeated up to 256 KiB), fed \
            whole, at fuzzer-chosen cuts and in fixed small chunks: the same reading and the \
            same metric ops each way, a capture within its bounds, time linear in the bytes",
    run,
    max_len: 4 * 1024,
    dict: DICT,
};

const DICT: &[&str] = &[
    "data: ",
    "data:",
    "\n\n",
    "\r\n",
    "event: ",
    "id: ",
    ": comment\n",
    "[DONE]",
    "{\"usage\":{",
    "\"prompt_tokens\":",
    "\"completion_tokens\":",
    "\"input_tokens\":",
    "\"output_tokens\":",
    "\"choices\":[{",
    "\"finish_reason\":",
    "\"stop_reason\":",
    "\"message\":{",
    "\"delta\":{",
    "\"refusal\":",
    "\"content\":",
    "\"text\":",
    "\"type\":",
    "\"message_start\"",
    "\"message_delta\"",
    "\"content_block_delta\"",
    "\"content_block_start\"",
    "\"content_block\":{",
    "\"stop\"",
    "\"content_filter\"",
    "\"refusal\"",
    "\"end_turn\"",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "null",
    "true",
    "\"\\ud800\"",
    "\u{fffd}",
    "}",
    "]",
    "\n",
];

const CONTENT_TYPES: [Option<&[u8]>; 6] = [
    Some(b"application/json"),
    Some(b"text/event-stream"),
    Some(b"text/event-stream; charset=utf-8"),
    Some(b"TEXT/EVENT-STREAM"),
    Some(b"text/event-strea"),
    None,
];

/// Bodies are built up to this size from a short input (a repeated segment), so a cost that
/// grows faster than the body shows against the time bound.
const MAX_BODY: usize = 256 * 1024;

/// Input: content type, flags (low 4 bits: number of cuts; bit 4: capture; bits 5-7: n
/// for a fixed chunk size of 2^(n-1) bytes, 0 for none), the cap (0: 1 MiB, else that
/// share of the body in 1/200ths), the repeat count (1 under 200, else 2^((n - 200) % 11)),
/// two bytes per cut, then the body.
fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let content_type = CONTENT_TYPES[usize::from(input.byte()) % CONTENT_TYPES.len()];
    let flags = input.byte();
    let cap_code = usize::from(input.byte());
    // Mostly the body as it is: long bodies cost executions, a few find what they must.
    let repeat = match input.byte() {
        n @ 200.. => 1usize << ((n - 200) % 11),
        _ => 1,
    };
    let cuts: Vec<u16> = (0..flags & 0x0f).map(|_| input.u16()).collect();
    let segment = input.rest();
    let mut body = Vec::with_capacity((segment.len() * repeat).min(MAX_BODY));
    for _ in 0..repeat {
        if body.len() + segment.len() > MAX_BODY {
            break;
        }
        body.extend_from_slice(segment);
    }
    let cap = match cap_code {
        0 | 200.. => 1 << 20,
        share => body.len() * share / 200,
    };
    let capture = flags & 0x10 != 0;
    let mut cuts: Vec<usize> = cuts.into_iter().map(|c| scaled(c, body.len())).collect();
    cuts.sort_unstable();
    let signals = LlmSignals::default();

    let whole = read(content_type, cap, capture, &body, &[], &signals);
    check(&whole.0);
    let split = read(content_type, cap, capture, &body, &cuts, &signals);
    assert_eq!(split.0, whole.0, "the reading depends on the cuts {cuts:?}");
    assert_eq!(
        split.1, whole.1,
        "the metric ops depend on the cuts {cuts:?}"
    );
    let chunk = flags >> 5;
    if chunk != 0 {
        let size = 1usize << (chunk - 1);
        let every: Vec<usize> = (1..body.len().div_ceil(size)).map(|i| i * size).collect();
        let chunked = read(content_type, cap, capture, &body, &every, &signals);
        assert_eq!(
            chunked.0, whole.0,
            "the reading depends on {size}-byte chunks"
        );
        assert_eq!(
            chunked.1, whole.1,
            "the metric ops depend on {size}-byte chunks"
        );
    }
}

/// Reads `body` split at `cuts` with a `BodyReader`, and through an `LlmExchange` (which
/// asks the host for at most the cap); returns the reading and the exchange's metric ops.
fn read(
    content_type: Option<&[u8]>,
    cap: usize,
    capture: bool,
    body: &[u8],
    cuts: &[usize],
    signals: &LlmSignals,
) -> (Reading, Vec<canary_filter::metrics::MetricOp>) {
    let reasons = &signals.refusal_reasons;
    let mut reader = BodyReader::new(content_type, cap);
    if capture {
        reader = reader.capturing();
    }
    let mut exchange = LlmExchange::start(0);
    if capture {
        exchange.capture();
    }
    exchange.on_response_headers(content_type, u32::try_from(cap).unwrap_or(u32::MAX));
    let mut ops = Vec::new();
    let mut from = 0;
    for &to in cuts.iter().chain([&body.len()]) {
        let chunk = &body[from..to];
        from = to;
        reader.feed(chunk, reasons);
        ops.extend(exchange.on_body(chunk.len(), 1, signals, |n| {
            assert!(n <= chunk.len(), "asked the host for more than the chunk");
            Some(chunk[..n].to_vec())
        }));
    }
    ops.extend(exchange.on_end(2, signals, Version::Canary).ops);
    let reading = reader.finish(reasons);
    if capture {
        let answer = exchange
            .take_answer()
            .expect("a captured exchange keeps its answer");
        assert_eq!(answer, reading, "the exchange read the body differently");
    }
    (reading, ops)
}

fn check(reading: &Reading) {
    if reading.is_complete() {
        assert!(reading.is_readable() && !reading.broken);
    }
    if let Some(capture) = &reading.capture {
        super::shadow::assert_bounded(capture);
    }
}
