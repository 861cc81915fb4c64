//! Turns successive scrapes of several Envoys into analysis windows: per-source deltas,
//! summed. A source that restarted (counters went down) or could not be read contributes
//! nothing to the window instead of invented numbers; it gets a fresh baseline.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{RolloutStats, StatsError};

/// What one source gave at one scrape.
#[derive(Debug, Clone)]
pub struct Reading {
    pub source: String,
    pub result: Result<RolloutStats, ReadError>,
}

/// Why a source gave no reading: `reason` (the `reason` label of the controller's source
/// error counter: `unreachable`, `unparsable`, `missing_series`, `invalid`) and the message
/// logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadError {
    pub reason: &'static str,
    pub message: String,
}

impl ReadError {
    /// The source could not be reached, or did not answer with stats.
    pub fn unreachable(message: impl Into<String>) -> ReadError {
        ReadError {
            reason: "unreachable",
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<StatsError> for ReadError {
    fn from(e: StatsError) -> ReadError {
        ReadError {
            reason: e.reason(),
            message: e.to_string(),
        }
    }
}

impl From<&str> for ReadError {
    fn from(message: &str) -> ReadError {
        ReadError::unreachable(message)
    }
}

/// The stats of one analysis window, over all sources that could be read twice in a row.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Window {
    pub stats: RolloutStats,
    /// Sources whose delta is in `stats`.
    pub sources_counted: usize,
    pub sources_total: usize,
    /// Why a source is missing from the window.
    pub notes: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Windower {
    baselines: BTreeMap<String, RolloutStats>,
}

impl Windower {
    /// Closes the current window with `readings` (one per source) and starts the next.
    pub fn close(&mut self, readings: Vec<Reading>) -> Window {
        let mut window = Window {
            sources_total: readings.len(),
            ..Window::default()
        };
        // A source missing from this round (a Prometheus target gone stale) loses its
        // baseline too: its next delta must not span the gap.
        let present: std::collections::BTreeSet<&str> = readings
            .iter()
            .filter(|r| r.result.is_ok())
            .map(|r| r.source.as_str())
            .collect();
        let vanished: Vec<String> = self
            .baselines
            .keys()
            .filter(|k| !present.contains(k.as_str()) && !readings.iter().any(|r| &r.source == *k))
            .cloned()
            .collect();
        for source in vanished {
            window.notes.push(format!("{source}: no data this time"));
            self.baselines.remove(&source);
        }
        for reading in readings {
            match reading.result {
                Ok(now) => {
                    match self.baselines.get(&reading.source) {
                        Some(before) => match now.minus(before) {
                            Some(delta) => {
                                if window.sources_counted == 0 {
                                    // The same as adding it to nothing, without a copy.
                                    window.stats = delta;
                                } else {
                                    window.stats += &delta;
                                }
                                window.sources_counted += 1;
                            }
                            None => window.notes.push(format!(
                                "{}: counters went down (Envoy restarted?), counting from now",
                                reading.source
                            )),
                        },
                        None => window.notes.push(format!(
                            "{}: first reading, counting from now",
                            reading.source
                        )),
                    }
                    self.baselines.insert(reading.source, now);
                }
                Err(e) => {
                    window
                        .notes
                        .push(format!("{}: unreadable: {e}", reading.source));
                    self.baselines.remove(&reading.source);
                }
            }
        }
        window
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::VersionStats;

    fn stats(canary: u64, canary_5xx: u64, stable: u64) -> RolloutStats {
        RolloutStats {
            stable: VersionStats {
                requests: stable,
                ..VersionStats::default()
            },
            canary: VersionStats {
                requests: canary,
                rq_5xx: canary_5xx,
                ..VersionStats::default()
            },
            ..RolloutStats::default()
        }
    }

    fn ok(source: &str, s: RolloutStats) -> Reading {
        Reading {
            source: source.into(),
            result: Ok(s),
        }
    }

    #[test]
    fn sums_deltas_and_never_invents_data() {
        let mut w = Windower::default();
        let first = w.close(vec![ok("a", stats(10, 0, 90)), ok("b", stats(5, 0, 50))]);
        assert_eq!(first.sources_counted, 0, "no delta without a baseline");
        assert_eq!(first.stats, RolloutStats::default());

        let second = w.close(vec![ok("a", stats(20, 1, 180)), ok("b", stats(15, 2, 140))]);
        assert_eq!(second.sources_counted, 2);
        assert_eq!(second.stats.canary.requests, 20);
        assert_eq!(second.stats.canary.rq_5xx, 3);
        assert_eq!(second.stats.stable.requests, 180);

        // b is down, then restarted: it contributes nothing until it has a new baseline.
        let third = w.close(vec![
            ok("a", stats(30, 1, 270)),
            Reading {
                source: "b".into(),
                result: Err("connection refused".into()),
            },
        ]);
        assert_eq!(third.sources_counted, 1);
        assert_eq!(third.stats.canary.requests, 10);
        assert!(third.notes[0].contains("connection refused"));
        let fourth = w.close(vec![ok("a", stats(30, 1, 270)), ok("b", stats(3, 0, 30))]);
        assert_eq!(fourth.sources_counted, 1);
        assert_eq!(fourth.stats.canary.requests, 0);
        let fifth = w.close(vec![ok("a", stats(40, 1, 360)), ok("b", stats(1, 0, 10))]);
        assert_eq!(fifth.sources_counted, 1, "b restarted: counters went down");
        assert!(fifth.notes.iter().any(|n| n.contains("went down")));

        // b vanishes (no reading at all), then returns: no delta over the gap.
        let sixth = w.close(vec![ok("a", stats(50, 1, 450))]);
        assert!(sixth.notes.iter().any(|n| n.contains("b: no data")));
        let seventh = w.close(vec![ok("a", stats(60, 1, 540)), ok("b", stats(9, 0, 90))]);
        assert_eq!(seventh.sources_counted, 1);
        assert_eq!(seventh.stats.canary.requests, 10);
    }
}
