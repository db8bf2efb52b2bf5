//! The text log format (`log.format = "text"`): one logfmt line per event,
//! `ts=<RFC 3339> level=<LEVEL> msg=<message> key=value ...`, the event's
//! fields in the order they were written.
//!
//! A value is written bare when it needs no quoting (a number, a word, an
//! address); it is quoted when it is empty, holds a space, `=`, `"`, `\` or a
//! control character, or was recorded as a string (a field written as
//! `field = "text"` stays `field="text"` whatever it holds). Inside quotes,
//! `"` and `\` are escaped with `\`, and line breaks, tabs and other control
//! characters are written as `\n`, `\t`, `\u{..}`: a multi-line error stays
//! on its line, and a logfmt parser gets it back whole.
//!
//! It only formats: the line goes to the scrubbing writer like every other.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The logfmt event formatter for `tracing_subscriber::fmt`.
pub struct Logfmt;

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        writer.write_str("ts=")?;
        SystemTime.format_time(&mut writer)?;
        write!(writer, " level={}", event.metadata().level())?;
        let mut fields = Fields::default();
        event.record(&mut fields);
        writer.write_str(" msg=")?;
        write_value(&mut writer, &fields.message, fields.message.is_empty())?;
        writer.write_str(&fields.rest)?;
        writer.write_char('\n')
    }
}

/// The event's message and its other fields, already written as ` key=value`.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Fields {
    fn push(&mut self, field: &Field, value: &str, force_quotes: bool) {
        if field.name() == "message" {
            self.message = value.to_string();
            return;
        }
        self.rest.push(' ');
        self.rest.push_str(field.name());
        self.rest.push('=');
        let _ = write_value(&mut self.rest, value, force_quotes);
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, value, true);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push(field, &format!("{value:?}"), false);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.push(field, &value.to_string(), false);
    }
}

/// Whether `value` must be quoted to be read back as one logfmt value.
pub fn needs_quotes(value: &str) -> bool {
    value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control() || c == '=' || c == '"' || c == '\\')
}

/// Writes `value` bare, or quoted and escaped when it needs it (or `force`).
pub fn write_value(out: &mut impl fmt::Write, value: &str, force: bool) -> fmt::Result {
    if !force && !needs_quotes(value) {
        return out.write_str(value);
    }
    out.write_char('"')?;
    for c in value.chars() {
        match c {
            '"' => out.write_str("\\\"")?,
            '\\' => out.write_str("\\\\")?,
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c if c.is_control() => write!(out, "\\u{{{:x}}}", c as u32)?,
            c => out.write_char(c)?,
        }
    }
    out.write_char('"')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(v: &str, force: bool) -> String {
        let mut s = String::new();
        write_value(&mut s, v, force).unwrap();
        s
    }

    #[test]
    fn values_are_quoted_only_when_they_must_be() {
        assert_eq!(value("502", false), "502");
        assert_eq!(value("127.0.0.1:8443", false), "127.0.0.1:8443");
        assert_eq!(value("metrics", true), "\"metrics\"");
        assert_eq!(value("", false), "\"\"");
        assert_eq!(
            value("AWS-LC FIPS 3.1.0 static, FIPS 140-3 certificate #5314, validated", false),
            "\"AWS-LC FIPS 3.1.0 static, FIPS 140-3 certificate #5314, validated\""
        );
        assert_eq!(value("a=b", false), "\"a=b\"");
        assert_eq!(value("say \"hi\" \\o/", false), "\"say \\\"hi\\\" \\\\o/\"");
        assert_eq!(
            value("line 1\n  |\n1 | bogus_key = 1\n\tx\u{1b}", false),
            "\"line 1\\n  |\\n1 | bogus_key = 1\\n\\tx\\u{1b}\""
        );
    }
}
