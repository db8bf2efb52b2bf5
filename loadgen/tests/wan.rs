//! The WAN link emulator over real loopback sockets: a ping-pong's round
//! trip is twice the one-way delay (never less; a little more on a busy
//! machine), bulk bytes arrive whole, in order and in about one delay (the
//! link does not pace reads), a cap spreads them at its rate, and a full
//! delay line pushes back on the sender instead of growing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use loadgen::wan::{WanConfig, WanLink};

const DELAY: Duration = Duration::from_millis(20);

/// A server on loopback running `serve` on its one connection.
fn server<T: Send + 'static>(
    serve: impl FnOnce(TcpStream) -> T + Send + 'static,
) -> (SocketAddr, thread::JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        serve(s)
    });
    (addr, handle)
}

fn link(target: SocketAddr, delay: Duration) -> WanLink {
    WanLink::start(WanConfig::new("127.0.0.1:0".parse().unwrap(), target, delay)).unwrap()
}

fn connect(link: &WanLink) -> TcpStream {
    let s = TcpStream::connect(link.addr()).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Bytes that differ from each position's neighbours, so a reordering or a
/// repeat shows.
fn pattern(len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn a_ping_pong_round_trip_is_twice_the_delay() {
    let (addr, echo) = server(|mut s| {
        s.set_nodelay(true).unwrap();
        let mut b = [0u8; 1];
        while s.read_exact(&mut b).is_ok() {
            s.write_all(&b).unwrap();
        }
    });
    let link = link(addr, DELAY);
    let mut c = connect(&link);
    let mut rtts = Vec::new();
    for i in 0..10u8 {
        let t = Instant::now();
        c.write_all(&[i]).unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).unwrap();
        rtts.push(t.elapsed());
        assert_eq!(b[0], i, "the echo came back in order");
    }
    drop(c);
    echo.join().unwrap();
    rtts.sort();
    // Never below: each direction holds a byte at least DELAY after it read it.
    assert!(rtts[0] >= 2 * DELAY, "fastest round trip {:?} < 2 × {DELAY:?}: {rtts:?}", rtts[0]);
    // The timer rounds up to the millisecond; a busy machine adds a little.
    let median = rtts[rtts.len() / 2];
    assert!(median < 2 * DELAY + Duration::from_millis(25), "median round trip {median:?}: {rtts:?}");
}

#[test]
fn bulk_bytes_arrive_whole_in_order_in_about_one_delay() {
    const LEN: usize = 4 << 20;
    let (addr, sink) = server(|mut s| {
        let mut got = Vec::with_capacity(LEN);
        s.read_to_end(&mut got).unwrap();
        (got, Instant::now())
    });
    let link = link(addr, DELAY);
    let mut c = connect(&link);
    let sent = pattern(LEN);
    let start = Instant::now();
    c.write_all(&sent).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let (got, end) = sink.join().unwrap();
    let took = end - start;
    assert!(got == sent, "{} bytes arrived of {LEN}, or not the same bytes in the same order", got.len());
    assert!(took >= DELAY, "4 MiB arrived in {took:?}, before the delay");
    // A link that read 64 KiB and slept the delay each time would take
    // 64 × 20 ms = 1.3 s; this one releases every read DELAY after it.
    assert!(took < DELAY + Duration::from_millis(300), "4 MiB took {took:?} through a {DELAY:?} link");
    assert_eq!(link.stats().bytes.load(Ordering::Relaxed), LEN as u64);
}

#[test]
fn a_bandwidth_cap_spreads_the_bytes_at_its_rate() {
    const LEN: usize = 1 << 20;
    let (addr, sink) = server(|mut s| {
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        (got, Instant::now())
    });
    let mut cfg = WanConfig::new("127.0.0.1:0".parse().unwrap(), addr, DELAY);
    cfg.bandwidth = Some(4 << 20);
    let link = WanLink::start(cfg).unwrap();
    let mut c = connect(&link);
    let sent = pattern(LEN);
    let start = Instant::now();
    c.write_all(&sent).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let (got, end) = sink.join().unwrap();
    let took = end - start;
    assert!(got == sent, "{} bytes arrived of {LEN}, or not in order", got.len());
    // 1 MiB at 4 MiB/s: 250 ms on the link, plus the delay.
    assert!(took >= Duration::from_millis(250) + DELAY, "1 MiB at 4 MiB/s took only {took:?}");
    assert!(took < Duration::from_millis(1_000), "1 MiB at 4 MiB/s took {took:?}");
}

#[test]
fn a_full_delay_line_pushes_back_instead_of_growing() {
    const LEN: usize = 16 << 20;
    const BUFFER: usize = 256 << 10;
    // The sink reads nothing for a while, then everything.
    let (addr, sink) = server(|mut s| {
        thread::sleep(Duration::from_millis(500));
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let mut cfg = WanConfig::new("127.0.0.1:0".parse().unwrap(), addr, Duration::from_millis(5));
    cfg.buffer = BUFFER;
    let link = WanLink::start(cfg).unwrap();
    let mut c = connect(&link);
    let sent = pattern(LEN);
    c.write_all(&sent).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let got = sink.join().unwrap();
    assert!(got == sent, "{} bytes arrived of {LEN}, or not in order", got.len());
    let peak = link.stats().peak_buffered.load(Ordering::Relaxed);
    assert!(peak <= BUFFER as u64, "the delay line held {peak} B, above its {BUFFER} B bound");
    assert!(peak > 0);
}

#[test]
fn a_target_that_refuses_closes_the_client() {
    // A port nothing listens on: bind one, then close it.
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let link = link(addr, DELAY);
    let mut c = connect(&link);
    let mut b = [0u8; 1];
    let n = c.read(&mut b).unwrap_or(0);
    assert_eq!(n, 0, "the client's connection is closed");
    assert_eq!(link.stats().connect_failures.load(Ordering::Relaxed), 1);
}
