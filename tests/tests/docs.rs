//! Every command and config example in README.md, docs/*.md and examples/**/*.md parses or
//! runs (issue 19): rollout specs through `canaryctl validate`, filter configurations through
//! the contract, bootstraps through `envoy --mode validate`, Istio resources against their
//! CRDs, `canaryctl` and `make` lines against the real CLI and Makefile, hash test vectors
//! against the contract's hashing. The fence convention is in tests/src/doc_check/mod.rs; the
//! scanner itself is tested on tests/fixtures/docs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Result;
use canary_e2e::doc_check::{self, vectors, Failure};
use canary_e2e::paths::project_root;

fn report(failures: &[Failure]) -> String {
    failures
        .iter()
        .map(|f| format!("  {f}\n"))
        .collect::<String>()
}

#[test]
fn every_example_in_the_docs_works() -> Result<()> {
    let root = project_root();
    let files = doc_check::doc_files(&root)?;
    let failures = doc_check::check_files(&root, &files)?;
    assert!(
        failures.is_empty(),
        "{} failing example(s) in {files:?}:\n{}",
        failures.len(),
        report(&failures)
    );
    Ok(())
}

#[test]
fn the_good_fixture_passes() -> Result<()> {
    let failures = doc_check::check_files(
        &project_root(),
        &[PathBuf::from("tests/fixtures/docs/good.md")],
    )?;
    assert!(failures.is_empty(), "{}", report(&failures));
    Ok(())
}

/// Lines marked `expect-failure` in a fixture: the line after a `<!-- expect-failure -->`,
/// or a command line ending in `# expect-failure`.
fn expected_failures(file: &Path) -> Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(project_root().join(file))?;
    let mut lines = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim() == "<!-- expect-failure -->" {
            lines.insert(format!("{}:{}", file.display(), i + 2));
        } else if line.contains("# expect-failure") {
            lines.insert(format!("{}:{}", file.display(), i + 1));
        }
    }
    Ok(lines)
}

#[test]
fn every_bad_block_of_the_fixture_is_reported_at_its_line() -> Result<()> {
    let file = PathBuf::from("tests/fixtures/docs/bad.md");
    let failures = doc_check::check_files(&project_root(), std::slice::from_ref(&file))?;
    let got: BTreeSet<String> = failures.iter().map(|f| f.at.clone()).collect();
    let want = expected_failures(&file)?;
    assert!(
        want.len() >= 10,
        "the fixture marks its bad blocks: {want:?}"
    );
    assert_eq!(got, want, "reported:\n{}", report(&failures));
    // The bad spec is refused for its reason, with the file and line of its block.
    let spec = failures
        .iter()
        .find(|f| f.message.starts_with("canaryctl validate"))
        .expect("the bad spec is reported");
    assert!(
        spec.message.contains("stages[1].weight_pct")
            && spec.at.starts_with("tests/fixtures/docs/bad.md:"),
        "{spec}"
    );
    Ok(())
}

/// Prints the hash test vector table for the docs (`-- --ignored --nocapture`): the empty
/// key, a non-ASCII key, and a key whose 10% answer the 32-bit FNV-1a would get wrong.
#[test]
#[ignore]
fn print_hash_vectors() {
    let salt = "checkout";
    let disagreeing = vectors::width_disagreement(salt).expect("a key the widths disagree on");
    // Two users on canary at 10%, so the table shows both answers.
    let canary: Vec<String> = (1..1_000)
        .map(|i| format!("user-{i}"))
        .filter(|k| canary_contract::bucket::bucket(salt, k.as_bytes()) < 1_000)
        .take(2)
        .collect();
    let mut pairs = vec![(salt, disagreeing.as_str())];
    pairs.extend(canary.iter().map(|k| (salt, k.as_str())));
    pairs.extend([
        (salt, "alice"),
        (salt, ""),
        (salt, "émilie"),
        ("llm-gw", "alice"),
    ]);
    println!("{}", vectors::table(&pairs, 1_000));
    let b64 = canary_contract::bucket::bucket(salt, disagreeing.as_bytes());
    let b32 = vectors::bucket_fnv32(salt, disagreeing.as_bytes());
    println!(
        "`{disagreeing}` under `{salt}`: bucket {b64} with the 64-bit FNV-1a, {b32} with the 32-bit one"
    );
}
