//! Log lines an operator can read in an outage: failures that repeat per
//! request or per connection (an upstream failure answered 502/503/504, an
//! answer cut short, an address tried in vain, an HTTP/2 connection cut, a
//! refused request, a connection over the limit, a bad admin token) are
//! counted per worker and summarised, instead of one line each.
//!
//! Per key (what happened, product, upstream host, cause): the first event
//! after a quiet [`SUMMARY_INTERVAL`] is logged in full at once (the caller
//! logs it, with its own fields), so a lone failure still shows up
//! promptly; the next ones are counted (the caller logs them at `debug`),
//! and one `WARN` line per key says `count=N` with the first of them as an
//! example, at most once per [`SUMMARY_INTERVAL`]. State changes (an
//! address down or up, HTTP/1.1 fallback) are not events here: they are
//! logged once each where they happen.
//!
//! Lives on one worker thread (no lock). It must never log per event by
//! itself, nor wake the worker while nothing is pending: [`Summaries::run`]
//! sleeps until a count is pending, then until it is due.
//!
//! # Bounds
//! At most [`MAX_KEYS`] keys (keys quiet for an interval are forgotten);
//! the events of any more are counted under an overflow key per kind of
//! event (what, product, cause), whose subject is `(others)`.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use crate::rt::Signal;

/// The least time between two lines of one key: the quiet period after
/// which an event is logged at once again, and the summary period.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(5);

/// Keys held at most per worker; beyond, events go to an overflow key.
pub const MAX_KEYS: usize = 64;

/// The subject of the overflow key.
const OTHERS: &str = "(others)";

/// One event to count: the key of its summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    /// What happened: the message of the event's own line, and of its summary.
    pub what: &'static str,
    /// The product port it came in on.
    pub product: &'static str,
    /// Whom it is about: the summary's `upstream` or `peer` field.
    pub about: About<'a>,
    /// The cause label (`fault::Cause::label`), or the status's reason.
    pub cause: &'static str,
}

/// Whom the events of a key are about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum About<'a> {
    /// An intake host (the `upstream` field).
    Upstream(&'a str),
    /// A client address (the `peer` field).
    Peer(&'a str),
    /// Only the product.
    Product,
}

impl<'a> About<'a> {
    fn subject(self) -> &'a str {
        match self {
            About::Upstream(s) | About::Peer(s) => s,
            About::Product => "",
        }
    }

    fn with(self, subject: &str) -> About<'_> {
        match self {
            About::Upstream(_) => About::Upstream(subject),
            About::Peer(_) => About::Peer(subject),
            About::Product => About::Product,
        }
    }
}

/// The kind of an [`About`], without its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AboutKind {
    Upstream,
    Peer,
    Product,
}

impl About<'_> {
    fn kind(self) -> AboutKind {
        match self {
            About::Upstream(_) => AboutKind::Upstream,
            About::Peer(_) => AboutKind::Peer,
            About::Product => AboutKind::Product,
        }
    }
}

/// What one summary line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub what: &'static str,
    pub product: &'static str,
    pub about: AboutKind,
    pub subject: String,
    pub cause: &'static str,
    /// Events counted since the last line of this key.
    pub count: u64,
    /// The first of them, in full.
    pub example: String,
    /// From the last line of this key to the last event counted.
    pub over: Duration,
}

struct Entry {
    what: &'static str,
    product: &'static str,
    about: AboutKind,
    subject: Box<str>,
    cause: &'static str,
    /// When the key's last line was written (the event logged at once, or
    /// the last summary).
    since: Instant,
    /// The key's last event.
    last: Instant,
    /// Events since `since`, not yet in a line.
    count: u64,
    example: Option<String>,
}

impl Entry {
    fn is(&self, ev: &Event<'_>) -> bool {
        self.what == ev.what
            && self.product == ev.product
            && self.cause == ev.cause
            && self.about == ev.about.kind()
            && *self.subject == *ev.about.subject()
    }
}

/// A worker's counted events, by key.
pub struct Summaries {
    entries: RefCell<Vec<Entry>>,
    /// Notified when a key gets its first pending count.
    pending: Signal,
    interval: Duration,
}

impl Default for Summaries {
    fn default() -> Self {
        Self::new(SUMMARY_INTERVAL)
    }
}

impl Summaries {
    pub fn new(interval: Duration) -> Self {
        Summaries { entries: RefCell::new(Vec::new()), pending: Signal::default(), interval }
    }

    /// Counts one event. True: it is the first of its key after a quiet
    /// period, and the caller logs it in full now; false: it is counted for
    /// the next summary, and the caller logs it at `debug` at most.
    /// `example` is called only for the first event counted after a line.
    pub fn record(&self, ev: Event<'_>, example: impl FnOnce() -> String) -> bool {
        let (log_now, newly_pending) = self.record_at(ev, Instant::now(), example);
        if newly_pending {
            self.pending.notify();
        }
        log_now
    }

    /// [`Summaries::record`] at `now`: (log now, a first count is pending).
    fn record_at(&self, ev: Event<'_>, now: Instant, example: impl FnOnce() -> String) -> (bool, bool) {
        let mut entries = self.entries.borrow_mut();
        let found = entries.iter().position(|e| e.is(&ev));
        let at = match found {
            Some(i) => i,
            None => {
                if entries.len() >= MAX_KEYS {
                    // Quiet keys go first; then the overflow key takes it.
                    let interval = self.interval;
                    entries.retain(|e| e.count > 0 || now.duration_since(e.last) < interval);
                }
                // (Keys about a product alone are few: what × product × cause.)
                let folds = matches!(ev.about, About::Upstream(s) | About::Peer(s) if s != OTHERS);
                if entries.len() >= MAX_KEYS && folds {
                    drop(entries);
                    return self.record_at(Event { about: ev.about.with(OTHERS), ..ev }, now, example);
                }
                entries.push(Entry {
                    what: ev.what,
                    product: ev.product,
                    about: ev.about.kind(),
                    subject: ev.about.subject().into(),
                    cause: ev.cause,
                    since: now,
                    last: now,
                    count: 0,
                    example: None,
                });
                return (true, false);
            }
        };
        let e = &mut entries[at];
        if e.count == 0 && now.duration_since(e.last) >= self.interval {
            // Quiet since its last event: a new episode, logged at once.
            e.since = now;
            e.last = now;
            return (true, false);
        }
        e.last = now;
        e.count += 1;
        if e.count == 1 {
            e.example = Some(example());
            return (false, true);
        }
        (false, false)
    }

    /// When the earliest pending summary is due, if one is pending.
    pub fn next_due(&self) -> Option<Instant> {
        self.entries.borrow().iter().filter(|e| e.count > 0).map(|e| e.since + self.interval).min()
    }

    /// The summaries due at `now` (all pending ones when `all`); their
    /// counts start again, and keys quiet for an interval are forgotten.
    fn take_due(&self, now: Instant, all: bool) -> Vec<Summary> {
        let mut out = Vec::new();
        let mut entries = self.entries.borrow_mut();
        for e in entries.iter_mut().filter(|e| e.count > 0 && (all || now >= e.since + self.interval)) {
            out.push(Summary {
                what: e.what,
                product: e.product,
                about: e.about,
                subject: e.subject.to_string(),
                cause: e.cause,
                count: e.count,
                example: e.example.take().unwrap_or_default(),
                // To the millisecond: enough to read.
                over: Duration::from_millis(e.last.saturating_duration_since(e.since).as_millis() as u64),
            });
            e.count = 0;
            e.since = now;
        }
        let interval = self.interval;
        entries.retain(|e| e.count > 0 || now.duration_since(e.last) < interval);
        out
    }

    /// Writes the summaries due now (every pending one when `all`: the
    /// worker is about to end), one `WARN` line each.
    pub fn flush(&self, all: bool) {
        for s in self.take_due(Instant::now(), all) {
            let (product, cause, count, over, first) = (s.product, s.cause, s.count, s.over, &s.example);
            let what = s.what;
            match s.about {
                AboutKind::Upstream => tracing::warn!(
                    product, upstream = s.subject.as_str(), cause, count, ?over, first = %first,
                    "{what} (summary: {count} more since the last line)"
                ),
                AboutKind::Peer => tracing::warn!(
                    product, peer = s.subject.as_str(), cause, count, ?over, first = %first,
                    "{what} (summary: {count} more since the last line)"
                ),
                AboutKind::Product => tracing::warn!(
                    product, cause, count, ?over, first = %first,
                    "{what} (summary: {count} more since the last line)"
                ),
            }
        }
    }

    /// Runs on the worker's loop for its life: sleeps until a count is
    /// pending (no timer while nothing fails), then until it is due, and
    /// writes it.
    pub async fn run(&self) {
        loop {
            let due = self.pending.wait_for(|| self.next_due()).await;
            crate::rt::sleep_until(due).await;
            self.flush(false);
        }
    }
}

/// Logs an event that may repeat per request at `$level` when it is the
/// first of its key after a quiet period, else counts it for the summary
/// and logs it at `debug`: `count_or_log!(warn, summaries, event, || example, fields.., "message")`.
#[macro_export]
macro_rules! count_or_log {
    ($level:ident, $summaries:expr, $event:expr, $example:expr, $($line:tt)+) => {
        if $summaries.record($event, $example) {
            tracing::$level!($($line)+)
        } else {
            tracing::debug!($($line)+)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    const EV: Event<'static> = Event {
        what: "upstream failure answered for retry",
        product: "metrics",
        about: About::Upstream("a.example"),
        cause: "connect",
    };

    #[test]
    fn the_first_event_is_logged_the_rest_counted_and_summarised_per_key() {
        let s = Summaries::new(Duration::from_secs(5));
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        assert_eq!(s.record_at(EV, ms(0), || unreachable!()), (true, false), "the first is logged at once");
        assert_eq!(s.next_due(), None, "nothing pending: no timer");
        assert_eq!(s.record_at(EV, ms(10), || "second".into()), (false, true));
        for n in 0..998 {
            assert_eq!(s.record_at(EV, ms(20 + n), || unreachable!()), (false, false));
        }
        // Another cause is another key, logged at once.
        let other = Event { cause: "timeout", ..EV };
        assert_eq!(s.record_at(other, ms(30), || unreachable!()), (true, false));
        assert_eq!(s.next_due(), Some(ms(5000)));
        assert!(s.take_due(ms(4999), false).is_empty());
        let due = s.take_due(ms(5000), false);
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!((due[0].count, due[0].example.as_str(), due[0].cause), (999, "second", "connect"));
        // Still failing: counted, summarised no sooner than an interval on.
        assert_eq!(s.record_at(EV, ms(5100), || "third".into()), (false, true));
        assert_eq!(s.next_due(), Some(ms(10_000)));
        assert_eq!(s.take_due(ms(10_000), false)[0].count, 1);
        // Quiet for an interval: the next one is logged at once again.
        assert_eq!(s.record_at(EV, ms(15_200), || unreachable!()), (true, false));
        assert_eq!(s.next_due(), None);
    }

    #[test]
    fn flushing_everything_leaves_nothing_pending() {
        let s = Summaries::new(Duration::from_secs(5));
        let t0 = Instant::now();
        s.record_at(EV, t0, || unreachable!());
        s.record_at(EV, t0, || "x".into());
        assert_eq!(s.take_due(t0, true).len(), 1);
        assert_eq!(s.next_due(), None);
    }

    #[test]
    fn keys_are_bounded_the_rest_go_to_an_overflow_key() {
        let s = Summaries::new(Duration::from_secs(5));
        let t0 = Instant::now();
        let peers: Vec<String> = (0..MAX_KEYS + 10).map(|i| format!("10.0.0.{i}")).collect();
        let mut logged = 0;
        for p in &peers {
            let ev = Event { about: About::Peer(p), ..EV };
            logged += u64::from(s.record_at(ev, t0, || p.clone()).0);
            logged += u64::from(s.record_at(ev, t0, || p.clone()).0);
        }
        assert_eq!(s.entries.borrow().len(), MAX_KEYS + 1, "the keys and one overflow key");
        let due = s.take_due(t0, true);
        let others: u64 = due.iter().filter(|d| d.subject == OTHERS).map(|d| d.count).sum();
        let counted: u64 = due.iter().map(|d| d.count).sum();
        assert_eq!(logged + counted, 2 * peers.len() as u64, "every event is counted or logged");
        assert_eq!(logged, MAX_KEYS as u64 + 1);
        assert_eq!(others, 2 * 10 - 1);
        // A key about a product alone is kept beyond the bound, not folded.
        let full = Summaries::new(Duration::from_secs(5));
        for p in &peers {
            full.record_at(Event { about: About::Peer(p), ..EV }, t0, String::new);
        }
        assert_eq!(full.record_at(Event { about: About::Product, ..EV }, t0, String::new), (true, false));
    }
}
