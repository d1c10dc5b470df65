//! Decoding and classification of one input record (docs/semantics.md §1).
//!
//! Both envelopes decode to the same [`Decoded`] value: CloudEvents 1.0 structured (fields in
//! `data`) and the flat versioned envelope (fields at the top). Only the fields ackwatch uses
//! are looked at, borrowed from the record's bytes; everything else is skipped unparsed.
//! Records are classified by their event type, not by the topic they arrived on, so a
//! single-topic deployment (acks and activations on one topic) works too.
//!
//! - this file: the decoded types, the fields and their rules, event times, classification;
//! - `value.rs`: a field's JSON value as both decoding paths read it;
//! - `scan.rs`: the envelope type of a record too large to parse.

mod scan;
mod value;

pub use scan::envelope_type;
use value::{Integer, Val, Value};

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::limits::{ETAG_BYTES_MAX, ID_BYTES_MAX, RECORD_VALUE_BYTES_DEFAULT};
pub use crate::side::Side;
use crate::time::{parse_rfc3339_ms, Millis};
use crate::RunRef;

/// One Kafka record as the engine sees it, borrowed from wherever it was read.
#[derive(Clone, Copy, Debug)]
pub struct RawRecord<'a> {
    pub side: Side,
    pub partition: i32,
    pub offset: i64,
    /// The record timestamp (CreateTime or LogAppendTime), if the record has one.
    pub timestamp_ms: Option<Millis>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

/// Apply phase of a tracked activation (2-phase apply: freeze/drain, then unfreeze);
/// `Unknown` when the activation has none (it is tracked all the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Freeze,
    Unfreeze,
    Unknown,
}

impl Phase {
    pub const ALL: [Phase; 3] = [Phase::Freeze, Phase::Unfreeze, Phase::Unknown];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Freeze => "freeze",
            Phase::Unfreeze => "unfreeze",
            Phase::Unknown => "unknown",
        }
    }
}

/// A tracked activation: `ActivationUpdated` with `requires_ack=true` and a sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Activation<'a> {
    pub run: RunRef<'a>,
    pub sequence: u64,
    pub phase: Phase,
    pub etag: Option<Cow<'a, str>>,
    pub event_ms: Millis,
}

/// An `ActivationAck` published by a Gateway. Its `phase` is informational (the Gateway writes
/// `"unknown"` for an activation without one) and never read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack<'a> {
    pub run: RunRef<'a>,
    pub sequence: u64,
    pub event_ms: Millis,
}

/// The classification of one record (docs/semantics.md §1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    Tracked(Activation<'a>),
    Ack(Ack<'a>),
    /// An activation without `requires_ack`, or any other ControlBus event.
    Untracked,
    Invalid(Invalid),
}

/// Why a record is invalid. `label()` is the stable name used in metrics and DLQ headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InvalidReason {
    NoValue,
    TooLarge,
    NotUtf8,
    NotJson,
    NotObject,
    MissingType,
    BadEnvelope,
    UnsupportedVersion,
    MissingField(&'static str),
    MistypedField(&'static str),
    FieldTooLong(&'static str),
    NegativeSequence,
    BadTimestamp(&'static str),
    NoEventTime,
    KeyMismatch,
}

impl InvalidReason {
    /// Every label, for pre-registering metrics.
    pub const LABELS: [&'static str; 15] = [
        "no_value",
        "too_large",
        "not_utf8",
        "not_json",
        "not_object",
        "missing_type",
        "bad_envelope",
        "unsupported_version",
        "missing_field",
        "mistyped_field",
        "field_too_long",
        "negative_sequence",
        "bad_timestamp",
        "no_event_time",
        "key_mismatch",
    ];

    pub fn label(&self) -> &'static str {
        use InvalidReason::*;
        match self {
            NoValue => "no_value",
            TooLarge => "too_large",
            NotUtf8 => "not_utf8",
            NotJson => "not_json",
            NotObject => "not_object",
            MissingType => "missing_type",
            BadEnvelope => "bad_envelope",
            UnsupportedVersion => "unsupported_version",
            MissingField(_) => "missing_field",
            MistypedField(_) => "mistyped_field",
            FieldTooLong(_) => "field_too_long",
            NegativeSequence => "negative_sequence",
            BadTimestamp(_) => "bad_timestamp",
            NoEventTime => "no_event_time",
            KeyMismatch => "key_mismatch",
        }
    }
}

/// An invalid record's reason and a one-line explanation for the dead-letter header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub reason: InvalidReason,
    pub detail: String,
}

fn invalid(reason: InvalidReason, detail: impl Into<String>) -> Decoded<'static> {
    Decoded::Invalid(Invalid {
        reason,
        detail: detail.into(),
    })
}

/// The fields ackwatch reads, from either the top level or CloudEvents `data`. Each is kept
/// raw so a mistyped field is reported by name instead of failing the whole record.
#[derive(Deserialize)]
#[serde(bound(deserialize = "V: Deserialize<'de>, D: Deserialize<'de>"))]
struct Fields<V, D> {
    specversion: Option<V>,
    #[serde(rename = "type")]
    event_type: Option<V>,
    version: Option<V>,
    time: Option<V>,
    data: Option<D>,
    world_id: Option<V>,
    run_id: Option<V>,
    sequence: Option<V>,
    requires_ack: Option<V>,
    phase: Option<V>,
    etag: Option<V>,
    ts: Option<V>,
    ack_ts: Option<V>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Activation,
    Ack,
    Other,
}

type FieldResult<T> = Result<T, Decoded<'static>>;

fn is_null<'a, V: Value<'a>>(raw: Option<&V>) -> bool {
    raw.is_none_or(|r| r.is_null())
}

fn string_field<'a, V: Value<'a>>(
    raw: Option<&V>,
    name: &'static str,
) -> FieldResult<Option<Cow<'a, str>>> {
    let Some(raw) = raw.filter(|r| !r.is_null()) else {
        return Ok(None);
    };
    raw.string().map(Some).map_err(|()| {
        invalid(
            InvalidReason::MistypedField(name),
            format!("{name} is not a string"),
        )
    })
}

fn required_id<'a, V: Value<'a>>(raw: Option<&V>, name: &'static str) -> FieldResult<Cow<'a, str>> {
    match string_field(raw, name)? {
        None => Err(invalid(
            InvalidReason::MissingField(name),
            format!("{name} is missing"),
        )),
        Some(s) if s.is_empty() => Err(invalid(
            InvalidReason::MissingField(name),
            format!("{name} is empty"),
        )),
        Some(s) if s.len() > ID_BYTES_MAX => Err(invalid(
            InvalidReason::FieldTooLong(name),
            format!("{name} is {} bytes, more than {ID_BYTES_MAX}", s.len()),
        )),
        Some(s) => Ok(s),
    }
}

fn sequence_field<'a, V: Value<'a>>(raw: Option<&V>) -> FieldResult<u64> {
    let Some(raw) = raw.filter(|r| !r.is_null()) else {
        return Err(invalid(
            InvalidReason::MissingField("sequence"),
            "sequence is missing",
        ));
    };
    match raw.integer() {
        Integer::Unsigned(n) => Ok(n),
        Integer::Negative => Err(invalid(
            InvalidReason::NegativeSequence,
            "sequence is negative",
        )),
        Integer::Other => Err(invalid(
            InvalidReason::MistypedField("sequence"),
            "sequence is not an integer",
        )),
    }
}

/// An activation's phase: `freeze`, `unfreeze`, or absent/null (`Unknown`); anything else
/// makes the tracked activation invalid.
fn phase_field<'a, V: Value<'a>>(raw: Option<&V>) -> FieldResult<Phase> {
    match string_field(raw, "phase")?.as_deref() {
        None => Ok(Phase::Unknown),
        Some("freeze") => Ok(Phase::Freeze),
        Some("unfreeze") => Ok(Phase::Unfreeze),
        Some(_) => Err(invalid(
            InvalidReason::MistypedField("phase"),
            "phase is neither freeze nor unfreeze (nor absent)",
        )),
    }
}

/// A payload time: its milliseconds, and whether its text had a fractional second.
#[derive(Clone, Copy, Debug)]
struct Stamp {
    ms: Millis,
    whole_second: bool,
}

fn time_field<'a, V: Value<'a>>(raw: Option<&V>, name: &'static str) -> FieldResult<Option<Stamp>> {
    let Some(text) = string_field(raw, name).map_err(|_| {
        invalid(
            InvalidReason::BadTimestamp(name),
            format!("{name} is not an RFC 3339 string"),
        )
    })?
    else {
        return Ok(None);
    };
    match parse_rfc3339_ms(&text) {
        Some(ms) => Ok(Some(Stamp {
            ms,
            whole_second: !has_fraction(&text),
        })),
        None => Err(invalid(
            InvalidReason::BadTimestamp(name),
            format!("{name} {text:?} is not RFC 3339"),
        )),
    }
}

/// Whether an RFC 3339 text has a fractional second (`…:01.003Z`), i.e. a `.` right after the
/// seconds of `YYYY-MM-DDTHH:MM:SS`.
fn has_fraction(text: &str) -> bool {
    text.as_bytes().get(19) == Some(&b'.')
}

/// semantics §1 "Truncated times": a payload time without a fractional second may have been cut to
/// the second; the first of the CloudEvents `time` and the record timestamp that lies in
/// [that second, that second + 1000 ms) is the event time instead.
/// The candidates are computed only when needed (parsing `time` costs as much as `ts`).
fn refine(stamp: Stamp, candidates: impl FnOnce() -> [Option<Millis>; 2]) -> Millis {
    if !stamp.whole_second {
        return stamp.ms;
    }
    candidates()
        .into_iter()
        .flatten()
        .find(|c| (stamp.ms..stamp.ms.saturating_add(1000)).contains(c))
        .unwrap_or(stamp.ms)
}

/// The CloudEvents `time` as a refinement candidate: a malformed one is no candidate (it is
/// not the event time, so it does not make the record invalid).
fn candidate_time<'a, V: Value<'a>>(envelope_time: Option<&V>) -> Option<Millis> {
    time_field(envelope_time, "time")
        .ok()
        .flatten()
        .map(|s| s.ms)
}

/// The event time of a record from its payload times in order of precedence: the first that
/// is present (refined when cut to the second), else the CloudEvents `time`, else the record
/// timestamp.
fn event_time<'a, V: Value<'a>>(
    record: &RawRecord<'a>,
    payload: &[(Option<&V>, &'static str)],
    envelope_time: Option<&V>,
) -> FieldResult<Option<Millis>> {
    for &(raw, name) in payload {
        if let Some(stamp) = time_field(raw, name)? {
            let candidates = || [candidate_time(envelope_time), record.timestamp_ms];
            return Ok(Some(refine(stamp, candidates)));
        }
    }
    Ok(time_field(envelope_time, "time")?
        .map(|s| s.ms)
        .or(record.timestamp_ms))
}

/// Decodes one record under the default size bound (`RECORD_VALUE_BYTES_DEFAULT`). Never
/// panics, whatever the bytes (a property test holds it to that).
pub fn decode<'a>(record: &RawRecord<'a>) -> Decoded<'a> {
    decode_with(record, RECORD_VALUE_BYTES_DEFAULT)
}

/// [`decode`] with the size bound `max_record_bytes` (the policy's).
pub fn decode_with<'a>(record: &RawRecord<'a>, max_record_bytes: usize) -> Decoded<'a> {
    match decode_inner(record, max_record_bytes) {
        Ok(decoded) | Err(decoded) => decoded,
    }
}

/// The fields of CloudEvents `data` (a `data` inside it is ignored).
type Data<V> = Fields<V, IgnoredAny>;

/// Decodes with the precise path only. The same result as [`decode`], slower; for tests that
/// hold the two paths to agreeing.
#[doc(hidden)]
pub fn decode_precise<'a>(record: &RawRecord<'a>) -> Decoded<'a> {
    match check_value(record, RECORD_VALUE_BYTES_DEFAULT).and_then(|text| precise(record, text)) {
        Ok(decoded) | Err(decoded) => decoded,
    }
}

/// The value as text, when it is within the size bound. Over the bound a record is classified
/// by its envelope type alone (docs/semantics.md §1): the activation and ACK types are `too_large` (a
/// tracked activation cannot be told from an untracked one without parsing), every other type
/// is untracked; a value whose type cannot be found is `too_large` too.
fn check_value<'a>(record: &RawRecord<'a>, max_record_bytes: usize) -> FieldResult<&'a str> {
    let Some(bytes) = record.value else {
        return Err(invalid(InvalidReason::NoValue, "record has no value"));
    };
    if bytes.len() > max_record_bytes {
        let kind = envelope_type(bytes).map(|t| kind_of_type(&t));
        return Err(match kind {
            Some(Kind::Other) => Decoded::Untracked,
            _ => invalid(
                InvalidReason::TooLarge,
                format!(
                    "value is {} bytes, more than {max_record_bytes}",
                    bytes.len()
                ),
            ),
        });
    }
    std::str::from_utf8(bytes).map_err(|_| invalid(InvalidReason::NotUtf8, "value is not UTF-8"))
}

fn decode_inner<'a>(
    record: &RawRecord<'a>,
    max_record_bytes: usize,
) -> Result<Decoded<'a>, Decoded<'static>> {
    let text = check_value(record, max_record_bytes)?;
    // Fast path: one pass, every field read as a typed value, CloudEvents `data` in place.
    // It fails only for malformed JSON, a value that is not an object, `data` that is not an
    // object, or duplicate fields; the precise path then says which.
    if let Ok(mut top) = serde_json::from_str::<Fields<Val<'a>, Data<Val<'a>>>>(text) {
        let data = top.data.take();
        return classify(record, &top, move || Ok(data));
    }
    precise(record, text)
}

fn precise<'a>(record: &RawRecord<'a>, text: &'a str) -> Result<Decoded<'a>, Decoded<'static>> {
    let top = parse_object(text)?;
    let raw_data = top.data.filter(|d| d.get() != "null");
    classify(record, &top, move || match raw_data {
        None => Ok(None),
        Some(raw) => serde_json::from_str::<Data<&'a RawValue>>(raw.get())
            .map(Some)
            .map_err(|_| {
                invalid(
                    InvalidReason::BadEnvelope,
                    "CloudEvents data is not a JSON object",
                )
            }),
    })
}

/// Dispatches on the envelope; `data` yields CloudEvents `data` when it is needed.
fn classify<'a, V: Value<'a>, D>(
    record: &RawRecord<'a>,
    top: &Fields<V, D>,
    data: impl FnOnce() -> FieldResult<Option<Data<V>>>,
) -> Result<Decoded<'a>, Decoded<'static>> {
    if !is_null(top.specversion.as_ref()) {
        match string_field(top.specversion.as_ref(), "specversion")?.as_deref() {
            Some("1.0") => {}
            _ => {
                return Err(invalid(
                    InvalidReason::UnsupportedVersion,
                    "CloudEvents specversion is not \"1.0\"",
                ))
            }
        }
        let kind = event_kind(top.event_type.as_ref())?;
        if kind == Kind::Other {
            return Ok(Decoded::Untracked);
        }
        let fields = data()?
            .ok_or_else(|| invalid(InvalidReason::BadEnvelope, "CloudEvents record has no data"))?;
        return match kind {
            Kind::Activation => activation(record, &fields, top.time.as_ref()),
            _ => ack(record, &fields, top.time.as_ref()),
        };
    }
    let kind = event_kind(top.event_type.as_ref())?;
    if kind == Kind::Other {
        return Ok(Decoded::Untracked);
    }
    // The flat envelope's `version` is the schema version; only 1 exists.
    if !is_null(top.version.as_ref()) && !top.version.as_ref().is_some_and(|v| v.is_one()) {
        return Err(invalid(
            InvalidReason::UnsupportedVersion,
            "flat envelope version is not 1",
        ));
    }
    match kind {
        Kind::Activation => activation(record, top, None),
        _ => ack(record, top, None),
    }
}

fn parse_object(text: &str) -> FieldResult<Fields<&RawValue, &RawValue>> {
    // Classify precisely: JSON that is not an object differs from text that is not JSON.
    let trimmed = text.trim_start();
    if !trimmed.starts_with('{') {
        return Err(match serde_json::from_str::<&RawValue>(text) {
            Ok(_) => invalid(InvalidReason::NotObject, "value is JSON but not an object"),
            Err(e) => invalid(InvalidReason::NotJson, format!("value is not JSON: {e}")),
        });
    }
    serde_json::from_str::<Fields<&RawValue, &RawValue>>(text).map_err(|e| {
        invalid(
            InvalidReason::NotJson,
            format!("value is not a valid JSON object: {e}"),
        )
    })
}

fn event_kind<'a, V: Value<'a>>(raw: Option<&V>) -> FieldResult<Kind> {
    match string_field(raw, "type")?.as_deref() {
        None => Err(invalid(
            InvalidReason::MissingType,
            "record has no event type",
        )),
        Some(t) => Ok(kind_of_type(t)),
    }
}

/// The event types ackwatch tracks, in both envelopes' spellings; any other type is untracked.
fn kind_of_type(event_type: &str) -> Kind {
    match event_type {
        "activation_updated" | "ActivationUpdated" => Kind::Activation,
        "activation_ack" | "ActivationAck" => Kind::Ack,
        _ => Kind::Other,
    }
}

fn run_key<'a, V: Value<'a>, D>(
    record: &RawRecord<'a>,
    fields: &Fields<V, D>,
) -> FieldResult<RunRef<'a>> {
    let world_id = required_id(fields.world_id.as_ref(), "world_id")?;
    let run_id = required_id(fields.run_id.as_ref(), "run_id")?;
    match record.key {
        Some(key) if key == world_id.as_bytes() => Ok(RunRef { world_id, run_id }),
        Some(key) => Err(invalid(
            InvalidReason::KeyMismatch,
            format!(
                "record key {:?} is not world_id {world_id:?}",
                String::from_utf8_lossy(key)
            ),
        )),
        None => Err(invalid(
            InvalidReason::KeyMismatch,
            format!("record has no key; expected world_id {world_id:?}"),
        )),
    }
}

fn activation<'a, V: Value<'a>, D>(
    record: &RawRecord<'a>,
    fields: &Fields<V, D>,
    envelope_time: Option<&V>,
) -> Result<Decoded<'a>, Decoded<'static>> {
    let requires_ack = match fields
        .requires_ack
        .as_ref()
        .filter(|r| !r.is_null())
        .map(|r| r.boolean())
    {
        None | Some(Ok(false)) => false,
        Some(Ok(true)) => true,
        Some(Err(())) => {
            return Err(invalid(
                InvalidReason::MistypedField("requires_ack"),
                "requires_ack is not a boolean",
            ))
        }
    };
    if !requires_ack {
        return Ok(Decoded::Untracked);
    }
    let sequence = sequence_field(fields.sequence.as_ref())?;
    let run = run_key(record, fields)?;
    let phase = phase_field(fields.phase.as_ref())?;
    let etag = match string_field(fields.etag.as_ref(), "etag")? {
        Some(e) if e.len() > ETAG_BYTES_MAX => {
            return Err(invalid(
                InvalidReason::FieldTooLong("etag"),
                format!("etag is more than {ETAG_BYTES_MAX} bytes"),
            ))
        }
        e => e,
    };
    let event_ms =
        event_time(record, &[(fields.ts.as_ref(), "ts")], envelope_time)?.ok_or_else(|| {
            invalid(
                InvalidReason::NoEventTime,
                "no ts, no CloudEvents time and no record timestamp",
            )
        })?;
    Ok(Decoded::Tracked(Activation {
        run,
        sequence,
        phase,
        etag,
        event_ms,
    }))
}

fn ack<'a, V: Value<'a>, D>(
    record: &RawRecord<'a>,
    fields: &Fields<V, D>,
    envelope_time: Option<&V>,
) -> Result<Decoded<'a>, Decoded<'static>> {
    let sequence = sequence_field(fields.sequence.as_ref())?;
    let run = run_key(record, fields)?;
    let payload = [
        (fields.ack_ts.as_ref(), "ack_ts"),
        (fields.ts.as_ref(), "ts"),
    ];
    let event_ms = event_time(record, &payload, envelope_time)?.ok_or_else(|| {
        invalid(
            InvalidReason::NoEventTime,
            "no ack_ts, ts, CloudEvents time or record timestamp",
        )
    })?;
    Ok(Decoded::Ack(Ack {
        run,
        sequence,
        event_ms,
    }))
}
