//! LLM signals read from response bodies as they pass through: token usage, refusals, time
//! to first token. Plain Rust, unit-tested natively.
//!
//! Bodies are never held back or changed: each chunk is copied (up to the rollout's cap)
//! and read while Envoy sends the original on. Two shapes are understood, as plain JSON and
//! as server-sent events: OpenAI chat completions (`usage.prompt_tokens` /
//! `completion_tokens`, `choices[].finish_reason`, `message.refusal`) and Anthropic messages
//! (`usage.input_tokens` / `output_tokens`, `stop_reason`; in streams `message_start`
//! carries the input count and `message_delta` the cumulative output count).

use canary_contract::stats::Metric;
use canary_contract::LlmSignals;
use canary_contract::Version;
use serde_json::Value;

use crate::metrics::MetricOp;
use crate::shadow::Capture;

// Responses are read as `serde_json::Value` and looked into by key rather than through
// derived structs: one generic parser instead of a visitor per struct keeps the module
// small (derived structs for the two shapes added ~20 KB).
fn parse_event(json: &[u8]) -> Option<Value> {
    serde_json::from_slice(json).ok()
}

/// What a whole response said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reading {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub refusal: bool,
    /// A `finish_reason` / `stop_reason` was seen: the answer got to its end (a stream cut
    /// after Anthropic's `message_start` has usage, but is not a whole answer).
    pub ended: bool,
    /// Something could not be read: malformed JSON, a body over the cap.
    pub broken: bool,
    /// Structure and text, kept only for answers compared in shadow mode.
    pub capture: Option<Capture>,
}

impl Reading {
    /// Takes the signals of one response or stream event: `usage` (either naming), a
    /// `stop_reason`, `choices[].finish_reason` and `choices[].message|delta.refusal`, also
    /// inside `message` (Anthropic `message_start`) and `delta` (`message_delta`).
    fn take(&mut self, event: &Value, refusal_reasons: &[String]) {
        let mut ended = false;
        let mut is_refusal = |reason: Option<&Value>| {
            let reason = reason.and_then(Value::as_str);
            ended |= reason.is_some();
            reason.is_some_and(|r| refusal_reasons.iter().any(|x| x == r))
        };
        if let Some(usage) = event.get("usage") {
            let count = |openai: &str, anthropic: &str| {
                usage
                    .get(openai)
                    .or_else(|| usage.get(anthropic))
                    .and_then(Value::as_u64)
            };
            // Stream counts are cumulative: the largest one seen is the total.
            self.input_tokens = self
                .input_tokens
                .max(count("prompt_tokens", "input_tokens"));
            self.output_tokens = self
                .output_tokens
                .max(count("completion_tokens", "output_tokens"));
        }
        self.refusal |= is_refusal(event.get("stop_reason"));
        let choices = event.get("choices").and_then(Value::as_array);
        for choice in choices.into_iter().flatten() {
            let refused_text = ["message", "delta"].into_iter().any(|k| {
                choice
                    .get(k)
                    .and_then(|m| m.get("refusal"))
                    .and_then(Value::as_str)
                    .is_some_and(|r| !r.is_empty())
            });
            self.refusal |= is_refusal(choice.get("finish_reason")) || refused_text;
        }
        self.ended |= ended;
        for nested in ["message", "delta"] {
            if let Some(inner) = event.get(nested).filter(|v| v.is_object()) {
                self.take(inner, refusal_reasons);
            }
        }
    }

    /// The answer's end and its token usage were read, and nothing was broken.
    /// The whole answer was read, to its end (usage not needed): fit for comparison.
    pub fn is_readable(&self) -> bool {
        !self.broken && self.ended
    }

    pub fn is_complete(&self) -> bool {
        !self.broken && self.ended && (self.input_tokens.is_some() || self.output_tokens.is_some())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    EventStream,
}

/// Reads one response body chunk by chunk, within a byte cap. What it reads depends on the
/// bytes only, never on where the chunks split them: each line of a stream is read in order,
/// reading stops at the first one that cannot be read, and the cap cuts at a byte.
pub struct BodyReader {
    format: Format,
    cap: usize,
    seen: usize,
    /// JSON: the body so far. Event stream: the current, unfinished line (no newline in it:
    /// each byte is looked at for one once, so a stream costs time linear in its bytes).
    pending: Vec<u8>,
    reading: Reading,
    /// Bytes looked at for a newline (tests assert each is looked at once).
    #[cfg(test)]
    scanned: usize,
}

impl BodyReader {
    pub fn new(content_type: Option<&[u8]>, cap: usize) -> BodyReader {
        let stream = content_type
            .is_some_and(|t| t.len() >= 17 && t[..17].eq_ignore_ascii_case(b"text/event-stream"));
        BodyReader {
            format: if stream {
                Format::EventStream
            } else {
                Format::Json
            },
            cap,
            seen: 0,
            pending: Vec::new(),
            reading: Reading::default(),
            #[cfg(test)]
            scanned: 0,
        }
    }

    /// Also keep the answer's structure and text (shadow mode).
    pub fn capturing(mut self) -> BodyReader {
        self.reading.capture = Some(Capture::default());
        self
    }

    fn take(&mut self, event: &Value, refusal_reasons: &[String]) {
        self.reading.take(event, refusal_reasons);
        if let Some(capture) = &mut self.reading.capture {
            capture.take(event);
        }
    }

    /// How many bytes of the next chunk, of `len` bytes, are still read: those up to the cap.
    /// Past it nothing more is copied out of Envoy at all.
    pub fn room(&self, len: usize) -> usize {
        if self.reading.broken {
            return 0;
        }
        len.min(self.cap.saturating_sub(self.seen))
    }

    /// Nothing more can be read (over the cap, a line that is not an event, a failed copy).
    fn cut(&mut self) {
        self.reading.broken = true;
        self.pending = Vec::new();
    }

    /// Reads the next chunk of the body; the bytes past the cap are not read, and the body
    /// is then broken.
    pub fn feed(&mut self, chunk: &[u8], refusal_reasons: &[String]) {
        let room = self.room(chunk.len());
        self.read(&chunk[..room], refusal_reasons);
        if room < chunk.len() {
            self.cut();
        }
    }

    fn read(&mut self, mut chunk: &[u8], refusal_reasons: &[String]) {
        if self.reading.broken {
            return;
        }
        self.seen = self.seen.saturating_add(chunk.len());
        if self.format == Format::Json {
            self.pending.extend_from_slice(chunk);
            return;
        }
        // Read every finished line; keep the unfinished tail for the next chunk. Only the
        // chunk is searched for a newline: the tail kept has none.
        while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            #[cfg(test)]
            {
                self.scanned += end + 1;
            }
            let (line, rest) = (&chunk[..end], &chunk[end + 1..]);
            chunk = rest;
            if self.pending.is_empty() {
                self.event_line(line, refusal_reasons);
            } else {
                let mut whole = std::mem::take(&mut self.pending);
                whole.extend_from_slice(line);
                self.event_line(&whole, refusal_reasons);
                whole.clear();
                self.pending = whole;
            }
            if self.reading.broken {
                self.cut();
                return;
            }
        }
        #[cfg(test)]
        {
            self.scanned += chunk.len();
        }
        self.pending.extend_from_slice(chunk);
    }

    fn event_line(&mut self, line: &[u8], refusal_reasons: &[String]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return; // `event:`, `id:`, comments, blank separators
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        // An empty `data:` is valid (an event with no data): nothing to read.
        if data.trim_ascii().is_empty() || data == b"[DONE]" {
            return;
        }
        match parse_event(data) {
            Some(event) => self.take(&event, refusal_reasons),
            None => self.reading.broken = true,
        }
    }

    /// The end of the body: what it said.
    pub fn finish(mut self, refusal_reasons: &[String]) -> Reading {
        if !self.reading.broken {
            let rest = std::mem::take(&mut self.pending);
            match self.format {
                Format::EventStream => self.event_line(&rest, refusal_reasons),
                Format::Json => match parse_event(&rest) {
                    Some(event) => self.take(&event, refusal_reasons),
                    None => self.reading.broken = true,
                },
            }
        }
        self.reading
    }
}

/// What the end of a response gives: its metric operations and, when the answer was read
/// whole, the tokens it used (input and output), which a per-user token limit settles with.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LlmEnd {
    pub ops: Vec<MetricOp>,
    pub tokens: Option<u64>,
}

/// The LLM side of one routed request: timing, and the body reader once headers arrived.
pub struct LlmExchange {
    started_ms: u64,
    first_body_ms: Option<u64>,
    reader: Option<BodyReader>,
    finished: bool,
    /// Keep the answer for a shadow comparison.
    capture: bool,
    /// The answer as read, once it ended (when capturing).
    answer: Option<Reading>,
}

impl LlmExchange {
    pub fn start(started_ms: u64) -> LlmExchange {
        LlmExchange {
            started_ms,
            first_body_ms: None,
            reader: None,
            finished: false,
            capture: false,
            answer: None,
        }
    }

    /// Keep this answer's structure and text for a shadow comparison.
    pub fn capture(&mut self) {
        self.capture = true;
    }

    /// The answer as read (after `on_end`), if it was captured.
    pub fn take_answer(&mut self) -> Option<Reading> {
        self.answer.take()
    }

    pub fn on_response_headers(&mut self, content_type: Option<&[u8]>, cap: u32) {
        let reader = BodyReader::new(content_type, cap as usize);
        self.reader = Some(if self.capture {
            reader.capturing()
        } else {
            reader
        });
    }

    /// A body chunk of `len` bytes passes; `read(n)` copies its first `n` bytes out of the
    /// host (all of it, unless the cap falls inside it).
    pub fn on_body(
        &mut self,
        len: usize,
        now_ms: u64,
        signals: &LlmSignals,
        read: impl FnOnce(usize) -> Option<Vec<u8>>,
    ) -> Vec<MetricOp> {
        let mut ops = Vec::new();
        if len > 0 && self.first_body_ms.is_none() {
            self.first_body_ms = Some(now_ms);
            ops.push(MetricOp::Record(
                Metric::LlmTtftMs,
                now_ms.saturating_sub(self.started_ms),
            ));
        }
        if let Some(reader) = &mut self.reader {
            let room = reader.room(len);
            if room > 0 {
                match read(room) {
                    // The host may hand back more than asked: the cap still holds.
                    Some(chunk) => {
                        reader.feed(&chunk[..room.min(chunk.len())], &signals.refusal_reasons)
                    }
                    None => reader.cut(),
                }
            }
            if room < len {
                reader.cut();
            }
        }
        ops
    }

    /// The response is over (or the stream went away): tokens, cost, refusal, duration.
    pub fn on_end(&mut self, now_ms: u64, signals: &LlmSignals, version: Version) -> LlmEnd {
        if std::mem::replace(&mut self.finished, true) {
            return LlmEnd::default();
        }
        let mut ops = Vec::with_capacity(7);
        if let Some(first) = self.first_body_ms {
            ops.push(MetricOp::Record(
                Metric::LlmStreamMs,
                now_ms.saturating_sub(first),
            ));
        }
        let reading = self
            .reader
            .take()
            .map(|r| r.finish(&signals.refusal_reasons))
            .unwrap_or_default();
        if reading.refusal {
            ops.push(MetricOp::Increment(Metric::LlmRefusals));
        }
        let complete = reading.is_complete();
        if self.capture {
            self.answer = Some(reading.clone());
        }
        if !complete {
            ops.push(MetricOp::Increment(Metric::LlmUnparsed));
            return LlmEnd { ops, tokens: None };
        }
        let input = reading.input_tokens.unwrap_or(0);
        let output = reading.output_tokens.unwrap_or(0);
        ops.push(MetricOp::Increment(Metric::LlmResponses));
        ops.push(MetricOp::Add(Metric::LlmInputTokens, input));
        ops.push(MetricOp::Add(Metric::LlmOutputTokens, output));
        let cost = signals.prices.of(version).cost_nano_usd(input, output);
        ops.push(MetricOp::Add(Metric::LlmCostNanoUsd, cost));
        ops.push(MetricOp::Add(
            Metric::LlmCostSumSqMicroUsd2,
            canary_contract::stats::cost_sumsq_micro_usd2(cost),
        ));
        LlmEnd {
            ops,
            tokens: Some(input.saturating_add(output)),
        }
    }
}

/// A quality header's value in thousandths: `1`/`0`, `true`/`false`, or a decimal in
/// 0..=1 (digits past the third decimal are dropped). Read as fixed point: the module has
/// no floating-point parser, which would cost more than this whole function.
pub fn quality_milli(value: &[u8]) -> Option<u64> {
    let text = value.trim_ascii();
    match text {
        b"true" => return Some(1_000),
        b"false" => return Some(0),
        _ => {}
    }
    let (whole, fraction) = match text.iter().position(|&b| b == b'.') {
        Some(dot) => (&text[..dot], &text[dot + 1..]),
        None => (text, &b""[..]),
    };
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    if whole.is_empty() && fraction.is_empty() || !digits(whole) || !digits(fraction) {
        return None;
    }
    let mut milli = match whole.iter().skip_while(|&&b| b == b'0').count() {
        0 => 0,
        1 if whole.last() == Some(&b'1') => 1_000,
        _ => return None,
    };
    for (i, scale) in [100, 10, 1].into_iter().enumerate() {
        milli += u64::from(fraction.get(i).map_or(0, |d| d - b'0')) * scale;
    }
    (milli <= 1_000).then_some(milli)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reasons() -> Vec<String> {
        LlmSignals::default().refusal_reasons
    }

    /// Feeds `body` in chunks of `chunk` bytes.
    fn read(content_type: &str, body: &str, chunk: usize, cap: usize) -> Reading {
        let mut r = BodyReader::new(Some(content_type.as_bytes()), cap);
        for part in body.as_bytes().chunks(chunk) {
            r.feed(part, &reasons());
        }
        r.finish(&reasons())
    }

    /// Feeds `body` split at `cuts` (sorted offsets), capturing.
    fn read_split(content_type: &str, body: &[u8], cuts: &[usize], cap: usize) -> Reading {
        let mut r = BodyReader::new(Some(content_type.as_bytes()), cap).capturing();
        let mut from = 0;
        for &to in cuts.iter().chain([&body.len()]) {
            r.feed(&body[from..to], &reasons());
            from = to;
        }
        r.finish(&reasons())
    }

    const OPENAI_JSON: &str = r#"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi","refusal":null},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}"#;
    const ANTHROPIC_JSON: &str = r#"{"id":"m","type":"message","role":"assistant","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":7,"output_tokens":9}}"#;
    const OPENAI_SSE: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"he\"},\"finish_reason\":null}],\"usage\":null}\n\n\
        data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"content_filter\"}],\"usage\":null}\n\n\
        data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n\
        data: [DONE]\n\n";
    const ANTHROPIC_SSE: &str = "event: message_start\r\n\
        data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\r\n\r\n\
        event: content_block_delta\r\n\
        data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\r\n\r\n\
        event: message_delta\r\n\
        data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"refusal\"},\"usage\":{\"output_tokens\":15}}\r\n\r\n\
        event: message_stop\r\n\
        data: {\"type\":\"message_stop\"}\r\n\r\n";

    #[test]
    fn both_shapes_as_json_and_as_streams_in_any_chunking() {
        for chunk in [1, 3, 7, 64, 10_000] {
            let r = read("application/json", OPENAI_JSON, chunk, 1 << 20);
            assert_eq!((r.input_tokens, r.output_tokens), (Some(12), Some(34)));
            assert!(r.is_complete() && !r.refusal);

            let r = read("application/json", ANTHROPIC_JSON, chunk, 1 << 20);
            assert_eq!((r.input_tokens, r.output_tokens), (Some(7), Some(9)));
            assert!(r.is_complete() && !r.refusal);

            let r = read(
                "text/event-stream; charset=utf-8",
                OPENAI_SSE,
                chunk,
                1 << 20,
            );
            assert_eq!((r.input_tokens, r.output_tokens), (Some(5), Some(2)));
            assert!(r.is_complete() && r.refusal, "content_filter");

            let r = read("text/event-stream", ANTHROPIC_SSE, chunk, 1 << 20);
            assert_eq!((r.input_tokens, r.output_tokens), (Some(25), Some(15)));
            assert!(r.is_complete() && r.refusal, "stop_reason refusal");
        }
    }

    #[test]
    fn openai_refusal_field_counts() {
        let body = r#"{"choices":[{"message":{"content":null,"refusal":"I can't help"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#;
        assert!(read("application/json", body, 16, 1 << 20).refusal);
    }

    #[test]
    fn broken_bodies_are_unparsed_never_a_panic() {
        let cases = [
            ("application/json", &OPENAI_JSON[..OPENAI_JSON.len() / 2]),
            ("application/json", "not json"),
            ("application/json", ""),
            ("application/json", "{\"usage\":{\"prompt_tokens\":-1}}"),
            (
                "application/json",
                "{\"usage\":{\"prompt_tokens\":\"many\"}}",
            ),
            ("application/json", "{}"),
            ("text/event-stream", "data: {\"choices\":[]}\n\n"),
            (
                "text/event-stream",
                "data: {\"usage\":{\"prompt_tokens\":3\n\n",
            ),
            ("text/event-stream", &ANTHROPIC_SSE[..40]),
            // Usage from `message_start`, cut before `message_delta`: not a whole answer.
            (
                "text/event-stream",
                &ANTHROPIC_SSE[..ANTHROPIC_SSE.len() / 2],
            ),
            (
                "application/json",
                "{\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}",
            ),
            ("text/event-stream", "data: \u{fffd}\u{0}\n"),
        ];
        for (content_type, body) in cases {
            let r = read(content_type, body, 5, 1 << 20);
            assert!(!r.is_complete(), "{body:?} read as {r:?}");
        }
        // Invalid UTF-8 and random bytes.
        let mut r = BodyReader::new(Some(b"text/event-stream"), 1 << 20);
        r.feed(
            &[0xff, b'\n', 0xfe, b'd', b'a', b't', b'a', b':', 0x80, b'\n'],
            &reasons(),
        );
        assert!(!r.finish(&reasons()).is_complete());
    }

    #[test]
    fn the_cap_stops_copying_and_marks_the_body_unparsed() {
        let mut r = BodyReader::new(Some(b"application/json"), 100);
        assert_eq!(r.room(60), 60);
        r.feed(&OPENAI_JSON.as_bytes()[..60], &reasons());
        assert_eq!(r.room(60), 40, "copied up to the cap only");
        r.feed(&OPENAI_JSON.as_bytes()[60..120], &reasons());
        assert_eq!(r.room(1), 0, "and nothing after it");
        assert!(!r.finish(&reasons()).is_complete());
        // Through the exchange: the host is asked for the bytes up to the cap, then nothing.
        let signals = LlmSignals::default();
        let mut x = LlmExchange::start(0);
        x.on_response_headers(Some(b"application/json"), 100);
        let mut asked = Vec::new();
        for _ in 0..3 {
            x.on_body(60, 1, &signals, |n| {
                asked.push(n);
                Some(vec![b' '; n])
            });
        }
        assert_eq!(asked, [60, 40]);
        // At exactly the cap it is still read.
        let len = OPENAI_JSON.len();
        assert!(read("application/json", OPENAI_JSON, 10, len).is_complete());
        assert!(!read("application/json", OPENAI_JSON, 10, len - 1).is_complete());
    }

    #[test]
    fn empty_data_lines_are_events_with_nothing_to_read() {
        let body = OPENAI_SSE.replace(
            "data: [DONE]",
            "data:\n\ndata: \r\ndata:   \n\ndata: [DONE]",
        );
        for chunk in [1, 5, 10_000] {
            let r = read("text/event-stream", &body, chunk, 1 << 20);
            assert_eq!((r.input_tokens, r.output_tokens), (Some(5), Some(2)));
            assert!(r.is_complete() && r.refusal, "{r:?}");
        }
    }

    #[test]
    fn a_long_stream_in_small_chunks_is_read_in_linear_time() {
        // One 256 KiB event in 16-byte chunks: each byte is looked at for a newline once
        // (the unfinished line was searched again for every chunk: ~2 x 10^9 bytes).
        let mut body = String::from("data: {\"choices\":[{\"delta\":{\"content\":\"");
        body.push_str(&"x".repeat(256 * 1024));
        body.push_str("\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":1}}\n\n");
        body.push_str(&"data: {\"choices\":[]}\n".repeat(1_000));
        let mut r = BodyReader::new(Some(b"text/event-stream"), 1 << 20);
        for part in body.as_bytes().chunks(16) {
            r.feed(part, &reasons());
        }
        assert_eq!(r.scanned, body.len());
        assert!(r.finish(&reasons()).is_complete());
    }

    #[test]
    fn readings_do_not_depend_on_chunk_boundaries() {
        let refused_after_a_broken_line = "data: {\"choices\":[]}\n\ndata: {broken\n\n\
            data: {\"choices\":[{\"finish_reason\":\"content_filter\"}]}\n\n";
        let refused_before_a_broken_line =
            "data: {\"choices\":[{\"finish_reason\":\"content_filter\"}]}\r\n\
            data: nope\r\ndata: {\"usage\":{\"prompt_tokens\":1}}\r\n";
        let no_newline_at_the_end =
            "data: {\"stop_reason\":\"refusal\",\"usage\":{\"input_tokens\":2}}";
        let bodies = [
            ("application/json", OPENAI_JSON),
            ("application/json", ANTHROPIC_JSON),
            (
                "application/json",
                "{\"choices\":[{\"finish_reason\":\"content_filter\"}]",
            ),
            ("text/event-stream", OPENAI_SSE),
            ("text/event-stream", ANTHROPIC_SSE),
            ("text/event-stream", refused_after_a_broken_line),
            ("text/event-stream", refused_before_a_broken_line),
            ("text/event-stream", no_newline_at_the_end),
            ("text/event-stream", "data:\n\ndata: \u{fffd}\n"),
        ];
        let mut random = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: usize| {
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            (random % n as u64) as usize
        };
        for (content_type, text) in bodies {
            let body = text.as_bytes();
            // Caps past the body, at its end, and inside it (the cap cuts at a byte).
            for cap in [1 << 20, body.len(), body.len() * 2 / 3, body.len() / 3] {
                let whole = read_split(content_type, body, &[], cap);
                for at in 0..=body.len() {
                    let split = read_split(content_type, body, &[at], cap);
                    assert_eq!(split, whole, "{text:?} split at {at}, cap {cap}");
                }
                for _ in 0..200 {
                    let mut cuts: Vec<usize> = (0..next(8)).map(|_| next(body.len() + 1)).collect();
                    cuts.sort_unstable();
                    let split = read_split(content_type, body, &cuts, cap);
                    assert_eq!(split, whole, "{text:?} split at {cuts:?}, cap {cap}");
                }
            }
        }
        // What the two broken streams say: reading stops at the first line that is not an
        // event, wherever the chunks end.
        let r = read_split(
            "text/event-stream",
            refused_after_a_broken_line.as_bytes(),
            &[],
            1 << 20,
        );
        assert!(r.broken && !r.refusal);
        let r = read_split(
            "text/event-stream",
            refused_before_a_broken_line.as_bytes(),
            &[],
            1 << 20,
        );
        assert!(r.broken && r.refusal && r.input_tokens.is_none());
    }

    #[test]
    fn exchange_turns_a_response_into_metric_ops() {
        let mut signals = LlmSignals::default();
        signals.prices.canary.output_nano_usd_per_token = 10_000;
        let mut x = LlmExchange::start(1_000);
        x.on_response_headers(Some(b"text/event-stream"), 1 << 20);
        let body = OPENAI_SSE.as_bytes();
        let (a, b) = body.split_at(50);
        let ops = x.on_body(a.len(), 1_120, &signals, |_| Some(a.to_vec()));
        assert_eq!(ops, vec![MetricOp::Record(Metric::LlmTtftMs, 120)]);
        assert!(x
            .on_body(b.len(), 1_500, &signals, |_| Some(b.to_vec()))
            .is_empty());
        let end = x.on_end(1_900, &signals, Version::Canary);
        assert_eq!(
            end.ops,
            vec![
                MetricOp::Record(Metric::LlmStreamMs, 780),
                MetricOp::Increment(Metric::LlmRefusals),
                MetricOp::Increment(Metric::LlmResponses),
                MetricOp::Add(Metric::LlmInputTokens, 5),
                MetricOp::Add(Metric::LlmOutputTokens, 2),
                // 2 tokens × $10/Mtok = 20,000 nano-USD.
                MetricOp::Add(Metric::LlmCostNanoUsd, 20_000),
                MetricOp::Add(Metric::LlmCostSumSqMicroUsd2, 400),
            ]
        );
        assert_eq!(end.tokens, Some(7));
        assert_eq!(
            x.on_end(2_000, &signals, Version::Canary),
            LlmEnd::default(),
            "once"
        );

        // No body at all (e.g. the client went away): unparsed, no timings.
        let mut gone = LlmExchange::start(0);
        assert_eq!(
            gone.on_end(10, &signals, Version::Stable),
            LlmEnd {
                ops: vec![MetricOp::Increment(Metric::LlmUnparsed)],
                tokens: None,
            }
        );
    }

    #[test]
    fn quality_values() {
        let cases: [(&[u8], Option<u64>); 17] = [
            (b"1", Some(1_000)),
            (b"0", Some(0)),
            (b"true", Some(1_000)),
            (b"false", Some(0)),
            (b" 0.875 ", Some(875)),
            (b".5", Some(500)),
            (b"0.12345", Some(123)),
            (b"1.000", Some(1_000)),
            (b"01", Some(1_000)),
            (b"1.5", None),
            (b"1.0001", Some(1_000)),
            (b"2", None),
            (b"10", None),
            (b"-0.1", None),
            (b"NaN", None),
            (b".", None),
            (b"\xff", None),
        ];
        for (value, want) in cases {
            assert_eq!(quality_milli(value), want, "{value:?}");
        }
    }
}
