//! Command lines in `sh` / `console` blocks: a `canaryctl` line must name a subcommand that
//! exists and only flags its `--help` lists; a `make` line only targets the Makefile has.
//! Other lines are not looked at.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

/// What the docs' command lines are checked against: the real `canaryctl` and the Makefile.
pub struct CommandCheck {
    canaryctl: PathBuf,
    /// `--help` of each subcommand asked about so far: its flags, or `None` if the
    /// subcommand does not exist.
    help: HashMap<String, Option<BTreeSet<String>>>,
    make_targets: BTreeSet<String>,
}

/// One command of a line: the words of its first pipeline stage, after `$ ` and any
/// `VAR=value` assignments.
pub fn command_words(line: &str) -> Vec<String> {
    let line = line.trim();
    let line = line.strip_prefix("$ ").unwrap_or(line);
    let first = line
        .split(['|', ';', '&', '#'])
        .next()
        .unwrap_or_default()
        .trim_end_matches('\\');
    first
        .split_whitespace()
        .skip_while(|w| is_assignment(w))
        .map(str::to_string)
        .collect()
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// The `--flags` a help text lists (`  -s, --spec <SPEC>`, `      --listen <LISTEN>`).
pub fn help_flags(help: &str) -> BTreeSet<String> {
    help.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = match l.split_once(", ") {
                Some((short, rest)) if short.len() == 2 && short.starts_with('-') => rest,
                _ => l,
            };
            let flag = l.split([' ', '=', '<', '[']).next()?;
            (flag.starts_with("--") && flag.len() > 2).then(|| flag.to_string())
        })
        .collect()
}

/// The targets a Makefile defines: `name:` rule lines (not `:=` assignments), and `.PHONY`.
pub fn make_targets(makefile: &str) -> BTreeSet<String> {
    let mut targets = BTreeSet::new();
    for line in makefile.lines() {
        if line.starts_with(['\t', ' ', '#']) {
            continue;
        }
        let Some((names, rest)) = line.split_once(':') else {
            continue;
        };
        if rest.starts_with('=') || names.contains('=') {
            continue;
        }
        for name in names.split_whitespace() {
            if name == ".PHONY" {
                targets.extend(rest.split_whitespace().map(str::to_string));
            } else if !name.contains('$') && !name.contains('%') {
                targets.insert(name.to_string());
            }
        }
    }
    targets
}

impl CommandCheck {
    pub fn new(canaryctl: PathBuf, makefile: &str) -> CommandCheck {
        CommandCheck {
            canaryctl,
            help: HashMap::new(),
            make_targets: make_targets(makefile),
        }
    }

    /// What is wrong with a command line, if anything (`None` also for lines not checked).
    pub fn check_line(&mut self, line: &str) -> Result<Option<String>> {
        let words = command_words(line);
        let Some((program, args)) = words.split_first() else {
            return Ok(None);
        };
        if program == "canaryctl" || program.ends_with("/canaryctl") {
            return self.check_canaryctl(args);
        }
        if program == "make" {
            let unknown: Vec<&String> = (args.iter())
                .filter(|a| !a.starts_with('-') && !is_assignment(a))
                .filter(|a| !self.make_targets.contains(*a))
                .collect();
            return Ok((!unknown.is_empty())
                .then(|| format!("make: no target {unknown:?} in the Makefile")));
        }
        Ok(None)
    }

    fn check_canaryctl(&mut self, args: &[String]) -> Result<Option<String>> {
        let Some(sub) = args.first().filter(|a| !a.starts_with('-')) else {
            // `canaryctl --help`, `canaryctl --version`.
            return Ok(None);
        };
        let Some(flags) = self.flags_of(sub)? else {
            return Ok(Some(format!("canaryctl has no subcommand {sub:?}")));
        };
        let unknown: Vec<&str> = (args.iter())
            .filter(|a| a.starts_with("--"))
            .map(|a| a.split('=').next().unwrap_or(a))
            .filter(|f| *f != "--help" && !flags.contains(*f))
            .collect();
        Ok((!unknown.is_empty()).then(|| {
            format!(
                "canaryctl {sub}: no flag {unknown:?} in `canaryctl {sub} --help` (it has {flags:?})"
            )
        }))
    }

    fn flags_of(&mut self, sub: &str) -> Result<&Option<BTreeSet<String>>> {
        if !self.help.contains_key(sub) {
            let out = Command::new(&self.canaryctl)
                .args([sub, "--help"])
                .output()
                .with_context(|| format!("running {} {sub} --help", self.canaryctl.display()))?;
            let flags = out
                .status
                .success()
                .then(|| help_flags(&String::from_utf8_lossy(&out.stdout)));
            self.help.insert(sub.to_string(), flags);
        }
        Ok(&self.help[sub])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_its_first_command_without_prompt_or_assignments() {
        assert_eq!(
            command_words("$ CANARY_TOKEN=t canaryctl promote --controller http://x:1 | jq ."),
            ["canaryctl", "promote", "--controller", "http://x:1"]
        );
        assert_eq!(
            command_words("canaryctl serve --spec a.yaml &"),
            ["canaryctl", "serve", "--spec", "a.yaml"]
        );
        assert_eq!(command_words("make test  # all of it"), ["make", "test"]);
        assert!(command_words("").is_empty());
    }

    #[test]
    fn help_flags_are_read_from_clap_help() {
        let help = "Usage: canaryctl serve [OPTIONS]\n\nOptions:\n      --spec <SPEC>\n          \n      --listen <LISTEN>\n          [default: 127.0.0.1:8080]\n  -h, --help\n          Print help\n";
        let flags: Vec<String> = help_flags(help).into_iter().collect();
        assert_eq!(flags, ["--help", "--listen", "--spec"]);
    }

    #[test]
    fn make_targets_are_rules_and_phony_names() {
        let makefile = ".PHONY: all test\nWASM := x.wasm\nall: build\n$(STAMPS)/venv: Makefile\n\tcargo build\nbuild: setup\n";
        let targets: Vec<String> = make_targets(makefile).into_iter().collect();
        assert_eq!(targets, ["all", "build", "test"]);
    }
}
