//! The checks of each kind of block, with the real tools: `canaryctl validate`, `envoy
//! --mode validate`, the contract's validator, tools/validate-manifests.py (batched: one
//! Python start for every `istio` block).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use canary_contract::FilterConfig;
use serde_json::Value;

use super::blocks::Block;
use super::commands::CommandCheck;
use super::Failure;
use crate::{manifests, paths};

/// The words an info string may carry after the language.
pub const TAGS: [&str; 5] = [
    "rollout-spec",
    "filter-config",
    "envoy-bootstrap",
    "istio",
    "no-check",
];

/// One pass over some docs: the tools, a scratch directory, what failed so far.
pub struct Run {
    root: PathBuf,
    scratch: tempfile::TempDir,
    written: usize,
    commands: Option<CommandCheck>,
    /// `istio` blocks written out for the schema check, with the block's place.
    istio_files: Vec<(PathBuf, String)>,
    failures: Vec<Failure>,
}

impl Run {
    pub fn new(root: &Path) -> Result<Run> {
        Ok(Run {
            root: root.to_path_buf(),
            scratch: tempfile::Builder::new().prefix("doc-check-").tempdir()?,
            written: 0,
            commands: None,
            istio_files: Vec::new(),
            failures: Vec::new(),
        })
    }

    pub fn fail(&mut self, at: String, message: impl Into<String>) {
        self.failures.push(Failure {
            at,
            message: message.into(),
        });
    }

    /// Runs the check the block's info string asks for; its failures are kept.
    pub fn check_block(&mut self, block: &Block) -> Result<()> {
        if block.has_tag("no-check") {
            return Ok(());
        }
        let unknown: Vec<&String> = (block.tags.iter())
            .filter(|t| !TAGS.contains(&t.as_str()))
            .collect();
        if !unknown.is_empty() && matches!(block.lang.as_str(), "json" | "yaml" | "yml") {
            self.fail(
                block.here(),
                format!("unknown word {unknown:?} in the info string (known: {TAGS:?})"),
            );
            return Ok(());
        }
        if block.has_tag("rollout-spec") {
            self.rollout_spec(block)
        } else if block.has_tag("filter-config") {
            self.filter_config(block);
            Ok(())
        } else if block.has_tag("envoy-bootstrap") {
            self.envoy_bootstrap(block)
        } else if block.has_tag("istio") {
            self.istio(block)
        } else {
            match block.lang.as_str() {
                "sh" | "console" | "bash" | "shell" => self.commands(block),
                "json" => {
                    if let Err(e) = serde_json::from_str::<Value>(&block.body) {
                        self.fail(block.here(), format!("not JSON: {e}"));
                    }
                    Ok(())
                }
                "yaml" | "yml" => {
                    if let Err(e) = manifests::documents(&block.body) {
                        self.fail(block.here(), format!("not YAML: {e}"));
                    }
                    Ok(())
                }
                _ => Ok(()),
            }
        }
    }

    /// Writes `body` to a new scratch file named after `ext`.
    fn write(&mut self, ext: &str, body: &str) -> Result<PathBuf> {
        self.written += 1;
        let path = self
            .scratch
            .path()
            .join(format!("block-{}.{ext}", self.written));
        std::fs::write(&path, body)?;
        Ok(path)
    }

    fn rollout_spec(&mut self, block: &Block) -> Result<()> {
        let path = self.write("yaml", &block.body)?;
        let canaryctl = paths::canaryctl_bin()?;
        let out = Command::new(&canaryctl)
            .args(["validate", "--spec"])
            .arg(&path)
            .output()
            .with_context(|| format!("running {}", canaryctl.display()))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let message = stderr
                .trim()
                .replace(&path.display().to_string(), "(block)");
            self.fail(block.here(), format!("canaryctl validate: {message}"));
        }
        Ok(())
    }

    fn filter_config(&mut self, block: &Block) {
        let loaded = if block.lang == "json" {
            FilterConfig::from_json(block.body.as_bytes()).map_err(|e| e.to_string())
        } else {
            yaml_value(&block.body)
                .and_then(|v| FilterConfig::from_value(v).map_err(|e| e.to_string()))
        };
        if let Err(e) = loaded {
            self.fail(block.here(), format!("filter configuration: {e}"));
        }
    }

    fn envoy_bootstrap(&mut self, block: &Block) -> Result<()> {
        let bootstrap = match yaml_value(&block.body) {
            Ok(v) => v,
            Err(e) => {
                self.fail(block.here(), format!("not YAML: {e}"));
                return Ok(());
            }
        };
        for (at, config) in wasm_configurations(&bootstrap, String::new()) {
            if let Err(e) = FilterConfig::from_json(config.as_bytes()) {
                self.fail(block.here(), format!("{at}: filter configuration: {e}"));
            }
        }
        let body = with_built_modules(&block.body)?;
        let path = self.write("yaml", &body)?;
        let envoy = paths::envoy_bin()?;
        let out = Command::new(&envoy)
            .args(["--mode", "validate", "--log-level", "warn", "-c"])
            .arg(&path)
            .current_dir(&self.root)
            .output()
            .with_context(|| format!("running {}", envoy.display()))?;
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stderr).to_string()
                + &String::from_utf8_lossy(&out.stdout);
            let reason: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("critical") || l.contains("error"))
                .collect();
            let mut reason = reason.join(" / ");
            reason.truncate(600);
            self.fail(block.here(), format!("envoy --mode validate: {reason}"));
        }
        Ok(())
    }

    fn istio(&mut self, block: &Block) -> Result<()> {
        let docs = match manifests::documents(&block.body) {
            Ok(docs) => docs,
            Err(e) => {
                self.fail(block.here(), format!("not YAML: {e}"));
                return Ok(());
            }
        };
        for doc in docs.iter().filter(|d| d["kind"] == "WasmPlugin") {
            if let Err(e) = manifests::plugin_config(doc) {
                self.fail(block.here(), format!("WasmPlugin: {e}"));
            }
        }
        let path = self.write("yaml", &block.body)?;
        self.istio_files.push((path, block.here()));
        Ok(())
    }

    fn commands(&mut self, block: &Block) -> Result<()> {
        if self.commands.is_none() {
            let makefile = std::fs::read_to_string(self.root.join("Makefile"))?;
            self.commands = Some(CommandCheck::new(paths::canaryctl_bin()?, &makefile));
        }
        let Some(check) = self.commands.as_mut() else {
            return Ok(());
        };
        let mut found = Vec::new();
        // A line ending in `\` goes on on the next: one command, named by its first line.
        let mut command = String::new();
        let mut first = 0;
        for (i, line) in block.body.lines().enumerate() {
            if command.is_empty() {
                first = i;
            }
            match line.trim_end().strip_suffix('\\') {
                Some(part) => {
                    command.push_str(part);
                    command.push(' ');
                }
                None => {
                    command.push_str(line);
                    if let Some(message) = check.check_line(&command)? {
                        found.push((block.at(first), message));
                    }
                    command.clear();
                }
            }
        }
        for (at, message) in found {
            self.fail(at, message);
        }
        Ok(())
    }

    /// Runs the batched schema check and returns every failure.
    pub fn finish(mut self) -> Result<Vec<Failure>> {
        let files: Vec<PathBuf> = self.istio_files.iter().map(|(f, _)| f.clone()).collect();
        for problem in manifests::schema_problems(&files)? {
            let at = (self.istio_files.iter())
                .find(|(f, _)| *f == problem.file)
                .map_or_else(|| "?".to_string(), |(_, at)| at.clone());
            self.fail(at, format!("schema: {}", problem.message));
        }
        Ok(self.failures)
    }
}

/// One YAML document as a JSON value.
fn yaml_value(text: &str) -> Result<Value, String> {
    let mut docs = manifests::documents(text).map_err(|e| e.to_string())?;
    match docs.len() {
        1 => Ok(docs.remove(0)),
        n => Err(format!("expected one YAML document, found {n}")),
    }
}

/// The plugin configuration of every Wasm filter in a bootstrap, with its JSON path.
fn wasm_configurations(value: &Value, at: String) -> Vec<(String, String)> {
    let mut found = Vec::new();
    match value {
        Value::Object(map) => {
            let configured = map
                .get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("envoy.extensions.filters.http.wasm.v3.Wasm"));
            let config = &value["config"]["configuration"]["value"];
            if let (true, Some(config)) = (configured, config.as_str()) {
                found.push((format!("{at}.config.configuration"), config.to_string()));
            }
            for (key, inner) in map {
                found.extend(wasm_configurations(inner, format!("{at}.{key}")));
            }
        }
        Value::Array(items) => {
            for (i, inner) in items.iter().enumerate() {
                found.extend(wasm_configurations(inner, format!("{at}[{i}]")));
            }
        }
        _ => {}
    }
    found
}

/// `body` with every path to a filter module (`…/canary_filter.wasm`,
/// `…/canary_filter_llm.wasm`) replaced by the module `make build` wrote.
fn with_built_modules(body: &str) -> Result<String> {
    let pattern = regex::Regex::new(r#"[^\s"'{}\[\],]*canary_filter(_llm)?\.wasm"#)?;
    let mut out = String::with_capacity(body.len());
    let mut last = 0;
    for m in pattern.captures_iter(body) {
        let whole = m.get(0).context("a match has a whole")?;
        let module = match m.get(1) {
            Some(_) => paths::llm_filter_wasm()?,
            None => paths::filter_wasm()?,
        };
        out.push_str(&body[last..whole.start()]);
        out.push_str(&module.display().to_string());
        last = whole.end();
    }
    out.push_str(&body[last..]);
    Ok(out)
}
