//! Reading `kcat -J` records, one JSON object per line (docs/semantics.md §6).
//!
//! As kcat writes them: `key` and `payload` may be null, `tstype`/`ts` are absent when a record
//! has no timestamp, and `headers` is a flat `[name, value, ...]` array when present.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// One record of a kcat dump, owned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KcatRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tstype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<i32>,
    pub key: Option<String>,
    pub payload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<Option<String>>>,
}

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    topic: Cow<'a, str>,
    partition: i32,
    offset: i64,
    #[serde(default)]
    ts: Option<i64>,
    #[serde(default, borrow)]
    tstype: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    key: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    payload: Option<Cow<'a, str>>,
}

/// The parts of a kcat line the audit uses; borrowed where the JSON has no escapes.
pub struct KcatLine<'a> {
    pub topic: Cow<'a, str>,
    pub partition: i32,
    pub offset: i64,
    /// The record timestamp; `None` when kcat printed no `ts` or `tstype` says there is none.
    pub timestamp_ms: Option<i64>,
    pub key: Option<Cow<'a, str>>,
    pub payload: Option<Cow<'a, str>>,
}

/// Parses one line; the error says what is wrong with it.
pub fn parse_line(line: &str) -> Result<KcatLine<'_>, String> {
    let parsed: Line<'_> =
        serde_json::from_str(line).map_err(|e| format!("not a kcat -J record: {e}"))?;
    if parsed.partition < 0 {
        return Err(format!("partition {} is negative", parsed.partition));
    }
    let has_timestamp = !matches!(parsed.tstype.as_deref(), Some("none" | "NotAvailable"));
    Ok(KcatLine {
        topic: parsed.topic,
        partition: parsed.partition,
        offset: parsed.offset,
        timestamp_ms: parsed.ts.filter(|ts| has_timestamp && *ts >= 0),
        key: parsed.key,
        payload: parsed.payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// topic, partition, offset, timestamp, key, payload
    type Fields<'a> = (
        &'a str,
        i32,
        i64,
        Option<i64>,
        Option<&'a str>,
        Option<&'a str>,
    );

    fn check(line: &str, expected: Result<Fields<'_>, &str>) {
        let got = parse_line(line).map(|l| {
            (
                l.topic.into_owned(),
                l.partition,
                l.offset,
                l.timestamp_ms,
                l.key.map(|k| k.into_owned()),
                l.payload.map(|p| p.into_owned()),
            )
        });
        match (got, expected) {
            (Ok(g), Ok(e)) => assert_eq!(
                (g.0.as_str(), g.1, g.2, g.3, g.4.as_deref(), g.5.as_deref()),
                e,
                "line {line}"
            ),
            (Err(g), Err(e)) => assert!(
                g.contains(e),
                "line {line}: error {g:?} should contain {e:?}"
            ),
            (g, e) => panic!("line {line}: got {:?}, expected {e:?}", g.map(|_| ())),
        }
    }

    #[test]
    fn kcat_lines() {
        check(
            r#"{"topic":"activation","partition":0,"offset":3,"tstype":"create","ts":5,"broker":1,"key":"w","payload":"{\"a\":1}"}"#,
            Ok(("activation", 0, 3, Some(5), Some("w"), Some(r#"{"a":1}"#))),
        );
        check(
            r#"{"topic":"t","partition":1,"offset":0,"key":null,"payload":null}"#,
            Ok(("t", 1, 0, None, None, None)),
        );
        check(
            r#"{"topic":"t","partition":1,"offset":0,"key":"k","payload":"p","headers":["h","v"]}"#,
            Ok(("t", 1, 0, None, Some("k"), Some("p"))),
        );
        check(
            r#"{"topic":"t","partition":2,"offset":9,"tstype":"none","ts":-1,"key":"k","payload":"p"}"#,
            Ok(("t", 2, 9, None, Some("k"), Some("p"))),
        );
        check(
            r#"{"topic":"t","partition":-1,"offset":0,"key":null,"payload":null}"#,
            Err("negative"),
        );
        check(r#"{"topic":"t","offset":0}"#, Err("not a kcat -J record"));
        check("% Reached end of topic", Err("not a kcat -J record"));
    }
}
