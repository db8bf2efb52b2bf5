//! Every link in README.md, docs/*.md and every other markdown file of the
//! repository (tuning/README.md, loadgen/README.md, ...) resolves: a relative target names a
//! file that exists, and a `#anchor` names a heading of the target file, as
//! GitHub makes anchors (lowercase, spaces to '-', punctuation dropped, `-1`,
//! `-2` for repeated headings). References to README.md or docs/*.md in
//! `src/` and `packaging/` (log lines, comments, the example config, the unit)
//! must resolve too. Links to http(s):// and mailto: are not checked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use regex::Regex;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The markdown files whose links are checked: README.md, docs/*.md, and
/// every other `.md` of the repository outside build output and hidden
/// directories.
fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if p.is_dir() {
                if !name.starts_with('.') && name != "target" {
                    walk(&p, out);
                }
            } else if name.ends_with(".md") {
                out.push(p);
            }
        }
    }
    let root = root();
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    for must in ["README.md", "docs/operations.md", "tuning/README.md", "loadgen/README.md"] {
        assert!(files.contains(&root.join(must)), "{must} is not checked: {files:?}");
    }
    files
}

/// The lines outside fenced code blocks, with their 1-based numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut fence: Option<&str> = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let marker = if t.starts_with("```") {
            Some("```")
        } else if t.starts_with("~~~") {
            Some("~~~")
        } else {
            None
        };
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(f), Some(m)) if f == m => fence = None,
            (None, None) => out.push((i + 1, line)),
            _ => {}
        }
    }
    out
}

/// A line without its inline code spans (a `[x](y)` inside backticks is not a link).
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
        } else if !in_code {
            out.push(c);
        }
    }
    out
}

/// GitHub's anchor for a heading's text: the rendered text lowercased, every
/// character that is not a letter, digit, space, '-' or '_' dropped, each
/// space turned into '-'.
fn slug(heading: &str) -> String {
    // The rendered text: links keep their text, emphasis and code marks go.
    let link = Regex::new(r"\[([^\]]*)\]\([^)]*\)").unwrap();
    let text = link.replace_all(heading, "$1");
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// Every anchor a markdown file offers: one per ATX heading, with `-1`, `-2`,
/// ... for a slug already taken.
fn anchors(text: &str) -> Vec<String> {
    let heading = Regex::new(r"^ {0,3}#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$").unwrap();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (_, line) in prose_lines(text) {
        let Some(c) = heading.captures(line) else { continue };
        let base = slug(&c[1]);
        let n = seen.entry(base.clone()).or_insert(0);
        out.push(if *n == 0 { base.clone() } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

/// Checks one target (`path`, `path#anchor` or `#anchor`) written in `from`;
/// returns why it is broken, if it is.
fn check_target(from: &Path, target: &str, cache: &mut HashMap<PathBuf, Vec<String>>) -> Option<String> {
    let (path, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (target, None),
    };
    let file = if path.is_empty() { from.to_path_buf() } else { from.parent().unwrap().join(path) };
    let shown = if path.is_empty() { "this file" } else { path };
    if !file.exists() {
        return Some(format!("{shown} does not exist"));
    }
    let anchor = anchor?;
    if file.extension().is_none_or(|e| e != "md") {
        return None; // an anchor into a source file (#L10) is GitHub's, not a heading
    }
    let list = cache.entry(file.clone()).or_insert_with(|| anchors(&std::fs::read_to_string(&file).unwrap()));
    if list.iter().any(|a| a == anchor) {
        None
    } else {
        Some(format!("no heading of {shown} has the anchor #{anchor}"))
    }
}

fn is_external(target: &str) -> bool {
    let t = target.to_ascii_lowercase();
    t.starts_with("http://") || t.starts_with("https://") || t.starts_with("mailto:")
}

/// The broken links of one markdown file, as `file:line: [text](target): why`.
fn broken_links(file: &Path, cache: &mut HashMap<PathBuf, Vec<String>>) -> Vec<String> {
    let link = Regex::new(r#"\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)"#).unwrap();
    let text = std::fs::read_to_string(file).unwrap();
    let shown = file.strip_prefix(root()).unwrap_or(file).display().to_string();
    let mut out = Vec::new();
    for (n, line) in prose_lines(&text) {
        for c in link.captures_iter(&without_code_spans(line)) {
            let target = &c[2];
            if is_external(target) {
                continue;
            }
            if let Some(why) = check_target(file, target, cache) {
                out.push(format!("{shown}:{n}: [{}]({target}): {why}", &c[1]));
            }
        }
    }
    out
}

#[test]
fn every_link_in_the_readme_and_docs_resolves() {
    let mut cache = HashMap::new();
    let mut broken = Vec::new();
    let mut links = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        links += text.matches("](").count();
        broken.extend(broken_links(&file, &mut cache));
    }
    assert!(links > 0, "no link found: the pattern is wrong");
    assert!(broken.is_empty(), "{} broken link(s):\n{}", broken.len(), broken.join("\n"));
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Log lines, comments, the example config and the unit name README or docs
/// sections as `README.md#anchor`, `docs/<file>.md#anchor` or
/// `<dir>/README.md#anchor`, relative to the repository root; a bare "README"
/// (a section named in words) cannot be checked and is refused.
#[test]
fn every_docs_reference_in_src_and_packaging_resolves() {
    let root = root();
    let reference =
        Regex::new(r"\b(README\.md|docs/[A-Za-z0-9_.-]+\.md|[A-Za-z0-9_-]+/README\.md)(#[A-Za-z0-9_-]+)?").unwrap();
    let bare = Regex::new(r"\bREADME\b").unwrap();
    let mut files = Vec::new();
    files_under(&root.join("src"), &mut files);
    files_under(&root.join("packaging"), &mut files);
    files.sort();
    let mut cache = HashMap::new();
    let mut broken = Vec::new();
    let mut refs = 0;
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else { continue }; // not text
        let shown = file.strip_prefix(&root).unwrap().display().to_string();
        for (n, line) in text.lines().enumerate() {
            for m in bare.find_iter(line) {
                if !line[m.end()..].starts_with(".md") {
                    broken.push(format!(
                        "{shown}:{}: a README named without its path: write README.md#anchor or docs/<file>.md#anchor",
                        n + 1
                    ));
                }
            }
            for m in reference.find_iter(line) {
                // An absolute path (/usr/share/doc/fipsrelay/README.md) is the installed copy, not checked here.
                if line[..m.start()].ends_with('/') {
                    continue;
                }
                refs += 1;
                if let Some(why) = check_target(&root.join("README.md"), m.as_str(), &mut cache) {
                    broken.push(format!("{shown}:{}: {}: {why}", n + 1, m.as_str()));
                }
            }
        }
    }
    assert!(refs > 0, "no reference to README.md or docs/ found in src/ or packaging/");
    assert!(broken.is_empty(), "{} broken reference(s):\n{}", broken.len(), broken.join("\n"));
}

#[test]
fn anchors_follow_githubs_rules() {
    assert_eq!(slug("HTTP/2 to the intake"), "http2-to-the-intake");
    assert_eq!(slug("By hand, with systemd"), "by-hand-with-systemd");
    assert_eq!(slug("`fipsrelay diagnose` and `probe`"), "fipsrelay-diagnose-and-probe");
    assert_eq!(slug("Why not [HAProxy](https://haproxy.org)?"), "why-not-haproxy");
    assert_eq!(slug("io_uring: 1.17–1.34×"), "io_uring-117134");
    let text = "# A\n## Notes\n```\n## Notes\n```\n### Notes\n## Notes ##\n";
    assert_eq!(anchors(text), ["a", "notes", "notes-1", "notes-2"]);
}

/// The checker fails on what it must catch.
#[test]
fn a_broken_link_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("other.md"), "# Other\n## Part two\n").unwrap();
    let file = dir.path().join("page.md");
    std::fs::write(
        &file,
        "# Page\n## Setup\n[ok](#setup) [ok](other.md#part-two) [ok](https://x.example/#nope)\n\
         [gone](missing.md) [bad](#set-up) [bad](other.md#part-2) `[code](nowhere.md)`\n\
         ```\n[fenced](nowhere.md)\n```\n",
    )
    .unwrap();
    let mut cache = HashMap::new();
    let broken = broken_links(&file, &mut cache);
    assert_eq!(broken.len(), 3, "{broken:#?}");
    assert!(broken[0].contains("[gone](missing.md)"), "{broken:#?}");
    assert!(broken[1].contains("#set-up"), "{broken:#?}");
    assert!(broken[2].contains("#part-2"), "{broken:#?}");
}
