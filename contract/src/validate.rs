//! Validation plumbing shared by the configuration and its parts: the error types, the
//! `Validator` that collects them, the one mapping from a serde path to a field name, field
//! paths under a prefix, the duplicate and overlap finders, and the name predicates
//! (rollout, header, cookie, signal names).
//!
//! A leaf: imports nothing else of the crate, so `config` and every part (`breaker`, `llm`,
//! `fallback`, ...) import it and `config` imports the parts, one way.

use std::collections::BTreeSet;
use std::fmt;

/// 100% in basis points (a weight, a sample share, an error rate).
pub const MAX_WEIGHT_BP: u32 = 10_000;
/// Longest rollout (and fallback tier) name: a stat tag.
pub(crate) const MAX_NAME_LEN: usize = 63;
/// Longest quality signal name: part of stat names.
#[cfg(feature = "llm")]
pub(crate) const MAX_SIGNAL_LEN: usize = 32;

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `rollouts[0].weight_bp`.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl FieldError {
    /// The same error with the leading path `from` replaced by `to` (`to` empty: dropped).
    /// `from` matches whole path segments only: `rollouts[0]` matches `rollouts[0].name`
    /// and `rollouts[0]`, not `rollouts[0]x`. Other fields are returned unchanged. For a
    /// caller that embeds the configuration in its own format (the controller's spec).
    pub fn replace_prefix(self, from: &str, to: &str) -> FieldError {
        let Some(rest) = self.field.strip_prefix(from) else {
            return self;
        };
        let field = if rest.is_empty() {
            to.to_string()
        } else if rest.starts_with('[') {
            format!("{to}{rest}")
        } else if let Some(sub) = rest.strip_prefix('.') {
            if to.is_empty() {
                sub.to_string()
            } else {
                format!("{to}.{sub}")
            }
        } else {
            return self;
        };
        FieldError {
            field,
            reason: self.reason,
        }
    }
}

/// Why a configuration was refused: every problem found, each naming its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    pub(crate) fn single(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            errors: vec![FieldError {
                field: field.into(),
                reason: reason.into(),
            }],
        }
    }

    /// A type error from deserializing, named by its serde path (`(root)` for the
    /// document itself): the one mapping from a serde path to a field.
    pub(crate) fn from_path_error<E: fmt::Display>(e: serde_path_to_error::Error<E>) -> Self {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() {
            "(root)".to_string()
        } else {
            path
        };
        ConfigError::single(field, e.into_inner().to_string())
    }

    /// [`FieldError::replace_prefix`] on every error.
    pub fn replace_prefix(self, from: &str, to: &str) -> ConfigError {
        ConfigError {
            errors: self
                .errors
                .into_iter()
                .map(|e| e.replace_prefix(from, to))
                .collect(),
        }
    }
}

/// The path of field `suffix` (`.name`) under `at` (`rollouts[0]`): what `format!("{at}.name")`
/// makes, by one shared body instead of formatting code at each of some fifty call sites.
pub(crate) fn field(at: &str, suffix: &str) -> String {
    let mut path = String::with_capacity(at.len() + suffix.len());
    path.push_str(at);
    path.push_str(suffix);
    path
}

/// Collects every problem of a configuration, so all are reported at once.
#[derive(Default)]
pub(crate) struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    pub(crate) fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.push_error(FieldError {
            field: field.into(),
            reason: reason.into(),
        });
    }

    /// The one body behind every `push` and `check`, however their arguments are typed.
    #[inline(never)]
    fn push_error(&mut self, error: FieldError) {
        self.errors.push(error);
    }

    pub(crate) fn check(&mut self, ok: bool, field: impl Into<String>, reason: impl Into<String>) {
        if !ok {
            self.push(field, reason);
        }
    }

    pub(crate) fn finish(self) -> Result<(), ConfigError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                errors: self.errors,
            })
        }
    }
}

/// Whether each item repeats the key of an earlier one (`true` at every occurrence after the
/// first), for the duplicate-name checks: O(n log n) where comparing each item with every
/// earlier one cost O(n²) (32k rollouts: seconds), with no hash set (SipHash, random keys:
/// kilobytes of code) in the filter module.
pub(crate) fn repeats<'a, T>(items: &'a [T], key: impl Fn(&'a T) -> &'a str) -> Vec<bool> {
    let keys: Vec<&str> = items.iter().map(key).collect();
    repeated_keys(&keys)
}

/// [`repeats`] over the keys themselves, through a `BTreeSet<String>`: the filter module
/// already carries that type's code (the allow and deny lists are read into it), where a
/// sort per kind of item cost it 7 KB and a set of `&str` 4 KB.
fn repeated_keys(keys: &[&str]) -> Vec<bool> {
    let mut seen = BTreeSet::new();
    keys.iter().map(|k| !seen.insert(k.to_string())).collect()
}

/// The least key in both sets: one merge walk, as `BTreeSet::intersection` would find it,
/// without that iterator's code in the wasm module (1.8 KB).
pub(crate) fn first_common<'a>(
    a: &'a BTreeSet<String>,
    b: &BTreeSet<String>,
) -> Option<&'a String> {
    let (mut a, mut b) = (a.iter(), b.iter());
    let (mut x, mut y) = (a.next(), b.next());
    while let (Some(p), Some(q)) = (x, y) {
        match p.cmp(q) {
            std::cmp::Ordering::Less => x = a.next(),
            std::cmp::Ordering::Greater => y = b.next(),
            std::cmp::Ordering::Equal => return Some(p),
        }
    }
    None
}

/// `[a-z0-9][a-z0-9_-]*`, at most [`MAX_NAME_LEN`] bytes: a rollout or tier name (a stat tag).
pub(crate) fn is_rollout_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

/// RFC 9110 token characters.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A token with no upper-case letters (HTTP/2 and Envoy use lower-case names) and no
/// pseudo-header.
pub(crate) fn is_header_name(s: &str) -> bool {
    is_token(s) && !s.bytes().any(|b| b.is_ascii_uppercase())
}

/// A quality signal name: part of stat names.
#[cfg(feature = "llm")]
pub(crate) fn is_signal_name(signal: &str) -> bool {
    !signal.is_empty()
        && signal.len() <= MAX_SIGNAL_LEN
        && signal
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_common_is_the_least_key_in_both() {
        let set = |keys: &[&str]| keys.iter().map(|k| k.to_string()).collect::<BTreeSet<_>>();
        let (a, b) = (set(&["a", "c", "e", "g"]), set(&["b", "e", "g", "h"]));
        assert_eq!(first_common(&a, &b).map(String::as_str), Some("e"));
        assert_eq!(first_common(&b, &a).map(String::as_str), Some("e"));
        assert_eq!(a.intersection(&b).next(), first_common(&a, &b));
        assert_eq!(first_common(&a, &set(&["b", "d"])), None);
        assert_eq!(first_common(&a, &set(&[])), None);
    }

    fn error(field: &str) -> FieldError {
        FieldError {
            field: field.to_string(),
            reason: "r".to_string(),
        }
    }

    #[test]
    fn replace_prefix_matches_whole_segments() {
        let cases = [
            ("rollouts[0].name", "rollouts[0]", "filter", "filter.name"),
            ("rollouts[0]", "rollouts[0]", "filter", "filter"),
            ("rollouts[0].tiers[1]", "rollouts[0].tiers", "t", "t[1]"),
            ("rollouts[0].name", "rollouts[0]", "", "name"),
            ("rollouts[0].name", "rollouts[0].name", "name", "name"),
            ("rollouts[0]x", "rollouts[0]", "filter", "rollouts[0]x"),
            (
                "rollouts[10].name",
                "rollouts[1]",
                "filter",
                "rollouts[10].name",
            ),
            ("schema_version", "rollouts[0]", "filter", "schema_version"),
        ];
        for (field, from, to, want) in cases {
            assert_eq!(error(field).replace_prefix(from, to).field, want, "{field}");
        }
    }

    #[test]
    fn name_predicates() {
        assert!(is_rollout_name("checkout-v2_a") && is_rollout_name("0a"));
        assert!(!is_rollout_name("") && !is_rollout_name("-a") && !is_rollout_name("A"));
        assert!(!is_rollout_name(&"a".repeat(MAX_NAME_LEN + 1)));
        assert!(is_header_name("x-user-id") && !is_header_name("X-User") && !is_header_name(""));
        assert!(!is_header_name(":path") && !is_header_name("a b"));
        assert!(is_token("Session_ID") && !is_token("a;b"));
    }

    #[test]
    fn repeats_flags_later_occurrences_in_n_log_n_key_reads() {
        let names = ["b", "a", "b", "c", "a", "b"];
        assert_eq!(
            repeats(&names, |n| n),
            [false, false, true, false, true, true]
        );
        assert!(repeats::<&str>(&[], |n| n).is_empty());
        // Work, not time: the keys read stay within a small multiple of n log n (an O(n²)
        // check reads each key n times: 32k × 32k here).
        let n = 32_768;
        let many: Vec<String> = (0..n).map(|i| format!("r{}", i % (n / 2))).collect();
        let reads = std::cell::Cell::new(0u64);
        let flags = repeats(&many, |s| {
            reads.set(reads.get() + 1);
            s.as_str()
        });
        assert_eq!(flags.iter().filter(|&&f| f).count(), n / 2);
        assert!(
            !flags[0] && flags[n / 2],
            "the second occurrence is flagged"
        );
        let log_n = u64::from(usize::BITS - n.leading_zeros());
        assert!(
            reads.get() < 8 * n as u64 * log_n,
            "{} key reads",
            reads.get()
        );
    }
}
