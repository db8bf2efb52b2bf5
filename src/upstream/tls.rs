//! A client TLS session to the intake, driven over the owned-buffer I/O seam.
//!
//! Owns the rustls `ClientConnection` (built from `crypto::client_config`,
//! so only the FIPS provider ever encrypts) and two ciphertext buffers. It
//! knows nothing of HTTP. It must never write plaintext to the socket: every
//! byte leaving `write_plain` goes through rustls.
//!
//! # Backpressure
//! `write_plain` returns only once its data is encrypted and written to the
//! socket, so a slow intake slows the reader of the Agent's request.

use std::io::{self, BufRead, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use crate::io::Stream;

/// Ciphertext read buffer size (a little over one TLS record).
const CIPHER_BUF: usize = 18 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    #[error("TLS handshake failed: {0}")]
    Handshake(rustls::Error),
    #[error("connection closed during the TLS handshake")]
    HandshakeEof,
    #[error("I/O error during the TLS handshake: {0}")]
    HandshakeIo(io::Error),
}

pub struct TlsSession<S: Stream> {
    io: S,
    conn: rustls::ClientConnection,
    /// Ciphertext received, not yet given to rustls: `rbuf[rpos..]`.
    rbuf: Vec<u8>,
    rpos: usize,
    /// Ciphertext to send; empty between calls.
    wbuf: Vec<u8>,
    eof: bool,
}

impl<S: Stream> TlsSession<S> {
    /// Runs the handshake over `io`.
    pub async fn connect(io: S, config: Arc<ClientConfig>, server_name: &str) -> Result<Self, TlsError> {
        let name =
            ServerName::try_from(server_name.to_string()).map_err(|_| TlsError::ServerName(server_name.into()))?;
        let conn = rustls::ClientConnection::new(config, name).map_err(TlsError::Handshake)?;
        let mut s = TlsSession {
            io,
            conn,
            rbuf: Vec::with_capacity(CIPHER_BUF),
            rpos: 0,
            wbuf: Vec::with_capacity(CIPHER_BUF),
            eof: false,
        };
        while s.conn.is_handshaking() {
            s.flush().await.map_err(TlsError::HandshakeIo)?;
            if !s.conn.is_handshaking() {
                break;
            }
            if s.conn.wants_read() {
                match s.read_tls().await {
                    Ok(0) => return Err(TlsError::HandshakeEof),
                    Ok(_) => {}
                    Err(e) => {
                        return Err(match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                            Some(te) => TlsError::Handshake(te.clone()),
                            None => TlsError::HandshakeIo(e),
                        })
                    }
                }
            }
        }
        s.flush().await.map_err(TlsError::HandshakeIo)?;
        Ok(s)
    }

    /// Reads ciphertext from the socket and feeds rustls; `Ok(0)` at EOF.
    async fn read_tls(&mut self) -> io::Result<usize> {
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
            let buf = std::mem::take(&mut self.rbuf);
            let (res, buf) = self.io.read(buf).await;
            self.rbuf = buf;
            let n = res?;
            if n == 0 {
                self.eof = true;
                // Let rustls see the EOF so it can tell a clean close from a truncation.
                let _ = self.conn.read_tls(&mut &[][..]);
                return Ok(0);
            }
        }
        while self.rpos < self.rbuf.len() {
            let mut slice = &self.rbuf[self.rpos..];
            let n = self.conn.read_tls(&mut slice)?;
            self.rpos += n;
            let state = self.conn.process_new_packets().map_err(|e| {
                // Best effort: tell the peer why (the alert is queued in rustls).
                io::Error::new(io::ErrorKind::InvalidData, e)
            })?;
            if n == 0 || state.plaintext_bytes_to_read() > 0 {
                break;
            }
        }
        Ok(1)
    }

    /// Writes queued ciphertext (handshake messages, records, alerts).
    pub async fn flush(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            self.wbuf.clear();
            self.conn.write_tls(&mut self.wbuf)?;
            let buf = std::mem::take(&mut self.wbuf);
            let (res, buf) = self.io.write_all(buf).await;
            self.wbuf = buf;
            res?;
        }
        Ok(())
    }

    /// Encrypts and sends all of `data`.
    pub async fn write_plain(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = self.conn.writer().write(data)?;
            data = &data[n..];
            self.flush().await?;
        }
        Ok(())
    }

    /// Appends decrypted bytes to `out` (within its spare capacity; never grows it).
    /// `Ok(0)`: the intake closed the session (close_notify or TCP EOF).
    pub async fn read_plain(&mut self, out: &mut Vec<u8>) -> io::Result<usize> {
        debug_assert!(out.capacity() > out.len());
        loop {
            let room = out.capacity() - out.len();
            let mut reader = self.conn.reader();
            match reader.fill_buf() {
                Ok(chunk) => {
                    // Copy straight from rustls' plaintext buffer: no zeroing, no temporary.
                    let n = chunk.len().min(room);
                    out.extend_from_slice(&chunk[..n]);
                    reader.consume(n);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.eof {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "intake closed the connection"));
                    }
                    // Key updates and the like may need answering.
                    self.flush().await?;
                    // At EOF rustls learns of it; the next fill_buf says how the session ended.
                    self.read_tls().await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether a pooled session can carry another request: no EOF seen, no
    /// unread plaintext, and the socket shows nothing (data or FIN) waiting.
    pub fn is_reusable_now(&mut self) -> bool {
        if self.eof || self.rpos < self.rbuf.len() {
            return false;
        }
        crate::io::socket_is_idle(self.io.raw_fd())
    }

    /// Sends close_notify, best effort, before the session is dropped.
    pub async fn close(mut self) {
        self.conn.send_close_notify();
        let _ = self.flush().await;
    }

    /// Negotiated protocol version and suite, for logs and `version`.
    pub fn describe(&self) -> String {
        format!("{:?} {:?}", self.conn.protocol_version(), self.conn.negotiated_cipher_suite().map(|s| s.suite()))
    }
}
