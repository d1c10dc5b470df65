//! Decoding and classification of one input record (SPEC §1).
//!
//! Both envelopes decode to the same [`Decoded`] value: CloudEvents 1.0 structured (fields in
//! `data`) and the flat versioned envelope (fields at the top). Only the fields ackwatch uses
//! are looked at, borrowed from the record's bytes; everything else is skipped unparsed.
//! Records are classified by their event type, not by the topic they arrived on, so a
//! single-topic deployment (acks and activations on one topic) works too.

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::limits::{ETAG_BYTES_MAX, ID_BYTES_MAX, RECORD_VALUE_BYTES_MAX};
use crate::time::{parse_rfc3339_ms, Millis};
use crate::RunRef;

/// Which input topic a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Source {
    /// The activation topic (`activation`).
    Activation,
    /// The ACK topic (`control.activation.ack`).
    Ack,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Activation => "activation",
            Source::Ack => "ack",
        }
    }
}

/// One Kafka record as the engine sees it, borrowed from wherever it was read.
#[derive(Clone, Copy, Debug)]
pub struct RawRecord<'a> {
    pub source: Source,
    pub partition: i32,
    pub offset: i64,
    /// The record timestamp (CreateTime or LogAppendTime), if the record has one.
    pub timestamp_ms: Option<Millis>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

/// Apply phase of an activation (2-phase apply: freeze/drain, then unfreeze).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Freeze,
    Unfreeze,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Freeze => "freeze",
            Phase::Unfreeze => "unfreeze",
        }
    }
}

/// A tracked activation: `ActivationUpdated` with `requires_ack=true` and a sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Activation<'a> {
    pub run: RunRef<'a>,
    pub sequence: u64,
    pub phase: Option<Phase>,
    pub etag: Option<Cow<'a, str>>,
    pub event_ms: Millis,
}

/// An `ActivationAck` published by a Gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack<'a> {
    pub run: RunRef<'a>,
    pub sequence: u64,
    pub phase: Option<Phase>,
    pub event_ms: Millis,
}

/// The classification of one record (SPEC §1).
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
    Decoded::Invalid(Invalid { reason, detail: detail.into() })
}

/// The fields ackwatch reads, from either the top level or CloudEvents `data`. Each is kept
/// raw so a mistyped field is reported by name instead of failing the whole record.
#[derive(Deserialize)]
#[serde(bound(deserialize = "D: Deserialize<'de>"))]
struct Fields<'a, D> {
    #[serde(borrow)]
    specversion: Option<&'a RawValue>,
    #[serde(borrow, rename = "type")]
    event_type: Option<&'a RawValue>,
    #[serde(borrow)]
    version: Option<&'a RawValue>,
    #[serde(borrow)]
    time: Option<&'a RawValue>,
    data: Option<D>,
    #[serde(borrow)]
    world_id: Option<&'a RawValue>,
    #[serde(borrow)]
    run_id: Option<&'a RawValue>,
    #[serde(borrow)]
    sequence: Option<&'a RawValue>,
    #[serde(borrow)]
    requires_ack: Option<&'a RawValue>,
    #[serde(borrow)]
    phase: Option<&'a RawValue>,
    #[serde(borrow)]
    etag: Option<&'a RawValue>,
    #[serde(borrow)]
    ts: Option<&'a RawValue>,
    #[serde(borrow)]
    ack_ts: Option<&'a RawValue>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Activation,
    Ack,
    Other,
}

type FieldResult<T> = Result<T, Decoded<'static>>;

fn is_null(raw: Option<&RawValue>) -> bool {
    raw.is_none_or(|r| r.get() == "null")
}

fn string_field<'a>(raw: Option<&'a RawValue>, name: &'static str) -> FieldResult<Option<Cow<'a, str>>> {
    let Some(raw) = raw.filter(|r| r.get() != "null") else { return Ok(None) };
    if let Ok(s) = serde_json::from_str::<&str>(raw.get()) {
        return Ok(Some(Cow::Borrowed(s)));
    }
    match serde_json::from_str::<String>(raw.get()) {
        Ok(s) => Ok(Some(Cow::Owned(s))),
        Err(_) => Err(invalid(InvalidReason::MistypedField(name), format!("{name} is not a string"))),
    }
}

fn required_id<'a>(raw: Option<&'a RawValue>, name: &'static str) -> FieldResult<Cow<'a, str>> {
    match string_field(raw, name)? {
        None => Err(invalid(InvalidReason::MissingField(name), format!("{name} is missing"))),
        Some(s) if s.is_empty() => Err(invalid(InvalidReason::MissingField(name), format!("{name} is empty"))),
        Some(s) if s.len() > ID_BYTES_MAX => Err(invalid(
            InvalidReason::FieldTooLong(name),
            format!("{name} is {} bytes, more than {ID_BYTES_MAX}", s.len()),
        )),
        Some(s) => Ok(s),
    }
}

fn sequence_field(raw: Option<&RawValue>) -> FieldResult<u64> {
    let Some(raw) = raw.filter(|r| r.get() != "null") else {
        return Err(invalid(InvalidReason::MissingField("sequence"), "sequence is missing"));
    };
    if let Ok(n) = serde_json::from_str::<u64>(raw.get()) {
        return Ok(n);
    }
    if serde_json::from_str::<i64>(raw.get()).is_ok() {
        return Err(invalid(InvalidReason::NegativeSequence, format!("sequence {} is negative", raw.get())));
    }
    Err(invalid(InvalidReason::MistypedField("sequence"), "sequence is not an integer"))
}

fn phase_field(raw: Option<&RawValue>) -> FieldResult<Option<Phase>> {
    match string_field(raw, "phase")?.as_deref() {
        None => Ok(None),
        Some("freeze") => Ok(Some(Phase::Freeze)),
        Some("unfreeze") => Ok(Some(Phase::Unfreeze)),
        Some(_) => Err(invalid(InvalidReason::MistypedField("phase"), "phase is neither freeze nor unfreeze")),
    }
}

fn time_field(raw: Option<&RawValue>, name: &'static str) -> FieldResult<Option<Millis>> {
    let Some(text) = string_field(raw, name).map_err(|_| {
        invalid(InvalidReason::BadTimestamp(name), format!("{name} is not an RFC 3339 string"))
    })?
    else {
        return Ok(None);
    };
    match parse_rfc3339_ms(&text) {
        Some(ms) => Ok(Some(ms)),
        None => Err(invalid(InvalidReason::BadTimestamp(name), format!("{name} {text:?} is not RFC 3339"))),
    }
}

/// Decodes one record. Never panics, whatever the bytes (a property test holds it to that).
pub fn decode<'a>(record: &RawRecord<'a>) -> Decoded<'a> {
    match decode_inner(record) {
        Ok(decoded) | Err(decoded) => decoded,
    }
}

/// The fields of CloudEvents `data` (a `data` inside it is ignored).
type Data<'a> = Fields<'a, IgnoredAny>;

fn decode_inner<'a>(record: &RawRecord<'a>) -> Result<Decoded<'a>, Decoded<'static>> {
    let Some(bytes) = record.value else { return Err(invalid(InvalidReason::NoValue, "record has no value")) };
    if bytes.len() > RECORD_VALUE_BYTES_MAX {
        return Err(invalid(
            InvalidReason::TooLarge,
            format!("value is {} bytes, more than {RECORD_VALUE_BYTES_MAX}", bytes.len()),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| invalid(InvalidReason::NotUtf8, "value is not UTF-8"))?;
    // Fast path: one pass, with CloudEvents `data` parsed in place. It fails for anything
    // unusual (not JSON, `data` not an object, duplicate fields ...); the slow path then
    // classifies precisely.
    if let Ok(mut top) = serde_json::from_str::<Fields<'_, Data<'_>>>(text) {
        let data = top.data.take();
        return classify(record, &top, move || Ok(data));
    }
    let top = parse_object(text)?;
    let raw_data = top.data.filter(|d| d.get() != "null");
    classify(record, &top, move || match raw_data {
        None => Ok(None),
        Some(raw) => serde_json::from_str::<Data<'_>>(raw.get())
            .map(Some)
            .map_err(|_| invalid(InvalidReason::BadEnvelope, "CloudEvents data is not a JSON object")),
    })
}

/// Dispatches on the envelope; `data` yields CloudEvents `data` when it is needed.
fn classify<'a, D>(
    record: &RawRecord<'a>,
    top: &Fields<'a, D>,
    data: impl FnOnce() -> FieldResult<Option<Data<'a>>>,
) -> Result<Decoded<'a>, Decoded<'static>> {
    if !is_null(top.specversion) {
        match string_field(top.specversion, "specversion")?.as_deref() {
            Some("1.0") => {}
            _ => return Err(invalid(InvalidReason::UnsupportedVersion, "CloudEvents specversion is not \"1.0\"")),
        }
        let kind = event_kind(top.event_type)?;
        if kind == Kind::Other {
            return Ok(Decoded::Untracked);
        }
        let fields = data()?.ok_or_else(|| invalid(InvalidReason::BadEnvelope, "CloudEvents record has no data"))?;
        return match kind {
            Kind::Activation => activation(record, &fields, top.time),
            _ => ack(record, &fields, top.time),
        };
    }
    let kind = event_kind(top.event_type)?;
    if kind == Kind::Other {
        return Ok(Decoded::Untracked);
    }
    // The flat envelope's `version` is the schema version; only 1 exists.
    if !is_null(top.version) && top.version.map(RawValue::get) != Some("1") {
        return Err(invalid(InvalidReason::UnsupportedVersion, "flat envelope version is not 1"));
    }
    match kind {
        Kind::Activation => activation(record, top, None),
        _ => ack(record, top, None),
    }
}

fn parse_object(text: &str) -> FieldResult<Fields<'_, &RawValue>> {
    // Classify precisely: JSON that is not an object differs from text that is not JSON.
    let trimmed = text.trim_start();
    if !trimmed.starts_with('{') {
        return Err(match serde_json::from_str::<&RawValue>(text) {
            Ok(_) => invalid(InvalidReason::NotObject, "value is JSON but not an object"),
            Err(e) => invalid(InvalidReason::NotJson, format!("value is not JSON: {e}")),
        });
    }
    serde_json::from_str::<Fields<'_, &RawValue>>(text)
        .map_err(|e| invalid(InvalidReason::NotJson, format!("value is not a valid JSON object: {e}")))
}

fn event_kind(raw: Option<&RawValue>) -> FieldResult<Kind> {
    match string_field(raw, "type")?.as_deref() {
        None => Err(invalid(InvalidReason::MissingType, "record has no event type")),
        Some("activation_updated" | "ActivationUpdated") => Ok(Kind::Activation),
        Some("activation_ack" | "ActivationAck") => Ok(Kind::Ack),
        Some(_) => Ok(Kind::Other),
    }
}

fn run_key<'a, D>(record: &RawRecord<'a>, fields: &Fields<'a, D>) -> FieldResult<RunRef<'a>> {
    let world_id = required_id(fields.world_id, "world_id")?;
    let run_id = required_id(fields.run_id, "run_id")?;
    match record.key {
        Some(key) if key == world_id.as_bytes() => Ok(RunRef { world_id, run_id }),
        Some(key) => Err(invalid(
            InvalidReason::KeyMismatch,
            format!("record key {:?} is not world_id {world_id:?}", String::from_utf8_lossy(key)),
        )),
        None => Err(invalid(InvalidReason::KeyMismatch, format!("record has no key; expected world_id {world_id:?}"))),
    }
}

fn activation<'a, D>(
    record: &RawRecord<'a>,
    fields: &Fields<'a, D>,
    envelope_time: Option<&RawValue>,
) -> Result<Decoded<'a>, Decoded<'static>> {
    let requires_ack = match fields.requires_ack.filter(|r| r.get() != "null").map(RawValue::get) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(invalid(InvalidReason::MistypedField("requires_ack"), "requires_ack is not a boolean")),
    };
    if !requires_ack {
        return Ok(Decoded::Untracked);
    }
    let sequence = sequence_field(fields.sequence)?;
    let run = run_key(record, fields)?;
    let phase = phase_field(fields.phase)?;
    let etag = match string_field(fields.etag, "etag")? {
        Some(e) if e.len() > ETAG_BYTES_MAX => {
            return Err(invalid(InvalidReason::FieldTooLong("etag"), format!("etag is more than {ETAG_BYTES_MAX} bytes")))
        }
        e => e,
    };
    let event_ms = match time_field(fields.ts, "ts")? {
        Some(ms) => Some(ms),
        None => time_field(envelope_time, "time")?,
    }
    .or(record.timestamp_ms)
        .ok_or_else(|| invalid(InvalidReason::NoEventTime, "no ts, no CloudEvents time and no record timestamp"))?;
    Ok(Decoded::Tracked(Activation { run, sequence, phase, etag, event_ms }))
}

fn ack<'a, D>(
    record: &RawRecord<'a>,
    fields: &Fields<'a, D>,
    envelope_time: Option<&RawValue>,
) -> Result<Decoded<'a>, Decoded<'static>> {
    let sequence = sequence_field(fields.sequence)?;
    let run = run_key(record, fields)?;
    let phase = phase_field(fields.phase)?;
    let event_ms = match time_field(fields.ack_ts, "ack_ts")? {
        Some(ms) => Some(ms),
        None => match time_field(fields.ts, "ts")? {
            Some(ms) => Some(ms),
            None => time_field(envelope_time, "time")?,
        },
    }
    .or(record.timestamp_ms)
        .ok_or_else(|| invalid(InvalidReason::NoEventTime, "no ack_ts, ts, CloudEvents time or record timestamp"))?;
    Ok(Decoded::Ack(Ack { run, sequence, phase, event_ms }))
}
