//! The docs check: every command and config example in README.md, docs/*.md and
//! examples/**/*.md parses or runs. What lives here: the Markdown scanner ([`blocks`]: fenced
//! blocks, hash vector rows), command lines against `canaryctl --help` and the Makefile
//! ([`commands`]), hash vectors against the contract ([`vectors`]), and the checks of each
//! kind of block, run with the real `canaryctl`, Envoy and tools/validate-manifests.py
//! ([`checks`]). Imports the contract, [`crate::paths`] and [`crate::manifests`].
//!
//! The fence's info string says what a block is:
//! - ```` ```yaml rollout-spec ````: `canaryctl validate --spec` must accept it;
//! - ```` ```json filter-config ````: the contract's `FilterConfig::from_json` must;
//! - ```` ```yaml envoy-bootstrap ````: `envoy --mode validate` must (the filter module's
//!   path replaced by the built one), and each Wasm filter's configuration the contract;
//! - ```` ```yaml istio ````: every document against the Istio CRDs (Kubernetes kinds
//!   against their schemas), a WasmPlugin's `pluginConfig` through the contract;
//! - ```` ```sh ```` / ```` ```console ````: `canaryctl …` and `make …` lines (see [`commands`]);
//! - any other ```` ```json ```` / ```` ```yaml ````: must parse;
//! - the word `no-check` anywhere in the info string: not checked.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub mod blocks;
pub mod checks;
pub mod commands;
pub mod vectors;

/// A block or row that failed, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `file:line`.
    pub at: String,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// The docs the check reads, relative to `root`: README.md, docs/*.md, examples/**/*.md.
pub fn doc_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files = vec![PathBuf::from("README.md")];
    let mut docs = markdown_under(root, Path::new("docs"), false)?;
    docs.sort();
    files.extend(docs);
    let mut examples = markdown_under(root, Path::new("examples"), true)?;
    examples.sort();
    files.extend(examples);
    Ok(files)
}

fn markdown_under(root: &Path, dir: &Path, recursive: bool) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
        return Ok(found);
    };
    for entry in entries {
        let entry = entry?;
        let relative = dir.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            if recursive {
                found.extend(markdown_under(root, &relative, true)?);
            }
        } else if relative.extension().is_some_and(|e| e == "md") {
            found.push(relative);
        }
    }
    Ok(found)
}

/// Every failure in `files` (paths relative to `root`, as they are named in failures).
pub fn check_files(root: &Path, files: &[PathBuf]) -> Result<Vec<Failure>> {
    let mut run = checks::Run::new(root)?;
    for file in files {
        let path = root.join(file);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        for block in blocks::fenced_blocks(file, &text) {
            run.check_block(&block)?;
        }
        for row in blocks::vector_rows(file, &text) {
            if let Some(message) = vectors::check_row(&row) {
                run.fail(row.here(), message);
            }
        }
    }
    run.finish()
}
