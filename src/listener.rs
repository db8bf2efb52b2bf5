//! Listening sockets: one SO_REUSEPORT listener per port per worker, so the
//! kernel spreads the Agent's connections over the workers.
//!
//! Everything is bound before any worker starts, so a port in use fails the
//! start with a message that names the port and the fix. This module never
//! accepts; workers do.

use std::net::{IpAddr, SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::PORT_COUNT;

/// Pending-connection queue per listener (capped by net.core.somaxconn).
pub const BACKLOG: i32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot bind {addr}: {source}; stop the process using that port or choose another range with listen.port_range_start / DD_FIPS_PORT_RANGE_START")]
    InUse { addr: SocketAddr, source: std::io::Error },
    #[error("cannot bind {addr}: {source}; check listen.address / DD_FIPS_LOCAL_ADDRESS is an address of this host")]
    Unavailable { addr: SocketAddr, source: std::io::Error },
    #[error("cannot bind {addr}: {source}")]
    Other { addr: SocketAddr, source: std::io::Error },
}

/// A worker's listeners: `(port offset, listener)`.
pub type WorkerListeners = Vec<(u16, TcpListener)>;

fn bind_one(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Fails if anything listens on `addr`, even another SO_REUSEPORT group
/// (a second relay, or HAProxy with reuseport, would otherwise share the
/// port silently). The probe socket sets no SO_REUSEPORT and is closed at once.
fn probe_exclusive(addr: SocketAddr) -> std::io::Result<()> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())
}

fn classify(addr: SocketAddr, source: std::io::Error) -> BindError {
    match source.raw_os_error() {
        Some(libc::EADDRINUSE) => BindError::InUse { addr, source },
        Some(libc::EADDRNOTAVAIL) => BindError::Unavailable { addr, source },
        _ => BindError::Other { addr, source },
    }
}

/// Binds every port of the range once per worker.
pub fn bind_all(ip: IpAddr, port_start: u16, workers: usize) -> Result<Vec<WorkerListeners>, BindError> {
    for offset in 0..PORT_COUNT {
        let addr = SocketAddr::new(ip, port_start + offset);
        probe_exclusive(addr).map_err(|e| classify(addr, e))?;
    }
    let mut all = Vec::with_capacity(workers);
    for _ in 0..workers {
        let mut mine = Vec::with_capacity(PORT_COUNT as usize);
        for offset in 0..PORT_COUNT {
            let addr = SocketAddr::new(ip, port_start + offset);
            let l = bind_one(addr).map_err(|e| classify(addr, e))?;
            mine.push((offset, l));
        }
        all.push(mine);
    }
    Ok(all)
}

/// Binds the range as [`bind_all`] does, but takes the listeners a previous
/// process handed over where they match an address of the range. Each
/// inherited listener is used by exactly one worker (or shared, when there
/// are more workers than inherited listeners for a port), so no accept queue
/// is left unserved. Returns the listeners not in the range, for the caller
/// to log and close.
pub fn bind_all_adopting(
    ip: IpAddr,
    port_start: u16,
    workers: usize,
    mut inherited: Vec<(SocketAddr, TcpListener)>,
) -> Result<(Vec<WorkerListeners>, Vec<SocketAddr>), BindError> {
    let mut all: Vec<WorkerListeners> = (0..workers).map(|_| Vec::with_capacity(PORT_COUNT as usize)).collect();
    for offset in 0..PORT_COUNT {
        let addr = SocketAddr::new(ip, port_start + offset);
        let (mine, rest): (Vec<_>, Vec<_>) = inherited.into_iter().partition(|(a, _)| *a == addr);
        inherited = rest;
        if mine.is_empty() {
            probe_exclusive(addr).map_err(|e| classify(addr, e))?;
            for w in all.iter_mut() {
                w.push((offset, bind_one(addr).map_err(|e| classify(addr, e))?));
            }
            continue;
        }
        let n = mine.len();
        let mine: Vec<TcpListener> = mine.into_iter().map(|(_, l)| l).collect();
        for i in n..workers {
            let shared = mine[i % n].try_clone().map_err(|e| classify(addr, e))?;
            all[i].push((offset, shared));
        }
        for (j, l) in mine.into_iter().enumerate() {
            l.set_nonblocking(true).map_err(|e| classify(addr, e))?;
            all[j % workers].push((offset, l));
        }
    }
    Ok((all, inherited.into_iter().map(|(a, _)| a).collect()))
}

/// Fails if `addr` cannot be bound exclusively now: for checking, before a
/// restart in place, that the new range is free.
pub fn check_free(addr: SocketAddr) -> Result<(), BindError> {
    probe_exclusive(addr).map_err(|e| classify(addr, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_in_use_names_port_and_fix() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = bind_all("127.0.0.1".parse().unwrap(), port, 1).unwrap_err().to_string();
        assert!(err.contains(&format!("cannot bind 127.0.0.1:{port}")), "{err}");
        assert!(err.contains("Address already in use"), "{err}");
        assert!(err.contains("DD_FIPS_PORT_RANGE_START"), "{err}");
    }

    #[test]
    fn adopting_serves_every_inherited_listener() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let base = loop {
            let p = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            if p <= 65535 - PORT_COUNT
                && (0..PORT_COUNT).all(|o| std::net::TcpListener::bind(("127.0.0.1", p + o)).is_ok())
            {
                break p;
            }
        };
        // Three workers' worth handed over; two workers now: one takes two.
        let old = bind_all(ip, base, 3).unwrap();
        let inherited: Vec<(SocketAddr, TcpListener)> =
            old.into_iter().flatten().map(|(_, l)| (l.local_addr().unwrap(), l)).collect();
        let (now, stray) = bind_all_adopting(ip, base, 2, inherited).unwrap();
        assert!(stray.is_empty());
        assert_eq!(now[0].iter().filter(|(o, _)| *o == 1).count(), 2);
        assert_eq!(now[1].iter().filter(|(o, _)| *o == 1).count(), 1);
        // One worker's worth handed over; three workers now: they share it.
        let inherited: Vec<(SocketAddr, TcpListener)> = now
            .into_iter()
            .flatten()
            .filter(|(o, _)| *o == 0)
            .take(1)
            .map(|(_, l)| (l.local_addr().unwrap(), l))
            .collect();
        let (now, _) = bind_all_adopting(ip, base, 3, inherited).unwrap();
        for w in &now {
            assert_eq!(w.iter().filter(|(o, _)| *o == 0).count(), 1);
        }
    }

    #[test]
    fn a_second_reuseport_group_is_refused() {
        // Find a free range by binding it once, then try again while it is held.
        let held = loop {
            let base = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            if base > 65535 - PORT_COUNT {
                continue;
            }
            if let Ok(h) = bind_all("127.0.0.1".parse().unwrap(), base, 2) {
                break (base, h);
            }
        };
        let err = bind_all("127.0.0.1".parse().unwrap(), held.0, 1).unwrap_err().to_string();
        assert!(err.contains("Address already in use"), "{err}");
    }
}
