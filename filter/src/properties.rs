//! Property tests (proptest) of the plain modules: cookies found in any generated header,
//! routing that only moves users towards canary as the weight rises, LLM bodies read the
//! same in any chunking, and lossy text for the log as std's. Test-only; imports the modules
//! it tests.

use proptest::collection::vec;
use proptest::prelude::*;

use canary_contract::{FilterConfig, RolloutConfig, Version};

use crate::control::lossy;
use crate::cookie::{anonymous_id, find_cookie, set_cookie_value};
use crate::routing::{RequestHeaders, Router};

/// Cookie names (RFC 6265 tokens) and values (no `;`, no edge whitespace, unquoted).
fn cookie_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_!#$%&'*+.^`|~-]{1,12}"
}

fn cookie_value() -> impl Strategy<Value = String> {
    "([!#-+\\--:<-\\[\\]-~]([ !#-+\\--:<-\\[\\]-~]{0,14}[!#-+\\--:<-\\[\\]-~])?)?"
}

struct Headers(Vec<(String, Vec<u8>)>);

impl RequestHeaders for Headers {
    fn header(&self, name: &str) -> Option<std::borrow::Cow<'_, [u8]>> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| std::borrow::Cow::Borrowed(v.as_slice()))
    }
}

proptest! {
    /// In a generated `Cookie` header (any spacing around `;` and `=`), each name finds the
    /// value of its first pair, and a name not in it finds nothing.
    #[test]
    fn cookies_are_found_in_generated_headers(
        pairs in vec((cookie_name(), cookie_value(), 0..3usize, 0..3usize), 0..8),
        missing in cookie_name(),
    ) {
        let spaces = ["", " ", " \t"];
        let header = pairs
            .iter()
            .map(|(k, v, before, around)| {
                format!("{}{k}{}={}{v}", spaces[*before], spaces[*around], spaces[*around])
            })
            .collect::<Vec<_>>()
            .join(";");
        for (name, _, _, _) in &pairs {
            let first = pairs.iter().find(|(k, ..)| k == name).map(|(_, v, ..)| v.as_bytes());
            prop_assert_eq!(find_cookie(header.as_bytes(), name), first, "{}", header);
        }
        if !pairs.iter().any(|(k, ..)| *k == missing) {
            prop_assert_eq!(find_cookie(header.as_bytes(), &missing), None);
        }
        // Quoted values come back without their quotes.
        let quoted = format!("{header}; {missing}=\"q\"");
        if !pairs.iter().any(|(k, ..)| *k == missing) {
            prop_assert_eq!(find_cookie(quoted.as_bytes(), &missing), Some(&b"q"[..]));
        }
    }

    /// The anonymous cookie the filter sets comes back as the same id.
    #[test]
    fn the_anonymous_cookie_round_trips(name in cookie_name(), random in any::<[u8; 16]>()) {
        let cfg = canary_contract::AnonymousCookie { name: name.clone(), ..Default::default() };
        let id = anonymous_id(random);
        let set = set_cookie_value(&cfg, &id);
        let pair = set.split(';').next().unwrap();
        prop_assert_eq!(find_cookie(pair.as_bytes(), &name), Some(id.as_bytes()));
    }

    /// Through the router: a user on canary at weight `w` is on canary at every `w' >= w`,
    /// and a raise applied through `Router::succeeding` keeps that true at every instant.
    #[test]
    fn routing_only_moves_users_to_canary_as_the_weight_rises(
        user in "[ -~]{1,40}",
        salt in "[a-z]{1,12}",
        w in 0..=10_000u32,
        raise in 0..=10_000u32,
        now in 0..1_000u64,
    ) {
        let w2 = w.saturating_add(raise).min(10_000);
        let config = |weight| {
            let mut r = RolloutConfig::new("r", weight);
            r.salt = Some(salt.clone());
            FilterConfig::new(vec![r])
        };
        let before = Router::new(config(w));
        let after = Router::succeeding(config(w2), &before, now, 500);
        let request = Headers(vec![("x-user-id".into(), user.clone().into_bytes())]);
        let version = |r: &Router, at| r.decide(&request, at, || unreachable!()).unwrap().version;
        let was = version(&before, now);
        for at in [now, 499, 500, 1_000] {
            if was == Version::Canary {
                prop_assert_eq!(version(&after, at), Version::Canary, "at {}", at);
            }
        }
        prop_assert_eq!(version(&after, 1_000), Router::new(config(w2)).decide(&request, 0, || unreachable!()).unwrap().version);
    }

    /// The controller's status for the log reads as `String::from_utf8_lossy` would: any
    /// bytes, mostly UTF-8 lead and continuation bytes so broken sequences are common.
    #[test]
    fn lossy_text_is_from_utf8_lossy(
        bytes in vec(prop_oneof![0x80..=0xffu8, any::<u8>()], 0..24),
    ) {
        prop_assert_eq!(lossy(&bytes), String::from_utf8_lossy(&bytes));
    }
}

#[cfg(feature = "llm")]
mod llm {
    use super::*;
    use crate::llm::{quality_milli, BodyReader};

    /// OpenAI-style stream events with token counts and an optional refusal.
    fn stream() -> impl Strategy<Value = (String, u64, u64, bool)> {
        (vec((0..1_000u64, 0..1_000u64, "[ a-zA-Z0-9]{0,20}"), 1..6), any::<bool>(), any::<bool>())
            .prop_map(|(events, refuse, crlf)| {
                let nl = if crlf { "\r\n" } else { "\n" };
                let mut body = String::new();
                let (mut input, mut output) = (0, 0);
                for (i, o, text) in &events {
                    input = input.max(*i);
                    output = output.max(*o);
                    body.push_str(&format!(
                        "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{text}\"}}}}],\"usage\":{{\"prompt_tokens\":{i},\"completion_tokens\":{o}}}}}{nl}{nl}"
                    ));
                }
                let reason = if refuse { "content_filter" } else { "stop" };
                body.push_str(&format!("data: {{\"choices\":[{{\"finish_reason\":\"{reason}\"}}]}}{nl}{nl}data: [DONE]{nl}"));
                (body, input, output, refuse)
            })
    }

    proptest! {
        /// A generated stream reads as its largest counts and its refusal, in any chunking.
        #[test]
        fn streams_read_the_same_in_any_chunking(
            (body, input, output, refused) in stream(),
            cuts in vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let reasons = canary_contract::LlmSignals::default().refusal_reasons;
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(body.len() + 1)).collect();
            cuts.sort_unstable();
            let mut reader = BodyReader::new(Some(b"text/event-stream"), 1 << 20).capturing();
            let mut from = 0;
            for to in cuts.into_iter().chain([body.len()]) {
                reader.feed(&body.as_bytes()[from..to], &reasons);
                from = to;
            }
            let split = reader.finish(&reasons);
            let mut whole = BodyReader::new(Some(b"text/event-stream"), 1 << 20).capturing();
            whole.feed(body.as_bytes(), &reasons);
            let whole = whole.finish(&reasons);
            prop_assert_eq!(&split, &whole);
            prop_assert!(whole.is_complete());
            prop_assert_eq!((whole.input_tokens, whole.output_tokens), (Some(input), Some(output)));
            prop_assert_eq!(whole.refusal, refused);
        }

        /// Quality scores written as decimals read back as their first three decimals.
        #[test]
        fn quality_decimals_read_as_thousandths(milli in 0..=1_000u64, extra in "[0-9]{0,4}") {
            let text = format!("{}.{:03}{extra}", milli / 1_000, milli % 1_000);
            prop_assert_eq!(quality_milli(text.as_bytes()), Some(milli));
            prop_assert_eq!(quality_milli(format!("2{text}").as_bytes()), None);
        }
    }
}
