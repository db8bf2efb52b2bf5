//! Logging setup (`tracing`) and the credential scrubber every log line
//! passes through before it is written.
//!
//! Scrubbed: `DD-API-KEY`, `Authorization` and similar header values,
//! `api_key=` style query values, and any run of 32 or 40 hex characters
//! (the shape of Datadog API and application keys); the last 5 characters of
//! a bare key are kept so operators can tell keys apart. Nothing may write a
//! log line around this module.

use std::borrow::Cow;
use std::io::{self, Write};
use std::sync::OnceLock;

use regex::Regex;

use crate::config::LogFormat;

struct Patterns {
    header: Regex,
    query: Regex,
    hex: Regex,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| Patterns {
        header: Regex::new(
            r#"(?i)\b(dd-api-key|dd-application-key|x-api-key|authorization|proxy-authorization)(["']?\s*[:=]\s*["']?)((?:bearer|basic|token)\s+)?[^\s"',;&]+"#,
        )
        .expect("static regex"),
        query: Regex::new(r#"(?i)\b(api_key|apikey|application_key|app_key|dd_api_key)=[^&\s"'#]+"#).expect("static regex"),
        hex: Regex::new(r"\b[0-9a-fA-F]{32}(?:[0-9a-fA-F]{8})?\b").expect("static regex"),
    })
}

/// Removes credentials from `text`.
pub fn scrub(text: &str) -> Cow<'_, str> {
    let p = patterns();
    let a = p.header.replace_all(text, "$1$2$3********");
    let b = match p.query.replace_all(&a, "$1=********") {
        Cow::Borrowed(_) => a,
        Cow::Owned(s) => Cow::Owned(s),
    };
    let c = match p.hex.replace_all(&b, |caps: &regex::Captures| {
        let key = &caps[0];
        format!("***************************{}", &key[key.len() - 5..])
    }) {
        Cow::Borrowed(_) => b,
        Cow::Owned(s) => Cow::Owned(s),
    };
    match c {
        Cow::Borrowed(_) => Cow::Borrowed(text),
        Cow::Owned(s) => Cow::Owned(s),
    }
}

/// Writes each formatted event to stderr after scrubbing it.
pub struct ScrubbingWriter;

impl Write for ScrubbingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        io::stderr().lock().write_all(scrub(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `level`.
pub fn init(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| ScrubbingWriter)
        .with_target(false)
        .with_ansi(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn scrubs_every_shape() {
        for line in [
            format!("DD-API-KEY: {KEY}"),
            format!("dd-api-key={KEY}x"),
            format!("GET /api/v1/validate?api_key={KEY}&x=1"),
            format!("Authorization: Bearer {KEY}"),
            format!("key {KEY} in text"),
            format!("{{\"api_key\":\"{KEY}\"}}"),
            format!("path=/intake?apikey=secret{KEY}"),
        ] {
            let out = scrub(&line);
            assert!(!out.contains(KEY), "{line} -> {out}");
            assert!(!out.contains("secret"), "{line} -> {out}");
        }
        assert_eq!(scrub("Authorization: Bearer tok123"), "Authorization: Bearer ********");
        assert_eq!(scrub("nothing secret here"), "nothing secret here");
        assert!(scrub(&format!("k={KEY}")).ends_with("bcdef"));
    }
}
