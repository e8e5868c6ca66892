//! The caller's deadline, from the `grpc-timeout` header (gRPC over HTTP/2, "Timeout").

use std::time::Duration;

use tonic::metadata::MetadataMap;

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (`H M S m u n`).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The deadline of a call: the caller's, or `default` when it has none, capped at `max`.
pub fn of_request(metadata: &MetadataMap, default: Duration, max: Duration) -> Duration {
    metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .unwrap_or(default)
        .min(max)
}

/// The time the gateway gives regions: the call's deadline less a margin to merge and reply
/// before the caller gives up (a tenth, at most 50 ms).
pub fn for_regions(deadline: Duration) -> Duration {
    deadline.saturating_sub((deadline / 10).min(Duration::from_millis(50)))
}

/// A request to a region carrying the deadline as `grpc-timeout`, so the node can give up
/// too. The header is a little later than the gateway's own timer, so that the timer decides
/// and the region is reported as `DEADLINE_EXCEEDED` rather than as a cancelled call.
pub fn request<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(deadline + Duration::from_millis(50));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }
}
