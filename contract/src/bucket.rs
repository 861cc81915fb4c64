//! Sticky bucketing: FNV-1a (64-bit) over `salt ‖ 0x00 ‖ key`, reduced to `0..BUCKETS`.
//!
//! A user's bucket depends only on the salt and the key, so every proxy and worker (and the
//! controller, when it attributes feedback) agrees on it. A user is on canary when
//! `bucket < weight_bp`, so raising the weight only ever moves users from stable to canary:
//! ramps are monotone.

use std::hash::Hasher;

use crate::Version;

/// Number of buckets: one per basis point of traffic.
pub const BUCKETS: u32 = 10_000;

/// The bucket (`0..BUCKETS`) of `key` under `salt`.
pub fn bucket(salt: &str, key: &[u8]) -> u32 {
    bucket_of_hash(key_hash(salt, key))
}

/// FNV-1a (64-bit) over `salt ‖ 0x00 ‖ key`: the value the bucket is reduced from, and the
/// form in which allow and deny lists are published (see the `keys` module), so a request
/// hashes its key once for both.
pub fn key_hash(salt: &str, key: &[u8]) -> u64 {
    SaltedHasher::new(salt).hash(key)
}

/// [`key_hash`] with the salt's part done once: what the filter keeps per rollout, so a
/// request hashes only its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaltedHasher(u64);

impl SaltedHasher {
    pub fn new(salt: &str) -> SaltedHasher {
        let mut hasher = fnv::FnvHasher::default();
        hasher.write(salt.as_bytes());
        // The separator keeps ("ab", "c") and ("a", "bc") apart; salts may not contain NUL.
        hasher.write(&[0]);
        SaltedHasher(hasher.finish())
    }

    /// The [`key_hash`] of `key` under this salt.
    pub fn hash(self, key: &[u8]) -> u64 {
        // FNV-1a's state is its output so far: go on from the salt's.
        let mut hasher = fnv::FnvHasher::with_key(self.0);
        hasher.write(key);
        hasher.finish()
    }
}

/// The bucket of a [`key_hash`].
pub fn bucket_of_hash(hash: u64) -> u32 {
    // 2^64 mod 10_000 is tiny, so the modulo bias is far below anything measurable.
    (hash % u64::from(BUCKETS)) as u32
}

/// The version for a bucket at a canary weight in basis points.
pub fn version_for_bucket(bucket: u32, weight_bp: u32) -> Version {
    if bucket < weight_bp {
        Version::Canary
    } else {
        Version::Stable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_salted_hasher_hashes_salt_separator_and_key_in_one() {
        for (salt, key) in [("checkout", "user-1"), ("", ""), ("s", "a\u{e9}b")] {
            let mut h = fnv::FnvHasher::default();
            h.write(salt.as_bytes());
            h.write(&[0]);
            h.write(key.as_bytes());
            assert_eq!(SaltedHasher::new(salt).hash(key.as_bytes()), h.finish());
            assert_eq!(key_hash(salt, key.as_bytes()), h.finish());
        }
    }

    #[test]
    fn fnv1a_matches_reference_vectors() {
        // Reference FNV-1a 64 values (Fowler/Noll/Vo test suite): "" and "a".
        let mut h = fnv::FnvHasher::default();
        h.write(b"");
        assert_eq!(h.finish(), 0xcbf29ce484222325);
        let mut h = fnv::FnvHasher::default();
        h.write(b"a");
        assert_eq!(h.finish(), 0xaf63dc4c8601ec8c);
        let mut h = fnv::FnvHasher::default();
        h.write(b"foobar");
        assert_eq!(h.finish(), 0x85944171f73967e8);
    }

    #[test]
    fn bucket_is_pinned() {
        // Literal values: a change here reshuffles every user in every running rollout.
        // The same test runs compiled to wasm32-wasip1, proving both builds agree.
        let pinned = [
            ("checkout", "user-1", 9386),
            ("checkout", "user-2", 1175),
            ("llm-gw", "alice", 9393),
            ("s", "", 6294),
            ("salt", "\u{e9}t\u{e9}", 793),
        ];
        for (salt, key, want) in pinned {
            assert_eq!(bucket(salt, key.as_bytes()), want, "{salt}/{key}");
        }
    }

    #[test]
    fn separator_keeps_salt_and_key_apart() {
        assert_ne!(bucket("ab", b"c"), bucket("a", b"bc"));
    }

    #[test]
    fn buckets_are_in_range_and_roughly_uniform() {
        let mut counts = [0u32; 10];
        for i in 0..100_000 {
            let b = bucket("salt", format!("user-{i}").as_bytes());
            assert!(b < BUCKETS);
            counts[(b / 1000) as usize] += 1;
        }
        for c in counts {
            // 10,000 expected per decile; 5 sigma is about 475.
            assert!((9_500..=10_500).contains(&c), "decile count {c}");
        }
    }

    #[test]
    fn weight_boundaries() {
        assert_eq!(version_for_bucket(0, 0), Version::Stable);
        assert_eq!(version_for_bucket(0, 1), Version::Canary);
        assert_eq!(version_for_bucket(9_999, 9_999), Version::Stable);
        assert_eq!(version_for_bucket(9_999, 10_000), Version::Canary);
    }

    #[test]
    fn ramp_is_monotone() {
        let weights = [0, 100, 500, 2_500, 5_000, 7_500, 10_000];
        for i in 0..20_000 {
            let b = bucket("ramp", format!("u{i}").as_bytes());
            let mut was_canary = false;
            for w in weights {
                let canary = version_for_bucket(b, w) == Version::Canary;
                assert!(
                    !was_canary || canary,
                    "user u{i} left canary when weight rose to {w}"
                );
                was_canary = canary;
            }
        }
    }
}
