//! The HAProxy configuration as HAProxy reads it, for `migrate`: lines
//! split into words (quotes, `\\` escapes, `#` comments, `${VAR}` from the
//! environment in unquoted and double-quoted words), grouped into sections,
//! and HAProxy's `<time>` values. It knows no directive's meaning (that is
//! `translate`), and never reads a file itself.

use std::time::Duration;

use super::{push_note, Note};

/// One directive: its line number (from 1) and its words, quotes removed.
#[derive(Debug, Clone)]
pub(super) struct Directive {
    pub(super) line: usize,
    pub(super) words: Vec<String>,
}

impl Directive {
    pub(super) fn word(&self, i: usize) -> &str {
        self.words.get(i).map(String::as_str).unwrap_or("")
    }

    /// The first `n` words, for notes.
    pub(super) fn head(&self, n: usize) -> String {
        let mut s = self.words.iter().take(n).cloned().collect::<Vec<_>>().join(" ");
        if self.words.len() > n {
            s.push_str(" ...");
        }
        s
    }
}

#[derive(Debug, Clone)]
pub(super) struct Section {
    pub(super) kind: String,
    pub(super) name: String,
    pub(super) line: usize,
    pub(super) body: Vec<Directive>,
}

pub(super) struct Parsed {
    pub(super) sections: Vec<Section>,
    /// Problems found while reading lines (not in any section, bad quoting).
    pub(super) problems: Vec<Note>,
}

pub(super) const SECTION_KINDS: &[&str] = &[
    "global",
    "defaults",
    "frontend",
    "backend",
    "listen",
    "resolvers",
    "userlist",
    "peers",
    "mailers",
    "program",
    "http-errors",
    "ring",
    "cache",
    "log-forward",
    "crt-store",
    "traces",
];

pub(super) fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Parsed {
    let mut sections: Vec<Section> = Vec::new();
    let mut problems = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let words = match split_words(raw, env) {
            Ok(w) => w,
            Err(why) => {
                push_note(&mut problems, line, raw.trim().chars().take(60).collect(), why);
                continue;
            }
        };
        let Some(first) = words.first() else { continue };
        if SECTION_KINDS.contains(&first.as_str()) {
            sections.push(Section {
                kind: first.clone(),
                name: words.get(1).cloned().unwrap_or_default(),
                line,
                body: Vec::new(),
            });
        } else if let Some(s) = sections.last_mut() {
            s.body.push(Directive { line, words });
        } else {
            push_note(
                &mut problems,
                line,
                words.join(" ").chars().take(60).collect(),
                "outside any section (global, defaults, frontend, backend, listen, resolvers): HAProxy would refuse it too".into(),
            );
        }
    }
    Parsed { sections, problems }
}

/// HAProxy's word splitting: blanks separate words, `#` starts a comment
/// outside quotes, `"..."` expands `${VAR}`, `'...'` does not, `\` escapes.
pub(super) fn split_words(line: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '#') => break,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, '"') | (None, '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => cur.push(c),
            (_, '\\') => {
                in_word = true;
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (_, '$') => {
                in_word = true;
                let braced = chars.peek() == Some(&'{');
                if braced {
                    chars.next();
                }
                let mut name = String::new();
                while let Some(&n) = chars.peek() {
                    if n.is_ascii_alphanumeric() || n == '_' {
                        name.push(n);
                        chars.next();
                    } else {
                        break;
                    }
                }
                if braced && chars.next() != Some('}') {
                    return Err("has an unclosed ${ (HAProxy would refuse the line)".into());
                }
                if name.is_empty() {
                    cur.push('$');
                } else {
                    match env(&name) {
                        Some(v) => cur.push_str(&v),
                        // Kept as written: the directive that holds it says what it is.
                        None => {
                            cur.push_str("${");
                            cur.push_str(&name);
                            cur.push('}');
                        }
                    }
                }
            }
            (_, c) => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if quote.is_some() {
        return Err("has an unclosed quote (HAProxy would refuse the line)".into());
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// An HAProxy `<time>`: a number with an optional unit (us, ms, s, m, h,
/// d); a bare number is in milliseconds.
pub(super) fn haproxy_time(s: &str) -> Option<Duration> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = s[..digits].parse().ok()?;
    Some(match &s[digits..] {
        "" | "ms" => Duration::from_millis(n),
        "us" => Duration::from_micros(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        "d" => Duration::from_secs(n.checked_mul(86400)?),
        _ => return None,
    })
}

/// A duration as fipsrelay's config writes it ("5s", "1500ms", "2m").
pub(super) fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(60_000) && ms >= 60_000 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn words_follow_haproxy_quoting_and_comments() {
        let env = |k: &str| (k == "ADDR").then(|| "127.0.0.2".to_string());
        assert_eq!(split_words(r#"  bind "${ADDR}:9804" # c"#, &env).unwrap(), vec!["bind", "127.0.0.2:9804"]);
        assert_eq!(split_words(r#"a '${ADDR}' b\ c"#, &env).unwrap(), vec!["a", "${ADDR}", "b c"]);
        assert_eq!(split_words("bind ${UNSET}:1", &no_env).unwrap(), vec!["bind", "${UNSET}:1"]);
        assert!(split_words(r#"bind "x"#, &no_env).is_err());
    }

    #[test]
    fn times_are_haproxy_times() {
        assert_eq!(haproxy_time("5s"), Some(Duration::from_secs(5)));
        assert_eq!(haproxy_time("1500"), Some(Duration::from_millis(1500)));
        assert_eq!(haproxy_time("2m"), Some(Duration::from_secs(120)));
        assert_eq!(haproxy_time("fast"), None);
        assert_eq!(duration_text(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration_text(Duration::from_secs(120)), "2m");
        assert_eq!(duration_text(Duration::from_secs(30)), "30s");
    }
}
