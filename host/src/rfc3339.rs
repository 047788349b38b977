//! Timestamps as upstream writes them: RFC 3339 with the local UTC offset and fractional
//! seconds (Go's `time.Time` JSON form, e.g. `2026-04-08T10:15:30.123456789+08:00`).

use chrono::{DateTime, FixedOffset, Local, SecondsFormat};
use serde::{Deserialize, Deserializer, Serializer};

/// The current local time with its UTC offset.
pub fn now_local() -> DateTime<FixedOffset> {
    Local::now().fixed_offset()
}

/// Formats like Go's `time.RFC3339Nano`: `Z` for UTC, fractional seconds when non-zero.
pub fn format(t: &DateTime<FixedOffset>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Parses any RFC 3339 timestamp (any offset, any number of fractional digits).
pub fn parse(text: &str) -> Result<DateTime<FixedOffset>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(text)
}

/// `#[serde(with = "...")]` helper for a `DateTime<FixedOffset>` field.
pub fn serialize<S: Serializer>(t: &DateTime<FixedOffset>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(t))
}

/// `#[serde(with = "...")]` helper for a `DateTime<FixedOffset>` field.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<FixedOffset>, D::Error> {
    let text = String::deserialize(d)?;
    parse(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_go_style_timestamps() {
        for text in [
            "2026-04-08T10:15:30.123456789+08:00",
            "2026-04-08T10:15:30Z",
            "2026-04-08T10:15:30.5-07:00",
            "0001-01-01T00:00:00Z",
        ] {
            let t = parse(text).unwrap();
            assert_eq!(parse(&format(&t)).unwrap(), t, "{text}");
        }
        assert_eq!(
            format(&parse("2026-04-08T10:15:30+00:00").unwrap()),
            "2026-04-08T10:15:30Z"
        );
        assert_eq!(
            format(&parse("2026-04-08T10:15:30.250+02:00").unwrap()),
            "2026-04-08T10:15:30.250+02:00"
        );
    }

    #[test]
    fn now_has_local_offset() {
        let now = now_local();
        assert_eq!(now.offset(), Local::now().fixed_offset().offset());
    }
}
