//! The caller's deadline, from the `grpc-timeout` header (`<1-8 digits><unit>`, unit one of H M S m u n).

use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;

/// Time kept back from the caller's timeout (a tenth of it, at most this) to get the answer back: the
/// caller's clock started before ours and its client gives up at the deadline with a bare CANCELLED, as does
/// tonic's transport here; the caller should see usermeta's DEADLINE_EXCEEDED with its reason instead.
const ANSWER_MARGIN: Duration = Duration::from_millis(100);

/// The duration a `grpc-timeout` value names, if it is well formed.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let split = value.len().checked_sub(1)?;
    let (digits, unit) = (value.get(..split)?, value.get(split..)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
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

/// When the request must be answered: the caller's `grpc-timeout` (less a margin to send the answer) cut to
/// `max`, or `default` when it sets none.
pub fn deadline(
    metadata: &MetadataMap,
    default: Duration,
    max: Duration,
    received: Instant,
) -> Instant {
    let timeout = metadata
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .and_then(parse_grpc_timeout)
        .map(|timeout| {
            timeout
                .saturating_sub(ANSWER_MARGIN.min(timeout / 10))
                .min(max)
        });
    let timeout = timeout.unwrap_or(default);
    received.checked_add(timeout).unwrap_or(received + default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_every_unit() {
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            parse_grpc_timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "S",
            "123",
            "123456789S",
            "-1S",
            "1s",
            "1.5S",
            "1 S",
            "１S",
        ] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    const MAX: Duration = Duration::from_secs(60);

    #[test]
    fn a_caller_deadline_is_cut_to_the_maximum() {
        let now = Instant::now();
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", "99999999H".parse().unwrap());
        assert_eq!(
            deadline(&metadata, Duration::from_secs(10), MAX, now),
            now + MAX
        );
    }

    #[test]
    fn keeps_a_margin_to_answer_and_falls_back_to_the_default() {
        let now = Instant::now();
        let mut metadata = MetadataMap::new();
        assert_eq!(
            deadline(&metadata, Duration::from_secs(10), MAX, now),
            now + Duration::from_secs(10)
        );
        metadata.insert("grpc-timeout", "500m".parse().unwrap());
        assert_eq!(
            deadline(&metadata, Duration::from_secs(10), MAX, now),
            now + Duration::from_millis(450)
        );
        metadata.insert("grpc-timeout", "5S".parse().unwrap());
        assert_eq!(
            deadline(&metadata, Duration::from_secs(10), MAX, now),
            now + Duration::from_millis(4900)
        );
        metadata.insert("grpc-timeout", "nonsense".parse().unwrap());
        assert_eq!(
            deadline(&metadata, Duration::from_secs(10), MAX, now),
            now + Duration::from_secs(10)
        );
    }

    proptest! {
        #[test]
        fn parsing_never_panics(value in "\\PC{0,12}") {
            let _ = parse_grpc_timeout(&value);
        }

        #[test]
        fn well_formed_values_round_trip(n in 0u64..100_000_000, unit in prop::sample::select(vec!['H', 'M', 'S', 'm', 'u', 'n'])) {
            let parsed = parse_grpc_timeout(&format!("{n}{unit}")).unwrap();
            let per_unit: u128 = match unit { 'H' => 3_600_000_000_000, 'M' => 60_000_000_000, 'S' => 1_000_000_000, 'm' => 1_000_000, 'u' => 1000, _ => 1 };
            prop_assert_eq!(parsed.as_nanos(), u128::from(n) * per_unit);
        }
    }
}
