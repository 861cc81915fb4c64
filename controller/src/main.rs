//! `canaryctl`: run the controller (`serve`), check a spec (`validate`), and talk to a
//! running controller (`get`, `status`, `history`, `promote`, `pause`, `resume`, `abort`,
//! `retry`, `finalize`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use canary_controller::machine::history::HistoryView;
use canary_controller::machine::pct;
use canary_controller::server::{now_ms, serve, ServeOptions, SpecSource};
use canary_controller::spec::RolloutSpec;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "canaryctl", version, about = "wasm-canary rollout controller")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller: one rollout (`--spec`) or one per `*.yaml` of a directory
    /// (`--spec-dir`, read again while running).
    #[command(group(clap::ArgGroup::new("specs").required(true).args(["spec", "spec_dir"])))]
    Serve {
        #[arg(long)]
        spec: Option<PathBuf>,
        /// A directory of rollout specs (e.g. a ConfigMap mount): added, changed and removed
        /// files are picked up while running; a refused file leaves its rollout as it was.
        #[arg(long)]
        spec_dir: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the rollout's state survives restarts.
        #[arg(long, default_value = "canary-state")]
        state_dir: PathBuf,
        #[command(flatten)]
        tokens: ServeTokens,
        /// PEM bundle of CA certificates to trust besides the built-in public roots, for
        /// webhooks, Prometheus and Envoy admin endpoints behind a private CA.
        #[arg(long, env = "CANARY_CA_FILE")]
        ca_file: Option<PathBuf>,
    },
    /// Check a rollout spec offline.
    Validate {
        #[arg(long)]
        spec: PathBuf,
    },
    /// Show a rollout (NAME may be left out when the controller runs one).
    Status {
        name: Option<String>,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        controller: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// List every rollout the controller runs, and the refused spec files.
    Get {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        controller: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Go to the next stage now.
    Promote(Mutation),
    /// Hold the current weight (failures still roll back).
    Pause(Mutation),
    Resume(Mutation),
    /// Send everyone to stable and end the rollout (blue-green: flip back; alias `rollback`).
    #[command(alias = "rollback")]
    Abort(Mutation),
    /// Run a rolled-back (or aborted) release again from stage 1.
    Retry(Mutation),
    /// Mark the promoted release stable (after relabelling the subsets): weight back to 0.
    Finalize(Mutation),
    /// Show the rollout's runs: the current one and the ended ones, newest first.
    History {
        /// The rollout (refused if the controller runs another).
        name: Option<String>,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        controller: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

/// The controller's bearer tokens, each given as a value or as a file (a mounted Kubernetes
/// Secret), never both.
#[derive(clap::Args)]
struct ServeTokens {
    /// Token for promote/pause/resume/abort (unset: they are refused). `CANARY_TOKEN`, the
    /// one token of earlier versions, is read as the operator token when this is unset.
    #[arg(
        long,
        alias = "token",
        env = "CANARY_OPERATOR_TOKEN",
        hide_env_values = true
    )]
    operator_token: Option<String>,
    #[arg(long, env = "CANARY_OPERATOR_TOKEN_FILE")]
    operator_token_file: Option<PathBuf>,
    /// Token for `POST /feedback` only. Unset: the operator token is taken there too.
    #[arg(long, env = "CANARY_FEEDBACK_TOKEN", hide_env_values = true)]
    feedback_token: Option<String>,
    #[arg(long, env = "CANARY_FEEDBACK_TOKEN_FILE")]
    feedback_token_file: Option<PathBuf>,
}

/// A token given as a value or in a file.
fn token(name: &str, value: Option<String>, file: Option<PathBuf>) -> Result<Option<String>> {
    match (value, file) {
        (Some(_), Some(_)) => bail!("--{name} and --{name}-file: give the token once"),
        (Some(v), None) if v.trim().is_empty() => bail!("--{name} is empty"),
        (Some(v), None) => Ok(Some(v.trim().to_string())),
        (None, Some(path)) => canary_controller::server::read_secret_file(&path)
            .map(Some)
            .with_context(|| format!("--{name}-file")),
        (None, None) => Ok(None),
    }
}

#[derive(clap::Args)]
struct Mutation {
    /// The rollout (may be left out when the controller runs one).
    name: Option<String>,
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    controller: String,
    /// The operator token.
    #[arg(long, env = "CANARY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the operator token.
    #[arg(long, env = "CANARY_TOKEN_FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

fn load_spec(path: &PathBuf) -> Result<RolloutSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    RolloutSpec::from_yaml(&text).with_context(|| path.display().to_string())
}

/// One stage's totals from `/status`: its windows by outcome and each version's requests
/// and error rate, so nobody has to add up the timeline.
fn stage_totals_line(t: &serde_json::Value) -> String {
    let n = |k: &str| t[k].as_u64().unwrap_or(0);
    let rate = |errors: u64, requests: u64| {
        if requests == 0 {
            "-".to_string()
        } else {
            format!("{:.2}%", errors as f64 * 100.0 / requests as f64)
        }
    };
    format!(
        "stage {} at {}: windows passed {}, failed {}, inconclusive {}; canary {} requests ({} errors), stable {} ({}){}",
        n("stage") + 1,
        pct(n("weight_bp") as u32),
        n("passed"),
        n("failed"),
        n("inconclusive"),
        n("canary_requests"),
        rate(n("canary_errors"), n("canary_requests")),
        n("stable_requests"),
        rate(n("stable_errors"), n("stable_requests")),
        if t["ended_ms"].is_null() { "" } else { "; ended" },
    )
}

fn print_status(status: &serde_json::Value, output: Output) {
    if let Output::Json = output {
        println!(
            "{}",
            serde_json::to_string_pretty(status).unwrap_or_default()
        );
        return;
    }
    let weight = status["weight_bp"].as_u64().unwrap_or(0) as u32;
    println!(
        "rollout {}: {}{} — stage {}/{} at {} for {:.0}s (requests this stage: canary {}, stable {}; failures {}/{})",
        status["rollout"].as_str().unwrap_or("?"),
        status["release"]
            .as_str()
            .map_or(String::new(), |r| format!("release {r} ")),
        status["phase"].as_str().unwrap_or("?"),
        status["stage"],
        status["stages"],
        pct(weight),
        status["time_in_stage_s"].as_f64().unwrap_or(0.0),
        status["stage_requests"]["canary"],
        status["stage_requests"]["stable"],
        status["consecutive_failures"],
        status["failure_limit"],
    );
    if let Some(r) = status.get("spec_refused").filter(|r| !r.is_null()) {
        println!(
            "spec {} refused, running the previous version: {}",
            r["file"].as_str().unwrap_or("?"),
            r["error"].as_str().unwrap_or("?")
        );
    }
    let breaker = &status["circuit_breaker"];
    if breaker["trips"].as_u64().unwrap_or(0) > 0
        || breaker["open_envoys"].as_u64().unwrap_or(0) > 0
    {
        println!(
            "circuit breaker: open on {} Envoy(s); {} trip(s), {} canary request(s) sent to stable",
            breaker["open_envoys"], breaker["trips"], breaker["diverted_requests"]
        );
    }
    for (tier, t) in status["fallback"].as_object().into_iter().flatten() {
        if t["state"].is_null() {
            println!(
                "fallback response: {} request(s) answered by the filter",
                t["requests"]
            );
            continue;
        }
        println!(
            "fallback tier {tier}: {} (open on {} Envoy(s), half-open on {}); {} trip(s), {} request(s) served",
            t["state"].as_str().unwrap_or("?"),
            t["open_envoys"],
            t["half_open_envoys"],
            t["trips"],
            t["requests"]
        );
    }
    let now = now_ms();
    let ago = |at: &serde_json::Value| {
        format!(
            "{:>6.0}s ago",
            now.saturating_sub(at.as_u64().unwrap_or(0)) as f64 / 1000.0
        )
    };
    if let Some(q) = status.get("quota").filter(|q| !q.is_null()) {
        let s = &q["sentinel"];
        println!(
            "quota: {} tokens/min last window of {} ({:.0}%), throttle {} (on at {:.0}%, off below {:.0}%; {} activations)",
            s["last_tokens_per_minute"].as_f64().map_or("-".to_string(), |t| format!("{t:.0}")),
            q["tokens_per_minute"],
            s["last_tokens_per_minute"].as_f64().unwrap_or(0.0) * 100.0
                / q["tokens_per_minute"].as_f64().unwrap_or(1.0).max(1.0),
            if s["throttled"] == true { "ON" } else { "off" },
            q["activate_share"].as_f64().unwrap_or(0.0) * 100.0,
            q["clear_share"].as_f64().unwrap_or(0.0) * 100.0,
            s["activations"],
        );
    }
    if let Some(f) = status.get("feedback") {
        println!(
            "feedback: canary {} up / {} down, stable {} up / {} down",
            f["canary"]["up"], f["canary"]["down"], f["stable"]["up"], f["stable"]["down"]
        );
    }
    let totals = status["stage_totals"].as_array().into_iter().flatten();
    let lines: Vec<String> = totals.map(stage_totals_line).collect();
    if !lines.is_empty() {
        println!("stages (all windows, not only the last verdicts):");
        for line in lines {
            println!("  {line}");
        }
    }
    println!("last verdicts:");
    for v in status["verdicts"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .take(5)
    {
        println!(
            "  {} {}",
            ago(&v["at_ms"]),
            v["verdict"]["outcome"].as_str().unwrap_or("?")
        );
        for c in v["verdict"]["checks"].as_array().into_iter().flatten() {
            println!("      {}", c["reason"].as_str().unwrap_or(""));
        }
    }
    println!("timeline:");
    for e in status["timeline"].as_array().into_iter().flatten() {
        println!(
            "  {} {}",
            ago(&e["at_ms"]),
            e["message"].as_str().unwrap_or("")
        );
    }
}

/// A stage as `validate` says it: `5% for 30m (1000 requests each)`; the last one holds
/// until the release is finalized, so it has no time.
fn describe_stage(stage: &canary_controller::spec::Stage, last: bool) -> String {
    let weight = pct(stage.weight_bp());
    if last {
        return format!("{weight} (promoted)");
    }
    format!(
        "{weight} for {} ({} requests each)",
        humantime::format_duration(stage.hold),
        stage.min_requests
    )
}

/// GETs `url`: its JSON, or its error as the controller words it.
async fn get_json(url: &str) -> Result<serde_json::Value> {
    let response = reqwest::get(url)
        .await
        .with_context(|| format!("GET {url}"))?;
    let code = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if !code.is_success() {
        bail!(
            "GET {url} ({code}): {}",
            body["error"].as_str().unwrap_or("?")
        );
    }
    Ok(body)
}

/// `canaryctl get`: a line per rollout, then the refused spec files.
fn print_list(list: &serde_json::Value, output: Output) {
    if let Output::Json = output {
        println!("{}", serde_json::to_string_pretty(list).unwrap_or_default());
        return;
    }
    println!(
        "{:<24} {:<12} {:>7} {:>8} {:>10}  LAST VERDICT",
        "NAME", "PHASE", "STAGE", "WEIGHT", "IN STAGE"
    );
    for r in list["rollouts"].as_array().into_iter().flatten() {
        println!(
            "{:<24} {:<12} {:>7} {:>8} {:>9.0}s  {}",
            r["rollout"].as_str().unwrap_or("?"),
            r["phase"].as_str().unwrap_or("?"),
            format!("{}/{}", r["stage"], r["stages"]),
            pct(r["weight_bp"].as_u64().unwrap_or(0) as u32),
            r["time_in_stage_s"].as_f64().unwrap_or(0.0),
            r["last_outcome"].as_str().unwrap_or("-"),
        );
    }
    print_refused(list, output);
}

fn print_refused(body: &serde_json::Value, output: Output) {
    if let Output::Json = output {
        return;
    }
    for r in body["refused"].as_array().into_iter().flatten() {
        println!(
            "refused spec {}: {}{}",
            r["file"].as_str().unwrap_or("?"),
            r["error"].as_str().unwrap_or("?"),
            if r["previous_runs"] == true {
                " (the previous version keeps running)"
            } else {
                ""
            }
        );
    }
}

async fn mutate(command: &str, m: Mutation) -> Result<()> {
    let Some(token) = token("token", m.token, m.token_file)? else {
        bail!("a token is required: --token, --token-file or CANARY_TOKEN");
    };
    let base = m.controller.trim_end_matches('/');
    let url = match &m.name {
        Some(name) => format!("{base}/rollouts/{name}/{command}"),
        None => format!("{base}/rollout/{command}"),
    };
    let response = reqwest::Client::new()
        .post(&url)
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let code = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if !code.is_success() {
        bail!(
            "{command} refused ({code}): {}",
            body["error"].as_str().unwrap_or("?")
        );
    }
    print_status(&body, m.output);
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve {
            spec,
            spec_dir,
            listen,
            state_dir,
            tokens,
            ca_file,
        } => {
            let specs = match (spec, spec_dir) {
                (Some(path), _) => {
                    // Refused here with the file's name, before anything starts.
                    load_spec(&path)?;
                    SpecSource::File(path)
                }
                (None, Some(dir)) => SpecSource::Dir(dir),
                (None, None) => bail!("--spec or --spec-dir is required"),
            };
            let legacy = std::env::var("CANARY_TOKEN").ok().filter(|_| {
                tokens.operator_token.is_none() && tokens.operator_token_file.is_none()
            });
            let operator_token = token(
                "operator-token",
                tokens.operator_token.or(legacy),
                tokens.operator_token_file,
            )?;
            let feedback_token = token(
                "feedback-token",
                tokens.feedback_token,
                tokens.feedback_token_file,
            )?;
            if feedback_token.is_some() && feedback_token == operator_token {
                bail!("the feedback token must differ from the operator token");
            }
            serve(
                specs,
                ServeOptions {
                    listen,
                    state_dir,
                    operator_token,
                    feedback_token,
                    ca_file,
                },
            )
            .await
        }
        Command::Validate { spec } => {
            let spec = load_spec(&spec)?;
            let last = spec.stages.len().saturating_sub(1);
            let stages: Vec<String> = (spec.stages.iter().enumerate())
                .map(|(i, s)| describe_stage(s, i == last))
                .collect();
            let release = match (&spec.release, &spec.stable_release) {
                (Some(r), Some(s)) => format!("release {r} (stable {s}); "),
                (Some(r), None) => format!("release {r}; "),
                _ => String::new(),
            };
            println!(
                "{}: valid; {release}stages {}",
                spec.name,
                stages.join(" → ")
            );
            Ok(())
        }
        Command::Status {
            name,
            controller,
            output,
        } => {
            let base = controller.trim_end_matches('/');
            let url = match &name {
                Some(name) => format!("{base}/rollouts/{name}"),
                None => format!("{base}/status"),
            };
            let status = get_json(&url).await?;
            match status["rollouts"].as_array() {
                // Several rollouts and no name: each in turn.
                Some(all) if name.is_none() => {
                    for one in all {
                        print_status(one, output);
                    }
                    print_refused(&status, output);
                }
                _ => print_status(&status, output),
            }
            Ok(())
        }
        Command::Get { controller, output } => {
            let url = format!("{}/rollouts", controller.trim_end_matches('/'));
            let list = get_json(&url).await?;
            print_list(&list, output);
            Ok(())
        }
        Command::Promote(m) => mutate("promote", m).await,
        Command::Pause(m) => mutate("pause", m).await,
        Command::Resume(m) => mutate("resume", m).await,
        Command::Abort(m) => mutate("abort", m).await,
        Command::Retry(m) => mutate("retry", m).await,
        Command::Finalize(m) => mutate("finalize", m).await,
        Command::History {
            name,
            controller,
            output,
        } => history(name, &controller, output).await,
    }
}

async fn history(name: Option<String>, controller: &str, output: Output) -> Result<()> {
    let base = controller.trim_end_matches('/');
    let url = match &name {
        Some(name) => format!("{base}/rollouts/{name}/history"),
        None => format!("{base}/history"),
    };
    let response = reqwest::Client::new()
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let code = response.status();
    let body = response.bytes().await?;
    if !code.is_success() {
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        bail!(
            "history refused ({code}): {}",
            error["error"].as_str().unwrap_or("?")
        );
    }
    let view: HistoryView =
        serde_json::from_slice(&body).with_context(|| format!("GET {url}: not a history"))?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&view)?),
        Output::Text => print!("{}", view.render(now_ms())),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("canaryctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Issue 19: the last stage read "100% for 0ns".
    #[test]
    fn the_last_stage_is_said_without_a_hold() {
        let spec = RolloutSpec::from_yaml(
            "name: a\nsources: {envoy_admin: [\"http://127.0.0.1:1\"]}\n\
             stages: [{weight_pct: 5, hold: 30m, min_requests: 100}, {weight_pct: 100}]\n",
        )
        .expect("valid spec");
        assert_eq!(
            describe_stage(&spec.stages[0], false),
            "5% for 30m (100 requests each)"
        );
        let last = describe_stage(&spec.stages[1], true);
        assert_eq!(last, "100% (promoted)");
        assert!(!last.contains("0ns"));
    }

    #[test]
    fn a_stage_line_carries_its_windows_and_both_error_rates() {
        let ended = json!({"stage": 0, "weight_bp": 500, "started_ms": 1, "ended_ms": 9,
            "passed": 12, "failed": 1, "inconclusive": 3, "canary_requests": 400,
            "stable_requests": 7600, "canary_errors": 2, "stable_errors": 38});
        assert_eq!(
            stage_totals_line(&ended),
            "stage 1 at 5%: windows passed 12, failed 1, inconclusive 3; canary 400 requests \
             (0.50% errors), stable 7600 (0.50%); ended"
        );
        let open = json!({"stage": 1, "weight_bp": 2500, "started_ms": 9, "passed": 0,
            "failed": 0, "inconclusive": 1, "canary_requests": 0, "stable_requests": 0,
            "canary_errors": 0, "stable_errors": 0});
        assert!(stage_totals_line(&open).ends_with("canary 0 requests (- errors), stable 0 (-)"));
    }
}
