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
pub use crate::side::Side;
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

/// A field's JSON value, read in the one pass over the record (the fast path). Strings stay
/// borrowed from the record unless they contain escapes.
#[derive(Debug)]
enum Val<'a> {
    Null,
    Bool(bool),
    Unsigned(u64),
    Negative,
    Float,
    Str(Cow<'a, str>),
    Composite,
}

impl<'de: 'a, 'a> Deserialize<'de> for Val<'a> {
    fn deserialize<De: serde::Deserializer<'de>>(deserializer: De) -> Result<Self, De::Error> {
        deserializer.deserialize_any(ValVisitor(std::marker::PhantomData))
    }
}

struct ValVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> serde::de::Visitor<'de> for ValVisitor<'a> {
    type Value = Val<'a>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Val<'a>, E> {
        Ok(Val::Bool(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Val<'a>, E> {
        Ok(Val::Unsigned(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Val<'a>, E> {
        Ok(if v >= 0 {
            Val::Unsigned(v as u64)
        } else {
            Val::Negative
        })
    }
    fn visit_f64<E>(self, _: f64) -> Result<Val<'a>, E> {
        Ok(Val::Float)
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Val<'a>, E> {
        Ok(Val::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Val<'a>, E> {
        Ok(Val::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Val<'a>, E> {
        Ok(Val::Str(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Val<'a>, E> {
        Ok(Val::Null)
    }
    fn visit_none<E>(self) -> Result<Val<'a>, E> {
        Ok(Val::Null)
    }
    fn visit_some<De: serde::Deserializer<'de>>(self, d: De) -> Result<Val<'a>, De::Error> {
        Val::deserialize(d)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Val<'a>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Val::Composite)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Val<'a>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Val::Composite)
    }
}

/// What classification asks of a field value; the fast path's [`Val`] and the precise path's
/// raw JSON answer it identically (a property test holds the two paths to that).
trait Value<'a> {
    fn is_null(&self) -> bool;
    /// `Err` when the value is not a string.
    fn string(&self) -> Result<Cow<'a, str>, ()>;
    fn integer(&self) -> Integer;
    /// `Err` when the value is not a boolean.
    fn boolean(&self) -> Result<bool, ()>;
    fn is_one(&self) -> bool;
}

enum Integer {
    Unsigned(u64),
    Negative,
    Other,
}

impl<'a> Value<'a> for Val<'a> {
    fn is_null(&self) -> bool {
        matches!(self, Val::Null)
    }
    fn string(&self) -> Result<Cow<'a, str>, ()> {
        match self {
            Val::Str(s) => Ok(s.clone()),
            _ => Err(()),
        }
    }
    fn integer(&self) -> Integer {
        match self {
            Val::Unsigned(n) => Integer::Unsigned(*n),
            Val::Negative => Integer::Negative,
            _ => Integer::Other,
        }
    }
    fn boolean(&self) -> Result<bool, ()> {
        match self {
            Val::Bool(b) => Ok(*b),
            _ => Err(()),
        }
    }
    fn is_one(&self) -> bool {
        matches!(self, Val::Unsigned(1))
    }
}

impl<'a> Value<'a> for &'a RawValue {
    fn is_null(&self) -> bool {
        self.get() == "null"
    }
    fn string(&self) -> Result<Cow<'a, str>, ()> {
        if let Ok(s) = serde_json::from_str::<&'a str>(self.get()) {
            return Ok(Cow::Borrowed(s));
        }
        serde_json::from_str::<String>(self.get())
            .map(Cow::Owned)
            .map_err(|_| ())
    }
    fn integer(&self) -> Integer {
        if let Ok(n) = serde_json::from_str::<u64>(self.get()) {
            Integer::Unsigned(n)
        } else if serde_json::from_str::<i64>(self.get()).is_ok() {
            Integer::Negative
        } else {
            Integer::Other
        }
    }
    fn boolean(&self) -> Result<bool, ()> {
        serde_json::from_str::<bool>(self.get()).map_err(|_| ())
    }
    fn is_one(&self) -> bool {
        self.get() == "1"
    }
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

fn phase_field<'a, V: Value<'a>>(raw: Option<&V>) -> FieldResult<Option<Phase>> {
    match string_field(raw, "phase")?.as_deref() {
        None => Ok(None),
        Some("freeze") => Ok(Some(Phase::Freeze)),
        Some("unfreeze") => Ok(Some(Phase::Unfreeze)),
        Some(_) => Err(invalid(
            InvalidReason::MistypedField("phase"),
            "phase is neither freeze nor unfreeze",
        )),
    }
}

fn time_field<'a, V: Value<'a>>(
    raw: Option<&V>,
    name: &'static str,
) -> FieldResult<Option<Millis>> {
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
        Some(ms) => Ok(Some(ms)),
        None => Err(invalid(
            InvalidReason::BadTimestamp(name),
            format!("{name} {text:?} is not RFC 3339"),
        )),
    }
}

/// Decodes one record. Never panics, whatever the bytes (a property test holds it to that).
pub fn decode<'a>(record: &RawRecord<'a>) -> Decoded<'a> {
    match decode_inner(record) {
        Ok(decoded) | Err(decoded) => decoded,
    }
}

/// The fields of CloudEvents `data` (a `data` inside it is ignored).
type Data<V> = Fields<V, IgnoredAny>;

/// Decodes with the precise path only. The same result as [`decode`], slower; for tests that
/// hold the two paths to agreeing.
#[doc(hidden)]
pub fn decode_precise<'a>(record: &RawRecord<'a>) -> Decoded<'a> {
    match check_value(record).and_then(|text| precise(record, text)) {
        Ok(decoded) | Err(decoded) => decoded,
    }
}

fn check_value<'a>(record: &RawRecord<'a>) -> FieldResult<&'a str> {
    let Some(bytes) = record.value else {
        return Err(invalid(InvalidReason::NoValue, "record has no value"));
    };
    if bytes.len() > RECORD_VALUE_BYTES_MAX {
        return Err(invalid(
            InvalidReason::TooLarge,
            format!(
                "value is {} bytes, more than {RECORD_VALUE_BYTES_MAX}",
                bytes.len()
            ),
        ));
    }
    std::str::from_utf8(bytes).map_err(|_| invalid(InvalidReason::NotUtf8, "value is not UTF-8"))
}

fn decode_inner<'a>(record: &RawRecord<'a>) -> Result<Decoded<'a>, Decoded<'static>> {
    let text = check_value(record)?;
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
        Some("activation_updated" | "ActivationUpdated") => Ok(Kind::Activation),
        Some("activation_ack" | "ActivationAck") => Ok(Kind::Ack),
        Some(_) => Ok(Kind::Other),
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
    let event_ms = match time_field(fields.ts.as_ref(), "ts")? {
        Some(ms) => Some(ms),
        None => time_field(envelope_time, "time")?,
    }
    .or(record.timestamp_ms)
    .ok_or_else(|| {
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
    let phase = phase_field(fields.phase.as_ref())?;
    let event_ms = match time_field(fields.ack_ts.as_ref(), "ack_ts")? {
        Some(ms) => Some(ms),
        None => match time_field(fields.ts.as_ref(), "ts")? {
            Some(ms) => Some(ms),
            None => time_field(envelope_time, "time")?,
        },
    }
    .or(record.timestamp_ms)
    .ok_or_else(|| {
        invalid(
            InvalidReason::NoEventTime,
            "no ack_ts, ts, CloudEvents time or record timestamp",
        )
    })?;
    Ok(Decoded::Ack(Ack {
        run,
        sequence,
        phase,
        event_ms,
    }))
}
