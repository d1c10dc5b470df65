//! A field's JSON value as classification reads it. The fast path reads every field as a typed
//! [`Val`] in one pass over the record; the precise path keeps each field as raw JSON to say
//! which one is malformed. Both answer the [`Value`] questions identically (a property test in
//! `topology/tests/decode.rs` holds the two paths to that).

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;

/// A field's JSON value, read in the one pass over the record (the fast path). Strings stay
/// borrowed from the record unless they contain escapes.
#[derive(Debug)]
pub(super) enum Val<'a> {
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
pub(super) trait Value<'a> {
    fn is_null(&self) -> bool;
    /// `Err` when the value is not a string.
    fn string(&self) -> Result<Cow<'a, str>, ()>;
    fn integer(&self) -> Integer;
    /// `Err` when the value is not a boolean.
    fn boolean(&self) -> Result<bool, ()>;
    fn is_one(&self) -> bool;
}

pub(super) enum Integer {
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
