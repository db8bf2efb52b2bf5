//! Dropping root: when started as root with `run.user` set, the relay binds
//! its ports and reads its keys and CA file as root, then becomes that user
//! (its primary group, no supplementary groups) before any thread starts,
//! and checks that no capability is left.
//!
//! Must be called while the process has a single thread: the credentials of
//! threads started earlier would not change with it.

use std::ffi::{CStr, CString};

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("run.user = {0:?}: no such user; create it (packaging/fipsrelay.sysusers) or remove the key")]
    NoSuchUser(String),
    #[error("run.user = {0:?} is root; name an unprivileged user")]
    Root(String),
    #[error("cannot drop privileges to {user:?} ({step}): {source}")]
    Drop { user: String, step: &'static str, source: std::io::Error },
    #[error("still privileged after switching to {user:?}: {what}")]
    StillPrivileged { user: String, what: String },
}

/// What happened, for the start log line.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Dropped {
        uid: u32,
        gid: u32,
    },
    /// Not started as root: nothing to drop (already an unprivileged user).
    NotRoot,
}

/// The uid and primary gid of `user`.
pub fn lookup(user: &str) -> Result<(u32, u32), PrivilegeError> {
    let name = CString::new(user).map_err(|_| PrivilegeError::NoSuchUser(user.to_string()))?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0u8; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r writes into pwd and buf, both owned here and large enough.
    let rc = unsafe { libc::getpwnam_r(name.as_ptr(), &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return Err(PrivilegeError::NoSuchUser(user.to_string()));
    }
    let _ = unsafe { CStr::from_ptr(pwd.pw_name) };
    Ok((pwd.pw_uid, pwd.pw_gid))
}

/// Becomes `user` if running as root.
pub fn drop_to(user: &str) -> Result<Outcome, PrivilegeError> {
    if unsafe { libc::geteuid() } != 0 {
        return Ok(Outcome::NotRoot);
    }
    let (uid, gid) = lookup(user)?;
    if uid == 0 {
        return Err(PrivilegeError::Root(user.to_string()));
    }
    let fail = |step: &'static str| PrivilegeError::Drop {
        user: user.to_string(),
        step,
        source: std::io::Error::last_os_error(),
    };
    // SAFETY: plain credential syscalls; the process is single-threaded here.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(fail("setgroups"));
        }
        if libc::setresgid(gid, gid, gid) != 0 {
            return Err(fail("setresgid"));
        }
        if libc::setresuid(uid, uid, uid) != 0 {
            return Err(fail("setresuid"));
        }
        // Going back must be impossible now.
        if libc::setuid(0) == 0 || libc::geteuid() == 0 {
            return Err(PrivilegeError::StillPrivileged { user: user.to_string(), what: "could regain uid 0".into() });
        }
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    for field in ["CapEff:", "CapPrm:"] {
        if let Some(line) = status.lines().find(|l| l.starts_with(field)) {
            let value = line[field.len()..].trim();
            if !value.trim_start_matches('0').is_empty() {
                return Err(PrivilegeError::StillPrivileged {
                    user: user.to_string(),
                    what: format!("{field} {value}"),
                });
            }
        }
    }
    Ok(Outcome::Dropped { uid, gid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_user_names_the_key() {
        let e = lookup("no-such-user-fipsrelay").unwrap_err().to_string();
        assert!(e.contains("run.user") && e.contains("no such user"), "{e}");
    }

    #[test]
    fn root_lookup_works() {
        assert_eq!(lookup("root").unwrap().0, 0);
    }
}
