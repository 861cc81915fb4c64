//! What a root context keeps across configurations is found again by key: metric ids by
//! the metric set a rollout needs, breakers by rollout and window. A root has a handful of
//! rollouts, so a list is enough. Plain Rust, unit-tested natively.

use canary_contract::RolloutConfig;

/// The entry under `key` of a small keyed list, made with `make` if there is none.
pub fn keyed_entry<T>(
    list: &mut Vec<(String, T)>,
    key: String,
    make: impl FnOnce() -> T,
) -> &mut T {
    let j = match list.iter().position(|(k, _)| *k == key) {
        Some(j) => j,
        None => {
            list.push((key, make()));
            list.len() - 1
        }
    };
    &mut list[j].1
}

/// The key of the metric set rollout `r` defines: it depends on the LLM signals and
/// breaker configured, not only the name.
pub fn metric_set_key(r: &RolloutConfig) -> String {
    let mut key = r.name.clone();
    if r.circuit_breaker.is_some() {
        key.push_str(" breaker");
    }
    #[cfg(feature = "llm")]
    if let Some(llm) = &r.llm {
        key.push_str(" llm");
        for q in &llm.quality_headers {
            key.push(' ');
            key.push_str(&q.signal);
        }
    }
    #[cfg(feature = "llm")]
    if r.rate_limit.is_some() {
        key.push_str(" rate_limit");
    }
    #[cfg(feature = "llm")]
    if let Some(eval) = &r.eval {
        key.push_str(" eval:");
        key.push_str(&eval.signal);
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_made_once_and_found_again() {
        let mut list: Vec<(String, u32)> = Vec::new();
        *keyed_entry(&mut list, "a".into(), || 1) += 10;
        assert_eq!(*keyed_entry(&mut list, "b".into(), || 2), 2);
        assert_eq!(*keyed_entry(&mut list, "a".into(), || 99), 11);
        assert_eq!(list.len(), 2);
    }

    #[test]
    fn the_metric_set_key_names_what_the_set_depends_on() {
        let mut r = RolloutConfig::new("shop", 100);
        assert_eq!(metric_set_key(&r), "shop");
        r.weight_bp = 5_000;
        assert_eq!(metric_set_key(&r), "shop", "the weight defines no metric");
        r.circuit_breaker = Some(canary_contract::CircuitBreaker::default());
        assert_eq!(metric_set_key(&r), "shop breaker");
    }

    #[cfg(feature = "llm")]
    #[test]
    fn llm_signals_rate_limits_and_eval_are_in_the_key() {
        let mut r = RolloutConfig::new("chat", 0);
        r.llm = Some(canary_contract::LlmSignals {
            quality_headers: vec![canary_contract::QualityHeader {
                header: "x-task-success".into(),
                signal: "task_success".into(),
            }],
            ..Default::default()
        });
        assert_eq!(metric_set_key(&r), "chat llm task_success");
        r.rate_limit = Some(Default::default());
        let mut eval = canary_contract::EvalSampling::new("judge");
        eval.signal = "judged".into();
        r.eval = Some(eval);
        assert_eq!(
            metric_set_key(&r),
            "chat llm task_success rate_limit eval:judged"
        );
    }
}
