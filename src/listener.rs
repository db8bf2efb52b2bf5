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
