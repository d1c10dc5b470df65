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

/// A point in time as the command line takes it (`--from`, `--to`, like kcat's relative
/// offsets): an RFC 3339 time, `now`, or a duration before now (`-10m`, `now-10m`; a bare
/// number counts seconds). `now_ms` is the caller's wall clock: this crate never reads one.
pub fn parse_time_ms(text: &str, now_ms: Millis) -> Result<Millis, String> {
    let text = text.trim();
    let ago = text
        .strip_prefix("now-")
        .or_else(|| text.strip_prefix('-'));
    if text == "now" {
        Ok(now_ms)
    } else if let Some(ago) = ago {
        let ms = parse_duration_ms(ago, 1000)?;
        now_ms
            .checked_sub(ms)
            .ok_or_else(|| format!("{text:?} is too far back"))
    } else {
        parse_rfc3339_ms(text).ok_or_else(|| {
            format!(
                "{text:?} is not a time: an RFC 3339 time like 2026-03-02T09:00:00Z, now, or \
                 a duration before now like -10m"
            )
        })
    }
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

/// A duration as people write it: `1500ms`, `3s`, `5m`, `24h`, `7d`, or a bare number counted in
/// `bare_unit_ms` (1 for a config file's `*_ms` keys, 1000 for the command line's seconds).
pub fn parse_duration_ms(text: &str, bare_unit_ms: Millis) -> Result<Millis, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: Millis = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 1500ms, 3s, 5m, 24h"))?;
    let factor = match unit {
        "" => bare_unit_ms,
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h, d)")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too long a duration"))
}

/// Serde's reading of a config file's `*_ms` value: an integer (milliseconds) or a duration
/// string (`"3s"`, `"24h"`; a bare number in a string, as environment variables give it, is
/// milliseconds). `#[serde(deserialize_with = "crate::time::duration_ms")]`.
pub fn duration_ms<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<Millis>,
{
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Millis;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("milliseconds, or a duration like \"3s\", \"5m\", \"24h\"")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Millis, E> {
            Ok(v)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Millis, E> {
            Millis::try_from(v).map_err(|_| E::custom(format!("{v} ms is too long")))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Millis, E> {
            parse_duration_ms(v, 1).map_err(E::custom)
        }
    }
    let ms = deserializer.deserialize_any(Visitor)?;
    T::try_from(ms).map_err(|_| serde::de::Error::custom(format!("{ms} ms is out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Option<&str>) {
        let got = parse_rfc3339_ms(input).map(format_rfc3339_ms);
        assert_eq!(got.as_deref(), expected, "input {input:?}");
    }

    fn check_time(input: &str, expected: Result<&str, &str>) {
        let now = parse_rfc3339_ms("2026-03-02T09:00:00Z").unwrap();
        let got = parse_time_ms(input, now).map(format_rfc3339_ms);
        match expected {
            Ok(time) => assert_eq!(got.as_deref(), Ok(time), "input {input:?}"),
            Err(part) => assert!(
                got.as_ref().is_err_and(|e| e.contains(part)),
                "input {input:?}: {got:?}"
            ),
        }
    }

    #[test]
    fn command_line_times() {
        check_time("now", Ok("2026-03-02T09:00:00.000Z"));
        check_time("-10m", Ok("2026-03-02T08:50:00.000Z"));
        check_time("now-1h", Ok("2026-03-02T08:00:00.000Z"));
        check_time("-90", Ok("2026-03-02T08:58:30.000Z"));
        check_time("-1500ms", Ok("2026-03-02T08:59:58.500Z"));
        check_time("2026-03-01T00:00:00Z", Ok("2026-03-01T00:00:00.000Z"));
        check_time("yesterday", Err("is not a time"));
        check_time("-10x", Err("unknown unit"));
        check_time("+10m", Err("is not a time"));
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
    fn durations_as_people_write_them() {
        let check = |text: &str, bare: Millis, expected: Option<Millis>| {
            assert_eq!(parse_duration_ms(text, bare).ok(), expected, "{text}")
        };
        check("3000", 1, Some(3000));
        check("30", 1000, Some(30_000));
        check("1500ms", 1, Some(1500));
        check("3s", 1, Some(3000));
        check("5m", 1, Some(300_000));
        check("24h", 1, Some(86_400_000));
        check("7d", 1, Some(604_800_000));
        check("2w", 1, None);
        check("soon", 1, None);
        check("-3s", 1, None);
        check("", 1, None);
        check("99999999999999999999d", 1, None);
    }

    #[test]
    fn formatting_clamps_out_of_range() {
        assert_eq!(format_rfc3339_ms(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_rfc3339_ms(i64::MIN), "0000-01-01T00:00:00.000Z");
    }
}
