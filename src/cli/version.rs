//! `fipsrelay version`: the version, the commit it was built from, the FIPS module and whether its checks
//! pass, the TLS offer, whether io_uring is usable, and the CPUs this
//! process may use. A restart in place runs it to check a new binary.
//!
//! It only reads and prints; it must never fail (a failed FIPS check is
//! printed, not returned) and never open a socket.

use crate::{control, crypto};

/// Prints the version report on stdout.
pub fn print() {
    println!("fipsrelay {}", control::VERSION);
    println!("commit: {}", control::COMMIT);
    match crypto::assert_fips_module() {
        Ok(()) => println!("fips: enabled ({})", crypto::module_description()),
        Err(e) => println!("fips: NOT enabled ({e})"),
    }
    for line in crypto::offer_description() {
        println!("{line}");
    }
    match crate::io::probe_uring() {
        Ok(()) => println!("io_uring: usable"),
        Err(e) => println!("io_uring: unavailable ({e}); the relay will use epoll"),
    }
    println!("cpus allowed: {}", control::allowed_cpus().len());
}
