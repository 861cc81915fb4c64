//! The rollouts one controller runs: one [`Controller`] and analysis loop per rollout spec,
//! from `--spec FILE` or from every `*.yaml` of `--spec-dir DIR` (a ConfigMap mount, whose
//! `..data` symlink Kubernetes swaps atomically). The specs are read again every
//! [`SPEC_POLL`]: added files start rollouts, changed ones update them in place, removed ones
//! stop them (their state files stay, so a spec put back resumes where it was).
//!
//! A spec that fails validation (or does not fit its rollout's saved state, or names a
//! rollout another file already runs) is refused: it shows in `/status`, in the log and in
//! `/metrics`, and the previous version of that rollout keeps running. The other rollouts
//! never notice.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Mutex;

use super::publication::Publisher;
use super::{analysis_loop, notify, now_ms, Controller, Shared};
use crate::machine::{Input, RolloutState};
use crate::sources;
use crate::spec::RolloutSpec;
use crate::store::StateStore;

/// How often the spec files are read again.
pub const SPEC_POLL: Duration = Duration::from_secs(1);

/// Where the specs come from.
#[derive(Debug, Clone)]
pub enum SpecSource {
    /// One spec file (`--spec`): refused at start-up stops the start, as a bad flag would.
    File(PathBuf),
    /// Every `*.yaml`/`*.yml` in a directory (`--spec-dir`), hidden entries skipped.
    Dir(PathBuf),
}

impl SpecSource {
    /// The spec files' texts by file name. A file that cannot be read is an `Err` of its own;
    /// a directory that cannot be listed is the whole answer's error.
    pub fn read(&self) -> std::io::Result<BTreeMap<String, Result<String, String>>> {
        let paths = match self {
            SpecSource::File(path) => vec![path.clone()],
            SpecSource::Dir(dir) => spec_files(dir)?,
        };
        Ok(paths
            .into_iter()
            .map(|path| {
                let text = std::fs::read_to_string(&path).map_err(|e| e.to_string());
                (file_name(&path), text)
            })
            .collect())
    }
}

fn spec_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = file_name(&path);
        let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        // `..data` and `..2026_12_01…`: the ConfigMap mount's own entries.
        if yaml && !name.starts_with('.') && path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into(),
    )
}

/// A spec file the controller does not run, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Refusal {
    pub file: String,
    /// The rollout it names, if it got that far.
    pub rollout: Option<String>,
    pub error: String,
    /// The fields at fault (e.g. `stages[1].weight_pct`).
    pub fields: Vec<String>,
    /// Whether an earlier version of the rollout keeps running.
    pub previous_runs: bool,
}

struct Running {
    controller: Shared,
    file: String,
    /// A hash of the spec text it runs, so an unchanged file is not read as a change.
    text_hash: u64,
    /// Its analysis loop (`None` only in unit tests of the API).
    task: Option<tokio::task::JoinHandle<()>>,
}

pub(super) struct Fleet {
    state_dir: PathBuf,
    http: reqwest::Client,
    publisher: Arc<Publisher>,
    running: BTreeMap<String, Running>,
    refused: BTreeMap<String, Refusal>,
    /// Refusals since start (a new or changed refusal counts once).
    pub refusals_total: u64,
}

/// A parsed spec file on its way to running.
struct Candidate {
    file: String,
    spec: RolloutSpec,
    text_hash: u64,
}

impl Fleet {
    pub(super) fn new(
        state_dir: PathBuf,
        http: reqwest::Client,
        publisher: Arc<Publisher>,
    ) -> Self {
        Fleet {
            state_dir,
            http,
            publisher,
            running: BTreeMap::new(),
            refused: BTreeMap::new(),
            refusals_total: 0,
        }
    }

    /// A fleet of `controller` alone, with no analysis loop (unit tests of the API).
    #[cfg(test)]
    pub(super) fn of_one(controller: Controller) -> (Fleet, Shared) {
        let (publisher, _) = Publisher::held();
        let mut fleet = Fleet::new(PathBuf::new(), reqwest::Client::new(), publisher);
        let name = controller.spec.name.clone();
        let shared = Arc::new(Mutex::new(controller));
        let running = Running {
            controller: shared.clone(),
            file: format!("{name}.yaml"),
            text_hash: 0,
            task: None,
        };
        fleet.running.insert(name, running);
        (fleet, shared)
    }

    /// The running rollouts' controllers, by name.
    pub(super) fn controllers(&self) -> impl Iterator<Item = (&String, &Shared)> {
        self.running.iter().map(|(name, r)| (name, &r.controller))
    }

    pub(super) fn controller(&self, rollout: &str) -> Option<Shared> {
        self.running.get(rollout).map(|r| r.controller.clone())
    }

    pub(super) fn refused(&self) -> impl Iterator<Item = &Refusal> {
        self.refused.values()
    }

    /// The refusal of the file `rollout` runs from, if its current version was refused.
    pub(super) fn refusal_of(&self, rollout: &str) -> Option<&Refusal> {
        let file = &self.running.get(rollout)?.file;
        self.refused.get(file)
    }

    /// Brings the running rollouts in line with `files` (see the module's comment).
    pub(super) async fn reconcile(&mut self, files: BTreeMap<String, Result<String, String>>) {
        let mut refused = BTreeMap::new();
        let mut by_rollout: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
        for (file, text) in files {
            let text = match text {
                Ok(text) => text,
                Err(e) => {
                    let r = refusal(&file, None, format!("cannot read it: {e}"), Vec::new());
                    refused.insert(file, r);
                    continue;
                }
            };
            match RolloutSpec::from_yaml(&text) {
                Ok(spec) => by_rollout
                    .entry(spec.name.clone())
                    .or_default()
                    .push(Candidate {
                        file,
                        spec,
                        text_hash: hash_of(&text),
                    }),
                Err(e) => {
                    let fields = e.0.iter().map(|f| f.field.clone()).collect();
                    let r = refusal(&file, None, e.to_string(), fields);
                    refused.insert(file, r);
                }
            }
        }
        // One file per rollout: the one already running it, else the first by name.
        let mut wanted = BTreeMap::new();
        for (name, mut candidates) in by_rollout {
            let running_file = self.running.get(&name).map(|r| r.file.clone());
            let keep = candidates
                .iter()
                .position(|c| Some(&c.file) == running_file.as_ref())
                .unwrap_or(0);
            let kept = candidates.swap_remove(keep);
            for other in candidates {
                let error = format!(
                    "rollout {name:?} is already defined by {}; one file per rollout",
                    kept.file
                );
                let r = refusal(&other.file, Some(&name), error, vec!["name".into()]);
                refused.insert(other.file, r);
            }
            wanted.insert(name, kept);
        }
        // A rollout whose file is gone stops; one whose file is refused keeps running.
        let gone: Vec<String> = self
            .running
            .iter()
            .filter(|(name, r)| !wanted.contains_key(*name) && !refused.contains_key(&r.file))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.stop(&name).await;
        }
        for (name, candidate) in wanted {
            let file = candidate.file.clone();
            if let Err(error) = self.run(candidate).await {
                let r = refusal(&file, Some(&name), error, Vec::new());
                refused.insert(file, r);
            }
        }
        for r in refused.values_mut() {
            r.previous_runs = r
                .rollout
                .as_ref()
                .is_some_and(|n| self.running.contains_key(n))
                || self.running.values().any(|running| running.file == r.file);
        }
        for (file, r) in &refused {
            if self.refused.get(file) != Some(r) {
                self.refusals_total += 1;
                let keeps = if r.previous_runs {
                    "; the previous version keeps running"
                } else {
                    ""
                };
                eprintln!("canaryctl: spec {file} refused: {}{keeps}", r.error);
            }
        }
        self.refused = refused;
    }

    /// Starts `candidate`'s rollout, or updates the running one if its spec changed.
    async fn run(&mut self, candidate: Candidate) -> Result<(), String> {
        let Candidate {
            file,
            spec,
            text_hash,
        } = candidate;
        if let Some(running) = self.running.get_mut(&spec.name) {
            running.file = file;
            if running.text_hash == text_hash {
                return Ok(());
            }
            let webhooks =
                notify::Webhooks::from_spec(&spec.webhooks).map_err(|e| e.to_string())?;
            let mut c = running.controller.lock().await;
            c.state.check(&spec).map_err(|problems| {
                let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
                format!(
                    "the rollout's state does not fit this spec: {}",
                    problems.join("; ")
                )
            })?;
            if let Some(task) = &running.task {
                task.abort();
            }
            let source = sources::from_spec(&spec.sources);
            c.source_names = source.names();
            c.spec = spec.clone();
            c.webhooks = webhooks;
            // The edited spec may name a new release (a new run at stage 1) or finalize the
            // promoted one, as at start-up.
            match c.state.step(&spec, Input::SpecLoaded, now_ms()) {
                Ok((next, effects)) if next != c.state => {
                    let http = self.http.clone();
                    if let Err(e) = c.apply(next, effects, &http) {
                        eprintln!(
                            "canaryctl: {}: could not save state, the new spec's run waits: {e}",
                            spec.name
                        );
                    }
                }
                Ok(_) => {}
                Err(e) => eprintln!("canaryctl: {}: {e}", spec.name),
            }
            c.publish();
            drop(c);
            running.text_hash = text_hash;
            running.task = Some(tokio::spawn(analysis_loop::run(
                running.controller.clone(),
                spec.clone(),
                self.http.clone(),
                source,
            )));
            eprintln!("canaryctl: {}: spec updated", spec.name);
            return Ok(());
        }
        let name = spec.name.clone();
        let source = sources::from_spec(&spec.sources);
        let controller =
            (self.start(spec.clone(), source.names())).map_err(|e| format!("{e:#}"))?;
        let task = tokio::spawn(analysis_loop::run(
            controller.clone(),
            spec,
            self.http.clone(),
            source,
        ));
        let running = Running {
            controller,
            file,
            text_hash,
            task: Some(task),
        };
        self.running.insert(name, running);
        Ok(())
    }

    /// A controller for `spec`, resumed from its saved state or started at stage 1.
    /// `source_names`: the stats sources it reads, known before any reading (`/metrics`).
    fn start(&self, spec: RolloutSpec, source_names: Vec<String>) -> anyhow::Result<Shared> {
        let store = StateStore::open(&self.state_dir, &spec.name)?;
        let webhooks = notify::Webhooks::from_spec(&spec.webhooks)?;
        // A saved state that does not fit the spec stops the start, the file untouched. The
        // spec as loaded may start a new release's run, or finalize the promoted one.
        let (state, start_effects, resumed) = match store.load_for(&spec)? {
            Some(saved) => {
                let (next, effects) = saved.step(&spec, Input::SpecLoaded, now_ms())?;
                let resumed = next.run == saved.run;
                let changed = next != saved;
                (saved, changed.then_some((next, effects)), resumed)
            }
            None => {
                // A fresh state never starts past stage 1; its run number follows the
                // history's (a state file moved away does not restart the numbering).
                let run = store.load_history()?.next_run();
                let (state, effects) = RolloutState::start_run(&spec, run, now_ms(), "");
                (state.clone(), Some((state, effects)), false)
            }
        };
        let mut c = Controller::new(
            spec.clone(),
            state.clone(),
            store,
            webhooks,
            self.publisher.clone(),
        );
        c.source_names = source_names;
        c.weights
            .record(c.state.stage_started_ms, c.state.weight_bp);
        if let Some((next, effects)) = start_effects {
            c.apply(next, effects, &self.http)?;
        }
        eprintln!(
            "canaryctl: {} {} at stage {} weight {} ({}run {}, state {})",
            spec.name,
            if resumed { "resumed" } else { "started" },
            c.state.stage + 1,
            crate::machine::pct(c.state.weight_bp),
            crate::machine::release_label(&c.state.release),
            c.state.run,
            c.store.path().display()
        );
        Ok(Arc::new(Mutex::new(c)))
    }

    async fn stop(&mut self, name: &str) {
        if let Some(running) = self.running.remove(name) {
            if let Some(task) = &running.task {
                task.abort();
            }
            running.controller.lock().await.unpublish();
            eprintln!(
                "canaryctl: {name}: spec {} removed; rollout stopped (its state is kept)",
                running.file
            );
        }
    }
}

fn refusal(file: &str, rollout: Option<&str>, error: String, fields: Vec<String>) -> Refusal {
    Refusal {
        file: file.to_string(),
        rollout: rollout.map(str::to_string),
        error,
        fields,
        previous_runs: false,
    }
}

fn hash_of(text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// Reads `source` every [`SPEC_POLL`] and reconciles the fleet with it. A directory that
/// cannot be listed for a moment changes nothing.
pub(super) async fn watch(fleet: Arc<Mutex<Fleet>>, source: SpecSource) {
    let mut said_unreadable = false;
    loop {
        tokio::time::sleep(SPEC_POLL).await;
        let read = {
            let source = source.clone();
            tokio::task::spawn_blocking(move || source.read()).await
        };
        match read {
            Ok(Ok(files)) => {
                said_unreadable = false;
                fleet.lock().await.reconcile(files).await;
            }
            Ok(Err(e)) if !said_unreadable => {
                eprintln!("canaryctl: cannot read the specs ({source:?}): {e}; the rollouts keep running as they are");
                said_unreadable = true;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spec of rollout `name` with a first stage at `pct` percent.
    fn spec(name: &str, pct: u32) -> String {
        format!(
            "name: {name}\nsources: {{envoy_admin: [\"http://127.0.0.1:1\"]}}\n\
             stages: [{{weight_pct: {pct}, hold: 1h}}, {{weight_pct: 50, hold: 1h}}, \
             {{weight_pct: 100, hold: 1h}}]\n"
        )
    }

    fn files(of: &[(&str, &str)]) -> BTreeMap<String, Result<String, String>> {
        of.iter()
            .map(|(f, t)| (f.to_string(), Ok(t.to_string())))
            .collect()
    }

    /// Each rollout's weight as `/filter-config` serves it.
    fn served(
        receiver: &tokio::sync::watch::Receiver<Arc<super::super::publication::Served>>,
    ) -> Vec<(String, u32)> {
        let config = canary_contract::FilterConfig::from_json(&receiver.borrow().json)
            .expect("a filter accepts it");
        config
            .rollouts
            .iter()
            .map(|r| (r.name.clone(), r.weight_bp))
            .collect()
    }

    #[tokio::test]
    async fn specs_are_added_changed_refused_and_removed_while_the_others_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (publisher, receiver) = Publisher::held();
        let mut fleet = Fleet::new(dir.path().into(), reqwest::Client::new(), publisher.clone());
        let (a, b) = (spec("alpha", 5), spec("beta", 10));
        fleet
            .reconcile(files(&[("a.yaml", &a), ("b.yaml", &b)]))
            .await;
        assert!(receiver.borrow().etag.is_empty(), "held until released");
        publisher.release();
        assert_eq!(
            served(&receiver),
            [("alpha".into(), 500), ("beta".into(), 1000)]
        );
        let etag = receiver.borrow().etag.clone();

        // A bad edit of beta and a second file for alpha: both refused, naming the field;
        // both rollouts run on as before.
        let bad_b = "name: beta\nsources: {envoy_admin: [\"http://127.0.0.1:1\"]}\nstages: [{weight_pct: 150, hold: 1h}]\n";
        fleet
            .reconcile(files(&[
                ("a.yaml", &a),
                ("b.yaml", bad_b),
                ("c.yaml", &spec("alpha", 20)),
            ]))
            .await;
        let refused: Vec<_> = fleet.refused().cloned().collect();
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert_eq!(refused[0].file, "b.yaml");
        assert!(
            refused[0].fields.iter().any(|f| f.starts_with("stages[0]")),
            "{refused:?}"
        );
        assert!(refused[0].previous_runs, "beta keeps running");
        assert_eq!(refused[1].fields, ["name"]);
        assert_eq!(
            fleet.refusal_of("beta").map(|r| r.file.as_str()),
            Some("b.yaml")
        );
        assert_eq!(receiver.borrow().etag, etag, "nothing served changed");
        assert_eq!(fleet.refusals_total, 2);

        // beta fixed with another first stage (the same stage index keeps its weight, the
        // spec applies from the next transition), alpha's file removed.
        let b2 = b.replace("hold: 1h}, {weight_pct: 50", "hold: 2h}, {weight_pct: 50");
        fleet.reconcile(files(&[("b.yaml", &b2)])).await;
        assert_eq!(fleet.refused().count(), 0);
        assert_eq!(served(&receiver), [("beta".into(), 1000)]);
        let beta = fleet.controller("beta").expect("running");
        assert_eq!(
            beta.lock().await.spec.stages[0].hold,
            Duration::from_secs(7200),
            "updated in place"
        );
        assert!(fleet.controller("alpha").is_none(), "stopped");

        // alpha back: it resumes from its kept state.
        fleet
            .reconcile(files(&[("a.yaml", &a), ("b.yaml", &b2)]))
            .await;
        assert_eq!(
            served(&receiver),
            [("alpha".into(), 500), ("beta".into(), 1000)]
        );
    }

    #[tokio::test]
    async fn a_spec_that_does_not_fit_the_saved_state_is_refused_and_the_rollout_runs_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (publisher, receiver) = Publisher::held();
        publisher.release();
        let mut fleet = Fleet::new(dir.path().into(), reqwest::Client::new(), publisher);
        fleet
            .reconcile(files(&[("a.yaml", &spec("alpha", 5))]))
            .await;
        {
            let alpha = fleet.controller("alpha").expect("running");
            let mut c = alpha.lock().await;
            let spec = c.spec.clone();
            let (next, effects) = c
                .state
                .step(&spec, crate::machine::Input::Promote, now_ms())
                .expect("promote");
            let http = reqwest::Client::new();
            c.apply(next, effects, &http).expect("saved");
        }
        // One stage only: stage 2 of the saved state is past its end.
        let one_stage = "name: alpha\nsources: {envoy_admin: [\"http://127.0.0.1:1\"]}\nstages: [{weight_pct: 100, hold: 1h}]\n";
        fleet.reconcile(files(&[("a.yaml", one_stage)])).await;
        let refused: Vec<_> = fleet.refused().cloned().collect();
        assert_eq!(refused.len(), 1);
        assert!(refused[0].error.contains("does not fit"), "{refused:?}");
        assert_eq!(
            served(&receiver),
            [("alpha".into(), 5000)],
            "stage 2 runs on"
        );
    }

    /// Issue 16, item 2 with item 1: a spec edit naming a new release starts its run at
    /// stage 1 while the controller runs, and the ended run is in the history.
    #[tokio::test]
    async fn an_edit_naming_a_new_release_starts_its_run_without_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (publisher, receiver) = Publisher::held();
        publisher.release();
        let mut fleet = Fleet::new(dir.path().into(), reqwest::Client::new(), publisher);
        let v1 = format!("release: v1\n{}", spec("alpha", 5));
        fleet.reconcile(files(&[("a.yaml", &v1)])).await;
        let alpha = fleet.controller("alpha").expect("running");
        {
            let mut c = alpha.lock().await;
            let spec = c.spec.clone();
            let input = crate::machine::Input::Promote;
            let (next, effects) = c.state.step(&spec, input, now_ms()).expect("promote");
            c.apply(next, effects, &reqwest::Client::new())
                .expect("saved");
        }
        assert_eq!(served(&receiver), [("alpha".into(), 5000)]);
        let v2 = v1.replace("release: v1", "release: v2");
        fleet.reconcile(files(&[("a.yaml", &v2)])).await;
        assert_eq!(fleet.refused().count(), 0);
        assert_eq!(served(&receiver), [("alpha".into(), 500)], "v2 at stage 1");
        let c = alpha.lock().await;
        assert_eq!((c.state.run, c.state.stage), (2, 0));
        let history = c.store.load_history().expect("history");
        let archived: Vec<_> = history.runs.iter().map(|r| (r.run, r.outcome)).collect();
        assert_eq!(
            archived,
            [(1, crate::machine::history::RunOutcome::Superseded)],
            "run 1 archived"
        );
    }

    #[test]
    fn a_directory_is_read_without_the_config_maps_own_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("..2026_12_01_00_00_00.1");
        std::fs::create_dir(&data).expect("mkdir");
        std::fs::write(data.join("a.yaml"), "name: a\n").expect("write");
        std::os::unix::fs::symlink(&data, dir.path().join("..data")).expect("symlink");
        std::os::unix::fs::symlink(dir.path().join("..data/a.yaml"), dir.path().join("a.yaml"))
            .expect("symlink");
        std::fs::write(dir.path().join("notes.txt"), "not a spec").expect("write");
        let read = SpecSource::Dir(dir.path().into()).read().expect("read");
        assert_eq!(read.keys().collect::<Vec<_>>(), ["a.yaml"]);
        assert_eq!(read["a.yaml"].as_deref(), Ok("name: a\n"));
    }
}
