//! A header map as Envoy hands all of it over at once (`proxy_get_header_map_pairs`):
//! one call into the host costs about as much as reading one present header
//! (~11k instructions against ~10k), so a request that reads several headers reads them
//! all once and looks each up here. The proxy-wasm form, little-endian: the number of
//! pairs, each pair's key and value sizes, then each key and value followed by a NUL.
//! Lookups never panic on a malformed map: they find nothing.

/// A serialized header map, read in place.
#[derive(Debug, Clone, Copy)]
pub struct HeaderMap<'a>(pub &'a [u8]);

impl<'a> HeaderMap<'a> {
    /// The value of the first header named `name` (names as Envoy keeps them: lowercase).
    pub fn get(self, name: &str) -> Option<&'a [u8]> {
        let bytes = self.0;
        let count = read_u32(bytes, 0)?;
        let mut at = count.checked_mul(8)?.checked_add(4)?;
        for pair in 0..count {
            let key_size = read_u32(bytes, 4 + pair * 8)?;
            let value_size = read_u32(bytes, 8 + pair * 8)?;
            let key = bytes.get(at..at.checked_add(key_size)?)?;
            let value_at = at + key_size + 1;
            let value = bytes.get(value_at..value_at.checked_add(value_size)?)?;
            if key == name.as_bytes() {
                return Some(value);
            }
            at = value_at + value_size + 1;
        }
        None
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let word = bytes.get(at..at.checked_add(4)?)?;
    let word: [u8; 4] = word.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(word)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proxy-wasm serialization of `pairs`.
    fn serialize(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend((k.len() as u32).to_le_bytes());
            out.extend((v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend(k.as_bytes());
            out.push(0);
            out.extend(v.as_bytes());
            out.push(0);
        }
        out
    }

    #[test]
    fn finds_each_header_and_the_first_of_repeats() {
        let bytes = serialize(&[
            (":authority", "shop.example.com"),
            (":path", "/cart"),
            ("cookie", "a=1"),
            ("x-empty", ""),
            ("cookie", "b=2"),
        ]);
        let map = HeaderMap(&bytes);
        assert_eq!(map.get(":authority"), Some(&b"shop.example.com"[..]));
        assert_eq!(map.get(":path"), Some(&b"/cart"[..]));
        assert_eq!(map.get("cookie"), Some(&b"a=1"[..]));
        assert_eq!(map.get("x-empty"), Some(&b""[..]));
        assert_eq!(map.get("x-user-id"), None);
        assert_eq!(HeaderMap(&serialize(&[])).get("cookie"), None);
    }

    #[test]
    fn a_malformed_map_finds_nothing_and_never_panics() {
        let good = serialize(&[("x-user-id", "u-1"), ("cookie", "a=1")]);
        // Every truncation, and every byte of the sizes set to 0xff.
        for cut in 0..good.len() {
            let _ = HeaderMap(&good[..cut]).get("cookie");
        }
        for i in 0..20 {
            let mut bad = good.clone();
            bad[i] = 0xff;
            let _ = HeaderMap(&bad).get("cookie");
        }
        assert_eq!(HeaderMap(&[]).get("cookie"), None);
        assert_eq!(HeaderMap(&u32::MAX.to_le_bytes()).get("cookie"), None);
    }
}
