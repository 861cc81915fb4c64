//! One mechanism for the per-version counter structs ([`super::VersionStats`],
//! [`super::TierStats`], [`super::LlmStats`], [`super::QualityStats`],
//! [`super::ShadowCounts`]): each lists its fields once, with whether the field is a counter
//! or a gauge and which metric of the contract it holds, in a [`counters!`] table. From that
//! table come the metric's field (`slot`, for the parsers), the metrics a struct reads
//! (`KEYS`, for the PromQL selectors), and [`minus`] and [`plus`] (and [`add_to`], in place),
//! written once here.

/// How a field behaves over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Counts up: a window holds the difference, and a decrease means a restart.
    Counter,
    /// A value at a point in time: a window holds the value at its end.
    Gauge,
}

/// A struct of named `u64` counters and gauges, declared with [`counters!`].
pub(crate) trait Counters: Clone {
    /// Calls `f` with each field's kind, the field of `self` and the same field of `other`;
    /// stops at the first `None`.
    fn zip_fields(
        &mut self,
        other: &Self,
        f: &mut dyn FnMut(Kind, &mut u64, u64) -> Option<()>,
    ) -> Option<()>;
}

/// `now - earlier` for the counters, `now` for the gauges; `None` if a counter went down
/// (the proxy restarted). Fields outside the table are `now`'s.
pub(crate) fn minus<C: Counters>(now: &C, earlier: &C) -> Option<C> {
    let mut delta = now.clone();
    delta.zip_fields(earlier, &mut |kind, value, before| {
        if kind == Kind::Counter {
            *value = value.checked_sub(before)?;
        }
        Some(())
    })?;
    Some(delta)
}

/// Field-wise sums (gauges too: summed over sources, a gauge counts the Envoys). Fields
/// outside the table are `a`'s.
pub(crate) fn plus<C: Counters>(a: &C, b: &C) -> C {
    let mut sum = a.clone();
    add_to(&mut sum, b);
    sum
}

/// [`plus`] in place: `sum` becomes `sum + b`.
pub(crate) fn add_to<C: Counters>(sum: &mut C, b: &C) {
    let _always = sum.zip_fields(b, &mut |_, value, other| {
        *value = value.saturating_add(other);
        Some(())
    });
}

/// `counters!(Struct: Key { field: Counter = Key::Variant, gauge: Gauge = Key::Other,
/// unkeyed: Counter, ... })`: the one table of a counter struct (see the module comment).
macro_rules! counters {
    ($ty:ty: $key:ty { $($field:ident: $kind:ident $(= $variant:path)?),* $(,)? }) => {
        impl $crate::stats::counters::Counters for $ty {
            fn zip_fields(
                &mut self,
                other: &Self,
                f: &mut dyn FnMut($crate::stats::counters::Kind, &mut u64, u64) -> Option<()>,
            ) -> Option<()> {
                $( f($crate::stats::counters::Kind::$kind, &mut self.$field, other.$field)?; )*
                Some(())
            }
        }

        impl $ty {
            /// The metrics this struct holds a field for.
            #[allow(dead_code)]
            pub(crate) const KEYS: &'static [$key] = &[$( $( $variant, )? )*];

            /// The field holding `key`, if this struct reads it.
            #[allow(dead_code)]
            pub(crate) fn slot(&mut self, key: $key) -> Option<&mut u64> {
                $( $( if key == $variant { return Some(&mut self.$field); } )? )*
                None
            }
        }
    };
}

pub(crate) use counters;
