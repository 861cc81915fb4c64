//! Hash test vectors: each documented row checked against the contract's own hashing
//! (`bucket = FNV-1a 64(salt ‖ 0x00 ‖ key) mod 10000`, canary when `bucket < weight_bp`), and
//! the table printed for the docs, with a row where the 32-bit hash would disagree.

use canary_contract::bucket::{bucket, version_for_bucket, BUCKETS};

use super::blocks::{cell_text, VectorRow};

/// What is wrong with `row`, if anything.
pub fn check_row(row: &VectorRow) -> Option<String> {
    let [salt, key, weight, want_bucket, want_version] = row.cells.as_slice() else {
        return Some(format!(
            "a hash vector row has 5 cells (| salt | key | weight_bp | bucket | version |), this one {}",
            row.cells.len()
        ));
    };
    let (salt, key) = (cell_text(salt), cell_text(key));
    let Ok(weight) = weight.parse::<u32>() else {
        return Some(format!("weight_bp {weight:?} is not a whole number"));
    };
    let got = bucket(&salt, key.as_bytes());
    let version = version_for_bucket(got, weight).as_str();
    let mut wrong = Vec::new();
    if want_bucket.parse::<u32>().ok() != Some(got) {
        wrong.push(format!("bucket is {got}, not {want_bucket}"));
    }
    if want_version.trim_matches('`') != version {
        wrong.push(format!(
            "version at {weight} bp is {version}, not {want_version}"
        ));
    }
    (!wrong.is_empty()).then(|| format!("salt {salt:?}, key {key:?}: {}", wrong.join("; ")))
}

/// FNV-1a with 32-bit state over the same bytes: what a re-implementation that picked the
/// wrong width computes.
pub fn bucket_fnv32(salt: &str, key: &[u8]) -> u32 {
    fnv1a32(salt.as_bytes().iter().chain(&[0]).chain(key)) % BUCKETS
}

fn fnv1a32<'a>(bytes: impl IntoIterator<Item = &'a u8>) -> u32 {
    bytes.into_iter().fold(0x811c_9dc5, |h: u32, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// A key under `salt` whose 10% answer differs between the 32- and 64-bit hashes.
pub fn width_disagreement(salt: &str) -> Option<String> {
    (1..10_000).map(|i| format!("user-{i}")).find(|k| {
        let b64 = bucket(salt, k.as_bytes());
        let b32 = bucket_fnv32(salt, k.as_bytes());
        (b64 < 1_000) != (b32 < 1_000)
    })
}

/// The Markdown table (with its opening comment) for `(salt, key)` pairs at `weight_bp`.
pub fn table(pairs: &[(&str, &str)], weight_bp: u32) -> String {
    let mut out = format!(
        "{}\n| salt | key | weight_bp | bucket | version |\n|---|---|---|---|---|\n",
        super::blocks::HASH_VECTORS_MARK
    );
    for (salt, key) in pairs {
        let b = bucket(salt, key.as_bytes());
        let key_cell = if key.is_empty() {
            "(empty)".to_string()
        } else {
            format!("`{key}`")
        };
        out.push_str(&format!(
            "| `{salt}` | {key_cell} | {weight_bp} | {b} | {} |\n",
            version_for_bucket(b, weight_bp).as_str()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn row(cells: &[&str]) -> VectorRow {
        VectorRow {
            file: PathBuf::from("d.md"),
            line: 1,
            cells: cells.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn rows_are_checked_against_the_contract() {
        // contract/src/bucket.rs pins checkout/user-1 at 9386 and s/"" at 6294.
        assert_eq!(
            check_row(&row(&["`checkout`", "`user-1`", "1000", "9386", "stable"])),
            None
        );
        assert_eq!(
            check_row(&row(&["`s`", "(empty)", "6295", "6294", "canary"])),
            None
        );
        let bad = check_row(&row(&["`checkout`", "`user-1`", "1000", "9385", "canary"]));
        let bad = bad.expect("a wrong row is reported");
        assert!(
            bad.contains("bucket is 9386") && bad.contains("stable"),
            "{bad}"
        );
        assert!(check_row(&row(&["`a`", "`b`", "1000"])).is_some());
    }

    #[test]
    fn the_32_bit_hash_is_the_reference_one() {
        // FNV-1a 32 of "", "a" and "foobar" (Fowler/Noll/Vo test suite).
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
        assert!(width_disagreement("checkout").is_some());
    }
}
