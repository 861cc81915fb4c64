//! How a gRPC answer counts in the per-version response classes (`canary_rq_2xx` ...
//! `canary_rq_5xx`): a gRPC service fails with HTTP 200 and a `grpc-status` other than 0,
//! in the response headers (a trailers-only answer) or in the trailers.
//!
//! The class of each code is the HTTP status that `google.rpc.Code` maps it to (the mapping
//! gRPC's status-code guidance, grpc-gateway and Envoy's own gRPC/HTTP bridges use), so a
//! transcoded service counts the same over HTTP/JSON and over gRPC:
//!
//! | code | name                | HTTP | class |
//! |------|---------------------|------|-------|
//! | 0    | OK                  | 200  | 2xx   |
//! | 1    | CANCELLED           | 499  | 4xx   |
//! | 2    | UNKNOWN             | 500  | 5xx   |
//! | 3    | INVALID_ARGUMENT    | 400  | 4xx   |
//! | 4    | DEADLINE_EXCEEDED   | 504  | 5xx   |
//! | 5    | NOT_FOUND           | 404  | 4xx   |
//! | 6    | ALREADY_EXISTS      | 409  | 4xx   |
//! | 7    | PERMISSION_DENIED   | 403  | 4xx   |
//! | 8    | RESOURCE_EXHAUSTED  | 429  | 4xx   |
//! | 9    | FAILED_PRECONDITION | 400  | 4xx   |
//! | 10   | ABORTED             | 409  | 4xx   |
//! | 11   | OUT_OF_RANGE        | 400  | 4xx   |
//! | 12   | UNIMPLEMENTED       | 501  | 5xx   |
//! | 13   | INTERNAL            | 500  | 5xx   |
//! | 14   | UNAVAILABLE         | 503  | 5xx   |
//! | 15   | DATA_LOSS           | 500  | 5xx   |
//! | 16   | UNAUTHENTICATED     | 401  | 4xx   |
//!
//! Any other value, and a value that is not a number, is UNKNOWN (as gRPC clients read it):
//! a server failure. Only a 200 answer is reclassified: gRPC clients map any other HTTP
//! status to a code themselves, and its HTTP class already counts.

use crate::stats::Metric;

/// `grpc-status` of a call that succeeded.
pub const GRPC_OK: u32 = 0;
/// The code gRPC clients use for a `grpc-status` they cannot read.
pub const GRPC_UNKNOWN: u32 = 2;

/// The response-class counter a gRPC status counts in (see the table above).
pub fn grpc_status_class(code: u32) -> Metric {
    match code {
        GRPC_OK => Metric::Rq2xx,
        1 | 3 | 5..=11 | 16 => Metric::Rq4xx,
        _ => Metric::Rq5xx,
    }
}

/// A raw `grpc-status` value as a code: ASCII digits, at most 10 of them (anything else is
/// [`GRPC_UNKNOWN`]).
pub fn parse_grpc_status(raw: &[u8]) -> u32 {
    if raw.is_empty() || raw.len() > 10 || !raw.iter().all(u8::is_ascii_digit) {
        return GRPC_UNKNOWN;
    }
    raw.iter()
        .try_fold(0u32, |n, d| {
            n.checked_mul(10)?.checked_add(u32::from(d - b'0'))
        })
        .unwrap_or(GRPC_UNKNOWN)
}

/// The class of an answer with HTTP status `status` (parsed; `None` if unreadable) and
/// `grpc_status`, when the answer had one: a 200 takes its gRPC status's class.
pub fn answer_class(status: Option<u16>, grpc_status: Option<&[u8]>) -> Option<Metric> {
    match (status, grpc_status) {
        (Some(200), Some(raw)) => Some(grpc_status_class(parse_grpc_status(raw))),
        _ => status.and_then(Metric::for_status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_class_table() {
        let table = [
            (0, "OK", Metric::Rq2xx),
            (1, "CANCELLED", Metric::Rq4xx),
            (2, "UNKNOWN", Metric::Rq5xx),
            (3, "INVALID_ARGUMENT", Metric::Rq4xx),
            (4, "DEADLINE_EXCEEDED", Metric::Rq5xx),
            (5, "NOT_FOUND", Metric::Rq4xx),
            (6, "ALREADY_EXISTS", Metric::Rq4xx),
            (7, "PERMISSION_DENIED", Metric::Rq4xx),
            (8, "RESOURCE_EXHAUSTED", Metric::Rq4xx),
            (9, "FAILED_PRECONDITION", Metric::Rq4xx),
            (10, "ABORTED", Metric::Rq4xx),
            (11, "OUT_OF_RANGE", Metric::Rq4xx),
            (12, "UNIMPLEMENTED", Metric::Rq5xx),
            (13, "INTERNAL", Metric::Rq5xx),
            (14, "UNAVAILABLE", Metric::Rq5xx),
            (15, "DATA_LOSS", Metric::Rq5xx),
            (16, "UNAUTHENTICATED", Metric::Rq4xx),
            (17, "(undefined)", Metric::Rq5xx),
            (u32::MAX, "(undefined)", Metric::Rq5xx),
        ];
        for (code, name, class) in table {
            assert_eq!(grpc_status_class(code), class, "{code} {name}");
        }
    }

    #[test]
    fn parses_digits_and_reads_anything_else_as_unknown() {
        assert_eq!(parse_grpc_status(b"0"), 0);
        assert_eq!(parse_grpc_status(b"14"), 14);
        assert_eq!(parse_grpc_status(b"014"), 14);
        assert_eq!(parse_grpc_status(b"4294967295"), u32::MAX);
        for raw in [
            &b""[..],
            b"4294967296",
            b"99999999999",
            b" 14",
            b"-1",
            b"ok",
            b"\xff",
        ] {
            assert_eq!(parse_grpc_status(raw), GRPC_UNKNOWN, "{raw:?}");
        }
    }

    /// HTTP status, `grpc-status`, the class counted.
    type Case = (Option<u16>, Option<&'static [u8]>, Option<Metric>);

    #[test]
    fn only_a_200_takes_its_grpc_class() {
        let cases: [Case; 8] = [
            (Some(200), None, Some(Metric::Rq2xx)),
            (Some(200), Some(b"0"), Some(Metric::Rq2xx)),
            (Some(200), Some(b"14"), Some(Metric::Rq5xx)),
            (Some(200), Some(b"3"), Some(Metric::Rq4xx)),
            (Some(200), Some(b"junk"), Some(Metric::Rq5xx)),
            (Some(204), Some(b"14"), Some(Metric::Rq2xx)),
            (Some(404), Some(b"14"), Some(Metric::Rq4xx)),
            (None, Some(b"14"), None),
        ];
        for (status, grpc, class) in cases {
            assert_eq!(answer_class(status, grpc), class, "{status:?} {grpc:?}");
        }
    }
}
