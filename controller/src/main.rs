//! `canaryctl`: run the controller (`serve`), check a spec (`validate`), and talk to a
//! running controller (`status`, `promote`, `pause`, `resume`, `abort`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use canary_controller::machine::pct;
use canary_controller::server::{now_ms, serve, ServeOptions};
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
    /// Run the controller for one rollout.
    Serve {
        #[arg(long)]
        spec: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the rollout's state survives restarts.
        #[arg(long, default_value = "canary-state")]
        state_dir: PathBuf,
        /// Bearer token for promote/pause/resume/abort (unset: they are refused).
        #[arg(long, env = "CANARY_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Check a rollout spec offline.
    Validate {
        #[arg(long)]
        spec: PathBuf,
    },
    /// Show a running controller's rollout.
    Status {
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
}

#[derive(clap::Args)]
struct Mutation {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    controller: String,
    #[arg(long, env = "CANARY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

fn load_spec(path: &PathBuf) -> Result<RolloutSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    RolloutSpec::from_yaml(&text).with_context(|| path.display().to_string())
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
        "rollout {}: {} — stage {}/{} at {} for {:.0}s (requests this stage: canary {}, stable {}; failures {}/{})",
        status["rollout"].as_str().unwrap_or("?"),
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

async fn mutate(command: &str, m: Mutation) -> Result<()> {
    let Some(token) = m.token else {
        bail!("a token is required: --token or CANARY_TOKEN");
    };
    let url = format!("{}/rollout/{command}", m.controller.trim_end_matches('/'));
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
            listen,
            state_dir,
            token,
        } => {
            let spec = load_spec(&spec)?;
            serve(
                spec,
                ServeOptions {
                    listen,
                    state_dir,
                    token,
                },
            )
            .await
        }
        Command::Validate { spec } => {
            let spec = load_spec(&spec)?;
            let stages: Vec<String> = spec
                .stages
                .iter()
                .map(|s| format!("{} for {:?}", pct(s.weight_bp()), s.hold))
                .collect();
            println!("{}: valid; stages {}", spec.name, stages.join(" → "));
            Ok(())
        }
        Command::Status { controller, output } => {
            let url = format!("{}/status", controller.trim_end_matches('/'));
            let status: serde_json::Value = reqwest::get(&url)
                .await
                .with_context(|| format!("GET {url}"))?
                .json()
                .await?;
            print_status(&status, output);
            Ok(())
        }
        Command::Promote(m) => mutate("promote", m).await,
        Command::Pause(m) => mutate("pause", m).await,
        Command::Resume(m) => mutate("resume", m).await,
        Command::Abort(m) => mutate("abort", m).await,
    }
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
