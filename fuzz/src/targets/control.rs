//! `control::interpret` (the filter's reading of the controller's answer to a poll) and the
//! shared-data encoding and timing helpers around it.

use canary_contract::{ControllerSource, FilterConfig};
use canary_filter::control::{
    decode_shared, encode_shared, fail_safe, interpret, is_stale, jittered_interval, lease_expired,
    PollOutcome,
};

use crate::input::Input;
use crate::Target;

pub const TARGET: Target = Target {
    name: "control",
    about: "control::interpret on a fuzzed status, ETag and body: 304 is NotModified, an \
            update is exactly what from_json reads, has no controller and a clean ETag, and \
            its fail-safe form still validates; the shared-data encoding round-trips",
    run,
    max_len: 8 * 1024,
    dict: super::config::DICT,
};

/// Input: a status byte (0: none, 1: `200`, 2: `304`, 3: `503`, else the next 3 bytes), a
/// flags byte (1: an ETag, 2: a body), the ETag's length and bytes, 16 bytes of times,
/// then the body.
fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let status_code = input.byte();
    let status: Option<&[u8]> = match status_code {
        0 => None,
        1 => Some(b"200"),
        2 => Some(b"304"),
        3 => Some(b"503"),
        _ => Some(input.take(3)),
    };
    let flags = input.byte();
    let etag_len = usize::from(input.byte());
    let etag = input.take(etag_len);
    let (t1, t2) = (input.u64(), input.u64());
    let body = input.rest();
    let etag = (flags & 1 != 0).then_some(etag);
    let body = (flags & 2 != 0).then_some(body);

    match interpret(status, etag, body) {
        PollOutcome::NotModified => assert_eq!(status, Some(&b"304"[..])),
        PollOutcome::Failed(reason) => assert!(!reason.is_empty()),
        PollOutcome::Updated {
            etag: kept,
            body: echoed,
            config,
        } => {
            assert_eq!(status, Some(&b"200"[..]), "an update from a non-200 answer");
            let body = body.expect("an update without a body");
            assert_eq!(echoed, body, "the stored body is not the one received");
            let direct = FilterConfig::from_json(body).expect("an update from_json refuses");
            assert_eq!(config, direct);
            assert!(
                config.controller.is_none(),
                "the controller named a controller"
            );
            assert!(
                !kept.chars().any(char::is_control),
                "control bytes in the ETag"
            );
            let safe = fail_safe(config);
            assert_eq!(safe.validate(), Ok(()), "the fail-safe form is refused");
            assert!(safe
                .rollouts
                .iter()
                .all(|r| r.weight_bp == 0 && r.allow.is_empty()));
            // What the polling root stores for the workers comes back whole.
            let stored = encode_shared(&kept, t1, body);
            let shared = decode_shared(&stored).expect("a stored config does not decode");
            assert_eq!((shared.etag.as_str(), shared.raise_at_ms), (&kept[..], t1));
            assert_eq!(shared.body, body);
        }
    }

    // Whatever a worker finds in shared data, decoding it is total.
    let _ = decode_shared(data);
    let interval = t1 % 120_000;
    let jittered = jittered_interval(interval, t2);
    assert!(jittered <= interval && jittered >= interval - interval / 10);
    let _ = lease_expired(Some(t1), t2, interval);
    let mut source = ControllerSource::new("ctl");
    source.fail_safe_after_s = Some(t2);
    let _ = is_stale(&source, Some(t1), t2);
}
