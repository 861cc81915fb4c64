//! Allow and deny lists without the keys in clear. An entry of `allow` or `deny` of the form
//! `fnv1a64:<16 lowercase hex digits>` is a key's [`key_hash`](crate::bucket::key_hash), the
//! 64-bit FNV-1a of `salt ‖ 0x00 ‖ key` that the bucket is reduced from; any other entry is a
//! key in clear (as plain-Envoy users write them by hand). The controller
//! publishes its lists in this form, so `/filter-config`, which proxies read without a token,
//! lists no user ids. The filter hashes a request's key once, for the bucket, and looks that
//! value up in a hash set per list: O(1) whatever the lists hold.
//!
//! The `fnv1a64:` prefix names the scheme, so another can be added without guessing; an entry
//! with the prefix but not 16 lowercase hex digits after it is refused naming its field. This hides keys from readers of the
//! configuration and of logs; it is not encryption: the salt is in the configuration, so
//! whoever can enumerate the key space (numeric ids, a list of e-mail addresses) can tell
//! which keys are listed. Keep `/filter-config` inside the mesh (see docs/controller.md).
//!
//! A leaf: imports only `bucket`.

use crate::bucket::key_hash;

/// The scheme prefix of a published key hash.
pub const KEY_HASH_SCHEME: &str = "fnv1a64:";

/// A user key as its salted 64-bit hash; `fnv1a64:<hex>` as text (its `Display`).
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
        if hex.len() != 16 {
            return None;
        }
        // By hand: `u64::from_str_radix` costs the filter module more.
        hex.bytes()
            .try_fold(0u64, |value, b| {
                let digit = match b {
                    b'0'..=b'9' => b - b'0',
                    b'a'..=b'f' => b - b'a' + 10,
                    _ => return None,
                };
                Some(value << 4 | u64::from(digit))
            })
            .map(KeyHash)
    }
}

impl std::fmt::Display for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{KEY_HASH_SCHEME}{:016x}", self.0)
    }
}

/// The hash an allow or deny entry stands for: the entry itself when it is a key hash, the
/// hash of the key otherwise; `None` for a malformed key hash (refused by validation).
pub fn entry_hash(salt: &str, entry: &str) -> Option<u64> {
    if entry.starts_with(KEY_HASH_SCHEME) {
        KeyHash::parse(entry).map(|h| h.0)
    } else {
        Some(key_hash(salt, entry.as_bytes()))
    }
}

/// A set of key hashes: open addressing with linear probing in a table at most half full, so
/// a lookup is O(1) and ends at an empty slot. The values are hashes already, so they index
/// the table as they are. Much smaller in the wasm module than `std`'s `HashSet`. 0 marks
/// an empty slot; a listed hash of 0 is kept aside.
#[derive(Debug, Clone, Default)]
struct HashSet64 {
    slots: Vec<u64>,
    has_zero: bool,
}

impl HashSet64 {
    fn new(items: Vec<u64>) -> HashSet64 {
        let mut set = HashSet64 {
            slots: vec![0; (items.len() * 2).next_power_of_two().max(2)],
            has_zero: false,
        };
        for h in items {
            if h == 0 {
                set.has_zero = true;
                continue;
            }
            let mask = set.slots.len() - 1;
            let mut i = set.start(h);
            while let Some(slot) = set.slots.get_mut(i) {
                if *slot == 0 || *slot == h {
                    *slot = h;
                    break;
                }
                i = (i + 1) & mask;
            }
        }
        set
    }

    fn start(&self, h: u64) -> usize {
        (h ^ (h >> 32)) as usize & (self.slots.len().wrapping_sub(1))
    }

    fn contains(&self, h: u64) -> bool {
        if h == 0 {
            return self.has_zero;
        }
        let mask = self.slots.len().wrapping_sub(1);
        let mut i = self.start(h);
        // At most half full: an empty slot ends every probe.
        while let Some(&slot) = self.slots.get(i) {
            if slot == h {
                return true;
            }
            if slot == 0 {
                return false;
            }
            i = (i + 1) & mask;
        }
        false
    }
}

/// A rollout's allow and deny lists as requests read them: every listed key, in clear or
/// hashed, by its key hash (built with `RolloutConfig::key_lists`).
#[derive(Debug, Clone, Default)]
pub struct KeyLists {
    allow: HashSet64,
    deny: HashSet64,
    /// Neither list has an entry (most rollouts): a lookup is skipped.
    empty: bool,
}

impl KeyLists {
    pub fn new(allow: Vec<u64>, deny: Vec<u64>) -> Self {
        KeyLists {
            empty: allow.is_empty() && deny.is_empty(),
            allow: HashSet64::new(allow),
            deny: HashSet64::new(deny),
        }
    }

    pub fn allows(&self, hash: u64) -> bool {
        !self.empty && self.allow.contains(hash)
    }

    pub fn denies(&self, hash: u64) -> bool {
        !self.empty && self.deny.contains(hash)
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
        let lists = KeyLists::new(vec![1, 2], vec![3]);
        assert!(lists.allows(1) && lists.allows(2) && !lists.allows(3));
        assert!(lists.denies(3) && !lists.denies(1));
        assert!(!KeyLists::default().allows(7) && !KeyLists::default().denies(0));
        // Zero, duplicates, and values that collide in the table's low bits.
        let values: Vec<u64> = (0..1_000u64).map(|i| i << 40).chain([0, 0, 5, 5]).collect();
        let set = HashSet64::new(values.clone());
        for v in &values {
            assert!(set.contains(*v), "{v}");
        }
        for absent in [1u64, 7, u64::MAX, 1_000 << 40, 3 << 39] {
            assert!(!set.contains(absent), "{absent}");
        }
        assert!(set.slots.len() >= 2 * 1_000);
    }
}
