//! A mock DNS server for tests of the relay's DNS re-resolution: a UDP
//! responder on its own std thread that answers A and AAAA queries from a
//! small text zone file. The file is re-read on every query, so a test
//! changes the answers by rewriting it (write a temporary file, then rename
//! it over the zone). It serves UDP only (no TCP fallback: an answer too
//! big for the datagram goes out truncated, with TC set), never recurses,
//! never forwards a query anywhere, and must never be used as a real server.
//!
//! # Zone file
//!
//! One record per line; `#` starts a comment, blank lines are ignored:
//!
//! ```text
//! intake.test       A     10.0.0.1        # ttl 60 (DEFAULT_TTL)
//! intake.test       A     10.0.0.2   5    # ttl 5 s
//! intake.test.      AAAA  fd00::1    30
//! broken.test       SERVFAIL
//! blackhole.test    DROP                  # never answered
//! ```
//!
//! Names compare case-insensitively, with or without a trailing dot. For a
//! name the zone lists: `DROP` wins (no answer at all), then `SERVFAIL`,
//! otherwise an A or AAAA query gets every record of its type (NOERROR with
//! no answers when there is none: the name exists with only the other type;
//! any other query type gets the same empty NOERROR). A name the zone does
//! not list gets NXDOMAIN. A zone file that cannot be read or has a bad line
//! answers SERVFAIL to every query, and says why on stderr.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};

/// TTL of a zone record that gives none, in seconds.
pub const DEFAULT_TTL: u32 = 60;

/// How long the serving thread blocks in `recv_from` before it checks
/// whether it should stop: the bound on how long `Drop` waits.
const READ_TIMEOUT: Duration = Duration::from_millis(50);

/// Largest datagram read, and the EDNS payload size it advertises.
const MAX_DATAGRAM: u16 = 4096;

/// Answer size for a query without EDNS (RFC 1035 §4.2.1).
const CLASSIC_UDP_PAYLOAD: usize = 512;

/// Why the zone file gave no answers; every query is then answered SERVFAIL.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    #[error("cannot read the zone file {}: {source}; write it before querying, and replace it by rename", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "{}:{line}: {reason}; a zone line is `<name> A <ipv4> [ttl]`, `<name> AAAA <ipv6> [ttl]`, \
         `<name> SERVFAIL` or `<name> DROP`",
        path.display()
    )]
    Syntax { path: PathBuf, line: usize, reason: String },
}

/// What one zone line says about its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    A(Ipv4Addr, u32),
    Aaaa(Ipv6Addr, u32),
    ServFail,
    Drop,
}

/// A parsed zone: (normalized name, entry) in file order.
#[derive(Debug, Default)]
struct Zone {
    entries: Vec<(String, Entry)>,
}

impl Zone {
    fn load(path: &Path) -> Result<Self, ZoneError> {
        let text = std::fs::read_to_string(path).map_err(|source| ZoneError::Read { path: path.into(), source })?;
        Self::parse(&text).map_err(|(line, reason)| ZoneError::Syntax { path: path.into(), line, reason })
    }

    /// Errors are (1-based line number, what is wrong with it).
    fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut entries = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or_default();
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some((&name, rest)) = fields.split_first() else { continue };
            let entry = parse_entry(rest).map_err(|reason| (index + 1, reason))?;
            entries.push((normalize(name), entry));
        }
        Ok(Self { entries })
    }

    fn lookup(&self, name: &str, query_type: RecordType) -> Lookup {
        let mut found = false;
        let mut servfail = false;
        let mut addresses = Vec::new();
        for (_, entry) in self.entries.iter().filter(|(n, _)| n == name) {
            found = true;
            match *entry {
                Entry::Drop => return Lookup::Drop,
                Entry::ServFail => servfail = true,
                Entry::A(ip, ttl) if query_type == RecordType::A => addresses.push((IpAddr::V4(ip), ttl)),
                Entry::Aaaa(ip, ttl) if query_type == RecordType::AAAA => addresses.push((IpAddr::V6(ip), ttl)),
                Entry::A(..) | Entry::Aaaa(..) => {}
            }
        }
        match (found, servfail) {
            (false, _) => Lookup::NxDomain,
            (true, true) => Lookup::ServFail,
            (true, false) => Lookup::Addresses(addresses),
        }
    }
}

fn parse_entry(fields: &[&str]) -> Result<Entry, String> {
    let Some((&kind, rest)) = fields.split_first() else {
        return Err("a name without a record type".into());
    };
    let ttl = |rest: &[&str]| -> Result<u32, String> {
        match rest {
            [] => Ok(DEFAULT_TTL),
            [ttl] => ttl.parse().map_err(|e| format!("ttl {ttl:?} is not a number of seconds ({e})")),
            _ => Err(format!("unexpected {:?} after the ttl", rest[1..].join(" "))),
        }
    };
    let no_more = |rest: &[&str]| -> Result<(), String> {
        match rest {
            [] => Ok(()),
            _ => Err(format!("unexpected {:?} after {kind}", rest.join(" "))),
        }
    };
    match kind.to_ascii_uppercase().as_str() {
        "A" => {
            let Some((&ip, rest)) = rest.split_first() else { return Err("A without an IPv4 address".into()) };
            let ip = ip.parse().map_err(|e| format!("{ip:?} is not an IPv4 address ({e})"))?;
            Ok(Entry::A(ip, ttl(rest)?))
        }
        "AAAA" => {
            let Some((&ip, rest)) = rest.split_first() else { return Err("AAAA without an IPv6 address".into()) };
            let ip = ip.parse().map_err(|e| format!("{ip:?} is not an IPv6 address ({e})"))?;
            Ok(Entry::Aaaa(ip, ttl(rest)?))
        }
        "SERVFAIL" => no_more(rest).map(|()| Entry::ServFail),
        "DROP" => no_more(rest).map(|()| Entry::Drop),
        _ => Err(format!("unknown record type {kind:?}")),
    }
}

/// Lower case, without the trailing dot: the form names are compared in.
fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

enum Lookup {
    Addresses(Vec<(IpAddr, u32)>),
    NxDomain,
    ServFail,
    Drop,
}

/// What the server did with one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// NOERROR with these addresses (none: the name exists without records of the asked type).
    Answered(Vec<IpAddr>),
    /// NXDOMAIN: the zone does not list the name.
    NxDomain,
    /// SERVFAIL, as a `SERVFAIL` zone line asks.
    ServFail,
    /// SERVFAIL because the zone file could not be read or parsed.
    ZoneUnreadable,
    /// No answer, as a `DROP` zone line asks.
    Dropped,
    /// FORMERR: the query could not be parsed or did not hold exactly one question.
    FormErr,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Answered(addresses) if addresses.is_empty() => f.write_str("NOERROR (no records)"),
            Self::Answered(addresses) => {
                f.write_str("NOERROR")?;
                for (i, ip) in addresses.iter().enumerate() {
                    write!(f, "{}{ip}", if i == 0 { " " } else { "," })?;
                }
                Ok(())
            }
            Self::NxDomain => f.write_str("NXDOMAIN"),
            Self::ServFail => f.write_str("SERVFAIL"),
            Self::ZoneUnreadable => f.write_str("SERVFAIL (zone unreadable)"),
            Self::Dropped => f.write_str("DROP (no answer)"),
            Self::FormErr => f.write_str("FORMERR"),
        }
    }
}

/// One query and what became of it; displays as `query NAME TYPE -> RESULT`
/// (`-` for the name and type of a query that could not be parsed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryLog {
    /// The asked name as received (case kept), `-` when unparseable.
    pub name: String,
    /// The asked type (`A`, `AAAA`, …), `-` when unparseable.
    pub query_type: String,
    pub outcome: Outcome,
}

impl fmt::Display for QueryLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "query {} {} -> {}", self.name, self.query_type, self.outcome)
    }
}

#[derive(Default)]
struct Counters {
    answered: AtomicU64,
    dropped: AtomicU64,
}

/// A running mock DNS server; stops (and joins its thread) on drop.
pub struct MockDns {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

impl MockDns {
    /// Binds `listen` (UDP; port 0 picks a free one) and serves `zone` on a
    /// background thread.
    pub fn start(listen: SocketAddr, zone: PathBuf) -> io::Result<Self> {
        Self::start_observed(listen, zone, |_| {})
    }

    /// As [`MockDns::start`], and calls `observe` on the serving thread after
    /// each query is handled (the `mock-dns` binary logs it).
    pub fn start_observed(
        listen: SocketAddr,
        zone: PathBuf,
        mut observe: impl FnMut(&QueryLog) + Send + 'static,
    ) -> io::Result<Self> {
        let socket = UdpSocket::bind(listen)?;
        socket.set_read_timeout(Some(READ_TIMEOUT))?;
        let addr = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let thread = std::thread::Builder::new().name("mock-dns".into()).spawn({
            let stop = Arc::clone(&stop);
            let counters = Arc::clone(&counters);
            move || serve(&socket, &zone, &stop, &counters, &mut observe)
        })?;
        Ok(Self { addr, stop, counters, thread: Some(thread) })
    }

    /// The bound address (with the port chosen for `:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queries answered so far (FORMERR and SERVFAIL included, DROP not).
    pub fn queries(&self) -> u64 {
        self.counters.answered.load(Ordering::Relaxed)
    }

    /// Queries left unanswered by a `DROP` line so far.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Stops serving and waits for the thread (at most about `READ_TIMEOUT`).
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for MockDns {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve(socket: &UdpSocket, zone: &Path, stop: &AtomicBool, counters: &Counters, observe: &mut dyn FnMut(&QueryLog)) {
    let mut buf = vec![0u8; usize::from(MAX_DATAGRAM)];
    while !stop.load(Ordering::Relaxed) {
        let (len, peer) = match socket.recv_from(&mut buf) {
            Ok(received) => received,
            Err(e) => {
                match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted => {}
                    // An ICMP error for an earlier answer: the client went away.
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => {}
                    _ => {
                        eprintln!("mock-dns: receiving a query failed: {e}");
                        std::thread::sleep(READ_TIMEOUT);
                    }
                }
                continue;
            }
        };
        let (reply, log) = handle(&buf[..len], zone);
        match reply {
            Some(reply) => {
                // Counted before it is sent, so a client that has its answer sees it counted.
                counters.answered.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = socket.send_to(&reply, peer) {
                    eprintln!("mock-dns: sending the answer to {peer} failed: {e}");
                }
            }
            None => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        observe(&log);
    }
}

/// The encoded answer to one datagram (`None`: do not answer) and its log line.
fn handle(datagram: &[u8], zone: &Path) -> (Option<Vec<u8>>, QueryLog) {
    let unparseable = || QueryLog { name: "-".into(), query_type: "-".into(), outcome: Outcome::FormErr };
    let request = match Message::from_vec(datagram) {
        Ok(request) => request,
        Err(_) => {
            // Echo the id when the datagram has one.
            let id = match datagram {
                [hi, lo, ..] => u16::from_be_bytes([*hi, *lo]),
                _ => 0,
            };
            let reply = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
            return (encode(&reply, CLASSIC_UDP_PAYLOAD), unparseable());
        }
    };
    let mut reply = Message::response(request.id, request.op_code);
    reply.metadata.recursion_desired = true;
    reply.metadata.recursion_available = true;
    reply.add_queries(request.queries.iter().cloned());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_DATAGRAM);
        reply.set_edns(edns);
    }
    let limit = request
        .edns
        .as_ref()
        .map_or(CLASSIC_UDP_PAYLOAD, |e| usize::from(e.max_payload()))
        .clamp(CLASSIC_UDP_PAYLOAD, usize::from(MAX_DATAGRAM));

    let [query] = request.queries.as_slice() else {
        reply.metadata.response_code = ResponseCode::FormErr;
        return (encode(&reply, limit), unparseable());
    };
    let mut log = QueryLog {
        name: query.name().to_ascii(),
        query_type: query.query_type().to_string(),
        outcome: Outcome::FormErr,
    };
    let lookup = match Zone::load(zone) {
        Ok(zone) => zone.lookup(&normalize(&log.name), query.query_type()),
        Err(e) => {
            eprintln!("mock-dns: {e}; answering SERVFAIL");
            log.outcome = Outcome::ZoneUnreadable;
            reply.metadata.response_code = ResponseCode::ServFail;
            return (encode(&reply, limit), log);
        }
    };
    match lookup {
        Lookup::Drop => {
            log.outcome = Outcome::Dropped;
            return (None, log);
        }
        Lookup::NxDomain => {
            log.outcome = Outcome::NxDomain;
            reply.metadata.response_code = ResponseCode::NXDomain;
        }
        Lookup::ServFail => {
            log.outcome = Outcome::ServFail;
            reply.metadata.response_code = ResponseCode::ServFail;
        }
        Lookup::Addresses(addresses) => {
            for &(ip, ttl) in &addresses {
                let data = match ip {
                    IpAddr::V4(ip) => RData::A(A(ip)),
                    IpAddr::V6(ip) => RData::AAAA(AAAA(ip)),
                };
                reply.add_answer(Record::from_rdata(query.name().clone(), ttl, data));
            }
            log.outcome = Outcome::Answered(addresses.into_iter().map(|(ip, _)| ip).collect());
        }
    }
    (encode(&reply, limit), log)
}

/// Encodes `reply`; one bigger than `limit` bytes goes out without its
/// answers and with TC set, as RFC 1035 asks of UDP.
fn encode(reply: &Message, limit: usize) -> Option<Vec<u8>> {
    let encoded = reply.to_vec().and_then(|bytes| {
        if bytes.len() <= limit {
            return Ok(bytes);
        }
        let mut truncated = reply.clone();
        truncated.answers.clear();
        truncated.metadata.truncation = true;
        truncated.to_vec()
    });
    match encoded {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            eprintln!("mock-dns: cannot encode the answer: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Instant;

    use hickory_proto::op::{MessageType, Query};
    use hickory_proto::rr::Name;

    use super::*;

    const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

    /// Replaces the zone the way tests of the relay will: write, then rename.
    fn write_zone(dir: &Path, text: &str) -> PathBuf {
        let zone = dir.join("zone");
        let tmp = dir.join("zone.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &zone).unwrap();
        zone
    }

    fn start(text: &str) -> (tempfile::TempDir, PathBuf, MockDns) {
        let dir = tempfile::tempdir().unwrap();
        let zone = write_zone(dir.path(), text);
        let dns = MockDns::start((Ipv4Addr::LOCALHOST, 0).into(), zone.clone()).unwrap();
        (dir, zone, dns)
    }

    fn query(name: &str, query_type: RecordType) -> Message {
        let mut message = Message::query();
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), query_type));
        message
    }

    /// Sends `request` and waits up to `timeout` for the answer.
    fn exchange_bytes(server: SocketAddr, request: &[u8], timeout: Duration) -> io::Result<Message> {
        let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        client.set_read_timeout(Some(timeout))?;
        client.send_to(request, server)?;
        let mut buf = [0u8; 4096];
        let (len, from) = client.recv_from(&mut buf)?;
        assert_eq!(from, server);
        Ok(Message::from_vec(&buf[..len]).expect("the mock's answer parses"))
    }

    fn ask(server: SocketAddr, name: &str, query_type: RecordType) -> Message {
        let request = query(name, query_type);
        let answer = exchange_bytes(server, &request.to_vec().unwrap(), CLIENT_TIMEOUT).expect("an answer");
        assert_eq!(answer.id, request.id, "the query id is echoed");
        assert_eq!(answer.message_type, MessageType::Response);
        assert_eq!(answer.queries, request.queries, "the question is echoed");
        assert!(answer.recursion_desired && answer.recursion_available);
        answer
    }

    fn addresses(answer: &Message) -> Vec<(IpAddr, u32)> {
        answer
            .answers
            .iter()
            .map(|record| match &record.data {
                RData::A(A(ip)) => (IpAddr::V4(*ip), record.ttl),
                RData::AAAA(AAAA(ip)) => (IpAddr::V6(*ip), record.ttl),
                other => panic!("unexpected record {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_query_gets_every_a_record_with_its_ttl() {
        let (_dir, _zone, dns) = start(
            "# intake\n\nintake.test A 10.0.0.1 5\nINTAKE.test. A 10.0.0.2  # default ttl\nintake.test AAAA fd00::1\n",
        );
        let answer = ask(dns.local_addr(), "Intake.Test.", RecordType::A);
        assert_eq!(answer.response_code, ResponseCode::NoError);
        assert_eq!(addresses(&answer), [(IpAddr::from([10, 0, 0, 1]), 5), (IpAddr::from([10, 0, 0, 2]), DEFAULT_TTL)]);
        assert!(answer.answers.iter().all(|r| r.name == Name::from_ascii("Intake.Test.").unwrap()));
        assert_eq!(dns.queries(), 1);
    }

    #[test]
    fn aaaa_query_gets_aaaa_records_and_a_name_without_them_gets_no_data() {
        let (_dir, _zone, dns) = start("v6.test. AAAA fd00::1 30\nv4.test A 10.0.0.1\n");
        let answer = ask(dns.local_addr(), "V6.test.", RecordType::AAAA);
        assert_eq!(answer.response_code, ResponseCode::NoError);
        assert_eq!(addresses(&answer), [("fd00::1".parse().unwrap(), 30)]);

        let answer = ask(dns.local_addr(), "v4.test.", RecordType::AAAA);
        assert_eq!(answer.response_code, ResponseCode::NoError);
        assert!(answer.answers.is_empty());
    }

    #[test]
    fn absent_name_gets_nxdomain() {
        let (_dir, _zone, dns) = start("intake.test A 10.0.0.1\n");
        let answer = ask(dns.local_addr(), "other.test.", RecordType::A);
        assert_eq!(answer.response_code, ResponseCode::NXDomain);
        assert!(answer.answers.is_empty());
    }

    #[test]
    fn servfail_line_gets_servfail() {
        let (_dir, _zone, dns) = start("broken.test SERVFAIL\nbroken.test A 10.0.0.1\n");
        let answer = ask(dns.local_addr(), "broken.test.", RecordType::A);
        assert_eq!(answer.response_code, ResponseCode::ServFail);
        assert!(answer.answers.is_empty());
    }

    #[test]
    fn drop_line_is_never_answered() {
        let (_dir, _zone, dns) = start("blackhole.test DROP\nintake.test A 10.0.0.1\n");
        let request = query("blackhole.test.", RecordType::A).to_vec().unwrap();
        let err = exchange_bytes(dns.local_addr(), &request, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut), "{err}");
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        while dns.dropped() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!((dns.dropped(), dns.queries()), (1, 0));
        // Other names are still answered.
        assert_eq!(addresses(&ask(dns.local_addr(), "intake.test.", RecordType::A)).len(), 1);
    }

    #[test]
    fn rewritten_zone_changes_the_answer() {
        let (dir, _zone, dns) = start("intake.test A 10.0.0.1\n");
        let answer = ask(dns.local_addr(), "intake.test.", RecordType::A);
        assert_eq!(addresses(&answer), [(IpAddr::from([10, 0, 0, 1]), DEFAULT_TTL)]);

        write_zone(dir.path(), "intake.test A 10.0.0.2 1\n");
        let answer = ask(dns.local_addr(), "intake.test.", RecordType::A);
        assert_eq!(addresses(&answer), [(IpAddr::from([10, 0, 0, 2]), 1)]);

        write_zone(dir.path(), "# gone\n");
        let answer = ask(dns.local_addr(), "intake.test.", RecordType::A);
        assert_eq!(answer.response_code, ResponseCode::NXDomain);
        assert_eq!(dns.queries(), 3);
    }

    #[test]
    fn unreadable_or_bad_zone_gets_servfail() {
        let (dir, zone, dns) = start("intake.test A 10.0.0.1\n");
        std::fs::remove_file(&zone).unwrap();
        let answer = ask(dns.local_addr(), "intake.test.", RecordType::A);
        assert_eq!(answer.response_code, ResponseCode::ServFail);

        write_zone(dir.path(), "intake.test A 10.0.0.1\nintake.test A not-an-ip\n");
        let answer = ask(dns.local_addr(), "intake.test.", RecordType::A);
        assert_eq!(answer.response_code, ResponseCode::ServFail);
    }

    #[test]
    fn garbage_gets_formerr_with_the_id_echoed() {
        let (_dir, _zone, dns) = start("intake.test A 10.0.0.1\n");
        let answer = exchange_bytes(dns.local_addr(), &[0x12, 0x34, 0xff], CLIENT_TIMEOUT).unwrap();
        assert_eq!((answer.id, answer.response_code), (0x1234, ResponseCode::FormErr));
        assert_eq!(dns.queries(), 1);
    }

    #[test]
    fn zone_lines_parse_and_bad_lines_say_which() {
        let zone =
            Zone::parse("a.test A 10.0.0.1 7\nb.test aaaa ::1\n  # note\nc.test. ServFail\nD.test DROP\n").unwrap();
        assert_eq!(
            zone.entries,
            [
                ("a.test".into(), Entry::A(Ipv4Addr::new(10, 0, 0, 1), 7)),
                ("b.test".into(), Entry::Aaaa(Ipv6Addr::LOCALHOST, DEFAULT_TTL)),
                ("c.test".into(), Entry::ServFail),
                ("d.test".into(), Entry::Drop),
            ]
        );
        for (bad, line) in [
            ("a.test\n", 1),
            ("\na.test A ::1\n", 2),
            ("a.test AAAA 10.0.0.1\n", 1),
            ("a.test A 10.0.0.1 soon\n", 1),
            ("a.test A 10.0.0.1 5 6\n", 1),
            ("a.test CNAME b.test\n", 1),
            ("a.test DROP now\n", 1),
        ] {
            assert_eq!(Zone::parse(bad).unwrap_err().0, line, "{bad:?}");
        }
    }

    #[test]
    fn query_log_reads_as_one_line() {
        let log = QueryLog {
            name: "intake.test.".into(),
            query_type: "A".into(),
            outcome: Outcome::Answered(vec![[10, 0, 0, 1].into(), [10, 0, 0, 2].into()]),
        };
        assert_eq!(log.to_string(), "query intake.test. A -> NOERROR 10.0.0.1,10.0.0.2");
    }
}
