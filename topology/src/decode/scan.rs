//! The envelope type of a record too large to parse (docs/semantics.md §1 "Size bound"): the
//! value's top-level keys are scanned up to `type` without parsing the rest.

use std::borrow::Cow;

/// The top-level `"type"` of a JSON object, found by scanning, not parsing: keys are compared
/// (unescaped only when they hold escapes) and every other member's value is skipped (strings by their quotes and
/// escapes, objects and arrays by nesting depth) up to the first top-level `type`. `None`: not
/// an object, no string `type` at the top, or malformed before it.
pub fn envelope_type(bytes: &[u8]) -> Option<Cow<'_, str>> {
    let mut i = skip_whitespace(bytes, 0);
    if bytes.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_whitespace(bytes, i);
        if bytes.get(i) != Some(&b'"') {
            return None; // `}` (no type) or not a key
        }
        let key_end = string_end(bytes, i)?;
        let key = &bytes[i..key_end];
        // A key with escapes is unescaped before the comparison (`"t\u0079pe"` is `type`).
        let is_type = match key.contains(&b'\\') {
            false => key == b"\"type\"",
            true => std::str::from_utf8(key)
                .ok()
                .and_then(|k| serde_json::from_str::<String>(k).ok())
                .is_some_and(|k| k == "type"),
        };
        i = skip_whitespace(bytes, key_end);
        if bytes.get(i) != Some(&b':') {
            return None;
        }
        i = skip_whitespace(bytes, i + 1);
        if is_type {
            let end = string_end(bytes, i)?;
            let text = std::str::from_utf8(&bytes[i..end]).ok()?;
            return match serde_json::from_str::<&str>(text) {
                Ok(borrowed) => Some(Cow::Borrowed(borrowed)),
                Err(_) => serde_json::from_str::<String>(text).ok().map(Cow::Owned),
            };
        }
        i = skip_whitespace(bytes, skip_value(bytes, i)?);
        match bytes.get(i)? {
            b',' => i += 1,
            _ => return None,
        }
    }
}

fn skip_whitespace(bytes: &[u8], mut i: usize) -> usize {
    while bytes.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

/// `bytes[start]` is `"`: the index after the string's closing quote.
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    if bytes.get(start) != Some(&b'"') {
        return None;
    }
    let mut i = start + 1;
    loop {
        match bytes.get(i)? {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// The index after the JSON value starting at `i` (not validated, only delimited).
fn skip_value(bytes: &[u8], mut i: usize) -> Option<usize> {
    match bytes.get(i)? {
        b'"' => string_end(bytes, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            loop {
                match bytes.get(i)? {
                    b'"' => {
                        i = string_end(bytes, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            while bytes
                .get(i)
                .is_some_and(|b| !matches!(b, b',' | b'}' | b']') && !b.is_ascii_whitespace())
            {
                i += 1;
            }
            Some(i)
        }
    }
}
