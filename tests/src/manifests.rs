//! Kubernetes and Istio manifests as the tests read them: multi-document YAML as JSON values,
//! the WasmPlugin's filter configuration through the contract, and the offline schema check
//! of tools/validate-manifests.py (Istio CRDs, Kubernetes built-ins) on any files. Shared by
//! tests/tests/manifests.rs and the docs check (tests/tests/docs.rs).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, Context, Result};
use canary_contract::FilterConfig;
use serde_json::Value;

use crate::paths;

/// Every non-empty document of a YAML stream, as JSON values.
pub fn documents(text: &str) -> Result<Vec<Value>> {
    use serde::Deserialize;
    let mut docs = Vec::new();
    for d in serde_yaml_ng::Deserializer::from_str(text) {
        let value = Value::deserialize(d).map_err(|e| anyhow!("{e}"))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// A WasmPlugin's `spec.pluginConfig`, loaded as the filter loads its configuration.
pub fn plugin_config(wasm_plugin: &Value) -> Result<FilterConfig> {
    let json = wasm_plugin["spec"]["pluginConfig"].to_string();
    FilterConfig::from_json(json.as_bytes()).map_err(|e| anyhow!("pluginConfig: {e}"))
}

/// One problem tools/validate-manifests.py found: the file and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaProblem {
    pub file: PathBuf,
    pub message: String,
}

/// Runs tools/validate-manifests.py (the project venv's Python, with jsonschema and
/// kubernetes-validate) on `files`; returns what it found in each.
pub fn schema_problems(files: &[PathBuf]) -> Result<Vec<SchemaProblem>> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let tool = paths::project_root().join("tools/validate-manifests.py");
    let out = Command::new(paths::venv_python()?)
        .arg(&tool)
        .args(files)
        .output()
        .with_context(|| format!("running {}", tool.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut problems = Vec::new();
    for line in stderr.lines() {
        // Each problem line starts with the path it was given.
        let file = files
            .iter()
            .find(|f| line.starts_with(&format!("{}:", f.display())));
        match file {
            Some(file) => problems.push(SchemaProblem {
                file: file.clone(),
                message: line[file.display().to_string().len() + 1..]
                    .trim()
                    .to_string(),
            }),
            None if !out.status.success() => problems.push(SchemaProblem {
                file: PathBuf::from("?"),
                message: line.to_string(),
            }),
            None => {}
        }
    }
    anyhow::ensure!(
        out.status.success() || !problems.is_empty(),
        "{} failed: {stderr}",
        tool.display()
    );
    Ok(problems)
}

/// The file `relative` under manifests/, read.
pub fn manifest_text(relative: &str) -> Result<String> {
    let path: &Path = &paths::project_root().join("manifests").join(relative);
    std::fs::read_to_string(path).with_context(|| path.display().to_string())
}
