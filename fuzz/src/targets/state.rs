//! The controller's state store: `StateStore::load_for` on an arbitrary state file, with a
//! spec, then `save` and the machine's next step from what it loaded.

use std::sync::OnceLock;

use canary_controller::judge::judge;
use canary_controller::machine::Input as MachineInput;
use canary_controller::spec::RolloutSpec;
use canary_controller::stats::{Histogram, RolloutStats, VersionStats};
use canary_controller::store::{StateStore, StoreError};

use super::published::{assert_effects, assert_state_publishable};
use crate::input::Input;
use crate::Target;

pub const TARGET: Target = Target {
    name: "state",
    about: "StateStore::load_for on fuzzed state-file bytes under one of five specs: a \
            refusal is a corrupt file or names the fields that do not fit; an accepted \
            state is in the spec's stage range, at most 100%, publishable, and save then \
            load gives it back; the machine's next step from it (a command, retry, \
            finalize, the spec loaded, or the judge's verdict on a window with the file's \
            evidence) stays in range",
    run,
    // A state file with a stage's evidence in it takes ~19 KiB.
    max_len: 32 * 1024,
    dict: DICT,
};

const DICT: &[&str] = &[
    "\"rollout\":",
    "\"phase\":",
    "\"progressing\"",
    "\"paused\"",
    "\"promoted\"",
    "\"rolled_back\"",
    "\"aborted\"",
    "\"finalized\"",
    "\"release\":",
    "\"stable_release\":",
    "\"run\":",
    "\"stage\":",
    "\"weight_bp\":",
    "\"stage_started_ms\":",
    "\"stage_canary_requests\":",
    "\"stage_stable_requests\":",
    "\"consecutive_failures\":",
    "\"analyses\":",
    "\"config_version\":",
    "\"verdicts\":[",
    "\"timeline\":[",
    "\"shadow\":{",
    "\"active\":true",
    "\"evidence\":{",
    "\"stages\":[",
    "\"progress_since_ms\":",
    "\"flipped_ms\":",
    "\"shop\"",
    "\"chat\"",
    "\"solo\"",
    "10000",
    "10001",
    "20000",
    "4294967295",
    "18446744073709551615",
    "9",
    "null",
    "true",
    "{}",
    "[]",
];

/// The specs a state file is resumed with (the input's first byte chooses): four stages,
/// one stage, a shadow phase, blue-green, an LLM quota with per-user allowances.
const SPECS: [&str; 5] = [
    "name: shop\nsources: {envoy_admin: [\"http://127.0.0.1:9901\"]}\n",
    "name: solo\nsources: {envoy_admin: [\"http://127.0.0.1:9901\"]}\nstages: [{weight_pct: 100}]\n",
    "name: chat\nsources: {envoy_admin: [\"http://127.0.0.1:9901\"]}\nfilter: {llm: {}}\n\
     shadow: {copy: {cluster: candidate, sample_bp: 5000}, hold: 10s, min_compared: 100, \
              failure_limit: 2}\n",
    "name: shop\nsources: {envoy_admin: [\"http://127.0.0.1:9901\"]}\n\
     strategy: blue_green\nblue_green: {verify_hold: 5s, keep_old_for: 1m}\n",
    "name: chat\nsources: {envoy_admin: [\"http://127.0.0.1:9901\"]}\nfilter: {llm: {}}\n\
     quota: {tokens_per_minute: 100000, per_user: {requests_per_minute: 10, \
             tokens_per_minute: 5000}}\n",
];

fn specs() -> &'static [RolloutSpec] {
    static SPECS_PARSED: OnceLock<Vec<RolloutSpec>> = OnceLock::new();
    SPECS_PARSED.get_or_init(|| super::published::parse_specs(&SPECS))
}

/// Input: the spec (first byte), the machine's next input (second byte), a window (four
/// u16: canary requests and 5xx, stable requests and 5xx), then the state file's bytes.
fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let spec = &specs()[usize::from(input.byte()) % SPECS.len()];
    let next_input = input.byte();
    let window = window(&mut input);
    let file = input.rest();

    let dir = scratch_dir();
    let store = StateStore::open(dir.path(), &spec.name).expect("open the store");
    std::fs::write(store.path(), file).expect("write the state file");
    let unchecked = store.load();
    let state = match store.load_for(spec) {
        Ok(Some(state)) => state,
        Ok(None) => panic!("a state file that exists read as none"),
        Err(StoreError::Corrupt { source, .. }) => {
            assert!(
                unchecked.is_err(),
                "load accepts what load_for finds corrupt"
            );
            assert!(!source.to_string().is_empty());
            return;
        }
        Err(StoreError::Mismatch { problems, .. }) => {
            let loaded = unchecked
                .expect("load refuses what load_for only finds mismatched")
                .expect("a state");
            assert!(!problems.is_empty(), "a mismatch with no problem named");
            assert_eq!(loaded.check(spec), Err(problems.clone()));
            for p in &problems {
                assert!(!p.field.is_empty() && !p.reason.is_empty(), "{p}");
            }
            return;
        }
        Err(e @ (StoreError::Io { .. } | StoreError::CorruptHistory { .. })) => panic!("{e}"),
    };
    assert_eq!(
        unchecked.ok().flatten().as_ref(),
        Some(&state),
        "load and load_for read differently"
    );
    // What the controller publishes on resume (server/mod.rs publishes the loaded state).
    assert_state_publishable(spec, &state);

    // Saved, it loads back the same.
    store.save(&state).expect("save");
    let again = store.load_for(spec).expect("its own save is refused");
    assert_eq!(again.as_ref(), Some(&state), "save then load changed it");

    // The machine goes on from it: a command, or the judge's verdict on a window, with the
    // evidence the file carried.
    let step = match next_input % 9 {
        0 => MachineInput::Promote,
        1 => MachineInput::Pause,
        2 => MachineInput::Resume,
        3 => MachineInput::Abort,
        6 => MachineInput::Retry,
        7 => MachineInput::Finalize,
        // What the server feeds a loaded state first.
        8 => MachineInput::SpecLoaded,
        choice => {
            let verdict = judge(&window, &state.evidence, spec);
            assert!(verdict.checks.iter().all(|c| !c.reason.is_empty()));
            match choice {
                4 => MachineInput::Analysis(verdict),
                _ => MachineInput::ShadowWindow(verdict, window.shadow.clone()),
            }
        }
    };
    let abort = matches!(step, MachineInput::Abort);
    if let Ok((next, effects)) =
        state.step(spec, step, state.stage_started_ms.saturating_add(60_000))
    {
        assert_effects(spec, &next, &effects);
        if abort {
            assert_eq!(next.weight_bp, 0, "an abort that does not publish 0");
        }
    }
}

/// A fresh directory for one input's state file: in memory where the machine has one
/// (`/dev/shm`), since the store fsyncs every save and a disk makes that milliseconds.
fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    shm.is_dir()
        .then(|| tempfile::tempdir_in(shm).ok())
        .flatten()
        .unwrap_or_else(|| tempfile::tempdir().expect("a temporary directory"))
}

/// A window of the given requests and 5xx per version, every request in one 10 ms bucket.
fn window(input: &mut Input) -> RolloutStats {
    let mut version = || {
        let requests = u64::from(input.u16());
        let errors = u64::from(input.u16()).min(requests);
        VersionStats {
            requests,
            rq_2xx: requests - errors,
            rq_5xx: errors,
            duration: Histogram {
                buckets: vec![(10.0, requests), (f64::INFINITY, requests)],
                count: requests,
                sum_ms: 5.0 * requests as f64,
            },
            ..VersionStats::default()
        }
    };
    let canary = version();
    let stable = version();
    RolloutStats {
        canary,
        stable,
        ..RolloutStats::default()
    }
}
