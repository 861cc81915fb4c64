//! Shadow mode's answer capture and comparison (`shadow::Capture`, `compare`, `normalise`).

use canary_contract::TextNormalisation;
use canary_filter::shadow::{compare, normalise, Answer, Capture};
use serde_json::Value;

use crate::input::Input;
use crate::Target;

pub const TARGET: Target = Target {
    name: "shadow",
    about: "shadow::Capture on two fuzzed JSON answers: a capture stays within its bounds \
            (256 paths, 64 KiB of text) and its shape is a set; compare is reflexive and \
            symmetric; every text normalisation is idempotent",
    run,
    max_len: 16 * 1024,
    dict: &[
        "{\"choices\":[{",
        "\"message\":{",
        "\"delta\":{",
        "\"content\":",
        "\"text\":",
        "\"type\":",
        "\"content_block_delta\"",
        "\"content_block_start\"",
        "\"content_block\":{",
        "\"content\":[{",
        "\u{0}",
        " ",
        "\t",
        "\n",
        "\u{a0}",
        "A",
        "a",
        "\u{130}",
        "[",
        "]",
        "{",
        "}",
        "null",
        "1e400",
    ],
};

const NORMALISATIONS: [TextNormalisation; 4] = [
    TextNormalisation::Exact,
    TextNormalisation::TrimWhitespace,
    TextNormalisation::CollapseWhitespace,
    TextNormalisation::CollapseWhitespaceLowercase,
];

/// Input: the normalisation, two status bytes (0: no answer), a readable flags byte, then
/// the primary's JSON, a NUL, the candidate's JSON (each also taken twice when bit 2 / 3
/// of the flags is set: a stream's repeated events).
fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let how = NORMALISATIONS[usize::from(input.byte()) % NORMALISATIONS.len()];
    let status = |b: u8| (b != 0).then(|| 100 + u16::from(b));
    let (primary_status, candidate_status) = (status(input.byte()), status(input.byte()));
    let flags = input.byte();
    let primary = input.field(0).unwrap_or_default();
    let candidate = input.rest();

    let primary = Answer {
        status: primary_status,
        readable: flags & 1 != 0,
        capture: capture(primary, flags & 4 != 0),
    };
    let candidate = Answer {
        status: candidate_status,
        readable: flags & 2 != 0,
        capture: capture(candidate, flags & 8 != 0),
    };

    let itself = compare(&candidate, &candidate, how);
    assert!(itself.status && itself.structure == candidate.readable);
    assert_eq!(
        itself.text, candidate.readable,
        "an answer differs from itself"
    );
    if primary.readable && candidate.readable {
        assert_eq!(
            compare(&primary, &candidate, how),
            compare(&candidate, &primary, how),
            "compare is not symmetric"
        );
    }
    for text in [&primary.capture.text, &candidate.capture.text] {
        for how in NORMALISATIONS {
            let once = normalise(text, how);
            assert_eq!(normalise(&once, how), once, "{how:?} is not idempotent");
        }
    }
}

/// The capture of one JSON document (nothing if it is not JSON), optionally taken twice.
fn capture(json: &[u8], twice: bool) -> Capture {
    let mut capture = Capture::default();
    let Ok(event) = serde_json::from_slice::<Value>(json) else {
        return capture;
    };
    capture.take(&event);
    let shape = capture.shape.clone();
    let text_len = capture.text.len();
    if twice {
        capture.take(&event);
        assert_eq!(
            capture.shape, shape,
            "the same event twice changed the shape"
        );
        assert!(capture.text.len() >= text_len);
    }
    assert_bounded(&capture);
    // What it keeps is bounded whatever the answer: ids and capped text, never the body.
    assert!(capture.retained_bytes() <= 4 * (256 * 8 + 64 * 1024));
    capture
}

/// What a capture keeps, whatever the answer: at most 256 paths as a sorted set of ids and
/// 64 KiB of text (the body target checks the captures of its readings with it too).
pub(crate) fn assert_bounded(capture: &Capture) {
    assert!(
        capture.shape.len() <= 256,
        "{} paths kept",
        capture.shape.len()
    );
    assert!(
        capture.shape.windows(2).all(|w| w[0] < w[1]),
        "shape not a sorted set"
    );
    assert!(
        capture.text.len() <= 64 * 1024,
        "{} text bytes kept",
        capture.text.len()
    );
}
