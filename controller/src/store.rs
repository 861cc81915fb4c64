//! Durable rollout state: one JSON file, replaced atomically (write a temporary file in the
//! same directory, fsync it, rename over the old one, fsync the directory), so a crash at any
//! point leaves either the old state or the new one, never half of either.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::machine::{RolloutState, StateMismatch};
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
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io(dir))?;
        let json = serde_json::to_vec_pretty(state).map_err(|source| StoreError::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        tmp.write_all(&json).map_err(io(tmp.path()))?;
        tmp.as_file().sync_all().map_err(io(&self.path))?;
        tmp.persist(&self.path).map_err(|e| StoreError::Io {
            path: self.path.clone(),
            source: e.error,
        })?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        Ok(())
    }
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
}
