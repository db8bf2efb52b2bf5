//! Restarting in place without dropping a connection: a reload that needs
//! a restart (a restart-only key changed, or the binary on disk was
//! replaced) re-executes the binary in the same process (same PID, so
//! systemd keeps tracking it) and hands over, as inherited file descriptors:
//! - every listening socket: connections that arrive meanwhile wait in
//!   their accept queues and the new process accepts them;
//! - every idle Agent connection, at a request boundary with nothing read
//!   of the next request: the new process reads its next request;
//! - the admin token (in a memfd), which a process that dropped root can no
//!   longer read from its root-owned file.
//!
//! The descriptor numbers are written to a memfd (an environment string is
//! limited to 128 KiB, about 20,000 numbers); one environment variable,
//! [`ENV`], names that memfd. The new process takes them first thing and
//! marks them close-on-exec again.

use std::ffi::OsString;
use std::io::{Read, Seek, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// Names the memfd that lists the descriptors: `v1 m=5`. The memfd holds
/// `v1 l=3,4 c=9,10 t=7` (listeners, connections, token).
pub const ENV: &str = "FIPSRELAY_HANDOVER";

/// What the previous process handed over, checked and ready to use.
#[derive(Debug, Default)]
pub struct Inherited {
    pub listeners: Vec<(SocketAddr, TcpListener)>,
    pub connections: Vec<TcpStream>,
    pub token: Option<Vec<u8>>,
}

impl Inherited {
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty() && self.connections.is_empty() && self.token.is_none()
    }
}

/// What this process hands over: descriptors that stay open across exec.
#[derive(Debug, Default)]
pub struct Outgoing {
    pub listeners: Vec<OwnedFd>,
    pub connections: Vec<OwnedFd>,
    pub token: Option<OwnedFd>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Numbers {
    listeners: Vec<RawFd>,
    connections: Vec<RawFd>,
    token: Option<RawFd>,
}

fn encode(n: &Numbers) -> String {
    let list = |v: &[RawFd]| v.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(",");
    let mut s = format!("v1 l={} c={}", list(&n.listeners), list(&n.connections));
    if let Some(t) = n.token {
        s.push_str(&format!(" t={t}"));
    }
    s
}

fn decode(s: &str) -> Result<Numbers, String> {
    let mut parts = s.split_ascii_whitespace();
    if parts.next() != Some("v1") {
        return Err(format!("{ENV} has an unknown format: {s:?}"));
    }
    let fds = |v: &str| -> Result<Vec<RawFd>, String> {
        v.split(',')
            .filter(|x| !x.is_empty())
            .map(|x| match x.parse::<RawFd>() {
                Ok(fd) if fd > 2 => Ok(fd),
                _ => Err(format!("{ENV}: {x:?} is not a descriptor number above 2")),
            })
            .collect()
    };
    let mut n = Numbers::default();
    for part in parts {
        match part.split_once('=') {
            Some(("l", v)) => n.listeners = fds(v)?,
            Some(("c", v)) => n.connections = fds(v)?,
            Some(("t", v)) => n.token = fds(v)?.first().copied(),
            _ => return Err(format!("{ENV}: unknown part {part:?}")),
        }
    }
    Ok(n)
}

/// Takes an inherited descriptor: it must be open; it is made close-on-exec.
fn adopt(fd: RawFd) -> Result<OwnedFd, String> {
    // SAFETY: fcntl on an integer is harmless; F_GETFD only reports flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(format!("descriptor {fd} is not open"));
    }
    // SAFETY: as above; the descriptor was handed to this process to own.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// The descriptors a previous process handed over, if this process was
/// started by a handover. Call once, first thing in `run`, before any other
/// descriptor is opened. A descriptor that is not what it should be is
/// closed and reported in the second value; the rest are still used.
pub fn take_inherited() -> Option<(Inherited, Vec<String>)> {
    let raw = std::env::var(ENV).ok()?;
    // Not for the next exec or any child.
    std::env::remove_var(ENV);
    let list = match read_list(&raw) {
        Ok(list) => list,
        Err(e) => return Some((Inherited::default(), vec![e])),
    };
    let numbers = match decode(&list) {
        Ok(n) => n,
        Err(e) => {
            // Whatever was listed must not stay open and inheritable.
            close_listed(&list);
            return Some((Inherited::default(), vec![e]));
        }
    };
    let mut problems = Vec::new();
    let mut got = Inherited::default();
    for fd in numbers.listeners {
        match adopt(fd) {
            Ok(owned) => {
                let sock = socket2::Socket::from(owned);
                match (sock.is_listener(), sock.local_addr().ok().and_then(|a| a.as_socket())) {
                    (Ok(true), Some(addr)) => got.listeners.push((addr, sock.into())),
                    _ => problems.push(format!("descriptor {fd} is not a listening TCP socket")),
                }
            }
            Err(e) => problems.push(e),
        }
    }
    for fd in numbers.connections {
        match adopt(fd) {
            Ok(owned) => {
                let stream = TcpStream::from(owned);
                match stream.peer_addr() {
                    Ok(_) => got.connections.push(stream),
                    Err(e) => problems.push(format!("descriptor {fd} is not a connected TCP socket: {e}")),
                }
            }
            Err(e) => problems.push(e),
        }
    }
    if let Some(fd) = numbers.token {
        match read_memfd(fd, 4096, "the handed-over admin token") {
            Ok(token) if !token.is_empty() => got.token = Some(token),
            Ok(_) => problems.push("the handed-over admin token is empty".into()),
            Err(e) => problems.push(e),
        }
    }
    Some((got, problems))
}

/// Reads the descriptor list from the memfd that `ENV` (`v1 m=N`) names.
fn read_list(env: &str) -> Result<String, String> {
    let fd = env
        .strip_prefix("v1 m=")
        .and_then(|n| n.trim().parse::<RawFd>().ok())
        .filter(|fd| *fd > 2)
        .ok_or_else(|| format!("{ENV} has an unknown format: {env:?}"))?;
    let list = read_memfd(fd, 16 << 20, "the handover list")?;
    String::from_utf8(list).map_err(|_| "the handover list is not text".into())
}

/// Takes an inherited memfd and reads it from its start, at most `limit` bytes.
fn read_memfd(fd: RawFd, limit: u64, what: &str) -> Result<Vec<u8>, String> {
    let mut f = std::fs::File::from(adopt(fd)?);
    let mut bytes = Vec::new();
    f.rewind()
        .and_then(|_| (&mut f).take(limit).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {what}: {e}"))?;
    Ok(bytes)
}

/// Closes every descriptor number in a list that could not be decoded.
fn close_listed(list: &str) {
    for n in list.split(|c: char| !c.is_ascii_digit()).filter_map(|x| x.parse::<RawFd>().ok()) {
        if n > 2 {
            if let Ok(fd) = adopt(n) {
                drop(fd);
            }
        }
    }
}

/// An anonymous memory file holding `bytes`, read from its start.
fn memfd(name: &std::ffi::CStr, bytes: &[u8]) -> std::io::Result<OwnedFd> {
    // SAFETY: a fresh descriptor is returned or -1; the name is a C string.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned here.
    let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    f.write_all(bytes)?;
    f.rewind()?;
    Ok(f.into())
}

/// Puts the admin token in an anonymous memory file for the next process.
pub fn token_memfd(token: &[u8]) -> std::io::Result<OwnedFd> {
    memfd(c"fipsrelay-admin-token", token)
}

/// The binary to run next: the path this process was started from, which a
/// package upgrade may have replaced (then `/proc/self/exe` reads
/// "… (deleted)" and the new file is what runs next).
pub fn current_binary() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let s = exe.to_string_lossy();
    Ok(match s.strip_suffix(" (deleted)") {
        Some(stripped) => PathBuf::from(stripped),
        None => exe,
    })
}

/// (device, inode) of a file, to notice that the binary was replaced.
pub fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Blocks (`SIG_BLOCK`) or unblocks (`SIG_UNBLOCK`) SIGHUP, SIGTERM and
/// SIGINT for the calling thread. Async-signal-safe.
pub fn stop_signals(how: libc::c_int) {
    // SAFETY: a sigset on the stack, filled by sigemptyset/sigaddset.
    unsafe {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        for sig in [libc::SIGHUP, libc::SIGTERM, libc::SIGINT] {
            libc::sigaddset(set.as_mut_ptr(), sig);
        }
        libc::pthread_sigmask(how, set.as_ptr(), std::ptr::null_mut());
    }
}

/// Replaces this process with `binary` and the same arguments, keeping the
/// outgoing descriptors open. Returns only if exec failed.
pub fn exec(binary: &Path, out: Outgoing) -> std::io::Error {
    let numbers = Numbers {
        listeners: out.listeners.iter().map(|f| f.as_raw_fd()).collect(),
        connections: out.connections.iter().map(|f| f.as_raw_fd()).collect(),
        token: out.token.as_ref().map(|f| f.as_raw_fd()),
    };
    let list = match memfd(c"fipsrelay-handover", encode(&numbers).as_bytes()) {
        Ok(fd) => fd,
        Err(e) => return e,
    };
    let all = out.listeners.iter().chain(&out.connections).chain(out.token.as_ref()).chain(Some(&list));
    for fd in all {
        // SAFETY: clearing FD_CLOEXEC on a descriptor this process owns.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        if flags >= 0 {
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flags & !libc::FD_CLOEXEC) };
        }
    }
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let env = format!("v1 m={}", list.as_raw_fd());
    let mut cmd = std::process::Command::new(binary);
    cmd.args(args).env(ENV, env);
    // The new image starts with SIGHUP, SIGTERM and SIGINT blocked (the mask
    // survives execve; std clears it before the closures run): one that
    // comes before its handlers are in place waits for them instead of
    // killing it (`stop_signals(SIG_UNBLOCK)` in the control loop's start).
    // SAFETY: only async-signal-safe calls between fork-less exec steps.
    unsafe {
        cmd.pre_exec(|| {
            stop_signals(libc::SIG_BLOCK);
            Ok(())
        });
    }
    let err = cmd.exec();
    // Still here: the descriptors close with `out` and `list`.
    drop((out, list));
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_bad_values_are_refused() {
        let n = Numbers { listeners: vec![3, 4, 5], connections: vec![9], token: Some(7) };
        assert_eq!(encode(&n), "v1 l=3,4,5 c=9 t=7");
        assert_eq!(decode(&encode(&n)).unwrap(), n);
        let empty = Numbers::default();
        assert_eq!(decode(&encode(&empty)).unwrap(), empty);
        assert!(decode("v2 l=3").is_err());
        assert!(decode("v1 l=1").unwrap_err().contains("above 2"));
        assert!(decode("v1 l=x").is_err());
        assert!(decode("v1 z=3").is_err());
    }

    #[test]
    fn the_list_travels_in_a_memfd_of_any_size() {
        let n = Numbers { listeners: (3..35).collect(), connections: (100..60_000).collect(), token: None };
        let text = encode(&n);
        assert!(text.len() > 128 * 1024, "more than an environment string may hold");
        let fd = memfd(c"test", text.as_bytes()).unwrap();
        let raw = fd.as_raw_fd();
        std::mem::forget(fd); // read_list takes ownership of the number
        let back = read_list(&format!("v1 m={raw}")).unwrap();
        assert_eq!(decode(&back).unwrap(), n);
        assert!(read_list("v1 m=x").is_err());
        assert!(read_list("l=3").is_err());
    }

    #[test]
    fn token_memfd_reads_back() {
        let fd = token_memfd(b"0123456789abcdef0123").unwrap();
        let mut f = std::fs::File::from(fd);
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "0123456789abcdef0123");
    }
}
