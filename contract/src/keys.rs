//! Allow and deny lists without the keys in clear. `allow_hashed` and `deny_hashed` hold each
//! key as `fnv1a64:<16 lowercase hex digits>`: its [`key_hash`](crate::bucket::key_hash), the
//! 64-bit FNV-1a of `salt ‖ 0x00 ‖ key` that the bucket is reduced from. The controller
//! publishes its lists in this form, so `/filter-config`, which proxies read without a token,
//! lists no user ids. The filter hashes a request's key once, for the bucket, and looks that
//! value up in a hash set per list: O(1) whatever the lists hold.
//!
//! The `fnv1a64:` prefix names the scheme, so another can be added without guessing; an entry
//! in any other form is refused naming its field. This hides keys from readers of the
//! configuration and of logs; it is not encryption: the salt is in the configuration, so
//! whoever can enumerate the key space (numeric ids, a list of e-mail addresses) can tell
//! which keys are listed. Keep `/filter-config` inside the mesh (see the README).
//!
//! A leaf: imports only `bucket`.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::bucket::key_hash;

/// The scheme prefix of a published key hash.
pub const KEY_HASH_SCHEME: &str = "fnv1a64:";

/// A user key as its salted 64-bit hash (`fnv1a64:<hex>` in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyHash(pub u64);

impl KeyHash {
    /// The hash of `key` under `salt`.
    pub fn of(salt: &str, key: &str) -> KeyHash {
        KeyHash(key_hash(salt, key.as_bytes()))
    }

    /// `fnv1a64:` and exactly 16 lowercase hex digits.
    pub fn parse(text: &str) -> Option<KeyHash> {
        let hex = text.strip_prefix(KEY_HASH_SCHEME)?;
        if hex.len() != 16 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        u64::from_str_radix(hex, 16).ok().map(KeyHash)
    }
}

impl std::fmt::Display for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{KEY_HASH_SCHEME}{:016x}", self.0)
    }
}

impl Serialize for KeyHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeyHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<KeyHash, D::Error> {
        let text = String::deserialize(deserializer)?;
        KeyHash::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{text:?} is not a key hash: expected {KEY_HASH_SCHEME:?} and 16 lowercase hex digits"
            ))
        })
    }
}

/// A hasher for values that are hashes already: it passes them through.
#[derive(Default)]
pub struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type HashSet64 = HashSet<u64, BuildHasherDefault<PassThrough>>;

/// A rollout's allow and deny lists as requests read them: every listed key, in clear or
/// hashed, by its key hash (built with `RolloutConfig::key_lists`).
#[derive(Debug, Clone, Default)]
pub struct KeyLists {
    allow: HashSet64,
    deny: HashSet64,
}

impl KeyLists {
    pub fn new(allow: impl IntoIterator<Item = u64>, deny: impl IntoIterator<Item = u64>) -> Self {
        KeyLists {
            allow: allow.into_iter().collect(),
            deny: deny.into_iter().collect(),
        }
    }

    pub fn allows(&self, hash: u64) -> bool {
        self.allow.contains(&hash)
    }

    pub fn denies(&self, hash: u64) -> bool {
        self.deny.contains(&hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hashes_round_trip_and_are_pinned() {
        // The value the bucket of ("checkout", "user-1") is reduced from (bucket 9386).
        let h = KeyHash::of("checkout", "user-1");
        assert_eq!(crate::bucket::bucket_of_hash(h.0), 9386);
        let text = h.to_string();
        assert!(
            text.starts_with("fnv1a64:") && text.len() == 8 + 16,
            "{text}"
        );
        assert_eq!(KeyHash::parse(&text), Some(h));
        let json = serde_json::to_string(&h).expect("serializes");
        assert_eq!(serde_json::from_str::<KeyHash>(&json).expect("parses"), h);
    }

    #[test]
    fn malformed_hashes_are_refused() {
        for bad in [
            "",
            "fnv1a64:",
            "fnv1a64:0123456789abcde",
            "fnv1a64:0123456789abcdef0",
            "fnv1a64:0123456789ABCDEF",
            "sha256:0123456789abcdef",
            "0123456789abcdef",
            "fnv1a64:+123456789abcdef",
        ] {
            assert_eq!(KeyHash::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn lists_look_up_by_hash() {
        let lists = KeyLists::new([1, 2], [3]);
        assert!(lists.allows(1) && lists.allows(2) && !lists.allows(3));
        assert!(lists.denies(3) && !lists.denies(1));
    }
}
