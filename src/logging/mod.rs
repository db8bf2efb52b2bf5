//! Logging setup (`tracing`) and the credential scrubber every log line
//! passes through before it is written.
//!
//! Scrubbed: `DD-API-KEY`, `Authorization` and similar header values,
//! `api_key=` style query values, and any run of 32 or 40 hex characters
//! (the shape of Datadog API and application keys); the last 5 characters of
//! a bare key are kept so operators can tell keys apart. Nothing may write a
//! log line around this module.
//!
//! The level filter sits behind a `tracing_subscriber::reload` layer so the
//! control loop can change it at runtime ([`set_filter`]: the admin API and
//! config reload). Disabled call sites stay cached as disabled: the hot path
//! pays nothing for the reload layer.
//!
//! Failures that repeat per request or per connection are counted and
//! summarised per worker ([`summary`]) instead of one line each.

use std::borrow::Cow;
use std::io::{self, Write};
use std::sync::OnceLock;

use regex::Regex;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{reload, EnvFilter, Registry};

pub mod logfmt;
pub mod summary;

/// How log lines are written (`log.format`): text (logfmt, [`logfmt`]) for
/// a terminal or the journal, JSON for a log pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Why a new log filter was not applied.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("{directive:?} is not a log level or filter: {reason}; use off, error, warn, info, debug, trace, or directives such as info,fipsrelay=debug")]
    Invalid { directive: String, reason: String },
    #[error("the log filter cannot be changed: logging was not set up by fipsrelay")]
    NotInstalled,
    #[error("the log filter could not be changed: {0}")]
    Reload(String),
}

/// The handle on the installed filter, set once by [`init`].
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();
/// `RUST_LOG` was set at start and chose the filter.
static FROM_ENV: OnceLock<bool> = OnceLock::new();

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
    let (filter, from_env) = match EnvFilter::try_from_default_env() {
        Ok(f) => (f, true),
        Err(_) => (EnvFilter::new(level), false),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let text = (format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer().event_format(logfmt::Logfmt).with_writer(|| ScrubbingWriter).with_ansi(false)
    });
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(|| ScrubbingWriter)
            .with_target(false)
            .with_ansi(false)
    });
    if tracing_subscriber::registry().with(filter).with(text).with(json).try_init().is_ok() {
        let _ = FILTER.set(handle);
        let _ = FROM_ENV.set(from_env);
    }
}

/// Parses a level or `EnvFilter` directive list, strictly (any bad directive fails).
pub fn parse_filter(directive: &str) -> Result<EnvFilter, FilterError> {
    let d = directive.trim();
    if d.is_empty() {
        return Err(FilterError::Invalid { directive: d.into(), reason: "empty".into() });
    }
    if d.chars().any(char::is_control) {
        return Err(FilterError::Invalid {
            directive: d.escape_debug().to_string(),
            reason: "control characters".into(),
        });
    }
    // EnvFilter reads a bare word as a target to enable at every level, so a
    // typo such as "debg" would silence everything else: a directive without
    // `=` must be a level.
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    if let Some(bare) = d
        .split(',')
        .map(str::trim)
        .find(|p| !p.is_empty() && !p.contains('=') && !LEVELS.iter().any(|l| p.eq_ignore_ascii_case(l)))
    {
        return Err(FilterError::Invalid {
            directive: d.into(),
            reason: format!("{bare:?} is neither a level nor target=level"),
        });
    }
    EnvFilter::builder().parse(d).map_err(|e| FilterError::Invalid { directive: d.into(), reason: e.to_string() })
}

/// Replaces the running log filter; returns it as now in effect.
pub fn set_filter(directive: &str) -> Result<String, FilterError> {
    let filter = parse_filter(directive)?;
    let handle = FILTER.get().ok_or(FilterError::NotInstalled)?;
    handle.reload(filter).map_err(|e| FilterError::Reload(e.to_string()))?;
    Ok(current_filter().unwrap_or_else(|| directive.trim().to_string()))
}

/// The filter in effect, when [`init`] installed one.
pub fn current_filter() -> Option<String> {
    FILTER.get()?.with_current(|f| f.to_string()).ok()
}

/// Whether `RUST_LOG` chose the filter at start (it then wins over `log.level`).
pub fn filter_from_env() -> bool {
    FROM_ENV.get().copied().unwrap_or(false)
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

    #[test]
    fn filters_are_checked_strictly() {
        for ok in ["debug", "INFO", "info,fipsrelay=debug", " warn \n", "fipsrelay::upstream=trace", "off"] {
            assert!(parse_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["", "info,fipsrelay=loud", "=debug", "info\ndebug", "debg", "info,fipsrelay"] {
            let e = parse_filter(bad).unwrap_err().to_string();
            assert!(e.contains("not a log level or filter"), "{bad}: {e}");
        }
    }
}
