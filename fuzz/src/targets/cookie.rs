//! The filter's header parsers: `cookie::find_cookie` (the `Cookie` request header),
//! `set_cookie_value` and `anonymous_id` (the anonymous cookie it sets), and
//! `llm::quality_milli` (quality score response headers).

use canary_contract::AnonymousCookie;
use canary_filter::cookie::{anonymous_id, find_cookie, set_cookie_value};
use canary_filter::llm::quality_milli;

use crate::input::Input;
use crate::Target;

pub const TARGET: Target = Target {
    name: "cookie",
    about: "cookie::find_cookie on a fuzzed Cookie header and name: a found value lies inside \
            the header, holds no ';', and the anonymous cookie the filter sets is found again \
            in front of any header; llm::quality_milli agrees with the decimal it reads",
    run,
    max_len: 2 * 1024,
    dict: &[
        "canary_uid",
        "=",
        "; ",
        ";",
        "\"",
        " ",
        "\t",
        "session_user=",
        "1",
        "0",
        "true",
        "false",
        ".",
        "0.875",
        "1.000",
        "\u{ff}",
    ],
};

/// Input: the name's length and bytes, 16 bytes for an anonymous id, then the header.
fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let name_len = usize::from(input.byte() % 32);
    let name = String::from_utf8_lossy(input.take(name_len)).into_owned();
    let mut random = [0u8; 16];
    for b in &mut random {
        *b = input.byte();
    }
    let header = input.rest();

    if let Some(value) = find_cookie(header, &name) {
        let range = header.as_ptr_range();
        assert!(
            range.start <= value.as_ptr() && value.as_ptr_range().end <= range.end,
            "the value is not a part of the header"
        );
        assert!(!value.contains(&b';'), "a value across a ';'");
    }

    // The cookie the filter sets, sent back in front of whatever else the client sends.
    let id = anonymous_id(random);
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()));
    if is_cookie_name(&name) {
        let cfg = AnonymousCookie {
            name: name.clone(),
            ..AnonymousCookie::default()
        };
        let set = set_cookie_value(&cfg, &id);
        let pair = set.split(';').next().unwrap_or_default();
        let mut sent = pair.as_bytes().to_vec();
        sent.extend_from_slice(b"; ");
        sent.extend_from_slice(header);
        assert_eq!(
            find_cookie(&sent, &name),
            Some(id.as_bytes()),
            "the anonymous cookie {pair:?} is not found again"
        );
    }

    check_quality(header);
}

/// A name the filter's configuration accepts for a cookie (an RFC 6265 token).
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

/// `quality_milli` against a plain decimal reading: a value it accepts is `true`/`false`
/// or a decimal in 0..=1 whose first three decimals it returns; a decimal of that form it
/// never refuses.
fn check_quality(value: &[u8]) {
    let got = quality_milli(value);
    let text = value.trim_ascii();
    let want = match text {
        b"true" => Some(1_000),
        b"false" => Some(0),
        _ => decimal_milli(text),
    };
    assert_eq!(
        got,
        want,
        "quality value {:?}",
        String::from_utf8_lossy(value)
    );
}

/// `[digits][.digits]` (at least one digit) as thousandths, truncated; `None` past 1.
fn decimal_milli(text: &[u8]) -> Option<u64> {
    let (whole, fraction) = match text.iter().position(|&b| b == b'.') {
        Some(dot) => (&text[..dot], &text[dot + 1..]),
        None => (text, &b""[..]),
    };
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
        return None;
    }
    // The whole part as a number, saturated: anything over 1 is refused.
    let units = whole.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    });
    let milli: u64 = fraction
        .iter()
        .chain([b'0'; 3].iter())
        .take(3)
        .fold(0, |n, d| n * 10 + u64::from(d - b'0'));
    let total = units.saturating_mul(1_000).saturating_add(milli);
    (total <= 1_000).then_some(total)
}
