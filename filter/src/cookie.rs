//! The two cookie operations the filter needs: find one cookie in a `Cookie` header, and
//! build the `Set-Cookie` value for an anonymous id. (The `cookie` crate would bring in a
//! date library for `Expires`, which we never emit; `Max-Age` is enough.)

use canary_contract::AnonymousCookie;

/// The value of cookie `name` in a `Cookie` request header, if present. Bytes, because
/// header values from the wire need not be UTF-8.
pub fn find_cookie<'a>(header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = trim(pair);
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (k, v) = (trim(&pair[..eq]), trim(&pair[eq + 1..]));
        (k == name.as_bytes()).then(|| strip_quotes(v))
    })
}

/// `Set-Cookie` value carrying a new anonymous id, with the configured attributes.
pub fn set_cookie_value(cfg: &AnonymousCookie, id: &str) -> String {
    let mut v = format!(
        "{}={id}; Max-Age={}; Path={}; SameSite={}",
        cfg.name,
        cfg.max_age_s,
        cfg.path,
        cfg.same_site.as_str()
    );
    if cfg.secure {
        v.push_str("; Secure");
    }
    if cfg.http_only {
        v.push_str("; HttpOnly");
    }
    v
}

/// 128 bits for an anonymous id when the host gives no random ones: the clock and a counter
/// hashed, so ids stay unique-ish and nothing panics.
pub fn fallback_random(nanos: u64, counter: u64) -> [u8; 16] {
    use std::hash::Hasher;
    let mut random = [0u8; 16];
    for (i, chunk) in random.chunks_mut(8).enumerate() {
        let mut h = fnv::FnvHasher::default();
        h.write_u64(nanos);
        h.write_u64(counter);
        h.write_usize(i);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    random
}

/// A new anonymous id: 128 random bits as 32 lower-case hex digits.
pub fn anonymous_id(random: [u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(32);
    for b in random {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 0xf)] as char);
    }
    s
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn strip_quotes(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use canary_contract::SameSite;

    /// (Cookie header, cookie name, expected value)
    type CookieCase = (&'static [u8], &'static str, Option<&'static [u8]>);

    #[test]
    fn fallback_ids_differ_by_counter_and_time() {
        let a = fallback_random(1, 1);
        assert_ne!(a, fallback_random(1, 2));
        assert_ne!(a, fallback_random(2, 1));
        assert_ne!(a[..8], a[8..], "each half hashed apart");
        assert_eq!(a, fallback_random(1, 1));
    }

    #[test]
    fn finds_cookies() {
        let table: &[CookieCase] = &[
            (b"a=1; canary_uid=abc; b=2", "canary_uid", Some(b"abc")),
            (b"canary_uid=abc", "canary_uid", Some(b"abc")),
            (b"  canary_uid = \"q\" ;", "canary_uid", Some(b"q")),
            (b"xcanary_uid=1; canary_uidx=2", "canary_uid", None),
            (b"canary_uid", "canary_uid", None),
            (b"", "canary_uid", None),
            (b";;;=;", "canary_uid", None),
            (b"canary_uid=", "canary_uid", Some(b"")),
            (
                b"a=\xff\xfe; canary_uid=\xc3\x28",
                "canary_uid",
                Some(b"\xc3\x28"),
            ),
            (b"first=1; first=2", "first", Some(b"1")),
        ];
        for (header, name, want) in table {
            assert_eq!(
                find_cookie(header, name),
                *want,
                "{:?}",
                String::from_utf8_lossy(header)
            );
        }
    }

    #[test]
    fn set_cookie_has_secure_defaults() {
        let v = set_cookie_value(&AnonymousCookie::default(), "00ff");
        assert_eq!(
            v,
            "canary_uid=00ff; Max-Age=2592000; Path=/; SameSite=Lax; Secure; HttpOnly"
        );
        let cfg = AnonymousCookie {
            secure: false,
            http_only: false,
            same_site: SameSite::Strict,
            name: "u".into(),
            max_age_s: 60,
            path: "/api".into(),
            enabled: true,
        };
        assert_eq!(
            set_cookie_value(&cfg, "x"),
            "u=x; Max-Age=60; Path=/api; SameSite=Strict"
        );
    }

    #[test]
    fn anonymous_ids_are_hex() {
        // The contract refuses key limits below this length while the cookie is on.
        assert_eq!(
            anonymous_id([7; 16]).len(),
            canary_contract::config::ANONYMOUS_ID_BYTES
        );
        assert_eq!(
            anonymous_id([0, 1, 0xab, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]),
            "0001abff000000000000000000000010"
        );
    }
}
