//! Reading the files the config names (the config itself, CA bundles, the
//! admin token, the proxy's credentials): each must be a regular file of
//! bounded size. [`open_regular`] opens without blocking and refuses
//! anything else; [`read_bounded`] also reads it, never past its limit.
//!
//! This module never blocks on a FIFO or a device and never reads more than
//! a limit plus one byte: a `/dev/zero` or a pipe named by mistake is an
//! error that says what it is, not a hang or an allocation failure. It says
//! nothing about which key named the file: callers put that in their errors.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Largest config file read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Largest CA bundle read (`upstream.ca_file`, `upstream.proxy.ca_file`);
/// the system bundle is about 200 KiB.
pub const MAX_CA_BYTES: u64 = 16 << 20;
/// Largest secret file read (admin token, proxy credentials).
pub const MAX_SECRET_BYTES: u64 = 4096;

/// Why a named file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot be opened: {0}")]
    Open(io::Error),
    #[error("is {0}, not a regular file")]
    NotRegular(&'static str),
    #[error("is {size} bytes, over the {limit}-byte limit for this file")]
    TooLarge { size: u64, limit: u64 },
    #[error("cannot be read: {0}")]
    Read(io::Error),
}

impl FileError {
    /// Whether the file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, FileError::Open(e) if e.kind() == io::ErrorKind::NotFound)
    }
}

/// What a file that is not a regular file is, for the error.
fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// Opens `path` for reading without blocking (a FIFO with no writer would
/// block a plain open) and checks that it is a regular file.
pub fn open_regular(path: &Path) -> Result<(File, Metadata), FileError> {
    let file =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path).map_err(
            |e| match std::fs::metadata(path) {
                // EISDIR and the like: say what it is rather than the errno.
                Ok(meta) if !meta.is_file() => FileError::NotRegular(kind_of(&meta)),
                _ => FileError::Open(e),
            },
        )?;
    let meta = file.metadata().map_err(FileError::Open)?;
    if !meta.is_file() {
        return Err(FileError::NotRegular(kind_of(&meta)));
    }
    Ok((file, meta))
}

/// The bytes of the regular file `path`, at most `limit` of them; a larger
/// file (or one that grows past it while read) is refused.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let (file, meta) = open_regular(path)?;
    read_opened(file, &meta, limit)
}

/// [`read_bounded`] for a file [`open_regular`] returned.
pub fn read_opened(file: File, meta: &Metadata, limit: u64) -> Result<Vec<u8>, FileError> {
    if meta.len() > limit {
        return Err(FileError::TooLarge { size: meta.len(), limit });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes).map_err(FileError::Read)?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge { size: bytes.len() as u64, limit });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_bounded(Path::new("/dev/zero"), MAX_CA_BYTES).unwrap_err();
        assert!(e.to_string().contains("character device"), "{e}");
        let e = read_bounded(dir.path(), MAX_CA_BYTES).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_bounded(&fifo, MAX_CA_BYTES).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; 11]).unwrap();
        let e = read_bounded(&big, 10).unwrap_err();
        assert!(e.to_string().contains("over the 10-byte limit"), "{e}");
        assert_eq!(read_bounded(&big, 11).unwrap().len(), 11);
        assert!(read_bounded(&dir.path().join("none"), 10).unwrap_err().is_not_found());
    }
}
