//! Reading a process's CPU time, resident memory and descriptors from /proc,
//! for the status port's process series, the demo, the benches and the idle
//! test. Linux only; returns 0 when a value can't be read.

/// User + system CPU time of process `pid`, in microseconds.
pub fn cpu_us(pid: i32) -> u64 {
    let (user, sys) = cpu_split_us(pid);
    user + sys
}

/// User and system CPU time of process `pid` so far, in µs (clock-tick resolution).
pub fn cpu_split_us(pid: i32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the ")" closing the command name: utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    (field(11) * 1_000_000 / hz, field(12) * 1_000_000 / hz)
}

/// Resident set size of process `pid`, in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Open file descriptors of process `pid`; `None` when its fd directory is
/// unreadable (a process that dropped root with `setresuid` is no longer
/// dumpable, and the kernel then gives /proc/self/fd to root).
pub fn open_fds(pid: i32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd")).ok().map(|d| d.count() as u64)
}

/// This process's soft limit on open descriptors (`RLIMIT_NOFILE`).
pub fn max_fds() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_process() {
        let me = std::process::id() as i32;
        assert!(super::rss_kib(me) > 0);
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        assert!(super::cpu_us(me) > 0);
        // stdin, stdout, stderr at least, and one more while the directory is read.
        let open = super::open_fds(me).expect("own fd directory");
        assert!(open >= 3, "{open}");
        assert!(super::max_fds() >= open);
    }
}
