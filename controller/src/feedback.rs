//! User feedback (`POST /feedback`): a thumbs up or down for a user's answer, attributed to
//! the version that user was on with the filter's own hash (the contract crate), so no
//! per-request lookup table is needed. A rating may arrive after the weight changed: with
//! `at_ms` it is attributed with the weight in force then.

use canary_contract::{Assignment, Version};
use serde::Serialize;

use crate::spec::RolloutSpec;
use crate::stats::LlmStats;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rating {
    Up,
    Down,
}

/// One parsed `POST /feedback` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feedback {
    pub user: String,
    pub rating: Rating,
    pub rollout: Option<String>,
    /// When the rated answer was given (ms since the epoch).
    pub at_ms: Option<u64>,
}

/// A bad body, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FeedbackError {
    pub field: String,
    pub reason: String,
}

fn error(field: &str, reason: impl Into<String>) -> FeedbackError {
    FeedbackError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Longest user key accepted (the filter's default `max_key_bytes`).
const MAX_USER_BYTES: usize = 256;

/// Parses `{"user": "...", "rating": "up"|"down", "rollout"?: "...", "at_ms"?: n}`.
pub fn parse(body: &[u8]) -> Result<Feedback, FeedbackError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| error("(body)", format!("not JSON: {e}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| error("(body)", "must be a JSON object"))?;
    for key in object.keys() {
        if !["user", "rating", "rollout", "at_ms"].contains(&key.as_str()) {
            return Err(error(
                key,
                "unknown field (expected user, rating, rollout, at_ms)",
            ));
        }
    }
    let user = match object.get("user") {
        Some(serde_json::Value::String(u)) if !u.is_empty() && u.len() <= MAX_USER_BYTES => {
            u.clone()
        }
        Some(serde_json::Value::String(_)) => {
            return Err(error("user", format!("must be 1..={MAX_USER_BYTES} bytes")))
        }
        Some(_) => return Err(error("user", "must be a string (the user key)")),
        None => return Err(error("user", "missing (the user key the filter hashes)")),
    };
    let rating = match object.get("rating").and_then(|r| r.as_str()) {
        Some("up") => Rating::Up,
        Some("down") => Rating::Down,
        Some(other) => {
            return Err(error(
                "rating",
                format!("must be \"up\" or \"down\", got {other:?}"),
            ))
        }
        None => {
            return Err(error(
                "rating",
                "missing or not a string: \"up\" or \"down\"",
            ))
        }
    };
    let rollout = match object.get("rollout") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(r)) => Some(r.clone()),
        Some(_) => return Err(error("rollout", "must be a string")),
    };
    let at_ms = match object.get("at_ms") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| error("at_ms", "must be milliseconds since the epoch"))?,
        ),
    };
    Ok(Feedback {
        user,
        rating,
        rollout,
        at_ms,
    })
}

/// The weights served over time, to attribute late ratings with the weight of their time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WeightHistory {
    /// (from ms, weight_bp), in time order.
    changes: Vec<(u64, u32)>,
}

/// Changes kept (older ones are forgotten: a rating older than that uses the oldest kept).
const KEEP_CHANGES: usize = 1_000;

impl WeightHistory {
    pub fn record(&mut self, from_ms: u64, weight_bp: u32) {
        if self.changes.last().map(|c| c.1) == Some(weight_bp) {
            return;
        }
        self.changes.push((from_ms, weight_bp));
        if self.changes.len() > KEEP_CHANGES {
            self.changes.remove(0);
        }
    }

    /// The weight in force at `at_ms` (the oldest known before the history starts).
    pub fn at(&self, at_ms: u64) -> Option<u32> {
        self.changes
            .iter()
            .rev()
            .find(|(from, _)| *from <= at_ms)
            .or(self.changes.first())
            .map(|c| c.1)
    }
}

/// Where one rating was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribution {
    pub version: Version,
    pub assignment: Assignment,
    pub weight_bp: u32,
}

/// Attributes `feedback` for `spec` with the filter's rules (deny list, allow list, hash at
/// the weight in force when the answer was given, or `current_weight_bp`).
pub fn attribute(
    spec: &RolloutSpec,
    history: &WeightHistory,
    current_weight_bp: u32,
    feedback: &Feedback,
) -> Result<Attribution, FeedbackError> {
    if let Some(r) = &feedback.rollout {
        if *r != spec.name {
            return Err(error(
                "rollout",
                format!("this controller runs rollout {:?}, not {r:?}", spec.name),
            ));
        }
    }
    let weight_bp = feedback
        .at_ms
        .and_then(|at| history.at(at))
        .unwrap_or(current_weight_bp);
    let config = spec
        .rollout_config(weight_bp)
        .ok_or_else(|| error("(spec)", "the rollout's filter configuration is invalid"))?;
    let (version, assignment) = config.assign_at_weight(&feedback.user, weight_bp);
    Ok(Attribution {
        version,
        assignment,
        weight_bp,
    })
}

/// Ratings received and not yet in an analysis window, per version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PendingFeedback {
    /// [version][up, down]
    counts: [[u64; 2]; 2],
}

impl PendingFeedback {
    pub fn add(&mut self, version: Version, rating: Rating) {
        let slot = &mut self.counts[version.index()][usize::from(rating == Rating::Down)];
        *slot = slot.saturating_add(1);
    }

    /// Moves the counts into a window's stats.
    pub fn drain_into(&mut self, canary: &mut LlmStats, stable: &mut LlmStats) {
        for (version, llm) in [(Version::Canary, canary), (Version::Stable, stable)] {
            let [up, down] = std::mem::take(&mut self.counts[version.index()]);
            llm.feedback_up += up;
            llm.feedback_down += down;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RolloutSpec {
        RolloutSpec::from_yaml(
            "name: chat\nsources: {envoy_admin: [\"http://127.0.0.1:9901\"]}\n\
             filter: {allow: [qa-alice], deny: [vip-42]}\n",
        )
        .expect("valid")
    }

    #[test]
    fn bad_bodies_name_the_field() {
        let cases: &[(&str, &str)] = &[
            ("nope", "(body)"),
            ("[1]", "(body)"),
            (r#"{"rating":"up"}"#, "user"),
            (r#"{"user":"","rating":"up"}"#, "user"),
            (r#"{"user":7,"rating":"up"}"#, "user"),
            (r#"{"user":"u1"}"#, "rating"),
            (r#"{"user":"u1","rating":"meh"}"#, "rating"),
            (r#"{"user":"u1","rating":"up","at_ms":-5}"#, "at_ms"),
            (r#"{"user":"u1","rating":"up","rollout":3}"#, "rollout"),
            (r#"{"user":"u1","rating":"up","score":3}"#, "score"),
        ];
        for (body, field) in cases {
            let err = parse(body.as_bytes()).expect_err(body);
            assert_eq!(err.field, *field, "{body}: {err}");
        }
        let long = format!(r#"{{"user":"{}","rating":"up"}}"#, "x".repeat(257));
        assert_eq!(parse(long.as_bytes()).expect_err("long").field, "user");
        let ok =
            parse(br#"{"user":"u1","rating":"down","rollout":"chat","at_ms":5}"#).expect("valid");
        assert_eq!(ok.rating, Rating::Down);
        assert_eq!(ok.at_ms, Some(5));
    }

    #[test]
    fn attribution_follows_the_filter_rules_and_the_weight_of_the_time() {
        let spec = spec();
        let mut history = WeightHistory::default();
        history.record(1_000, 500);
        history.record(2_000, 2_500);
        let fb = |user: &str, at_ms: Option<u64>| Feedback {
            user: user.into(),
            rating: Rating::Up,
            rollout: None,
            at_ms,
        };
        // Every user agrees with the contract's assignment at the weight of the time.
        let config = spec.rollout_config(0).expect("config");
        let mut moved = 0;
        for i in 0..2_000 {
            let user = format!("user-{i}");
            let early = attribute(&spec, &history, 2_500, &fb(&user, Some(1_500))).expect("ok");
            let now = attribute(&spec, &history, 2_500, &fb(&user, None)).expect("ok");
            assert_eq!(early.weight_bp, 500);
            assert_eq!(now.weight_bp, 2_500);
            assert_eq!(early.version, config.assign_at_weight(&user, 500).0);
            assert_eq!(now.version, config.assign_at_weight(&user, 2_500).0);
            if early.version != now.version {
                moved += 1;
            }
        }
        // About 20% of users moved to canary between 5% and 25%.
        assert!((300..500).contains(&moved), "{moved}");
        // Before the history starts: its oldest weight.
        assert_eq!(
            attribute(&spec, &history, 2_500, &fb("u", Some(10)))
                .expect("ok")
                .weight_bp,
            500
        );
        // Allow and deny lists win over the hash.
        let a = attribute(&spec, &history, 0, &fb("qa-alice", None)).expect("ok");
        assert_eq!(
            (a.version, a.assignment),
            (Version::Canary, Assignment::AllowList)
        );
        let d = attribute(&spec, &history, 10_000, &fb("vip-42", None)).expect("ok");
        assert_eq!(
            (d.version, d.assignment),
            (Version::Stable, Assignment::DenyList)
        );
        // Another rollout's feedback is refused.
        let mut other = fb("u", None);
        other.rollout = Some("search".into());
        assert_eq!(
            attribute(&spec, &history, 0, &other)
                .expect_err("other")
                .field,
            "rollout"
        );
    }

    #[test]
    fn pending_feedback_lands_in_one_window_only() {
        let mut p = PendingFeedback::default();
        p.add(Version::Canary, Rating::Down);
        p.add(Version::Canary, Rating::Up);
        p.add(Version::Stable, Rating::Up);
        let (mut c, mut s) = (LlmStats::default(), LlmStats::default());
        p.drain_into(&mut c, &mut s);
        assert_eq!((c.feedback_up, c.feedback_down), (1, 1));
        assert_eq!((s.feedback_up, s.feedback_down), (1, 0));
        let (mut c2, mut s2) = (LlmStats::default(), LlmStats::default());
        p.drain_into(&mut c2, &mut s2);
        assert!(c2.is_empty() && s2.is_empty());
    }
}
