//! Shadow mode: which requests are copied to the candidate, what an answer looks like for
//! comparison (status, JSON structure, text), how two answers compare, and the per-worker
//! book where the primary's answer and the candidate's meet. Plain Rust, unit-tested
//! natively; `host` only moves host data in and out.
//!
//! The candidate's answer never reaches the user: the copy is a separate call made by the
//! root context, and nothing here can pause or change the user's request or response.

use std::hash::{DefaultHasher, Hasher};

use canary_contract::TextNormalisation;
use serde_json::Value;

/// Whether the `n`-th event (from 0) is in a share of `share_bp` basis points, spread
/// evenly: exactly `floor(count × share_bp / 10000)` of the first `count` events are.
pub fn in_share(n: u64, share_bp: u32) -> bool {
    let bp = u128::from(share_bp.min(10_000));
    let n = u128::from(n);
    (n + 1) * bp / 10_000 > n * bp / 10_000
}

/// Picks the requests to copy: deterministic and evenly spread (per worker), so a sample of
/// 10% is every tenth request, not a random tenth.
#[derive(Debug, Default)]
pub struct Sampler {
    seen: u64,
}

impl Sampler {
    pub fn sample(&mut self, sample_bp: u32) -> bool {
        let n = self.seen;
        self.seen = self.seen.wrapping_add(1);
        in_share(n, sample_bp)
    }
}

/// Key paths of an answer kept at most (an answer with more is compared on the first ones).
const MAX_SHAPE_PATHS: usize = 256;
/// Answer text kept at most, in bytes.
const MAX_TEXT_BYTES: usize = 64 * 1024;

/// What an answer's body says, for comparison: its JSON structure (every key path with the
/// type of its value, arrays collapsed, values ignored — ids, timestamps and token counts
/// differ between any two answers) and its text (OpenAI `choices[].message.content` /
/// `delta.content`, Anthropic `content[].text` / `content_block_delta.delta.text`). For a
/// stream, the union of its events' structures and the concatenation of their texts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capture {
    /// Each key path with its type (`.choices[].message.content:string`) as the 64-bit
    /// [`path_id`] of that text: sorted, no duplicates (a vector: a set type would add its
    /// code to the module). Kept as text, a path costs its full length however much of it
    /// its parent shares: 256 paths under one long key kept 470 MB of a 924 KB body. As ids
    /// a capture keeps 2 KiB, and each path is hashed as the walk extends its parent's, so
    /// the walk is linear in the body too. Two different paths agree only if their ids
    /// collide (about 2^-64 for a pair).
    pub shape: Vec<u64>,
    pub text: String,
}

/// The id under which a key path and its type (`.usage.prompt_tokens:number`) is kept. One
/// fixed-key SipHash (std's `DefaultHasher::new`, the same in every worker of the module).
pub fn path_id(path_and_kind: &str) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(path_and_kind.as_bytes());
    h.finish()
}

impl Capture {
    /// Takes one JSON body or stream event.
    pub fn take(&mut self, event: &Value) {
        self.shape_of(&DefaultHasher::new(), event);
        let choices = event.get("choices").and_then(Value::as_array);
        for choice in choices.into_iter().flatten() {
            for k in ["message", "delta"] {
                let text = choice.get(k).and_then(|m| m.get("content"));
                self.push_text(text);
            }
        }
        let blocks = event.get("content").and_then(Value::as_array);
        for block in blocks.into_iter().flatten() {
            self.push_text(block.get("text"));
        }
        match event.get("type").and_then(Value::as_str) {
            Some("content_block_delta") => {
                self.push_text(event.get("delta").and_then(|d| d.get("text")))
            }
            Some("content_block_start") => {
                self.push_text(event.get("content_block").and_then(|b| b.get("text")))
            }
            _ => {}
        }
    }

    fn push_text(&mut self, text: Option<&Value>) {
        let Some(text) = text.and_then(Value::as_str) else {
            return;
        };
        let room = MAX_TEXT_BYTES.saturating_sub(self.text.len());
        let mut end = text.len().min(room);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        self.text.push_str(&text[..end]);
    }

    /// Bytes this capture keeps (for bounds).
    pub fn retained_bytes(&self) -> usize {
        self.shape.capacity() * std::mem::size_of::<u64>() + self.text.capacity()
    }

    /// Adds `value`'s paths; `path` has hashed the path to it so far (without its type).
    fn shape_of(&mut self, path: &DefaultHasher, value: &Value) {
        if self.shape.len() >= MAX_SHAPE_PATHS {
            return;
        }
        let kind = match value {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        let mut entry = path.clone();
        entry.write(b":");
        entry.write(kind.as_bytes());
        let id = entry.finish();
        if let Err(at) = self.shape.binary_search(&id) {
            self.shape.insert(at, id);
        }
        match value {
            Value::Array(items) => {
                let mut inner = path.clone();
                inner.write(b"[]");
                for item in items {
                    self.shape_of(&inner, item);
                }
            }
            Value::Object(fields) => {
                for (key, field) in fields {
                    let mut inner = path.clone();
                    inner.write(b".");
                    inner.write(key.as_bytes());
                    self.shape_of(&inner, field);
                }
            }
            _ => {}
        }
    }
}

/// One side's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// `None`: no answer at all (timeout, reset, no upstream).
    pub status: Option<u16>,
    /// The whole body was read and understood (not cut, not over the cap, valid JSON).
    pub readable: bool,
    pub capture: Capture,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    pub status: bool,
    pub structure: bool,
    pub text: bool,
}

impl Agreement {
    pub fn all(&self) -> bool {
        self.status && self.structure && self.text
    }
}

/// Lowercasing is ASCII only: Unicode case tables would add 18 KB to the module.
pub fn normalise(text: &str, how: TextNormalisation) -> String {
    let collapse = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
    match how {
        TextNormalisation::Exact => text.to_string(),
        TextNormalisation::TrimWhitespace => text.trim().to_string(),
        TextNormalisation::CollapseWhitespace => collapse(text),
        TextNormalisation::CollapseWhitespaceLowercase => collapse(text).to_ascii_lowercase(),
    }
}

/// Compares two answers that both exist. An unreadable candidate body agrees with nothing.
pub fn compare(primary: &Answer, candidate: &Answer, how: TextNormalisation) -> Agreement {
    let readable = candidate.readable;
    Agreement {
        status: primary.status == candidate.status,
        structure: readable && primary.capture.shape == candidate.capture.shape,
        text: readable
            && normalise(&primary.capture.text, how) == normalise(&candidate.capture.text, how),
    }
}

/// How one sampled request ended, for the shadow counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Compared(Agreement),
    /// The candidate did not answer.
    Failed,
    /// Not comparable for reasons on our side (over a cap, the primary's answer unreadable).
    Dropped,
}

/// The copy to send to the candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowRequest {
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout_ms: u64,
}

struct Entry<T> {
    ctx: T,
    expires_ms: u64,
    normalisation: TextNormalisation,
    /// The request is complete and waits to be sent.
    to_send: Option<ShadowRequest>,
    sent: bool,
    primary: Option<Answer>,
    candidate: Option<Answer>,
}

/// Sampled requests of one worker, from the user's request headers until both answers are
/// in (or the entry expires). Shared by the worker's root context, which sends the copies
/// and receives the candidate's answers, and its HTTP contexts, which bring the primary's:
/// the candidate may answer long after the user's stream is gone. `T` is what the glue
/// needs to count an outcome (the configuration and rollout it belongs to).
pub struct ShadowBook<T> {
    next_id: u64,
    entries: VecMap<u64, Entry<T>>,
    by_token: VecMap<u32, u64>,
}

impl<T> Default for ShadowBook<T> {
    fn default() -> Self {
        ShadowBook {
            next_id: 0,
            entries: VecMap::default(),
            by_token: VecMap::default(),
        }
    }
}

/// A small map as a vector: the book holds at most `max_in_flight` entries, and a hash map
/// would add its hashing code to the module for no gain at this size.
pub struct VecMap<K, V> {
    items: Vec<(K, V)>,
}

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap { items: Vec::new() }
    }
}

impl<K: PartialEq + Copy, V> VecMap<K, V> {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn position(&self, key: &K) -> Option<usize> {
        self.items.iter().position(|(k, _)| k == key)
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.position(key).map(|i| &self.items[i].1)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let i = self.position(key)?;
        Some(&mut self.items[i].1)
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.position(key).is_some()
    }

    pub fn insert(&mut self, key: K, value: V) {
        match self.position(&key) {
            Some(i) => self.items[i].1 = value,
            None => self.items.push((key, value)),
        }
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let i = self.position(key)?;
        Some(self.items.swap_remove(i).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.items.iter().map(|(k, v)| (k, v))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.items.iter_mut().map(|(k, v)| (&*k, v))
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        self.items.retain(|(k, v)| keep(k, v));
    }
}

/// How long past the candidate's timeout an entry may wait for the primary's answer (a
/// long stream) before it is given up: only a guard against leaks, every context ends.
pub const PRIMARY_GRACE_MS: u64 = 600_000;

impl<T: Clone> ShadowBook<T> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A sampled request begins. `None` when `max_in_flight` entries are open already: the
    /// request is not shadowed (count it dropped), never queued.
    pub fn open(
        &mut self,
        ctx: T,
        now_ms: u64,
        timeout_ms: u64,
        max_in_flight: u32,
        normalisation: TextNormalisation,
    ) -> Option<u64> {
        if self.entries.len() >= max_in_flight as usize {
            return None;
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.entries.insert(
            id,
            Entry {
                ctx,
                expires_ms: now_ms
                    .saturating_add(timeout_ms)
                    .saturating_add(PRIMARY_GRACE_MS),
                normalisation,
                to_send: None,
                sent: false,
                primary: None,
                candidate: None,
            },
        );
        Some(id)
    }

    /// The user's request is complete: its copy may go.
    pub fn ready(&mut self, id: u64, request: ShadowRequest) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.to_send = Some(request);
        }
    }

    /// Gives up a request before it was sent (e.g. its body is over the cap).
    pub fn abandon(&mut self, id: u64) -> Option<T> {
        let e = self.entries.get(&id)?;
        if e.sent {
            return None;
        }
        self.entries.remove(&id).map(|e| e.ctx)
    }

    /// Copies ready to be sent (each is handed out once).
    pub fn take_ready(&mut self) -> Vec<(u64, ShadowRequest)> {
        let mut out: Vec<(u64, ShadowRequest)> = self
            .entries
            .iter_mut()
            .filter_map(|(id, e)| e.to_send.take().map(|r| (*id, r)))
            .collect();
        out.sort_by_key(|(id, _)| *id);
        for (id, _) in &out {
            if let Some(e) = self.entries.get_mut(id) {
                e.sent = true;
            }
        }
        out
    }

    /// The copy is on its way; its answer will come with `token`.
    pub fn sent(&mut self, id: u64, token: u32) {
        if self.entries.contains_key(&id) {
            self.by_token.insert(token, id);
        }
    }

    /// The copy could not be sent (e.g. the cluster does not exist).
    pub fn send_failed(&mut self, id: u64) -> Option<(T, Outcome)> {
        self.entries.remove(&id).map(|e| (e.ctx, Outcome::Failed))
    }

    /// The context of the entry whose copy was answered with `token`.
    pub fn context(&self, token: u32) -> Option<&T> {
        self.entries.get(self.by_token.get(&token)?).map(|e| &e.ctx)
    }

    pub fn is_candidate_token(&self, token: u32) -> bool {
        self.by_token.contains_key(&token)
    }

    /// The candidate's answer for `token`: the entry's context (its signals are recorded as
    /// the canary's) and the outcome, once it is decided: at once when the candidate gave
    /// no answer, otherwise when the primary's answer is in too.
    pub fn candidate(&mut self, token: u32, answer: Answer) -> Option<(T, Option<Outcome>)> {
        let id = self.by_token.remove(&token)?;
        let e = self.entries.get_mut(&id)?;
        e.candidate = Some(answer);
        let ctx = e.ctx.clone();
        Some((ctx, self.settle(id)))
    }

    /// The primary's answer (at the end of the user's stream; an unreadable one if the
    /// stream was cut). A request that never became complete is dropped here.
    pub fn primary(&mut self, id: u64, answer: Answer) -> Option<(T, Outcome)> {
        let e = self.entries.get_mut(&id)?;
        if !e.sent && e.to_send.is_none() {
            return self.entries.remove(&id).map(|e| (e.ctx, Outcome::Dropped));
        }
        e.primary = Some(answer);
        let ctx = e.ctx.clone();
        self.settle(id).map(|outcome| (ctx, outcome))
    }

    /// Decides an entry once it can be, and removes it then.
    fn settle(&mut self, id: u64) -> Option<Outcome> {
        let e = self.entries.get(&id)?;
        let candidate = e.candidate.as_ref()?;
        let outcome = if candidate.status.is_none() {
            Outcome::Failed
        } else {
            let primary = e.primary.as_ref()?;
            if !primary.readable || primary.status.is_none() {
                Outcome::Dropped
            } else {
                Outcome::Compared(compare(primary, candidate, e.normalisation))
            }
        };
        self.entries.remove(&id);
        Some(outcome)
    }

    /// Entries past their time: the candidate never answered or the primary never ended.
    pub fn expire(&mut self, now_ms: u64) -> Vec<(T, Outcome)> {
        let old: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| e.expires_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::with_capacity(old.len());
        for id in old {
            self.by_token.retain(|_, v| *v != id);
            if let Some(e) = self.entries.remove(&id) {
                let outcome = if e.candidate.is_none() {
                    Outcome::Failed
                } else {
                    Outcome::Dropped
                };
                out.push((e.ctx, outcome));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sampling_is_exact_and_evenly_spread() {
        for bp in [1, 333, 1_000, 2_500, 9_999, 10_000] {
            let mut s = Sampler::default();
            let picks: Vec<bool> = (0..10_000).map(|_| s.sample(bp)).collect();
            assert_eq!(picks.iter().filter(|&&p| p).count(), bp as usize, "{bp}");
            // Any window of 100 requests holds its share within one.
            for w in picks.windows(100) {
                let n = w.iter().filter(|&&p| p).count() as i64;
                assert!((n - i64::from(bp) / 100).abs() <= 1, "{bp}: {n}");
            }
        }
        let mut none = Sampler::default();
        assert!((0..1_000).all(|_| !none.sample(0)));
    }

    fn capture(events: &[Value]) -> Capture {
        let mut c = Capture::default();
        for e in events {
            c.take(e);
        }
        c
    }

    #[test]
    fn text_comes_from_both_apis_json_and_streams() {
        let openai = json!({"id": "x1", "choices": [{"message": {"content": "Hello there"}}]});
        assert_eq!(capture(&[openai]).text, "Hello there");
        let openai_stream = [
            json!({"choices": [{"delta": {"content": "Hel"}}]}),
            json!({"choices": [{"delta": {"content": "lo"}, "finish_reason": null}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 3}}),
        ];
        assert_eq!(capture(&openai_stream).text, "Hello");
        let anthropic =
            json!({"content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": " you"}]});
        assert_eq!(capture(&[anthropic]).text, "Hi you");
        let anthropic_stream = [
            json!({"type": "message_start", "message": {"id": "m", "content": []}}),
            json!({"type": "content_block_start", "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi"}}),
            json!({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "!"}}),
        ];
        assert_eq!(capture(&anthropic_stream).text, "Hi!");
    }

    #[test]
    fn structure_ignores_values_and_array_lengths() {
        let a = capture(&[
            json!({"id": "a", "created": 1, "choices": [{"message": {"content": "x"}}],
                                 "usage": {"prompt_tokens": 3}}),
        ]);
        let b = capture(&[
            json!({"id": "bbb", "created": 99, "choices": [{"message": {"content": "y"}},
                                 {"message": {"content": "z"}}], "usage": {"prompt_tokens": 7}}),
        ]);
        assert_eq!(a.shape, b.shape);
        assert!(a
            .shape
            .contains(&path_id(".choices[].message.content:string")));
        assert!(
            a.shape.windows(2).all(|w| w[0] < w[1]),
            "sorted, no duplicates"
        );
        let missing_usage = capture(&[
            json!({"id": "a", "created": 1, "choices": [{"message": {"content": "x"}}]}),
        ]);
        assert_ne!(a.shape, missing_usage.shape);
        let null_content = capture(&[
            json!({"id": "a", "created": 1, "choices": [{"message": {"content": null}}],
                                           "usage": {"prompt_tokens": 3}}),
        ]);
        assert_ne!(a.shape, null_content.shape);
        // Bounded: a huge object keeps at most MAX_SHAPE_PATHS paths.
        let wide: serde_json::Map<String, Value> =
            (0..1_000).map(|i| (format!("k{i}"), json!(i))).collect();
        assert_eq!(capture(&[Value::Object(wide)]).shape.len(), MAX_SHAPE_PATHS);
    }

    #[test]
    fn paths_are_the_ids_of_their_text() {
        let c = capture(&[json!({"id": "x", "choices": [{"delta": {"content": "hi"}}]})]);
        let mut want: Vec<u64> = [
            ":object",
            ".id:string",
            ".choices:array",
            ".choices[]:object",
            ".choices[].delta:object",
            ".choices[].delta.content:string",
        ]
        .map(path_id)
        .to_vec();
        want.sort_unstable();
        assert_eq!(c.shape, want);
    }

    #[test]
    fn a_deep_or_wide_body_keeps_memory_bounded_by_its_size() {
        // Kept as text, 255 paths under one 900 KB key kept 470 MB (each path repeats the
        // key), and a deep chain of long keys the sum of every prefix.
        let long_key = "k".repeat(900 * 1024);
        let fields: serde_json::Map<String, Value> =
            (0..255).map(|i| (format!("c{i:03}"), json!(i))).collect();
        let wide = json!({ long_key: fields });
        let mut deep = json!(1);
        for level in 0..100 {
            deep = json!({ format!("{level:03}{}", "d".repeat(9_600)): deep });
        }
        for body in [wide, deep] {
            let size = serde_json::to_vec(&body).expect("json").len();
            assert!(size > 900_000, "{size}");
            let c = capture(&[body]);
            assert!(c.shape.len() > 100, "every path is still kept");
            assert!(
                c.retained_bytes() <= 4 * 1024,
                "{} bytes kept for a {size} B body",
                c.retained_bytes()
            );
        }
    }

    #[test]
    fn text_is_capped_on_a_char_boundary() {
        let long = "é".repeat(MAX_TEXT_BYTES);
        let c = capture(&[json!({"choices": [{"message": {"content": long}}]})]);
        assert!(c.text.len() <= MAX_TEXT_BYTES && c.text.len() > MAX_TEXT_BYTES - 2);
    }

    #[test]
    fn normalisations() {
        use TextNormalisation::*;
        let t = "  Hello \n\t World  ";
        let table = [
            (Exact, "  Hello \n\t World  "),
            (TrimWhitespace, "Hello \n\t World"),
            (CollapseWhitespace, "Hello World"),
            (CollapseWhitespaceLowercase, "hello world"),
        ];
        for (how, want) in table {
            assert_eq!(normalise(t, how), want, "{how:?}");
        }
    }

    fn answer(status: u16, text: &str) -> Answer {
        Answer {
            status: Some(status),
            readable: true,
            capture: capture(&[json!({"id": "x", "choices": [{"message": {"content": text}}]})]),
        }
    }

    #[test]
    fn comparison_per_aspect() {
        let how = TextNormalisation::CollapseWhitespace;
        let p = answer(200, "Sure. ");
        assert!(compare(&p, &answer(200, "Sure."), how).all());
        assert!(!compare(&p, &answer(200, "Sure."), TextNormalisation::Exact).text);
        let other_text = compare(&p, &answer(200, "No."), how);
        assert_eq!(
            other_text,
            Agreement {
                status: true,
                structure: true,
                text: false
            }
        );
        assert!(!compare(&p, &answer(500, "Sure."), how).status);
        let mut broken = answer(200, "Sure.");
        broken.readable = false;
        let c = compare(&p, &broken, how);
        assert!(c.status && !c.structure && !c.text);
    }

    fn request() -> ShadowRequest {
        ShadowRequest {
            cluster: "candidate".into(),
            headers: vec![(":path".into(), "/v1/x".into())],
            body: b"{}".to_vec(),
            timeout_ms: 1_000,
        }
    }

    const HOW: TextNormalisation = TextNormalisation::CollapseWhitespace;

    #[test]
    fn book_meets_answers_in_either_order() {
        let mut book: ShadowBook<&str> = ShadowBook::default();
        // Candidate first (the usual case when the primary streams), then the primary.
        let a = book.open("a", 0, 1_000, 8, HOW).expect("room");
        book.ready(a, request());
        // Primary first, then the candidate (the user's stream is long gone by then).
        let b = book.open("b", 0, 1_000, 8, HOW).expect("room");
        book.ready(b, request());
        let sent = book.take_ready();
        assert_eq!(sent.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [a, b]);
        assert!(book.take_ready().is_empty(), "each copy goes once");
        book.sent(a, 11);
        book.sent(b, 12);
        assert!(book.is_candidate_token(11) && !book.is_candidate_token(13));

        assert_eq!(book.candidate(11, answer(200, "x")), Some(("a", None)));
        let (ctx, outcome) = book.primary(a, answer(200, "x")).expect("settled");
        assert_eq!(ctx, "a");
        assert!(matches!(outcome, Outcome::Compared(g) if g.all()));

        assert_eq!(book.primary(b, answer(200, "x")), None);
        let (ctx, outcome) = book.candidate(12, answer(200, "y")).expect("known");
        assert_eq!(ctx, "b");
        assert!(matches!(outcome, Some(Outcome::Compared(g)) if g.status && !g.text));
        assert!(book.is_empty());
        assert_eq!(book.candidate(12, answer(200, "y")), None, "answered once");
    }

    #[test]
    fn book_failures_drops_and_caps() {
        let mut book: ShadowBook<u8> = ShadowBook::default();
        // Over the in-flight cap: not opened (the caller counts a drop), never queued.
        let ids: Vec<u64> = (0..2)
            .map(|i| book.open(i, 0, 100, 2, HOW).expect("room"))
            .collect();
        assert_eq!(book.open(9, 0, 100, 2, HOW), None);
        // No answer from the candidate: failed at once, the primary's end finds nothing.
        book.ready(ids[0], request());
        book.ready(ids[1], request());
        book.take_ready();
        book.sent(ids[0], 1);
        book.sent(ids[1], 2);
        let no_answer = Answer::default();
        assert_eq!(
            book.candidate(1, no_answer),
            Some((0, Some(Outcome::Failed)))
        );
        assert_eq!(book.primary(ids[0], answer(200, "x")), None);
        // An unreadable primary (cut stream): dropped, not compared.
        book.candidate(2, answer(200, "x"));
        let cut = Answer {
            status: Some(200),
            readable: false,
            capture: Capture::default(),
        };
        assert_eq!(book.primary(ids[1], cut), Some((1, Outcome::Dropped)));
        // A request whose body never ended (client gone): dropped at the primary's end.
        let c = book.open(3, 0, 100, 2, HOW).expect("room");
        assert_eq!(
            book.primary(c, Answer::default()),
            Some((3, Outcome::Dropped))
        );
        // Abandoned before sending (body over the cap).
        let d = book.open(4, 0, 100, 2, HOW).expect("room");
        assert_eq!(book.abandon(d), Some(4));
        // Send refused by the host.
        let e = book.open(5, 0, 100, 2, HOW).expect("room");
        book.ready(e, request());
        book.take_ready();
        assert_eq!(book.send_failed(e), Some((5, Outcome::Failed)));
        assert!(book.is_empty());
    }

    #[test]
    fn book_entries_expire() {
        let mut book: ShadowBook<u8> = ShadowBook::default();
        let a = book.open(1, 1_000, 100, 8, HOW).expect("room");
        book.ready(a, request());
        book.take_ready();
        book.sent(a, 7);
        let b = book.open(2, 1_000, 100, 8, HOW).expect("room");
        book.ready(b, request());
        book.take_ready();
        book.sent(b, 8);
        book.candidate(8, answer(200, "x"));
        let deadline = 1_000 + 100 + PRIMARY_GRACE_MS;
        assert!(book.expire(deadline - 1).is_empty());
        let mut expired = book.expire(deadline);
        expired.sort_by_key(|(ctx, _)| *ctx);
        assert_eq!(expired, [(1, Outcome::Failed), (2, Outcome::Dropped)]);
        assert!(book.is_empty() && !book.is_candidate_token(7));
    }
}
