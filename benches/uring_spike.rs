//! A measured spike for the io_uring worker loop (issue #11, part 1): does a
//! ring driven by hand, with the settings the issue names, cost less per
//! socket operation than epoll on this kernel? Not the relay: a loopback
//! echo server, one thread pinned to CPU 1, whose CPU (user + sys, from
//! `getrusage(RUSAGE_THREAD)`) is divided by the exchanges. A client thread
//! on CPU 0 keeps `--conns` connections in a closed loop of 1 KiB
//! request / 1 KiB echo. Each exchange is one receive and one send on the
//! server, half of what one relayed request costs (Agent side + intake side).
//!
//! Variants, interleaved `--reps` times, medians:
//! - `epoll`: level-triggered `epoll_wait`, then `recv` and `send`;
//! - `uring-basic`: one `Recv` per connection re-armed after each `Send`,
//!   `submit_and_wait(1)` per turn (what tokio-uring does, minus its reactor);
//! - `uring-defer`: the same on a `SINGLE_ISSUER | DEFER_TASKRUN` ring (what
//!   the relay's own loop does today: one `Recv` per read);
//! - `uring-defer-fixed`: that, with the sockets as registered files;
//! - `uring-tuned`: `SINGLE_ISSUER | DEFER_TASKRUN`, registered files, one
//!   multishot `RecvMulti` per connection into a provided-buffer ring (no
//!   re-arm per read), `Send` straight from the provided buffer, which goes
//!   back to the ring when the send completes; one `io_uring_enter` per turn.
//!
//! Run: `cargo bench --bench uring_spike -- [--secs N] [--reps N] [--conns N]`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MSG: usize = 1024;

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn pin(cpu: usize) {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// This thread's (user, sys) CPU in µs.
fn thread_cpu() -> (u64, u64) {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    (us(ru.ru_utime), us(ru.ru_stime))
}

/// The client: `conns` connections, each sends MSG bytes and waits for MSG
/// back, for `secs`; returns the exchanges done. Closes everything at the end.
fn client(addr: std::net::SocketAddr, conns: usize, secs: f64, exchanges: Arc<AtomicU64>) {
    pin(0);
    let msg = vec![b'x'; MSG];
    let mut socks: Vec<TcpStream> = (0..conns).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let ep = unsafe { libc::epoll_create1(0) };
    for (i, s) in socks.iter_mut().enumerate() {
        s.set_nodelay(true).unwrap();
        s.write_all(&msg).unwrap();
        s.set_nonblocking(true).unwrap();
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: i as u64 };
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) };
    }
    let mut got = vec![0usize; conns];
    let mut buf = vec![0u8; 4 * MSG];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < deadline {
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 100) };
        for ev in &events[..n.max(0) as usize] {
            let i = ev.u64 as usize;
            loop {
                match socks[i].read(&mut buf) {
                    Ok(0) => panic!("server closed"),
                    Ok(k) => {
                        got[i] += k;
                        if got[i] >= MSG {
                            got[i] -= MSG;
                            exchanges.fetch_add(1, Ordering::Relaxed);
                            socks[i].set_nonblocking(false).unwrap();
                            socks[i].write_all(&msg).unwrap();
                            socks[i].set_nonblocking(true).unwrap();
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("client read: {e}"),
                }
            }
        }
    }
    unsafe { libc::close(ep) };
}

fn accept_all(l: &TcpListener, conns: usize) -> Vec<TcpStream> {
    (0..conns)
        .map(|_| {
            let (s, _) = l.accept().unwrap();
            s.set_nodelay(true).unwrap();
            s
        })
        .collect()
}

/// epoll echo server; returns its (user, sys) µs from the first accept on.
fn server_epoll(l: TcpListener, conns: usize) -> (u64, u64) {
    pin(1);
    let socks = accept_all(&l, conns);
    let t0 = thread_cpu();
    let ep = unsafe { libc::epoll_create1(0) };
    for (i, s) in socks.iter().enumerate() {
        s.set_nonblocking(true).unwrap();
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: i as u64 };
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) };
    }
    let mut open = conns;
    let mut buf = vec![0u8; 4 * MSG];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    while open > 0 {
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, -1) };
        for ev in &events[..n.max(0) as usize] {
            let fd = socks[ev.u64 as usize].as_raw_fd();
            let k = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if k <= 0 {
                if k == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
                    unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
                    open -= 1;
                }
                continue;
            }
            send_all(fd, &buf[..k as usize]);
        }
    }
    let t1 = thread_cpu();
    unsafe { libc::close(ep) };
    (t1.0 - t0.0, t1.1 - t0.1)
}

fn send_all(fd: RawFd, mut data: &[u8]) {
    while !data.is_empty() {
        let k = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
        if k > 0 {
            data = &data[k as usize..];
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
            return;
        }
    }
}

const RECV: u64 = 1;
const SEND: u64 = 2;

fn ud(conn: usize, kind: u64, extra: u64) -> u64 {
    conn as u64 | (kind << 32) | (extra << 40)
}

/// One Recv per connection, re-armed after its Send completes. With
/// `defer`, the ring is `SINGLE_ISSUER | DEFER_TASKRUN` (as the relay's
/// own loop); with `fixed`, the sockets are registered files as well.
fn server_uring_basic(l: TcpListener, conns: usize, defer: bool, fixed: bool) -> Result<(u64, u64), String> {
    use io_uring::{opcode, types, IoUring};
    pin(1);
    let socks = accept_all(&l, conns);
    let t0 = thread_cpu();
    let mut ring: IoUring = if defer {
        IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(1024)
            .map_err(|e| format!("SINGLE_ISSUER | DEFER_TASKRUN: {e}"))?
    } else {
        IoUring::new(1024).unwrap()
    };
    if fixed {
        let fds: Vec<RawFd> = socks.iter().map(|s| s.as_raw_fd()).collect();
        ring.submitter().register_files(&fds).map_err(|e| format!("register_files: {e}"))?;
    }
    let fd = |i: usize| -> types::Fd { types::Fd(if fixed { i as RawFd } else { socks[i].as_raw_fd() }) };
    let flags = if fixed { io_uring::squeue::Flags::FIXED_FILE } else { io_uring::squeue::Flags::empty() };
    let mut bufs: Vec<Vec<u8>> = (0..conns).map(|_| vec![0u8; 4 * MSG]).collect();
    let mut pending: Vec<(usize, usize)> = vec![(0, 0); conns]; // (sent, len)
    let mut open = conns;
    let recv = |i: usize, b: &mut Vec<u8>| {
        opcode::Recv::new(fd(i), b.as_mut_ptr(), b.len() as u32).build().flags(flags).user_data(ud(i, RECV, 0))
    };
    for (i, b) in bufs.iter_mut().enumerate() {
        let e = recv(i, b);
        unsafe { ring.submission().push(&e).unwrap() };
    }
    while open > 0 {
        ring.submit_and_wait(1).unwrap();
        let done: Vec<(u64, i32)> = ring.completion().map(|c| (c.user_data(), c.result())).collect();
        for (u, res) in done {
            let (i, kind) = ((u & 0xffff_ffff) as usize, (u >> 32) & 0xff);
            let next = if kind == RECV {
                if res <= 0 {
                    open -= 1;
                    continue;
                }
                pending[i] = (0, res as usize);
                opcode::Send::new(fd(i), bufs[i].as_ptr(), res as u32).build().flags(flags).user_data(ud(i, SEND, 0))
            } else {
                if res < 0 {
                    continue;
                }
                pending[i].0 += res as usize;
                let (sent, len) = pending[i];
                if sent < len {
                    opcode::Send::new(fd(i), bufs[i][sent..].as_ptr(), (len - sent) as u32)
                        .build()
                        .flags(flags)
                        .user_data(ud(i, SEND, 0))
                } else {
                    recv(i, &mut bufs[i])
                }
            };
            unsafe { ring.submission().push(&next).unwrap() };
        }
    }
    let t1 = thread_cpu();
    Ok((t1.0 - t0.0, t1.1 - t0.1))
}

/// SINGLE_ISSUER | DEFER_TASKRUN, registered files, multishot recv into a
/// provided-buffer ring; a buffer returns to the ring when its echo is sent.
fn server_uring_tuned(l: TcpListener, conns: usize) -> Result<(u64, u64), String> {
    use io_uring::{cqueue, opcode, types, IoUring};
    pin(1);
    let socks = accept_all(&l, conns);
    let t0 = thread_cpu();
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(1024)
        .map_err(|e| format!("SINGLE_ISSUER | DEFER_TASKRUN: {e}"))?;
    let fds: Vec<RawFd> = socks.iter().map(|s| s.as_raw_fd()).collect();
    ring.submitter().register_files(&fds).map_err(|e| format!("register_files: {e}"))?;
    // The provided-buffer ring: ENTRIES buffers of BUF bytes, group 0.
    const ENTRIES: u16 = 512;
    const BUF: usize = 4 * MSG;
    let ring_layout = std::alloc::Layout::from_size_align(ENTRIES as usize * 16, 4096).unwrap();
    let ring_mem = unsafe { std::alloc::alloc_zeroed(ring_layout) } as *mut types::BufRingEntry;
    let mut pool = vec![0u8; ENTRIES as usize * BUF];
    let base = pool.as_mut_ptr();
    let mut tail: u16 = 0;
    let provide = |bid: u16, tail: &mut u16| unsafe {
        let e = &mut *ring_mem.add((*tail & (ENTRIES - 1)) as usize);
        e.set_addr(base.add(bid as usize * BUF) as u64);
        e.set_len(BUF as u32);
        e.set_bid(bid);
        *tail = tail.wrapping_add(1);
        let t = types::BufRingEntry::tail(ring_mem) as *const std::sync::atomic::AtomicU16;
        (*t).store(*tail, Ordering::Release);
    };
    for bid in 0..ENTRIES {
        provide(bid, &mut tail);
    }
    unsafe { ring.submitter().register_buf_ring(ring_mem as u64, ENTRIES, 0) }
        .map_err(|e| format!("register_buf_ring: {e}"))?;
    let arm = |i: usize| opcode::RecvMulti::new(types::Fixed(i as u32), 0).build().user_data(ud(i, RECV, 0));
    for i in 0..conns {
        unsafe { ring.submission().push(&arm(i)).unwrap() };
    }
    let mut open = conns;
    while open > 0 {
        ring.submit_and_wait(1).map_err(|e| e.to_string())?;
        let done: Vec<(u64, i32, u32)> = ring.completion().map(|c| (c.user_data(), c.result(), c.flags())).collect();
        for (u, res, flags) in done {
            let (i, kind, extra) = ((u & 0xffff_ffff) as usize, (u >> 32) & 0xff, u >> 40);
            if kind == RECV {
                if res <= 0 {
                    if res == -libc::ENOBUFS {
                        // Out of buffers: re-arm once some come back.
                        unsafe { ring.submission().push(&arm(i)).unwrap() };
                    } else {
                        open -= 1;
                    }
                    continue;
                }
                let bid = cqueue::buffer_select(flags).expect("a provided buffer");
                let ptr = unsafe { base.add(bid as usize * BUF) };
                let e = opcode::Send::new(types::Fixed(i as u32), ptr, res as u32).build().user_data(ud(
                    i,
                    SEND,
                    ((bid as u64) << 16) | res as u64,
                ));
                unsafe { ring.submission().push(&e).unwrap() };
                if !cqueue::more(flags) {
                    unsafe { ring.submission().push(&arm(i)).unwrap() };
                }
            } else {
                let (bid, len) = ((extra >> 16) as u16, (extra & 0xffff) as usize);
                if res >= 0 && (res as usize) < len {
                    // Partial send: the rest, from the same buffer.
                    let ptr = unsafe { base.add(bid as usize * BUF + res as usize) };
                    let rest = len - res as usize;
                    let e = opcode::Send::new(types::Fixed(i as u32), ptr, rest as u32).build().user_data(ud(
                        i,
                        SEND,
                        ((bid as u64) << 16) | rest as u64,
                    ));
                    unsafe { ring.submission().push(&e).unwrap() };
                    continue;
                }
                provide(bid, &mut tail);
            }
        }
    }
    let t1 = thread_cpu();
    drop(pool);
    unsafe { std::alloc::dealloc(ring_mem as *mut u8, ring_layout) };
    Ok((t1.0 - t0.0, t1.1 - t0.1))
}

/// One run of `variant`: (exchanges/s, user µs/exchange, sys µs/exchange).
fn run(variant: &str, conns: usize, secs: f64) -> Result<(f64, f64, f64), String> {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let v = variant.to_string();
    let server = std::thread::spawn(move || match v.as_str() {
        "epoll" => Ok(server_epoll(l, conns)),
        "uring-basic" => server_uring_basic(l, conns, false, false),
        "uring-defer" => server_uring_basic(l, conns, true, false),
        "uring-defer-fixed" => server_uring_basic(l, conns, true, true),
        _ => server_uring_tuned(l, conns),
    });
    let exchanges = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    {
        let ex = exchanges.clone();
        std::thread::spawn(move || client(addr, conns, secs, ex)).join().unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (user, sys) = server.join().unwrap()?;
    let n = exchanges.load(Ordering::Relaxed).max(1) as f64;
    Ok((n / elapsed, user as f64 / n, sys as f64 / n))
}

fn main() {
    let secs: f64 = arg("--secs", 3.0);
    let reps: usize = arg("--reps", 3);
    let conns: usize = arg("--conns", 64);
    if let Err(e) = io_uring::IoUring::new(8) {
        println!("io_uring unavailable here ({e}): nothing to compare");
        return;
    }
    println!("# io_uring spike: loopback echo, 1 KiB, {conns} connections closed loop; server on CPU 1, client on CPU 0; {secs} s runs, {reps} reps interleaved, medians");
    let variants = ["epoll", "uring-basic", "uring-defer", "uring-defer-fixed", "uring-tuned"];
    let mut results: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); variants.len()];
    for _ in 0..reps {
        for (i, v) in variants.iter().enumerate() {
            match run(v, conns, secs) {
                Ok(r) => results[i].push(r),
                Err(e) => println!("{v}: {e}"),
            }
        }
    }
    println!("{:<18} {:>12} {:>26} {:>10}", "variant", "exchanges/s", "server CPU µs/exchange", "vs epoll");
    let med = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        if v.is_empty() {
            f64::NAN
        } else {
            v[v.len() / 2]
        }
    };
    let epoll_cpu = med(results[0].iter().map(|r| r.1 + r.2).collect());
    for (v, r) in variants.iter().zip(&results) {
        let rate = med(r.iter().map(|x| x.0).collect());
        let user = med(r.iter().map(|x| x.1).collect());
        let sys = med(r.iter().map(|x| x.2).collect());
        let total = med(r.iter().map(|x| x.1 + x.2).collect());
        println!("{v:<18} {rate:>12.0} {:>26} {:>10.2}", format!("{total:.2} ({user:.2}+{sys:.2})"), total / epoll_cpu);
    }
}
