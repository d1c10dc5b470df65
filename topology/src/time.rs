//! Event time: milliseconds since the Unix epoch, parsed from and printed as RFC 3339.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Milliseconds since the Unix epoch, UTC. Event times, deadlines and stream time share it.
pub type Millis = i64;

/// Parses an RFC 3339 timestamp (with or without fractional seconds, `Z` or a numeric offset)
/// into epoch milliseconds, truncating below the millisecond.
pub fn parse_rfc3339_ms(text: &str) -> Option<Millis> {
    let parsed = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    let nanos = parsed.unix_timestamp_nanos();
    Some(nanos.div_euclid(1_000_000) as Millis)
}

/// Formats epoch milliseconds as RFC 3339 UTC with milliseconds: `2026-03-02T09:00:04.200Z`.
/// Values outside the years 0000..=9999 are clamped, since RFC 3339 cannot express them.
pub fn format_rfc3339_ms(ms: Millis) -> String {
    const MIN: Millis = -62_167_219_200_000; // 0000-01-01T00:00:00Z
    const MAX: Millis = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    let ms = ms.clamp(MIN, MAX);
    let t = OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .expect("clamped to the representable range");
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Option<&str>) {
        let got = parse_rfc3339_ms(input).map(format_rfc3339_ms);
        assert_eq!(got.as_deref(), expected, "input {input:?}");
    }

    #[test]
    fn rfc3339_forms() {
        check("2026-03-02T09:00:01Z", Some("2026-03-02T09:00:01.000Z"));
        check("2026-03-02T09:00:01.2Z", Some("2026-03-02T09:00:01.200Z"));
        check("2026-03-02T09:00:01.027Z", Some("2026-03-02T09:00:01.027Z"));
        check(
            "2025-08-28T09:00:01.042000Z",
            Some("2025-08-28T09:00:01.042Z"),
        );
        check(
            "2025-08-28T08:59:59.003000+00:00",
            Some("2025-08-28T08:59:59.003Z"),
        );
        check(
            "2025-08-28T10:59:59.003999+02:00",
            Some("2025-08-28T08:59:59.003Z"),
        );
        check(
            "2025-08-28T08:59:59-00:30",
            Some("2025-08-28T09:29:59.000Z"),
        );
        check("1969-12-31T23:59:59.999Z", Some("1969-12-31T23:59:59.999Z"));
        // RFC 3339 (section 5.6, NOTE) lets applications use a space instead of T.
        check("2025-08-28 08:59:59Z", Some("2025-08-28T08:59:59.000Z"));
        check("2025-08-28T08:59:59", None);
        check("yesterday", None);
        check("", None);
    }

    #[test]
    fn formatting_clamps_out_of_range() {
        assert_eq!(format_rfc3339_ms(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_rfc3339_ms(i64::MIN), "0000-01-01T00:00:00.000Z");
    }
}
