//! Durable rollout state: one JSON file, replaced atomically (write a temporary file in the
//! same directory, fsync it, rename over the old one, fsync the directory), so a crash at any
//! point leaves either the old state or the new one, never half of either. Beside it, the
//! rollout's history of ended runs (`machine::History`, the last 20), replaced the same way.
//! A run is archived before the state that replaces it is saved: a crash in between archives
//! it again at the next start, which replaces the same run's entry (never a second one).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::machine::{History, RolloutState, RunRecord, StateMismatch};
use crate::spec::RolloutSpec;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a rollout state: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: not a rollout history: {source} (move the file away to start a new one)")]
    CorruptHistory {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "{path}: the saved state does not fit the spec: {}; the file is left as it is (fix \
         the spec or the file, or move the file away to start the rollout afresh)",
        .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    Mismatch {
        path: PathBuf,
        problems: Vec<StateMismatch>,
    },
}

pub struct StateStore {
    path: PathBuf,
    history_path: PathBuf,
}

impl StateStore {
    /// The state of `rollout` under `dir` (created if missing).
    pub fn open(dir: &Path, rollout: &str) -> Result<StateStore, StoreError> {
        fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(StateStore {
            path: dir.join(format!("{rollout}.state.json")),
            history_path: dir.join(format!("{rollout}.history.json")),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state, or `None` if there is none yet.
    pub fn load(&self) -> Result<Option<RolloutState>, StoreError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StoreError::Corrupt {
                path: self.path.clone(),
                source,
            })
    }

    /// [`StateStore::load`], checked against the spec it is resumed with
    /// ([`RolloutState::check`]): a state that does not fit is an error, and the file is
    /// not touched.
    pub fn load_for(&self, spec: &RolloutSpec) -> Result<Option<RolloutState>, StoreError> {
        let Some(state) = self.load()? else {
            return Ok(None);
        };
        state.check(spec).map_err(|problems| StoreError::Mismatch {
            path: self.path.clone(),
            problems,
        })?;
        Ok(Some(state))
    }

    pub fn save(&self, state: &RolloutState) -> Result<(), StoreError> {
        let json = serde_json::to_vec_pretty(state).map_err(|source| StoreError::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        replace(&self.path, &json)
    }

    pub fn history_path(&self) -> &Path {
        &self.history_path
    }

    /// The ended runs (an empty history if there is none yet).
    pub fn load_history(&self) -> Result<History, StoreError> {
        let bytes = match fs::read(&self.history_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(History::default()),
            Err(source) => {
                return Err(StoreError::Io {
                    path: self.history_path.clone(),
                    source,
                })
            }
        };
        serde_json::from_slice(&bytes).map_err(|source| StoreError::CorruptHistory {
            path: self.history_path.clone(),
            source,
        })
    }

    /// Adds an ended run to the history (or replaces its earlier account), saved atomically.
    pub fn archive(&self, run: &RunRecord) -> Result<(), StoreError> {
        let mut history = self.load_history()?;
        history.record(run.clone());
        let json =
            serde_json::to_vec_pretty(&history).map_err(|source| StoreError::CorruptHistory {
                path: self.history_path.clone(),
                source,
            })?;
        replace(&self.history_path, &json)
    }
}

/// Replaces `path` with `bytes` atomically: a temporary file in the same directory, synced,
/// renamed over it, and the directory synced.
fn replace(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, source }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io(dir))?;
    tmp.write_all(bytes).map_err(io(tmp.path()))?;
    tmp.as_file().sync_all().map_err(io(path))?;
    tmp.persist(path).map_err(|e| StoreError::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_and_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path(), "shop").expect("open");
        assert!(store.load().expect("load").is_none());
        let spec = RolloutSpec::from_yaml("name: shop\nsources: {envoy_admin: [\"http://a\"]}\n")
            .expect("spec");
        let (state, _) = RolloutState::start(&spec, 42);
        store.save(&state).expect("save");
        store.save(&state).expect("save again");
        assert_eq!(store.load().expect("load"), Some(state));
        let files: Vec<_> = fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(files.len(), 1, "only the state file remains");
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path(), "shop").expect("open");
        fs::write(store.path(), b"{\"half\":").expect("write");
        assert!(matches!(store.load(), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn a_state_that_does_not_fit_the_spec_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path(), "shop").expect("open");
        let spec = RolloutSpec::from_yaml("name: shop\nsources: {envoy_admin: [\"http://a\"]}\n")
            .expect("spec");
        assert_eq!(spec.stages.len(), 4);
        let (mut state, _) = RolloutState::start(&spec, 42);
        store.save(&state).expect("save");
        assert_eq!(store.load_for(&spec).expect("fits"), Some(state.clone()));
        state.stage = 8;
        state.weight_bp = 20_000;
        store.save(&state).expect("save");
        let before = fs::read(store.path()).expect("read");
        let err = store.load_for(&spec).expect_err("refused");
        let text = err.to_string();
        assert!(matches!(err, StoreError::Mismatch { .. }), "{text}");
        assert!(
            text.contains("stage: is 8 (stage 9), the spec has 4"),
            "{text}"
        );
        assert!(text.contains("weight_bp: is 20000"), "{text}");
        assert_eq!(
            fs::read(store.path()).expect("read"),
            before,
            "nothing lost"
        );
    }

    #[test]
    fn the_history_is_saved_beside_the_state_and_refused_when_corrupt() {
        use crate::machine::Input;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path(), "shop").expect("open");
        assert_eq!(store.load_history().expect("empty"), History::default());
        let spec = RolloutSpec::from_yaml(
            "name: shop\nrelease: v1\nsources: {envoy_admin: [\"http://a\"]}\n",
        )
        .expect("spec");
        let (state, _) = RolloutState::start(&spec, 42);
        let (aborted, _) = state.step(&spec, Input::Abort, 50).expect("abort");
        let (_, effects) = aborted.step(&spec, Input::Retry, 60).expect("retry");
        let runs: Vec<&RunRecord> = effects
            .iter()
            .filter_map(|e| match e {
                crate::machine::Effect::Archive(r) => Some(&**r),
                _ => None,
            })
            .collect();
        assert_eq!(runs.len(), 1);
        store.archive(runs[0]).expect("archive");
        // A crash before the state's save: the next start archives the same run again.
        store.archive(runs[0]).expect("archive again");
        let reopened = StateStore::open(dir.path(), "shop").expect("open");
        let history = reopened.load_history().expect("history");
        assert_eq!(history.runs.len(), 1);
        assert_eq!(history.runs[0], *runs[0]);
        assert_eq!(history.next_run(), 2);
        let files: Vec<_> = fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(files.len(), 1, "only the history file, no temporary file");
        fs::write(store.history_path(), b"[1,").expect("write");
        let err = store.load_history().expect_err("corrupt");
        assert!(matches!(err, StoreError::CorruptHistory { .. }), "{err}");
        assert!(store.archive(runs[0]).is_err(), "nothing overwritten");
        assert_eq!(fs::read(store.history_path()).expect("read"), b"[1,");
    }
}
