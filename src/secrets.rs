//! Configuration values never leave the process (docs/decisions.md "Secrets"): every value of
//! `[kafka.properties]` (a password, a token, a misspelt key's value: ackwatch cannot tell
//! which are secret) and the credentials in configured URLs are registered here once the
//! configuration is loaded, and every line ackwatch writes — logs, `check` output, errors — is
//! scrubbed of them. URLs are shown without their userinfo wherever they are logged or used as
//! metric labels.

use std::sync::RwLock;

/// What a registered value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Values shorter than this are not registered: they are flags and small numbers ("all",
/// "1", "SSL"), not credentials, and replacing them would garble every line they occur in.
const SECRET_BYTES_MIN: usize = 4;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Registers `value` as a secret (longest first, so a secret containing another is replaced
/// whole). Values that are too short, numbers and booleans are left out.
pub fn register(value: &str) {
    let value = value.trim();
    let plain = value.len() < SECRET_BYTES_MIN
        || value.parse::<f64>().is_ok()
        || value.eq_ignore_ascii_case("true")
        || value.eq_ignore_ascii_case("false");
    if plain {
        return;
    }
    let mut secrets = SECRETS.write().expect("never poisoned: no panic under it");
    if !secrets.iter().any(|s| s == value) {
        secrets.push(value.to_string());
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// `text` with every registered secret replaced by [`REDACTED`].
pub fn scrub(text: &str) -> String {
    let secrets = SECRETS.read().expect("never poisoned: no panic under it");
    let mut text = text.to_string();
    for secret in secrets.iter() {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), REDACTED);
        }
    }
    text
}

/// `url` without its userinfo (`http://user:pw@host/` → `http://host/`), for logs and labels;
/// a string that is not a URL is shown as `[unparsable url]` (it may hold anything).
pub fn display_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        // Without userinfo the URL is shown as configured (the operator's spelling is what
        // they grep for in metrics labels); with it, the parsed form without it.
        Ok(parsed) if parsed.username().is_empty() && parsed.password().is_none() => {
            url.to_string()
        }
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        Err(_) => "[unparsable url]".to_string(),
    }
}

/// Registers the userinfo of `url` (user name and password) as secrets.
pub fn register_url(url: &str) {
    if let Ok(parsed) = reqwest::Url::parse(url) {
        register(parsed.username());
        if let Some(password) = parsed.password() {
            register(password);
        }
    }
}

/// A writer that scrubs what passes through it, for the log subscriber: one log event is one
/// write (the formatter writes each event whole), so a secret is never split across writes.
pub struct Scrubbing<W>(pub W);

impl<W: std::io::Write> std::io::Write for Scrubbing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(scrub(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Standard error, scrubbed: the log subscriber's writer.
pub fn stderr() -> Scrubbing<std::io::Stderr> {
    Scrubbing(std::io::stderr())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_values_and_url_credentials_are_scrubbed() {
        register("hunter2-long-secret");
        register("hunter2");
        register("all");
        register("30000");
        register_url("http://alice:pa55word@alertmanager:9093/");
        let check = |text: &str, expected: &str| assert_eq!(scrub(text), expected, "{text}");
        check(
            "password hunter2-long-secret and hunter2",
            "password [redacted] and [redacted]",
        );
        check("acks=all timeout 30000", "acks=all timeout 30000");
        check(
            "url http://alice:pa55word@am",
            "url http://[redacted]:[redacted]@am",
        );
        assert_eq!(
            display_url("http://alice:pa55word@alertmanager:9093/api"),
            "http://alertmanager:9093/api"
        );
        assert_eq!(display_url("http://am:9093"), "http://am:9093");
        assert_eq!(display_url("not a url pa55word"), "[unparsable url]");
    }
}
