//! Copies of a user's request for calls the filter makes itself (shadow copies, evaluations,
//! retries down the fallback chain): the headers that go on a copy, and the body, kept as it
//! passes and up to a cap. Plain Rust, unit-tested natively.

/// Whether a request header goes on a copy of the request sent with a call of the filter's
/// own: not hop-by-hop ones, not the length (the body is sent whole and Envoy sets it), not
/// pseudo-headers other than the three a call needs, not the shadow marker.
pub fn forwarded(name: &str) -> bool {
    !matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
            | "content-length"
            | "x-canary-shadow"
    ) && (!name.starts_with(':') || matches!(name, ":method" | ":path" | ":authority"))
}

/// The headers of a copy: those [`forwarded`] whose values are text (the SDK's calls take
/// text values; a header that is not is left off).
pub fn copied_headers(raw: Vec<(String, Vec<u8>)>) -> Vec<(String, String)> {
    raw.into_iter()
        .filter(|(name, _)| forwarded(name))
        .filter_map(|(name, value)| String::from_utf8(value).ok().map(|v| (name, v)))
        .collect()
}

/// Headers as the SDK's calls take them.
pub fn header_pairs(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// A copy of a request body, up to a cap. Past the cap the copy is given up (and nothing
/// more is read from the host), never truncated: a cut prompt would be judged wrongly.
#[derive(Debug, Default)]
pub struct BodyCopy {
    body: Vec<u8>,
    max: usize,
    over: bool,
    complete: bool,
}

impl BodyCopy {
    pub fn new(max: usize) -> BodyCopy {
        BodyCopy {
            max,
            ..BodyCopy::default()
        }
    }

    /// A chunk of `len` bytes passes; `read` copies it from the host.
    pub fn push(&mut self, len: usize, end: bool, read: impl FnOnce() -> Option<Vec<u8>>) {
        if self.over {
            return;
        }
        if len > 0 {
            // Saturating: `len` is the host's (an overflow would panic or wrap under the cap).
            let fits = self.body.len().saturating_add(len) <= self.max;
            let chunk = fits.then(read).flatten();
            match chunk {
                Some(chunk) => self.body.extend_from_slice(&chunk),
                None => {
                    self.over = true;
                    self.body = Vec::new();
                    return;
                }
            }
        }
        self.complete |= end;
    }

    /// The whole body, if it was copied to its end within the cap.
    pub fn take(self) -> Option<Vec<u8>> {
        (self.complete && !self.over).then_some(self.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_copy_is_whole_or_nothing() {
        let mut b = BodyCopy::new(8);
        b.push(4, false, || Some(b"abcd".to_vec()));
        b.push(4, true, || Some(b"efgh".to_vec()));
        assert_eq!(b.take(), Some(b"abcdefgh".to_vec()));
        let mut b = BodyCopy::new(8);
        b.push(4, false, || Some(b"abcd".to_vec()));
        b.push(5, false, || panic!("not read past the cap"));
        b.push(1, true, || panic!("nothing read once over"));
        assert_eq!(b.take(), None);
        let mut b = BodyCopy::new(8);
        b.push(2, false, || Some(b"ab".to_vec()));
        assert_eq!(b.take(), None, "the request never ended");
        let mut b = BodyCopy::new(8);
        b.push(0, true, || panic!("empty"));
        assert_eq!(b.take(), Some(Vec::new()), "a request without a body");
        let mut b = BodyCopy::new(8);
        b.push(3, true, || None);
        assert_eq!(b.take(), None, "the host gave no bytes");
        let mut b = BodyCopy::new(8);
        b.push(4, false, || Some(b"abcd".to_vec()));
        b.push(usize::MAX, true, || {
            panic!("a length that overflows is over the cap")
        });
        assert_eq!(b.take(), None);
    }

    #[test]
    fn hop_by_hop_and_pseudo_headers_stay_off_copies() {
        for name in [
            ":method",
            ":path",
            ":authority",
            "content-type",
            "x-user-id",
        ] {
            assert!(forwarded(name), "{name}");
        }
        for name in [
            ":scheme",
            "connection",
            "content-length",
            "transfer-encoding",
            "x-canary-shadow",
        ] {
            assert!(!forwarded(name), "{name}");
        }
    }
}
