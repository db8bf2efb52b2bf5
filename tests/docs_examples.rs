//! What the docs show matches the program: the example config
//! (`packaging/fipsrelay.toml`, "every key is shown") holds every config key
//! the relay reads, each with its default; docs/configuration.md's table
//! names every key; and the README's Commands block lists every subcommand
//! `fipsrelay --help` offers.
//!
//! The relay's keys come from the config parser itself: an unknown key is
//! refused with the list of the keys it accepts (serde's
//! `deny_unknown_fields`), so a key added to `src/config.rs` shows up here
//! without editing this test.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::*;
use fipsrelay::config::{changed_keys, parse_str, RawConfig};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The keys serde accepts in the table `section` (`""` for the top level),
/// read from its refusal of an unknown key.
fn accepted_keys(section: &str) -> Vec<String> {
    let text =
        if section.is_empty() { "zz_not_a_key = 1\n".to_string() } else { format!("[{section}]\nzz_not_a_key = 1\n") };
    let err = parse_str(&text).expect_err("an unknown key must be refused");
    // "expected one of `a`, `b`, `c`", "expected `a` or `b`", "expected `a`".
    let list = err.split("expected ").nth(1).unwrap_or_else(|| panic!("no list of keys in {err:?}"));
    let word = regex::Regex::new(r"`([a-z_0-9]+)`").unwrap();
    let keys: Vec<String> = word.captures_iter(list.lines().next().unwrap()).map(|c| c[1].to_string()).collect();
    assert!(!keys.is_empty(), "{err}");
    keys
}

/// Every key path (`section.key`, `upstream.proxy.url`) the config accepts.
fn config_keys() -> BTreeSet<String> {
    // Which keys are tables: those whose default serializes as one.
    let defaults = toml::Value::try_from(RawConfig::default()).unwrap();
    let mut out = BTreeSet::new();
    let mut pending = vec![String::new()];
    while let Some(section) = pending.pop() {
        let here = section.split('.').filter(|s| !s.is_empty()).fold(&defaults, |v, k| &v[k]);
        for key in accepted_keys(&section) {
            let path = if section.is_empty() { key.clone() } else { format!("{section}.{key}") };
            if here.get(&key).is_some_and(toml::Value::is_table) {
                pending.push(path);
            } else {
                out.insert(path);
            }
        }
    }
    out
}

/// Key paths set in a TOML text.
fn key_paths(value: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let toml::Value::Table(t) = value {
        for (k, v) in t {
            let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            if v.is_table() {
                key_paths(v, &path, out);
            } else {
                out.insert(path);
            }
        }
    }
}

/// The example with its commented-out keys (`# key = value` lines) turned on.
fn uncommented(text: &str) -> String {
    let key_line = regex::Regex::new(r"^# ?([a-z_]+ = \S.*)$").unwrap();
    text.lines()
        .map(|l| match key_line.captures(l) {
            Some(c) => c[1].to_string(),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_example_config_shows_every_key_with_its_default() {
    let keys = config_keys();
    for must in ["health.down_interval", "upstream.proxy.url", "upstream.proxy.credentials_file", "run.user"] {
        assert!(keys.contains(must), "the key list misses {must}: {keys:?}");
    }
    let text = std::fs::read_to_string(root().join("packaging/fipsrelay.toml")).unwrap();
    assert!(text.contains("Every key is shown"), "the claim this test checks is gone");

    // Every key, set or commented out.
    let all = uncommented(&text);
    let value: toml::Value = toml::from_str(&all).unwrap_or_else(|e| panic!("the example with every key on: {e}"));
    parse_str(&all).unwrap_or_else(|e| panic!("the relay refuses the example with every key on: {e}"));
    let mut shown = BTreeSet::new();
    key_paths(&value, "", &mut shown);
    let missing: Vec<_> = keys.difference(&shown).collect();
    let unknown: Vec<_> = shown.difference(&keys).collect();
    assert!(missing.is_empty(), "packaging/fipsrelay.toml lacks {missing:?}");
    assert!(unknown.is_empty(), "packaging/fipsrelay.toml shows keys the relay does not read: {unknown:?}");

    // The keys set are set to their defaults; run.user is the packaged setting.
    let set = parse_str(&text).unwrap();
    set.validate().unwrap_or_else(|e| panic!("the example config is invalid: {e}"));
    assert_eq!(changed_keys(&RawConfig::default(), &set), ["run.user"], "a key in the example is not its default");
}

#[test]
fn the_configuration_doc_explains_every_key() {
    let doc = std::fs::read_to_string(root().join("docs/configuration.md")).unwrap();
    let missing: Vec<String> = config_keys().into_iter().filter(|k| !doc.contains(&format!("| `{k}` |"))).collect();
    assert!(missing.is_empty(), "docs/configuration.md has no table row for {missing:?}");
}

/// The subcommands `fipsrelay --help` lists.
fn subcommands() -> Vec<String> {
    let out = std::process::Command::new(relay_bin()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout).to_string();
    let list = help.split("Commands:").nth(1).unwrap_or_else(|| panic!("no Commands: in {help}"));
    let mut names = Vec::new();
    for line in list.lines().skip(1) {
        if line.trim().is_empty() || !line.starts_with("  ") {
            break;
        }
        if line.starts_with("   ") {
            continue; // a wrapped description
        }
        let name = line.split_whitespace().next().unwrap().to_string();
        if name != "help" {
            names.push(name);
        }
    }
    assert!(names.len() >= 8, "{help}");
    names
}

#[test]
fn the_readme_lists_every_command() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let block = readme
        .split("## Commands")
        .nth(1)
        .and_then(|s| s.split("```").nth(1))
        .expect("README.md has a ## Commands section with a code block");
    let listed: Vec<&str> = block
        .lines()
        .filter_map(|l| l.strip_prefix("fipsrelay "))
        .filter_map(|l| l.split_whitespace().next())
        .map(|w| w.trim_matches(|c| c == '[' || c == ']'))
        .collect();
    let missing: Vec<String> = subcommands().into_iter().filter(|c| !listed.contains(&c.as_str())).collect();
    assert!(missing.is_empty(), "README.md's Commands block lacks {missing:?}:\n{block}");
}
