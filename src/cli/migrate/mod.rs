//! `fipsrelay migrate`: reads the HAProxy configuration of the Datadog Agent
//! FIPS Proxy (`/etc/datadog-fips-proxy/datadog-fips-proxy.cfg`) and writes
//! the equivalent `fipsrelay.toml`: only the keys whose value differs from
//! fipsrelay's defaults, each with the config lines it came from, then every
//! directive it did not carry over and why, and every directive fipsrelay
//! does without a setting. Nothing in the file is dropped silently.
//!
//! What is carried: bind ports (`listen.port_range_start`), bind address,
//! resolvers' name servers, `hold valid` and `resolve-prefer` (`[dns]`),
//! timeouts, `retries`, health-check timing, `ca-file` and `ca-base`,
//! `nbthread`, `alpn`, the intake's site and port, and server overrides that
//! send every product to the same addresses (`upstream.override_addr`).
//!
//! Values equal to the FIPS Proxy's stock ones (5 s timeouts, `retries 3`,
//! `hold valid 10s`, its own CA bundle under `/opt/datadog-fips-proxy`) are
//! not carried: fipsrelay's defaults replace them, and the notes say how to
//! keep HAProxy's value.
//!
//! This module only reads the one file and formats text: it never writes a
//! file, opens a socket or starts anything.

mod haproxy;
mod translate;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{self, RawConfig};

/// Where the FIPS Proxy's packages install their config.
pub const DEFAULT_FROM: &str = config::HAPROXY_CONFIG_PATH;

/// The FIPS Proxy's stock `timeout connect/client/server` (Datadog's
/// published HAProxy configuration for the Agent uses 5 s for all three).
const STOCK_TIMEOUT: Duration = Duration::from_secs(5);
/// The stock `hold valid` of its `resolvers` section.
const STOCK_HOLD_VALID: Duration = Duration::from_secs(10);
/// Files under here belong to the datadog-fips-proxy package and go with it.
const FIPS_PROXY_PREFIX: &str = "/opt/datadog-fips-proxy/";

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{path} {problem}; give the FIPS Proxy's config with --from PATH (default {DEFAULT_FROM})")]
    Read { path: PathBuf, problem: crate::files::FileError },
    #[error("{path} is not text (not UTF-8); give the FIPS Proxy's HAProxy config with --from PATH")]
    NotText { path: PathBuf },
    #[error("{path} is not an HAProxy configuration: no global, defaults, frontend, backend, listen or resolvers section; give the FIPS Proxy's config with --from PATH")]
    NotHaproxy { path: PathBuf },
}

/// One key of the output and the config lines it came from.
#[derive(Debug, Clone)]
pub struct Carried {
    /// `section.key`.
    pub key: String,
    pub lines: Vec<usize>,
    /// The directive(s) as written, shortened.
    pub from: String,
    /// Something the operator must know about the carried value.
    pub caveat: Option<String>,
}

/// A directive not carried over, or one fipsrelay does without a setting.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub lines: Vec<usize>,
    /// The directive, as written (its first words).
    pub what: String,
    pub why: String,
}

/// The result: the config to print, and what it says about the file.
#[derive(Debug, Clone, Default)]
pub struct Migration {
    pub raw: RawConfig,
    pub carried: Vec<Carried>,
    pub not_carried: Vec<Note>,
    pub built_in: Vec<Note>,
}

impl Migration {
    fn carry(&mut self, key: &str, lines: Vec<usize>, from: String, caveat: Option<String>) {
        self.carried.push(Carried { key: key.to_string(), lines, from, caveat });
    }

    fn drop_note(&mut self, line: usize, what: impl Into<String>, why: impl Into<String>) {
        push_note(&mut self.not_carried, line, what.into(), why.into());
    }

    fn same(&mut self, line: usize, what: impl Into<String>, why: impl Into<String>) {
        push_note(&mut self.built_in, line, what.into(), why.into());
    }
}

/// Adds `line` to the note with the same text, or a new note.
fn push_note(list: &mut Vec<Note>, line: usize, what: String, why: String) {
    if let Some(n) = list.iter_mut().find(|n| n.what == what && n.why == why) {
        if !n.lines.contains(&line) {
            n.lines.push(line);
        }
    } else {
        list.push(Note { lines: vec![line], what, why });
    }
}

/// Reads `path` and translates it; `env` resolves `${VAR}` references.
pub fn read(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Migration, MigrateError> {
    let bytes = crate::files::read_bounded(path, crate::files::MAX_CONFIG_BYTES)
        .map_err(|problem| MigrateError::Read { path: path.to_path_buf(), problem })?;
    let text = String::from_utf8(bytes).map_err(|_| MigrateError::NotText { path: path.to_path_buf() })?;
    let sections = haproxy::parse(&text, env);
    if sections.sections.is_empty() {
        return Err(MigrateError::NotHaproxy { path: path.to_path_buf() });
    }
    Ok(translate::translate(sections))
}

/// Translates HAProxy text (for tests and `read`).
pub fn translate_str(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Migration {
    translate::translate(haproxy::parse(text, env))
}

// ---------------------------------------------------------------------------
// Output.

/// The line list of a note: "line 12", "lines 12, 40, 52 and 13 more".
fn line_list(lines: &[usize]) -> String {
    let mut lines: Vec<usize> = lines.iter().copied().filter(|l| *l > 0).collect();
    lines.sort_unstable();
    lines.dedup();
    match lines.len() {
        0 => String::new(),
        1 => format!("line {}", lines[0]),
        n if n <= 4 => format!("lines {}", lines.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")),
        n => format!(
            "lines {} and {} more",
            lines[..3].iter().map(usize::to_string).collect::<Vec<_>>().join(", "),
            n - 3
        ),
    }
}

/// The TOML text: the keys that differ from the defaults, with where each
/// came from, then the two note blocks as comments.
pub fn render(m: &Migration, source: &Path) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "# fipsrelay.toml from {} (fipsrelay migrate {})\n",
        source.display(),
        env!("CARGO_PKG_VERSION")
    ));
    out.push_str("# Only the settings that differ from fipsrelay's defaults. Check it with:\n");
    out.push_str("#   fipsrelay check-config --config /etc/fipsrelay/fipsrelay.toml\n");
    let changed = config::changed_keys(&RawConfig::default(), &m.raw);
    let values = match toml::Value::try_from(&m.raw) {
        Ok(toml::Value::Table(t)) => t,
        _ => Default::default(),
    };
    if changed.is_empty() {
        out.push_str("#\n# Every setting this file makes is fipsrelay's default or built in: no key to set.\n");
    }
    let mut section = "";
    for key in &changed {
        let Some((sec, name)) = key.split_once('.') else { continue };
        if sec != section {
            out.push_str(&format!("\n[{sec}]\n"));
            section = sec;
        }
        if let Some(c) = m.carried.iter().find(|c| &c.key == key) {
            let where_ = line_list(&c.lines);
            out.push_str(&format!("# {where_}: {}\n", c.from));
            if let Some(caveat) = &c.caveat {
                out.push_str(&format!("# note: {caveat}\n"));
            }
        }
        if let Some(v) = values.get(sec).and_then(|t| t.get(name)) {
            out.push_str(&format!("{name} = {v}\n"));
        }
    }
    notes(&mut out, "Not carried over", &m.not_carried);
    notes(&mut out, "Done by fipsrelay without a setting", &m.built_in);
    out
}

fn notes(out: &mut String, title: &str, list: &[Note]) {
    if list.is_empty() {
        return;
    }
    out.push_str(&format!("\n# --- {title} ({}) ---\n", list.len()));
    let mut sorted: Vec<&Note> = list.iter().collect();
    sorted.sort_by_key(|n| n.lines.iter().copied().filter(|l| *l > 0).min().unwrap_or(usize::MAX));
    for n in sorted {
        let where_ = line_list(&n.lines);
        let where_ = if where_.is_empty() { String::new() } else { format!("{where_}: ") };
        out.push_str(&format!("# {where_}{}\n#     {}\n", n.what, n.why));
    }
}

#[cfg(test)]
#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn a_section_less_line_and_an_unknown_directive_are_listed() {
        let m = translate_str("stray 1\nglobal\n    frobnicate 2\n", &no_env);
        assert!(m.not_carried.iter().any(|n| n.lines == vec![1] && n.why.contains("outside any section")));
        assert!(m.not_carried.iter().any(|n| n.lines == vec![3] && n.what.starts_with("frobnicate")));
    }
}
