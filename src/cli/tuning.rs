//! Host tuning checker behind `fipsrelay tuning check [--profile NAME]`.
//!
//! Owns the kernel tuning profiles (`tuning/*.conf`, embedded at build time),
//! the rule that says how each setting is compared (at least, at most,
//! exactly, range width, reserved ports), and the host facts the relay depends
//! on: the `RLIMIT_NOFILE` soft limit, the CPUs the process may run on versus
//! the configured workers, and whether io_uring can be used
//! (`kernel.io_uring_disabled`, seccomp mode).
//!
//! It must never change the host: it only reads files under an injectable
//! `/proc` root ([`Host`]) and prints what differs with the command that fixes
//! it. Applying a profile is the operator's job (`sysctl --system`).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The profile names, in the order `tuning check` lists them.
pub const PROFILES: &[&str] = &["throughput", "latency", "many-connections"];

/// The profile checked when none is named.
pub const DEFAULT_PROFILE: &str = "throughput";

/// The lowest `RLIMIT_NOFILE` soft limit the relay is comfortable with.
pub const MIN_NOFILE: u64 = 65_536;

/// What the systemd unit sets (`LimitNOFILE=`), suggested as the fix.
pub const RECOMMENDED_NOFILE: u64 = 1_048_576;

/// Where the docs tell operators to install a profile.
pub const SYSCTL_D_FILE: &str = "/etc/sysctl.d/90-fipsrelay.conf";

/// Where the deb and rpm install the profiles (`scripts/package.sh`).
pub const INSTALLED_PROFILE_DIR: &str = "/usr/share/fipsrelay/tuning";

/// The profile file to copy into [`SYSCTL_D_FILE`]: the installed one under
/// `installed`; else, when the binary runs from a checkout that still
/// exists (`checkout`, the source tree it was built from), the repository's
/// `tuning/NAME.conf`; else the installed path, where the packages put it.
pub fn profile_file(profile: &str, installed: &Path, checkout: Option<&Path>) -> PathBuf {
    let file = format!("{profile}.conf");
    let packaged = installed.join(&file);
    if packaged.is_file() {
        return packaged;
    }
    match checkout.map(|c| c.join("tuning").join(&file)) {
        Some(repo) if repo.is_file() => repo,
        _ => packaged,
    }
}

const PROFILE_TEXTS: &[(&str, &str)] = &[
    ("throughput", include_str!("../../tuning/throughput.conf")),
    ("latency", include_str!("../../tuning/latency.conf")),
    ("many-connections", include_str!("../../tuning/many-connections.conf")),
];

#[derive(Debug, thiserror::Error)]
pub enum TuningError {
    #[error("unknown tuning profile {name:?}; choose one of: {known}")]
    UnknownProfile { name: String, known: String },
    #[error(
        "tuning profile {profile}, line {line}: {problem}; write `key = value`, or start the line with # for a comment"
    )]
    ProfileSyntax { profile: String, line: usize, problem: String },
    #[error("tuning profile {profile} sets {key}, which the checker has no comparison rule for; add it to the rule table in src/cli/tuning.rs")]
    NoRule { profile: String, key: String },
}

/// How a host value is compared with the profile's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// Every number on the host is at least the profile's (limits, queues,
    /// buffers; element by element for `tcp_rmem`-style triples).
    AtLeast,
    /// Every number on the host is at most the profile's (timeouts, queues
    /// of unsent data).
    AtMost,
    /// Same numbers (or, for text, same words).
    Exact,
    /// Two numbers `low high`; the host's range holds at least as many ports.
    RangeAtLeastAsWide,
    /// A port list such as `9803-9818,10000`; the host's list includes every
    /// port the profile lists.
    CoversPorts,
}

struct Rule {
    key: &'static str,
    compare: Compare,
    /// Why the setting matters, phrased as what to do ("raise the accept queue").
    advice: &'static str,
}

const RULES: &[Rule] = &[
    Rule { key: "net.core.somaxconn", compare: Compare::AtLeast, advice: "raise the accept queue" },
    Rule {
        key: "net.ipv4.tcp_max_syn_backlog",
        compare: Compare::AtLeast,
        advice: "raise the queue of half-open connections",
    },
    Rule {
        key: "net.ipv4.ip_local_port_range",
        compare: Compare::RangeAtLeastAsWide,
        advice: "widen the ephemeral port range for outgoing connections",
    },
    Rule {
        key: "net.ipv4.ip_local_reserved_ports",
        compare: Compare::CoversPorts,
        advice: "keep the relay's ports out of the ephemeral range so nothing else can take them",
    },
    Rule {
        key: "net.ipv4.tcp_tw_reuse",
        compare: Compare::Exact,
        advice: "let outgoing connections reuse TIME_WAIT ports when timestamps make it safe",
    },
    Rule {
        key: "net.ipv4.tcp_max_tw_buckets",
        compare: Compare::AtLeast,
        advice: "allow more sockets in TIME_WAIT before the kernel destroys them",
    },
    Rule {
        key: "net.ipv4.tcp_fin_timeout",
        compare: Compare::AtMost,
        advice: "free orphaned FIN_WAIT_2 connections sooner",
    },
    Rule {
        key: "net.core.rmem_max",
        compare: Compare::AtLeast,
        advice: "raise the cap on SO_RCVBUF to the autotuning maximum",
    },
    Rule {
        key: "net.core.wmem_max",
        compare: Compare::AtLeast,
        advice: "raise the cap on SO_SNDBUF to the autotuning maximum",
    },
    Rule {
        key: "net.ipv4.tcp_rmem",
        compare: Compare::AtLeast,
        advice: "raise TCP receive buffer autotuning (min, initial, max)",
    },
    Rule {
        key: "net.ipv4.tcp_wmem",
        compare: Compare::AtLeast,
        advice: "raise TCP send buffer autotuning (min, initial, max)",
    },
    Rule {
        key: "net.ipv4.tcp_notsent_lowat",
        compare: Compare::AtMost,
        advice: "bound the data queued but not yet sent per socket",
    },
    Rule {
        key: "net.core.netdev_max_backlog",
        compare: Compare::AtLeast,
        advice: "raise the per-CPU queue of received packets (loopback included)",
    },
    Rule {
        key: "net.core.busy_read",
        compare: Compare::AtLeast,
        advice: "enable busy polling on socket reads",
    },
    Rule {
        key: "net.core.busy_poll",
        compare: Compare::AtLeast,
        advice: "enable busy polling in poll/epoll waits",
    },
    Rule {
        key: "net.ipv4.tcp_slow_start_after_idle",
        compare: Compare::Exact,
        advice: "keep the congestion window of intake sessions across the Agent's idle gaps (after an idle RTO a long path restarts slow start, and a 1 MiB body takes several round trips instead of one)",
    },
    Rule { key: "fs.file-max", compare: Compare::AtLeast, advice: "raise the system-wide limit of open files" },
    Rule {
        key: "fs.nr_open",
        compare: Compare::AtLeast,
        advice: "raise the ceiling for RLIMIT_NOFILE (the unit sets LimitNOFILE=1048576)",
    },
    Rule {
        key: "kernel.io_uring_disabled",
        compare: Compare::Exact,
        advice: "allow io_uring for every process (1 limits it to kernel.io_uring_group, 2 disables it; workers.io = \"uring\" then refuses to start, and auto uses epoll either way)",
    },
];

/// The comparison rule for a sysctl key, if the checker knows it.
pub fn comparison(key: &str) -> Option<Compare> {
    find_rule(key).map(|r| r.compare)
}

fn find_rule(key: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.key == key)
}

/// One `key = value` line of a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    /// The value with runs of whitespace folded to one space.
    pub value: String,
    /// 1-based line number in the profile file.
    pub line: usize,
}

/// The text of a built-in profile, as installed into `/etc/sysctl.d`.
pub fn profile_text(name: &str) -> Result<&'static str, TuningError> {
    PROFILE_TEXTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .ok_or_else(|| TuningError::UnknownProfile { name: name.to_string(), known: PROFILES.join(", ") })
}

/// Parses sysctl.d syntax: `key = value` lines; blank lines and lines starting
/// with `#` or `;` are ignored, as is the `-` prefix ("ignore failure").
/// Keys may use `.` or `/` as separator; they come back with dots.
pub fn parse_profile(profile: &str, text: &str) -> Result<Vec<Setting>, TuningError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let syntax = |problem: &str| TuningError::ProfileSyntax {
            profile: profile.to_string(),
            line: i + 1,
            problem: problem.to_string(),
        };
        let (key, value) = line.split_once('=').ok_or_else(|| syntax("no `=` in the line"))?;
        let key = key.trim().trim_start_matches('-').trim().replace('/', ".");
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(syntax("the key is empty or contains spaces"));
        }
        out.push(Setting { key, value: fold_spaces(value), line: i + 1 });
    }
    Ok(out)
}

fn fold_spaces(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The host facts the checker reads; every source is injectable for tests.
#[derive(Debug, Clone)]
pub struct Host {
    /// Root of the sysctl tree, normally `/proc/sys`.
    pub proc_sys: PathBuf,
    /// Status file of the checked process, normally `/proc/self/status`.
    pub proc_self_status: PathBuf,
    /// `RLIMIT_NOFILE` soft limit (`u64::MAX` for unlimited); `None` if unknown.
    pub nofile_soft: Option<u64>,
    /// CPUs this process may run on (its affinity mask); 0 if unknown.
    pub cpus_allowed: usize,
}

impl Host {
    /// The facts of the running process and kernel.
    pub fn current() -> Host {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit only writes into the struct we pass, which we own.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        // On Linux rlim_t is u64 and RLIM_INFINITY is u64::MAX, our "unlimited".
        let nofile_soft = (rc == 0).then_some(limit.rlim_cur);
        let cpus_allowed = core_affinity::get_core_ids()
            .map(|ids| ids.len())
            .filter(|n| *n > 0)
            .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
            .unwrap_or(0);
        Host {
            proc_sys: PathBuf::from("/proc/sys"),
            proc_self_status: PathBuf::from("/proc/self/status"),
            nofile_soft,
            cpus_allowed,
        }
    }

    fn sysctl_path(&self, key: &str) -> PathBuf {
        self.proc_sys.join(key.replace('.', "/"))
    }
}

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The host matches.
    Ok,
    /// The host differs; the finding says how to fix it.
    Differs,
    /// The setting cannot be read on this host (old kernel, feature not
    /// built, /proc/sys not mounted). Counted as a difference.
    NotAvailable,
    /// Worth knowing, but not a difference (e.g. a seccomp filter is active).
    Note,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub verdict: Verdict,
    /// The sysctl key, or `RLIMIT_NOFILE`, `workers`, `seccomp`.
    pub key: String,
    /// What the host has, as read (whitespace folded); `None` if unreadable.
    pub found: Option<String>,
    /// The full text after the `DIFF` / `OK` / `NOTE` tag.
    pub text: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.verdict {
            Verdict::Ok => "OK",
            Verdict::Differs | Verdict::NotAvailable => "DIFF",
            Verdict::Note => "NOTE",
        };
        write!(f, "{tag} {}", self.text)
    }
}

/// The outcome of `check`.
///
/// `Display` prints one `DIFF` line per difference, then the `NOTE` lines,
/// then a summary line. The alternate form (`{:#}`, for `--verbose`) also
/// prints an `OK` line per matching check.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The profile checked.
    pub profile: String,
    /// The profile's file, for the fix that applies all of it ([`profile_file`]).
    pub file: PathBuf,
    /// Differences (including settings not available on this host).
    pub diffs: Vec<Finding>,
    /// Checks that match.
    pub oks: Vec<Finding>,
    /// Observations that are not differences.
    pub notes: Vec<Finding>,
}

impl Report {
    /// 0 when nothing differs, 1 otherwise (notes do not count).
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.diffs.is_empty())
    }

    fn push(&mut self, finding: Finding) {
        match finding.verdict {
            Verdict::Ok => self.oks.push(finding),
            Verdict::Differs | Verdict::NotAvailable => self.diffs.push(finding),
            Verdict::Note => self.notes.push(finding),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verbose = f.alternate();
        for finding in &self.diffs {
            writeln!(f, "{finding}")?;
        }
        for finding in &self.notes {
            writeln!(f, "{finding}")?;
        }
        if verbose {
            for finding in &self.oks {
                writeln!(f, "{finding}")?;
            }
        }
        let total = self.diffs.len() + self.oks.len();
        let notes = match self.notes.len() {
            0 => String::new(),
            1 => ", 1 note".to_string(),
            n => format!(", {n} notes"),
        };
        if self.diffs.is_empty() {
            write!(f, "SUMMARY profile {}: all {total} checks match{notes}", self.profile)
        } else {
            write!(f, "SUMMARY profile {}: {} of {total} checks differ{notes}", self.profile, self.diffs.len())?;
            // Sysctl keys have dots; RLIMIT_NOFILE and workers do not.
            if self.diffs.iter().any(|d| d.key.contains('.')) {
                write!(
                    f,
                    "; apply the whole profile with `cp {} {SYSCTL_D_FILE} && sysctl --system`",
                    self.file.display()
                )?;
            }
            Ok(())
        }
    }
}

/// Compares the host with a profile and with what the relay needs.
///
/// `workers` is the configured worker count (`[workers] threads`); 0 means
/// one per allowed CPU. Reads only; a missing or unreadable file becomes a
/// finding, never an error. Errors are for an unknown profile name or a
/// profile the checker cannot interpret.
pub fn check(profile: &str, host: &Host, workers: usize) -> Result<Report, TuningError> {
    let text = profile_text(profile)?;
    let settings = parse_profile(profile, text)?;
    let mut report = Report {
        profile: profile.to_string(),
        file: PathBuf::from(INSTALLED_PROFILE_DIR).join(format!("{profile}.conf")),
        ..Report::default()
    };
    for setting in &settings {
        let rule = find_rule(&setting.key)
            .ok_or_else(|| TuningError::NoRule { profile: profile.to_string(), key: setting.key.clone() })?;
        report.push(check_sysctl(profile, host, setting, rule));
    }
    report.push(check_nofile(host.nofile_soft));
    report.push(check_workers(host.cpus_allowed, workers));
    report.push(check_seccomp(&host.proc_self_status));
    Ok(report)
}

/// `fipsrelay tuning check`: checks this host against `profile` (the
/// default one when `None`), prints the report (every setting when
/// `verbose`, else only what differs) and returns the exit status.
pub fn print_check(profile: Option<&str>, workers: usize, verbose: bool) -> Result<u8, TuningError> {
    let name = profile.unwrap_or(DEFAULT_PROFILE);
    let mut report = check(name, &Host::current(), workers)?;
    report.file = profile_file(name, Path::new(INSTALLED_PROFILE_DIR), Some(Path::new(env!("CARGO_MANIFEST_DIR"))));
    let text = if verbose { format!("{report:#}") } else { format!("{report}") };
    println!("{}", text.trim_end());
    Ok(report.exit_code())
}

fn check_sysctl(profile: &str, host: &Host, setting: &Setting, rule: &Rule) -> Finding {
    let key = setting.key.as_str();
    let wants = describe_wants(rule.compare, &setting.value);
    let path = host.sysctl_path(key);
    let found = match std::fs::read_to_string(&path) {
        Ok(s) => fold_spaces(&s),
        Err(e) => return unavailable(profile, setting, rule, &wants, &path, &e),
    };
    let shown = show(&found);
    match compare(rule.compare, &found, &setting.value) {
        Ok(None) => Finding {
            verdict: Verdict::Ok,
            key: key.to_string(),
            text: format!("{key} = {shown} (profile {profile} wants {wants})"),
            found: Some(found),
        },
        Ok(Some(fix_value)) => Finding {
            verdict: Verdict::Differs,
            key: key.to_string(),
            text: format!(
                "{key} = {shown}, profile {profile} wants {wants}: {}; fix: {}",
                rule.advice,
                sysctl_fix(key, &fix_value)
            ),
            found: Some(found),
        },
        Err(problem) => Finding {
            verdict: Verdict::Differs,
            key: key.to_string(),
            text: format!(
                "{key} = {shown}, profile {profile} wants {wants}, but the host value cannot be compared ({problem}); fix: {}",
                sysctl_fix(key, &setting.value)
            ),
            found: Some(found),
        },
    }
}

fn unavailable(profile: &str, setting: &Setting, rule: &Rule, wants: &str, path: &Path, e: &io::Error) -> Finding {
    let key = setting.key.as_str();
    if key == "kernel.io_uring_disabled" && e.kind() == io::ErrorKind::NotFound {
        return Finding {
            verdict: Verdict::Note,
            key: key.to_string(),
            found: None,
            text: format!(
                "{key} is not present ({}): kernels before 6.6 have no such switch, so io_uring is allowed if the kernel has it and no seccomp filter blocks it",
                path.display()
            ),
        };
    }
    let why = if e.kind() == io::ErrorKind::NotFound {
        "this kernel does not have the setting (older kernel or feature not built in), or /proc/sys is not mounted here"
    } else {
        "the file exists but cannot be read by this user"
    };
    Finding {
        verdict: Verdict::NotAvailable,
        key: key.to_string(),
        found: None,
        text: format!(
            "{key} is not available on this host ({}: {e}), profile {profile} wants {wants}: {}; fix: {why}; on a kernel that has it, sysctl -w {}",
            path.display(),
            rule.advice,
            assignment(key, &setting.value)
        ),
    }
}

fn show(value: &str) -> &str {
    if value.is_empty() {
        "(empty)"
    } else {
        value
    }
}

fn describe_wants(compare: Compare, value: &str) -> String {
    let several = value.split_whitespace().count() > 1;
    match compare {
        Compare::AtLeast if several => format!(">= {value} (each)"),
        Compare::AtLeast => format!(">= {value}"),
        Compare::AtMost if several => format!("<= {value} (each)"),
        Compare::AtMost => format!("<= {value}"),
        Compare::Exact => value.to_string(),
        Compare::RangeAtLeastAsWide => match parse_numbers(value).as_deref() {
            Ok([lo, hi]) if lo <= hi => format!("a range at least as wide as {value} ({} ports)", hi - lo + 1),
            _ => format!("a range at least as wide as {value}"),
        },
        Compare::CoversPorts => format!("the reserved ports to include {value}"),
    }
}

fn assignment(key: &str, value: &str) -> String {
    if value.is_empty() || value.contains(char::is_whitespace) {
        format!("{key}=\"{value}\"")
    } else {
        format!("{key}={value}")
    }
}

fn sysctl_fix(key: &str, value: &str) -> String {
    format!("sysctl -w {} (persist in {SYSCTL_D_FILE})", assignment(key, value))
}

/// `Ok(None)`: host matches. `Ok(Some(v))`: host differs, `v` is the value to
/// set (it never lowers an element that is already better). `Err`: the host
/// value cannot be compared.
fn compare(compare: Compare, found: &str, wants: &str) -> Result<Option<String>, String> {
    match compare {
        Compare::AtLeast | Compare::AtMost => {
            let (have, want) = numbers_pair(found, wants)?;
            let better = |h: u64, w: u64| if compare == Compare::AtLeast { h >= w } else { h <= w };
            if have.iter().zip(&want).all(|(h, w)| better(*h, *w)) {
                return Ok(None);
            }
            let fixed: Vec<String> =
                have.iter().zip(&want).map(|(h, w)| if better(*h, *w) { h } else { w }).map(u64::to_string).collect();
            Ok(Some(fixed.join(" ")))
        }
        Compare::Exact => {
            let same = match (parse_numbers(found), parse_numbers(wants)) {
                (Ok(h), Ok(w)) => h == w,
                _ => found == wants,
            };
            Ok((!same).then(|| wants.to_string()))
        }
        Compare::RangeAtLeastAsWide => {
            let (have, want) = numbers_pair(found, wants)?;
            match (have.as_slice(), want.as_slice()) {
                ([hl, hh], [wl, wh]) if hl <= hh && wl <= wh => Ok((hh - hl < wh - wl).then(|| wants.to_string())),
                _ => Err("expected two numbers, low then high".to_string()),
            }
        }
        Compare::CoversPorts => {
            let have = parse_ports(found)?;
            let want = parse_ports(wants)?;
            let covered =
                want.iter().all(|&(lo, hi)| (lo..=hi).all(|p| have.iter().any(|&(a, b)| (a..=b).contains(&p))));
            if covered {
                Ok(None)
            } else if found.is_empty() {
                Ok(Some(wants.to_string()))
            } else {
                Ok(Some(format!("{found},{wants}")))
            }
        }
    }
}

fn numbers_pair(found: &str, wants: &str) -> Result<(Vec<u64>, Vec<u64>), String> {
    let want = parse_numbers(wants).map_err(|e| format!("profile value: {e}"))?;
    let have = parse_numbers(found)?;
    if have.len() != want.len() {
        return Err(format!("{} numbers on the host, {} in the profile", have.len(), want.len()));
    }
    Ok((have, want))
}

fn parse_numbers(s: &str) -> Result<Vec<u64>, String> {
    let numbers = s
        .split_whitespace()
        .map(|t| t.parse::<u64>().map_err(|_| format!("{t:?} is not a non-negative integer")))
        .collect::<Result<Vec<_>, _>>()?;
    if numbers.is_empty() {
        return Err("no number".to_string());
    }
    Ok(numbers)
}

/// Parses `9803-9818,10000` (the format of `ip_local_reserved_ports`).
fn parse_ports(s: &str) -> Result<Vec<(u32, u32)>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let port = |t: &str| {
                t.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|p| *p <= 65_535)
                    .ok_or_else(|| format!("{part:?} is not a port or port range"))
            };
            let (lo, hi) = (port(lo)?, port(hi)?);
            if lo > hi {
                return Err(format!("{part:?} is a range with its ends reversed"));
            }
            Ok((lo, hi))
        })
        .collect()
}

fn check_nofile(soft: Option<u64>) -> Finding {
    let key = "RLIMIT_NOFILE".to_string();
    let Some(soft) = soft else {
        return Finding {
            verdict: Verdict::Note,
            key,
            found: None,
            text: format!("RLIMIT_NOFILE soft limit could not be read; the relay wants >= {MIN_NOFILE}"),
        };
    };
    let shown = if soft == u64::MAX { "unlimited".to_string() } else { soft.to_string() };
    if soft >= MIN_NOFILE {
        Finding {
            verdict: Verdict::Ok,
            key,
            text: format!("RLIMIT_NOFILE soft limit = {shown} (fipsrelay wants >= {MIN_NOFILE})"),
            found: Some(shown),
        }
    } else {
        Finding {
            verdict: Verdict::Differs,
            key,
            text: format!(
                "RLIMIT_NOFILE soft limit = {shown}, fipsrelay wants >= {MIN_NOFILE}: every Agent connection and every intake session is a file descriptor, and accept fails with EMFILE when they run out; fix: LimitNOFILE={RECOMMENDED_NOFILE} in the systemd unit (packaging/fipsrelay.service), or `ulimit -n {RECOMMENDED_NOFILE}` in the shell that starts the relay"
            ),
            found: Some(shown),
        }
    }
}

fn check_workers(cpus_allowed: usize, workers: usize) -> Finding {
    let key = "workers".to_string();
    if cpus_allowed == 0 {
        return Finding {
            verdict: Verdict::Note,
            key,
            found: None,
            text: format!(
                "workers = {workers}: the CPUs this process may use could not be read, so pinning cannot be checked"
            ),
        };
    }
    if workers == 0 {
        return Finding {
            verdict: Verdict::Ok,
            key,
            found: Some(cpus_allowed.to_string()),
            text: format!("workers = 0 (one per allowed CPU: {cpus_allowed})"),
        };
    }
    if workers <= cpus_allowed {
        Finding {
            verdict: Verdict::Ok,
            key,
            found: Some(cpus_allowed.to_string()),
            text: format!("workers = {workers}, CPUs allowed = {cpus_allowed}"),
        }
    } else {
        Finding {
            verdict: Verdict::Differs,
            key,
            found: Some(cpus_allowed.to_string()),
            text: format!(
                "workers = {workers}, but this process may run on only {cpus_allowed} CPUs: pinned workers would share cores and wait for each other; fix: set [workers] threads = 0 (one per allowed CPU) or at most {cpus_allowed}, or allow more CPUs (systemd CPUAffinity=, taskset)"
            ),
        }
    }
}

fn check_seccomp(status_path: &Path) -> Finding {
    let key = "seccomp".to_string();
    let mode = std::fs::read_to_string(status_path).map_err(|e| e.to_string()).and_then(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .map(|v| v.trim().to_string())
            .ok_or_else(|| "no Seccomp: line (kernel without seccomp?)".to_string())
    });
    match mode.as_deref() {
        Ok("0") => Finding {
            verdict: Verdict::Ok,
            key,
            found: Some("0".into()),
            text: "Seccomp = 0 (no filter; nothing blocks io_uring)".to_string(),
        },
        Ok("2") => Finding {
            verdict: Verdict::Note,
            key,
            found: Some("2".into()),
            text: "Seccomp = 2 (filter): a seccomp filter is active and may block io_uring_setup (Docker's default profile does); workers.io = auto uses epoll, which needs none of it; for workers.io = \"uring\", allow io_uring_setup, io_uring_enter and io_uring_register in the filter (the systemd unit's SystemCallFilter does)".to_string(),
        },
        Ok(other) => Finding {
            verdict: Verdict::Note,
            key,
            found: Some(other.to_string()),
            text: format!(
                "Seccomp = {other}: unexpected seccomp mode (1 is strict mode, which would stop the relay at once)"
            ),
        },
        Err(problem) => Finding {
            verdict: Verdict::Note,
            key,
            found: None,
            text: format!(
                "seccomp mode unknown ({}: {problem}); if io_uring is blocked, workers.io = \"uring\" refuses to start (auto uses epoll)",
                status_path.display()
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A fake `/proc` whose sysctl tree holds exactly the profile's values.
    struct FakeProc {
        dir: tempfile::TempDir,
        host: Host,
    }

    impl FakeProc {
        fn matching(profile: &str) -> FakeProc {
            let dir = tempfile::tempdir().unwrap();
            let host = Host {
                proc_sys: dir.path().join("sys"),
                proc_self_status: dir.path().join("self/status"),
                nofile_soft: Some(RECOMMENDED_NOFILE),
                cpus_allowed: 4,
            };
            let fake = FakeProc { dir, host };
            for s in parse_profile(profile, profile_text(profile).unwrap()).unwrap() {
                // /proc/sys separates triples with tabs; the checker must not care.
                fake.set(&s.key, &s.value.replace(' ', "\t"));
            }
            fake.status("Name:\tfipsrelay\nSeccomp:\t0\nSeccomp_filters:\t0\n");
            fake
        }

        fn set(&self, key: &str, value: &str) {
            let path = self.host.proc_sys.join(key.replace('.', "/"));
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, format!("{value}\n")).unwrap();
        }

        fn remove(&self, key: &str) {
            fs::remove_file(self.host.proc_sys.join(key.replace('.', "/"))).unwrap();
        }

        fn status(&self, text: &str) {
            fs::create_dir_all(self.dir.path().join("self")).unwrap();
            fs::write(&self.host.proc_self_status, text).unwrap();
        }
    }

    fn diff_for<'a>(report: &'a Report, key: &str) -> &'a Finding {
        report.diffs.iter().find(|f| f.key == key).unwrap_or_else(|| panic!("no DIFF for {key}:\n{report:#}"))
    }

    #[test]
    fn a_host_matching_the_profile_passes() {
        for profile in PROFILES {
            let fake = FakeProc::matching(profile);
            let report = check(profile, &fake.host, 0).unwrap();
            assert!(report.diffs.is_empty(), "{profile}:\n{report:#}");
            assert!(report.notes.is_empty(), "{profile}:\n{report:#}");
            assert_eq!(report.exit_code(), 0);
            let text = report.to_string();
            assert!(!text.contains("OK "), "OK lines only when verbose: {text}");
            assert!(text.starts_with(&format!("SUMMARY profile {profile}: all ")), "{text}");
        }
    }

    #[test]
    fn a_low_limit_is_a_diff_with_the_fix() {
        let fake = FakeProc::matching("throughput");
        fake.set("net.core.somaxconn", "128");
        let report = check("throughput", &fake.host, 0).unwrap();
        assert_eq!(report.exit_code(), 1);
        assert_eq!(report.diffs.len(), 1, "{report:#}");
        assert_eq!(
            report.diffs[0].to_string(),
            "DIFF net.core.somaxconn = 128, profile throughput wants >= 65535: raise the accept queue; \
             fix: sysctl -w net.core.somaxconn=65535 (persist in /etc/sysctl.d/90-fipsrelay.conf)"
        );
        assert_eq!(report.diffs[0].found.as_deref(), Some("128"));
        let text = report.to_string();
        let last = text.lines().last().unwrap();
        assert!(last.starts_with("SUMMARY profile throughput: 1 of "), "{last}");
        assert!(
            last.ends_with(
                "apply the whole profile with `cp /usr/share/fipsrelay/tuning/throughput.conf /etc/sysctl.d/90-fipsrelay.conf && sysctl --system`"
            ),
            "{last}"
        );
    }

    /// The fix names the installed profile; a checkout's only when no
    /// package installed one; and the packages install where it looks.
    #[test]
    fn the_fix_names_the_installed_profile_file() {
        let dir = tempfile::tempdir().unwrap();
        let installed = dir.path().join("usr/share/fipsrelay/tuning");
        let checkout = dir.path().join("src/fipsrelay");
        let none = profile_file("latency", &installed, Some(&checkout));
        assert_eq!(none, installed.join("latency.conf"), "neither exists: where the packages put it");
        fs::create_dir_all(checkout.join("tuning")).unwrap();
        fs::write(checkout.join("tuning/latency.conf"), "x").unwrap();
        assert_eq!(profile_file("latency", &installed, Some(&checkout)), checkout.join("tuning/latency.conf"));
        assert_eq!(profile_file("latency", &installed, None), installed.join("latency.conf"));
        fs::create_dir_all(&installed).unwrap();
        fs::write(installed.join("latency.conf"), "x").unwrap();
        assert_eq!(profile_file("latency", &installed, Some(&checkout)), installed.join("latency.conf"));

        let package = include_str!("../../scripts/package.sh");
        assert!(
            package.contains(&format!("tuning/*.conf tuning/README.md \"$root{INSTALLED_PROFILE_DIR}/\"")),
            "scripts/package.sh no longer installs the profiles into {INSTALLED_PROFILE_DIR}"
        );
    }

    #[test]
    fn better_values_pass_and_worse_ones_differ() {
        let fake = FakeProc::matching("throughput");
        fake.set("fs.file-max", "9223372036854775807");
        fake.set("net.ipv4.tcp_fin_timeout", "5");
        fake.set("net.ipv4.tcp_rmem", "8192\t262144\t33554432");
        fake.set("net.ipv4.ip_local_port_range", "1000\t65535");
        fake.set("net.ipv4.ip_local_reserved_ports", "5000,9800-9820");
        let report = check("throughput", &fake.host, 0).unwrap();
        assert!(report.diffs.is_empty(), "{report:#}");

        fake.set("net.ipv4.tcp_fin_timeout", "60");
        fake.set("net.ipv4.tcp_tw_reuse", "2");
        fake.set("kernel.io_uring_disabled", "2");
        let report = check("throughput", &fake.host, 0).unwrap();
        assert_eq!(report.diffs.len(), 3, "{report:#}");
        let fin = diff_for(&report, "net.ipv4.tcp_fin_timeout").to_string();
        assert!(fin.contains("= 60, profile throughput wants <= 15"), "{fin}");
        assert!(fin.contains("sysctl -w net.ipv4.tcp_fin_timeout=15"), "{fin}");
        let tw = diff_for(&report, "net.ipv4.tcp_tw_reuse").to_string();
        assert!(tw.contains("= 2, profile throughput wants 1:"), "{tw}");
        let uring = diff_for(&report, "kernel.io_uring_disabled").to_string();
        assert!(uring.contains("auto uses epoll"), "{uring}");
        assert!(uring.contains("sysctl -w kernel.io_uring_disabled=0"), "{uring}");
    }

    #[test]
    fn slow_start_after_idle_is_a_diff_in_every_profile() {
        // A long path to the intake (issue 22): the Agent idles between
        // flushes, and the kernel's default restarts slow start after idle.
        for profile in PROFILES {
            let fake = FakeProc::matching(profile);
            fake.set("net.ipv4.tcp_slow_start_after_idle", "1");
            let report = check(profile, &fake.host, 0).unwrap();
            assert_eq!(report.diffs.len(), 1, "{profile}:\n{report:#}");
            let line = diff_for(&report, "net.ipv4.tcp_slow_start_after_idle").to_string();
            assert!(line.contains(&format!("= 1, profile {profile} wants 0:")), "{line}");
            assert!(line.contains("Agent's idle gaps"), "{line}");
            assert!(line.contains("fix: sysctl -w net.ipv4.tcp_slow_start_after_idle=0"), "{line}");
        }
    }

    #[test]
    fn triples_are_compared_element_by_element_and_the_fix_keeps_better_ones() {
        let fake = FakeProc::matching("throughput");
        fake.set("net.ipv4.tcp_rmem", "8192\t87380\t33554432");
        let report = check("throughput", &fake.host, 0).unwrap();
        let line = diff_for(&report, "net.ipv4.tcp_rmem").to_string();
        assert!(
            line.contains("tcp_rmem = 8192 87380 33554432, profile throughput wants >= 4096 131072 16777216 (each)")
        );
        assert!(line.contains("sysctl -w net.ipv4.tcp_rmem=\"8192 131072 33554432\""), "{line}");
    }

    #[test]
    fn port_range_is_compared_by_width() {
        let fake = FakeProc::matching("throughput");
        fake.set("net.ipv4.ip_local_port_range", "32768\t60999");
        let report = check("throughput", &fake.host, 0).unwrap();
        let line = diff_for(&report, "net.ipv4.ip_local_port_range").to_string();
        assert!(line.contains("wants a range at least as wide as 1024 65535 (64512 ports)"), "{line}");
        assert!(line.contains("sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\""), "{line}");
    }

    #[test]
    fn reserved_ports_must_cover_the_relay_ports_and_the_fix_keeps_existing_ones() {
        let fake = FakeProc::matching("throughput");
        fake.set("net.ipv4.ip_local_reserved_ports", "");
        let report = check("throughput", &fake.host, 0).unwrap();
        let line = diff_for(&report, "net.ipv4.ip_local_reserved_ports").to_string();
        assert!(line.contains("ip_local_reserved_ports = (empty),"), "{line}");
        assert!(line.contains("sysctl -w net.ipv4.ip_local_reserved_ports=9803-9818 "), "{line}");

        fake.set("net.ipv4.ip_local_reserved_ports", "5000,9803-9810");
        let report = check("throughput", &fake.host, 0).unwrap();
        let line = diff_for(&report, "net.ipv4.ip_local_reserved_ports").to_string();
        assert!(line.contains("reserved_ports=5000,9803-9810,9803-9818 "), "{line}");
    }

    #[test]
    fn a_missing_key_is_reported_as_not_available() {
        let fake = FakeProc::matching("latency");
        fake.remove("net.core.busy_poll");
        let report = check("latency", &fake.host, 0).unwrap();
        assert_eq!(report.exit_code(), 1);
        let f = diff_for(&report, "net.core.busy_poll");
        assert_eq!(f.verdict, Verdict::NotAvailable);
        assert_eq!(f.found, None);
        let line = f.to_string();
        assert!(line.starts_with("DIFF net.core.busy_poll is not available on this host ("), "{line}");
        assert!(line.contains("profile latency wants >= 50"), "{line}");
    }

    #[test]
    fn no_proc_sys_at_all_does_not_crash() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host {
            proc_sys: dir.path().join("nothing"),
            proc_self_status: dir.path().join("nothing/status"),
            nofile_soft: None,
            cpus_allowed: 0,
        };
        let report = check("many-connections", &host, 2).unwrap();
        assert!(report.diffs.iter().all(|f| f.verdict == Verdict::NotAvailable));
        assert!(report.oks.is_empty());
        assert_eq!(report.exit_code(), 1);
        // io_uring_disabled, rlimit, workers, seccomp: notes, not differences.
        assert_eq!(report.notes.len(), 4, "{report:#}");
    }

    #[test]
    fn a_kernel_without_io_uring_disabled_gets_a_note() {
        let fake = FakeProc::matching("throughput");
        fake.remove("kernel.io_uring_disabled");
        let report = check("throughput", &fake.host, 0).unwrap();
        assert_eq!(report.exit_code(), 0, "{report:#}");
        assert_eq!(report.notes.len(), 1);
        assert!(report.notes[0].to_string().starts_with("NOTE kernel.io_uring_disabled is not present"));
    }

    #[test]
    fn an_unparseable_host_value_is_a_diff() {
        let fake = FakeProc::matching("throughput");
        fake.set("net.core.somaxconn", "lots");
        let report = check("throughput", &fake.host, 0).unwrap();
        let line = diff_for(&report, "net.core.somaxconn").to_string();
        assert!(line.contains("cannot be compared"), "{line}");
        assert!(line.contains("sysctl -w net.core.somaxconn=65535"), "{line}");
    }

    #[test]
    fn a_low_nofile_limit_differs() {
        let mut fake = FakeProc::matching("throughput");
        fake.host.nofile_soft = Some(1024);
        let report = check("throughput", &fake.host, 0).unwrap();
        assert_eq!(report.exit_code(), 1);
        let line = diff_for(&report, "RLIMIT_NOFILE").to_string();
        assert!(line.starts_with("DIFF RLIMIT_NOFILE soft limit = 1024, fipsrelay wants >= 65536:"), "{line}");
        assert!(line.contains("LimitNOFILE=1048576"), "{line}");

        fake.host.nofile_soft = Some(u64::MAX);
        let report = check("throughput", &fake.host, 0).unwrap();
        assert_eq!(report.exit_code(), 0);
        assert!(report.oks.iter().any(|f| f.found.as_deref() == Some("unlimited")));
    }

    #[test]
    fn more_workers_than_allowed_cpus_differs() {
        let mut fake = FakeProc::matching("throughput");
        fake.host.cpus_allowed = 2;
        let report = check("throughput", &fake.host, 4).unwrap();
        let line = diff_for(&report, "workers").to_string();
        assert!(line.starts_with("DIFF workers = 4, but this process may run on only 2 CPUs"), "{line}");
        assert!(line.contains("threads = 0"), "{line}");
        for workers in [0, 1, 2] {
            assert_eq!(check("throughput", &fake.host, workers).unwrap().exit_code(), 0, "workers = {workers}");
        }
    }

    #[test]
    fn a_seccomp_filter_is_a_note_about_io_uring() {
        let fake = FakeProc::matching("throughput");
        fake.status("Name:\tfipsrelay\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n");
        let report = check("throughput", &fake.host, 0).unwrap();
        assert_eq!(report.exit_code(), 0, "a filter may well allow io_uring");
        assert_eq!(report.notes.len(), 1);
        let line = report.notes[0].to_string();
        assert!(line.starts_with("NOTE Seccomp = 2 (filter)"), "{line}");
        assert!(line.contains("io_uring_setup"), "{line}");
        assert!(report.to_string().contains(&line), "notes print without --verbose");

        fake.status("Name:\tfipsrelay\n");
        let report = check("throughput", &fake.host, 0).unwrap();
        assert!(report.notes[0].to_string().contains("seccomp mode unknown"));
    }

    #[test]
    fn an_unknown_profile_names_the_known_ones() {
        let fake = FakeProc::matching("throughput");
        let err = check("fast", &fake.host, 0).unwrap_err();
        assert!(matches!(err, TuningError::UnknownProfile { .. }));
        let text = err.to_string();
        assert!(text.contains("\"fast\""), "{text}");
        for name in PROFILES {
            assert!(text.contains(name), "{text}");
        }
    }

    #[test]
    fn every_profile_parses_and_every_key_has_a_rule() {
        assert!(PROFILES.contains(&DEFAULT_PROFILE));
        assert_eq!(PROFILES.len(), PROFILE_TEXTS.len());
        for profile in PROFILES {
            let settings = parse_profile(profile, profile_text(profile).unwrap()).unwrap();
            assert!(settings.len() >= 10, "{profile} has only {} settings", settings.len());
            let mut keys: Vec<&str> = settings.iter().map(|s| s.key.as_str()).collect();
            for s in &settings {
                let rule = comparison(&s.key).unwrap_or_else(|| panic!("{profile}: no rule for {}", s.key));
                // The profile's own value must be interpretable and satisfy itself.
                assert_eq!(compare(rule, &s.value, &s.value), Ok(None), "{profile}: {} = {}", s.key, s.value);
                let n = s.value.split_whitespace().count();
                match rule {
                    Compare::RangeAtLeastAsWide => assert_eq!(n, 2, "{}", s.key),
                    Compare::CoversPorts => assert!(!parse_ports(&s.value).unwrap().is_empty()),
                    _ => {
                        parse_numbers(&s.value).unwrap();
                    }
                }
            }
            for needed in ["kernel.io_uring_disabled", "net.core.somaxconn", "fs.nr_open"] {
                assert!(keys.contains(&needed), "{profile} lacks {needed}");
            }
            let count = keys.len();
            keys.sort_unstable();
            keys.dedup();
            assert_eq!(keys.len(), count, "{profile} sets a key twice");
        }
    }

    #[test]
    fn parser_follows_sysctl_d_syntax() {
        let text =
            "# comment\n; also a comment\n\n  net.core.somaxconn=4096\n-net/ipv4/tcp_rmem =  4096\t131072   6291456 \n";
        let settings = parse_profile("t", text).unwrap();
        assert_eq!(
            settings,
            vec![
                Setting { key: "net.core.somaxconn".into(), value: "4096".into(), line: 4 },
                Setting { key: "net.ipv4.tcp_rmem".into(), value: "4096 131072 6291456".into(), line: 5 },
            ]
        );
        let err = parse_profile("t", "# ok\nnet.core.somaxconn 4096\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn verbose_display_lists_ok_lines() {
        let fake = FakeProc::matching("throughput");
        let report = check("throughput", &fake.host, 0).unwrap();
        let verbose = format!("{report:#}");
        assert!(verbose.contains("OK net.core.somaxconn = 65535 (profile throughput wants >= 65535)"), "{verbose}");
        assert!(verbose.contains("OK Seccomp = 0"), "{verbose}");
        assert!(verbose.lines().last().unwrap().starts_with("SUMMARY "));
    }

    #[test]
    fn current_host_reads_without_failing() {
        let host = Host::current();
        assert_eq!(host.proc_sys, Path::new("/proc/sys"));
        assert!(host.nofile_soft.is_some());
        assert!(host.cpus_allowed >= 1);
        let report = check(DEFAULT_PROFILE, &host, 0).unwrap();
        assert!(report.to_string().contains("SUMMARY profile throughput"));
    }
}
