//! `release` and `stable_release`: which release a rollout rolls out and which one the stable
//! subset serves. Names only: the controller compares them (a new `release` is a new run, a
//! `stable_release` equal to the promoted release finalizes it, see `machine::release`), it
//! never routes by them.

use serde::{Deserialize, Deserializer};

use super::{RolloutSpec, SpecError};

/// Longest release name: a Kubernetes label value's limit, since pods and `DestinationRule`
/// subsets are commonly labelled with it.
pub const MAX_RELEASE_LEN: usize = 63;

/// A release name as a string. A YAML number is refused with a hint rather than turned into
/// text: `release: 1.10` reads as the number 1.1, and the name would silently lose a digit.
pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Number(serde_yaml_ng::Number),
    }
    match Option::<Scalar>::deserialize(d)? {
        None => Ok(None),
        Some(Scalar::Text(text)) => Ok(Some(text)),
        Some(Scalar::Number(n)) => Err(serde::de::Error::custom(format!(
            "a release is a name, not a number: quote it (\"{n}\"; YAML reads 1.10 as 1.1)"
        ))),
    }
}

/// Why `name` is not a release name, if it is not one: 1 to 63 characters of letters,
/// digits, `.`, `_` and `-`, starting and ending with a letter or digit (a label value).
pub fn release_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() > MAX_RELEASE_LEN {
        return Some(format!(
            "must be at most {MAX_RELEASE_LEN} characters, got {}",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Some(format!(
            "may hold letters, digits, '.', '_' and '-' only, got {bad:?} in {name:?}"
        ));
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge_ok(name.chars().next()) || !edge_ok(name.chars().last()) {
        return Some(format!(
            "must start and end with a letter or digit, got {name:?}"
        ));
    }
    None
}

pub(super) fn validate(spec: &RolloutSpec, errors: &mut Vec<SpecError>) {
    for (field, value) in [
        ("release", &spec.release),
        ("stable_release", &spec.stable_release),
    ] {
        if let Some(reason) = value.as_deref().and_then(release_name_problem) {
            errors.push(SpecError {
                field: field.into(),
                reason,
            });
        }
    }
    if spec.stable_release.is_some() && spec.release.is_none() {
        errors.push(SpecError {
            field: "stable_release".into(),
            reason: "needs release (the release this rollout rolls out)".into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "name: shop\nsources: {envoy_admin: [\"http://127.0.0.1:1\"]}\n";

    #[test]
    fn releases_are_optional_and_read_as_given() {
        let spec = RolloutSpec::from_yaml(MINIMAL).expect("valid");
        assert_eq!((spec.release, spec.stable_release), (None, None));
        let yaml = format!("{MINIMAL}release: v1.3.2\nstable_release: v1.3.1\n");
        let spec = RolloutSpec::from_yaml(&yaml).expect("valid");
        assert_eq!(spec.release.as_deref(), Some("v1.3.2"));
        assert_eq!(spec.stable_release.as_deref(), Some("v1.3.1"));
        let quoted = format!("{MINIMAL}release: \"1.10\"\n");
        let spec = RolloutSpec::from_yaml(&quoted).expect("valid");
        assert_eq!(spec.release.as_deref(), Some("1.10"));
    }

    #[test]
    fn bad_release_names_are_refused_naming_the_field() {
        let long = "a".repeat(64);
        let cases: &[(&str, &str, &str)] = &[
            ("release: \"\"", "release", "must not be empty"),
            ("release: \"v1 3\"", "release", "' '"),
            ("release: v1/3", "release", "'/'"),
            ("release: -v1", "release", "start and end"),
            ("release: v1.", "release", "start and end"),
            ("release: 1.10", "release", "quote it"),
            ("release: 2", "release", "quote it"),
            ("release: [v1]", "release", ""),
            ("stable_release: v1", "stable_release", "needs release"),
            (
                "release: v2\nstable_release: \"v1;rm\"",
                "stable_release",
                "';'",
            ),
        ];
        for (extra, field, reason) in cases {
            let yaml = format!("{MINIMAL}{extra}\n");
            let err = RolloutSpec::from_yaml(&yaml).expect_err(&yaml);
            assert!(
                err.0
                    .iter()
                    .any(|e| e.field == *field && e.reason.contains(reason)),
                "{yaml}: expected {field}: …{reason}…, got {err}"
            );
        }
        let yaml = format!("{MINIMAL}release: {long}\n");
        let err = RolloutSpec::from_yaml(&yaml).expect_err("too long");
        assert_eq!(err.0[0].field, "release");
        assert!(err.0[0].reason.contains("at most 63"), "{err}");
        assert_eq!(release_name_problem(&long[..63]), None);
        assert_eq!(release_name_problem("v1.3.2-rc_1"), None);
    }
}
