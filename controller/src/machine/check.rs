//! Whether a saved state fits the spec it is resumed with: a state file from another
//! spec (a stage past the end, a weight over 100%) is refused, naming the field, instead of
//! serving garbage. A state of another release than the spec's is not checked against the
//! spec's stages: that run ends (or, promoted, holds its weight) under the new spec, never
//! advances under it.

use super::RolloutState;
use crate::spec::RolloutSpec;

/// One field of a saved state that does not fit the spec it is resumed with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct StateMismatch {
    /// The field of the state file, e.g. `stage`.
    pub field: &'static str,
    pub reason: String,
}

impl RolloutState {
    /// Whether a saved state can be resumed under `spec`: every field the machine and the
    /// served configuration index with must be in range (a stage past the spec's last one,
    /// or a weight above 100%, made every `/filter-config` fail).
    pub fn check(&self, spec: &RolloutSpec) -> Result<(), Vec<StateMismatch>> {
        let mut problems = Vec::new();
        let mut push = |field, reason| problems.push(StateMismatch { field, reason });
        if self.rollout != spec.name {
            push(
                "rollout",
                format!("is {:?}, the spec runs {:?}", self.rollout, spec.name),
            );
        }
        // A new release may come with other stages: the old run is never advanced under them.
        let same_release = self.release == spec.release;
        if same_release && self.stage >= spec.stages.len() {
            push(
                "stage",
                format!(
                    "is {} (stage {}), the spec has {} stage(s)",
                    self.stage,
                    self.stage.saturating_add(1),
                    spec.stages.len()
                ),
            );
        }
        if self.weight_bp > canary_contract::MAX_WEIGHT_BP {
            push(
                "weight_bp",
                format!(
                    "is {}, at most {} (100%)",
                    self.weight_bp,
                    canary_contract::MAX_WEIGHT_BP
                ),
            );
        }
        // The shadow copy is served until the run ends: unchecked only for a run the new
        // release replaces at once (a promoted one is held, and served, until finalized).
        let replaced_at_once = !same_release && self.phase != super::Phase::Promoted;
        if !replaced_at_once && self.in_shadow() && spec.shadow.is_none() {
            push(
                "shadow.active",
                "the state is in its shadow phase, the spec has none".into(),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}
