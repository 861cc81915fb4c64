//! Command lines in `sh` / `console` blocks: a `canaryctl` line must name a subcommand that
//! exists, only flags its `--help` lists, its required flags, and no more positional
//! arguments than its usage line has; a `make` line only targets the Makefile has. Other
//! lines are not looked at.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

/// What the docs' command lines are checked against: the real `canaryctl` and the Makefile.
pub struct CommandCheck {
    canaryctl: PathBuf,
    /// `--help` of each subcommand asked about so far, or `None` if the subcommand does
    /// not exist.
    help: HashMap<String, Option<Usage>>,
    make_targets: BTreeSet<String>,
}

/// One command of a line: the words of its first pipeline stage, after `$ ` and any
/// `VAR=value` assignments.
pub fn command_words(line: &str) -> Vec<String> {
    let line = line.trim();
    let line = line.strip_prefix("$ ").unwrap_or(line);
    let first = line
        .split(['|', ';', '&', '#', '<', '>'])
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

/// What a subcommand's `--help` says about its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Usage {
    /// Every `--flag` of its Options.
    pub flags: BTreeSet<String>,
    /// The flags that take a value (`--spec <SPEC>`).
    pub valued: BTreeSet<String>,
    /// Flags one of which must be given, per group (`--spec`; `--spec|--spec-dir`).
    pub required: Vec<Vec<String>>,
    /// Positional arguments the usage line has (`[NAME]`); `usize::MAX` for `NAME...`.
    pub positionals: usize,
}

/// Reads clap's help: `Usage: canaryctl serve [OPTIONS] <--spec <SPEC>|--spec-dir <SPEC_DIR>>`,
/// then Options lines (`  -s, --spec <SPEC>`, `      --listen <LISTEN>`).
pub fn parse_help(help: &str) -> Usage {
    let mut usage = Usage::default();
    for line in help.lines() {
        let l = line.trim_start();
        let l = match l.split_once(", ") {
            Some((short, rest)) if short.len() == 2 && short.starts_with('-') => rest,
            _ => l,
        };
        let Some(flag) = l.split([' ', '=', '<', '[']).next() else {
            continue;
        };
        if flag.starts_with("--") && flag.len() > 2 {
            if l[flag.len()..].trim_start().starts_with('<') {
                usage.valued.insert(flag.to_string());
            }
            usage.flags.insert(flag.to_string());
        }
    }
    let line = help.lines().find_map(|l| l.strip_prefix("Usage: "));
    // Past `canaryctl <sub>`.
    let rest: Vec<&str> = line
        .unwrap_or_default()
        .split_whitespace()
        .skip(2)
        .collect();
    let rest = rest.join(" ");
    let group = regex::Regex::new(r"<(--[a-z-]+(?: <[A-Z_]+>)?(?:\|--[a-z-]+(?: <[A-Z_]+>)?)+)>")
        .expect("a valid regex");
    for alternatives in group.captures_iter(&rest) {
        let names = alternatives[1].split('|');
        let names = names.filter_map(|a| a.split_whitespace().next().map(str::to_string));
        usage.required.push(names.collect());
    }
    let rest = group.replace_all(&rest, "");
    let mut words = rest.split_whitespace().peekable();
    while let Some(word) = words.next() {
        if let Some(flag) = word.strip_prefix("--").map(|f| format!("--{f}")) {
            usage.required.push(vec![flag]);
            // Its value.
            words.next_if(|w| w.starts_with('<'));
        } else if word.ends_with("...") || word.ends_with("...]") {
            usage.positionals = usize::MAX;
        } else if word != "[OPTIONS]" && (word.starts_with('[') || word.starts_with('<')) {
            usage.positionals = usage.positionals.saturating_add(1);
        }
    }
    usage
}

impl Usage {
    /// What is wrong with `args` (after the subcommand), if anything.
    pub fn check(&self, sub: &str, args: &[String]) -> Option<String> {
        let mut given = BTreeSet::new();
        let mut positionals = 0usize;
        // Synopsis notation reads as the command it stands for: `[--controller URL]` is the
        // flag and its value, `[NAME]` an argument, `...` nothing.
        let words: Vec<&str> = (args.iter())
            .map(|w| w.trim_matches(['[', ']']))
            .filter(|w| !w.is_empty() && *w != "...")
            .collect();
        let mut words = words.into_iter();
        while let Some(word) = words.next() {
            if let Some((flag, _)) = word.split_once('=').filter(|_| word.starts_with("--")) {
                given.insert(flag.to_string());
            } else if word.starts_with("--") {
                if self.valued.contains(word) {
                    words.next();
                }
                given.insert(word.to_string());
            } else if !word.starts_with('-') {
                positionals += 1;
            }
        }
        if given.contains("--help") {
            return None;
        }
        let unknown: Vec<&String> = given.iter().filter(|f| !self.flags.contains(*f)).collect();
        let mut wrong = Vec::new();
        if !unknown.is_empty() {
            wrong.push(format!(
                "no flag {unknown:?} in `canaryctl {sub} --help` (it has {:?})",
                self.flags
            ));
        }
        for group in &self.required {
            if !group.iter().any(|f| given.contains(f)) {
                wrong.push(format!("{} is required", group.join(" or ")));
            }
        }
        if positionals > self.positionals {
            wrong.push(format!(
                "{positionals} positional argument(s), its usage has {} (a flag missing?)",
                self.positionals
            ));
        }
        (!wrong.is_empty()).then(|| format!("canaryctl {sub}: {}", wrong.join("; ")))
    }
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
        let Some((sub, rest)) = args.split_first().filter(|(a, _)| !a.starts_with('-')) else {
            // `canaryctl --help`, `canaryctl --version`.
            return Ok(None);
        };
        Ok(match self.usage_of(sub)? {
            None => Some(format!("canaryctl has no subcommand {sub:?}")),
            Some(usage) => usage.check(sub, rest),
        })
    }

    fn usage_of(&mut self, sub: &str) -> Result<&Option<Usage>> {
        if !self.help.contains_key(sub) {
            let out = Command::new(&self.canaryctl)
                .args([sub, "--help"])
                .output()
                .with_context(|| format!("running {} {sub} --help", self.canaryctl.display()))?;
            let usage = out
                .status
                .success()
                .then(|| parse_help(&String::from_utf8_lossy(&out.stdout)));
            self.help.insert(sub.to_string(), usage);
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

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn usage_is_read_from_clap_help() {
        let help = "Run the controller\n\nUsage: canaryctl serve [OPTIONS] <--spec <SPEC>|--spec-dir <SPEC_DIR>>\n\nOptions:\n      --spec <SPEC>\n          \n      --spec-dir <SPEC_DIR>\n      --listen <LISTEN>\n          [default: 127.0.0.1:8080]\n  -h, --help\n          Print help\n";
        let usage = parse_help(help);
        let flags: Vec<&String> = usage.flags.iter().collect();
        assert_eq!(flags, ["--help", "--listen", "--spec", "--spec-dir"]);
        assert!(usage.valued.contains("--listen") && !usage.valued.contains("--help"));
        assert_eq!(
            usage.required,
            [vec!["--spec".to_string(), "--spec-dir".to_string()]]
        );
        assert_eq!(usage.positionals, 0);
        assert_eq!(
            usage.check("serve", &words("--spec a.yaml --listen 127.0.0.1:9")),
            None
        );
        assert!(
            usage.check("serve", &words("--listen x")).is_some(),
            "no spec"
        );
        assert!(usage
            .check("serve", &words("--spec a.yaml extra"))
            .is_some());
        assert!(usage
            .check("serve", &words("--spec=a.yaml --nope"))
            .is_some());
    }

    #[test]
    fn required_flags_and_positionals_are_read_from_the_usage_line() {
        let validate = parse_help("Usage: canaryctl validate --spec <SPEC>\n\nOptions:\n      --spec <SPEC>\n  -h, --help  Print help\n");
        assert_eq!(validate.required, [vec!["--spec".to_string()]]);
        let wrong = validate.check("validate", &words("rollout.yaml"));
        let wrong = wrong.expect("a positional spec is refused");
        assert!(
            wrong.contains("--spec is required") && wrong.contains("positional"),
            "{wrong}"
        );
        let status = parse_help("Usage: canaryctl status [OPTIONS] [NAME]\n\nOptions:\n      --controller <CONTROLLER>  [default: x]\n      --output <OUTPUT>\n");
        assert_eq!((status.positionals, status.required.len()), (1, 0));
        assert_eq!(
            status.check("status", &words("checkout --controller http://x:1")),
            None
        );
        assert!(status.check("status", &words("a b")).is_some());
        let synopsis = words("[NAME] [--controller URL] [--output json] ...");
        assert_eq!(status.check("status", &synopsis), None);
    }

    #[test]
    fn make_targets_are_rules_and_phony_names() {
        let makefile = ".PHONY: all test\nWASM := x.wasm\nall: build\n$(STAMPS)/venv: Makefile\n\tcargo build\nbuild: setup\n";
        let targets: Vec<String> = make_targets(makefile).into_iter().collect();
        assert_eq!(targets, ["all", "build", "test"]);
    }
}
