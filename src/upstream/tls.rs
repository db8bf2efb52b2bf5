//! A client TLS session to the intake, driven over the owned-buffer I/O seam.
//!
//! Owns a rustls `UnbufferedClientConnection` (built from
//! `crypto::client_config`, so only the FIPS provider ever encrypts) and the
//! session's three buffers, all allocated once per session and reused: the
//! incoming ciphertext (`rbuf`, one TLS record plus overhead), the outgoing
//! ciphertext (`wbuf`, likewise) and a small carry-over of decrypted bytes
//! that did not fit the caller's buffer. It knows nothing of HTTP. It must
//! never write plaintext to the socket: every byte leaving the socket was
//! produced by rustls (`encrypt`, `encode`, `queue_close_notify`).
//!
//! rustls' unbuffered API lets this module own the record buffers: plaintext
//! is encrypted from the caller's slice into `wbuf`, the socket reads straight
//! into `rbuf` where rustls decrypts records in place, and the plaintext is
//! copied into the caller's buffer; this module adds no allocation and no
//! queue per record. rustls 0.23 itself still makes one short-lived `Vec` per
//! record: its `MessageEncrypter::encrypt` returns an owned record (copied
//! into `wbuf`), and `ReadTraffic` hands out each decrypted record from an
//! owned copy. Removing those needs a rustls with in-place record APIs.
//! Post-handshake messages (TLS 1.3 session tickets, key updates) are handled
//! by rustls as they pass; any answer it must send is queued in `wbuf` and
//! sent before the next read blocks or with the next write.
//!
//! # Backpressure
//! `write_plain` returns only once its data is encrypted and written to the
//! socket, and encrypts at most one record ahead of the socket, so a slow
//! intake slows the reader of the Agent's request. `read_plain` never holds
//! more than one record of ciphertext (`rbuf`) and one of plaintext (carry).

use std::io;
use std::sync::Arc;

use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::ClientConfig;

use crate::io::Stream;

/// Ciphertext buffer size: one full TLS record (16 KiB of plaintext plus
/// header, padding and tag) with room to spare.
const CIPHER_BUF: usize = 18 * 1024;
/// Largest plaintext fragment of one TLS record.
const MAX_FRAGMENT: usize = 16 * 1024;
/// Room for what a record adds to its plaintext: 29 bytes for TLS 1.2
/// AES-GCM (header, explicit nonce, tag), 22 for TLS 1.3 (header, content
/// type, tag). rustls says so if it needs more.
const RECORD_OVERHEAD: usize = 64;
/// First guess for an encoded handshake message; corrected by rustls' answer.
const HANDSHAKE_GUESS: usize = 4 * 1024;
/// Bound on the incoming buffer: rustls keeps the records of a handshake
/// message (e.g. a long certificate chain) in it until the message is whole.
const MAX_CIPHER_BUF: usize = 128 * 1024;

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
    conn: UnbufferedClientConnection,
    /// Ciphertext received and not yet discarded by rustls (it may hold the
    /// front part of a record, or of a handshake message, until the rest comes).
    rbuf: Vec<u8>,
    /// Ciphertext produced by rustls, not yet written: `wbuf[..len()]`.
    wbuf: Vec<u8>,
    /// Decrypted bytes not yet handed to the caller: `carry[carry_pos..]`.
    carry: Vec<u8>,
    carry_pos: usize,
    /// TCP end of stream seen.
    eof: bool,
    /// close_notify received: no more plaintext will come.
    peer_closed: bool,
}

/// What `process` should do when rustls is ready for application data.
enum Want<'a> {
    /// Deliver plaintext into this buffer (within its capacity), else into carry.
    Read(&'a mut Vec<u8>),
    /// Encrypt (the front of) this plaintext into `wbuf`.
    Write(&'a [u8]),
    /// Encrypt a close_notify alert into `wbuf`.
    Close,
    /// Just advance the state machine (handshake, pending records).
    Advance,
}

/// Where `process` stopped.
enum Event {
    /// Decrypted bytes were delivered (to the caller's buffer or the carry).
    Plain,
    /// `wbuf` holds ciphertext that must be written before going on.
    Transmit,
    /// rustls needs more ciphertext from the socket.
    NeedRead,
    /// The handshake is done and nothing is pending (`Want::Advance`).
    Ready,
    /// This many plaintext bytes were encrypted into `wbuf` (`Want::Write`, `Want::Close`).
    Encrypted(usize),
    /// The peer sent close_notify (reported once; `peer_closed` is set).
    PeerClosed,
    /// Both sides sent close_notify: nothing more can be sent or received.
    Closed,
}

impl<S: Stream> TlsSession<S> {
    /// Runs the handshake over `io`.
    pub async fn connect(io: S, config: Arc<ClientConfig>, server_name: &str) -> Result<Self, TlsError> {
        let name =
            ServerName::try_from(server_name.to_string()).map_err(|_| TlsError::ServerName(server_name.into()))?;
        let conn = UnbufferedClientConnection::new(config, name).map_err(TlsError::Handshake)?;
        let mut s = TlsSession {
            io,
            conn,
            rbuf: Vec::with_capacity(CIPHER_BUF),
            wbuf: Vec::with_capacity(CIPHER_BUF),
            carry: Vec::new(),
            carry_pos: 0,
            eof: false,
            peer_closed: false,
        };
        loop {
            match s.process(Want::Advance) {
                Ok(Event::Ready) => break,
                Ok(Event::Transmit) => s.send_wbuf().await.map_err(TlsError::HandshakeIo)?,
                Ok(Event::NeedRead) => match s.fill().await {
                    Ok(0) => return Err(TlsError::HandshakeEof),
                    Ok(_) => {}
                    Err(e) => return Err(TlsError::HandshakeIo(e)),
                },
                Ok(Event::Plain | Event::Encrypted(_)) => {}
                Ok(Event::PeerClosed | Event::Closed) => return Err(TlsError::HandshakeEof),
                Err(e) => {
                    // Best effort: tell the intake why (rustls queued the alert).
                    let _ = s.process(Want::Advance);
                    if !s.wbuf.is_empty() {
                        let _ = s.send_wbuf().await;
                    }
                    return Err(TlsError::Handshake(e));
                }
            }
        }
        s.send_wbuf().await.map_err(TlsError::HandshakeIo)?;
        // A long certificate chain may have grown the incoming buffer; an
        // established session keeps only one record's worth.
        if s.rbuf.capacity() > CIPHER_BUF && s.rbuf.len() <= CIPHER_BUF {
            s.rbuf.shrink_to(CIPHER_BUF);
        }
        Ok(s)
    }

    /// Drives rustls over the ciphertext in `rbuf` until something needs the
    /// caller: bytes to transmit, more bytes to read, plaintext delivered, or
    /// the session ready for `want`. Allocates nothing itself once the
    /// session's buffers exist (the carry grows only if the caller's buffer is
    /// smaller than a record, once per session).
    fn process(&mut self, mut want: Want<'_>) -> Result<Event, rustls::Error> {
        let Self { conn, rbuf, wbuf, carry, carry_pos, peer_closed, .. } = self;
        loop {
            let UnbufferedStatus { mut discard, state } = conn.process_tls_records(rbuf);
            let outcome = match state {
                Err(e) => Err(e),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    let mut outcome = Ok(Some(Event::Plain));
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                deliver(record.payload, &mut want, carry, carry_pos);
                            }
                            Err(e) => {
                                outcome = Err(e);
                                break;
                            }
                        }
                    }
                    outcome
                }
                Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                    append_with(wbuf, HANDSHAKE_GUESS, |out| match enc.encode(out) {
                        Ok(n) => Ok(n),
                        Err(EncodeError::InsufficientSize(e)) => Err(Some(e.required_size)),
                        Err(EncodeError::AlreadyEncoded) => Err(None),
                    })
                    .map(|_| None)
                    .map_err(|()| rustls::Error::General("cannot encode a TLS handshake record".into()))
                }
                Ok(ConnectionState::TransmitTlsData(tx)) => {
                    // The caller writes `wbuf` before anything else goes out,
                    // so marking it sent now keeps the order.
                    tx.done();
                    Ok(Some(Event::Transmit))
                }
                Ok(ConnectionState::BlockedHandshake) => Ok(Some(Event::NeedRead)),
                Ok(ConnectionState::WriteTraffic(mut traffic)) => match &want {
                    Want::Read(_) => Ok(Some(Event::NeedRead)),
                    Want::Advance => Ok(Some(Event::Ready)),
                    Want::Write(data) => {
                        let data = &data[..data.len().min(MAX_FRAGMENT)];
                        append_with(wbuf, data.len() + RECORD_OVERHEAD, |out| match traffic.encrypt(data, out) {
                            Ok(n) => Ok(n),
                            Err(EncryptError::InsufficientSize(e)) => Err(Some(e.required_size)),
                            Err(_) => Err(None),
                        })
                        .map(|_| Some(Event::Encrypted(data.len())))
                        .map_err(|()| rustls::Error::EncryptError)
                    }
                    Want::Close => append_with(wbuf, RECORD_OVERHEAD, |out| match traffic.queue_close_notify(out) {
                        Ok(n) => Ok(n),
                        Err(EncryptError::InsufficientSize(e)) => Err(Some(e.required_size)),
                        Err(_) => Err(None),
                    })
                    .map(|_| Some(Event::Encrypted(0)))
                    .map_err(|()| rustls::Error::EncryptError),
                },
                Ok(ConnectionState::PeerClosed) => {
                    *peer_closed = true;
                    Ok(Some(Event::PeerClosed))
                }
                Ok(ConnectionState::Closed) => {
                    *peer_closed = true;
                    Ok(Some(Event::Closed))
                }
                Ok(other) => Err(rustls::Error::General(format!("unexpected TLS client state {other:?}"))),
            };
            if discard > 0 {
                rbuf.copy_within(discard.., 0);
                rbuf.truncate(rbuf.len() - discard);
            }
            match outcome? {
                Some(event) => return Ok(event),
                None => continue,
            }
        }
    }

    /// Reads ciphertext from the socket, appending to `rbuf`; `Ok(0)` at EOF.
    async fn fill(&mut self) -> io::Result<usize> {
        // Anything rustls wants to say (key update, alert) goes out before we wait.
        self.send_wbuf().await?;
        if self.rbuf.len() == self.rbuf.capacity() {
            // Only while rustls holds a handshake message spanning several records.
            if self.rbuf.capacity() >= MAX_CIPHER_BUF {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "TLS handshake message too large"));
            }
            self.rbuf.reserve(CIPHER_BUF);
        }
        let buf = std::mem::take(&mut self.rbuf);
        let (res, buf) = self.io.read(buf).await;
        self.rbuf = buf;
        let n = res?;
        if n == 0 {
            self.eof = true;
        }
        Ok(n)
    }

    /// Writes `wbuf` out and empties it.
    async fn send_wbuf(&mut self) -> io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.wbuf);
        let (res, mut buf) = self.io.write_all(buf).await;
        buf.clear();
        self.wbuf = buf;
        res
    }

    /// Writes queued ciphertext (handshake messages, key updates, alerts).
    pub async fn flush(&mut self) -> io::Result<()> {
        loop {
            match self.process(Want::Advance).map_err(tls_io)? {
                Event::Transmit => self.send_wbuf().await?,
                _ => return self.send_wbuf().await,
            }
        }
    }

    /// Encrypts and sends all of `data`, one record (at most 16 KiB of
    /// plaintext) at a time.
    ///
    /// # Backpressure
    /// Returns only once every record is written to the socket.
    pub async fn write_plain(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match self.process(Want::Write(data)).map_err(tls_io)? {
                Event::Encrypted(n) => {
                    data = &data[n..];
                    self.send_wbuf().await?;
                }
                Event::Transmit => self.send_wbuf().await?,
                // Plaintext that came early waits in the carry; close_notify
                // from the intake still lets us send (rustls decides).
                Event::Plain | Event::PeerClosed | Event::Ready => {}
                Event::NeedRead | Event::Closed => {
                    return Err(io::Error::new(io::ErrorKind::NotConnected, "TLS session can no longer send data"))
                }
            }
        }
        Ok(())
    }

    /// Appends decrypted bytes to `out` (within its spare capacity; never grows it).
    /// `Ok(0)`: the intake closed the session with close_notify; TCP EOF
    /// without it is `UnexpectedEof`.
    pub async fn read_plain(&mut self, out: &mut Vec<u8>) -> io::Result<usize> {
        debug_assert!(out.capacity() > out.len());
        let before = out.len();
        loop {
            if self.carry_pos < self.carry.len() {
                let room = out.capacity() - out.len();
                let n = room.min(self.carry.len() - self.carry_pos);
                out.extend_from_slice(&self.carry[self.carry_pos..self.carry_pos + n]);
                self.carry_pos += n;
                if self.carry_pos == self.carry.len() {
                    self.carry.clear();
                    self.carry_pos = 0;
                }
                return Ok(n);
            }
            if self.peer_closed {
                return Ok(0);
            }
            match self.process(Want::Read(out)).map_err(tls_io)? {
                Event::Plain if out.len() > before => return Ok(out.len() - before),
                Event::Plain | Event::Ready | Event::Encrypted(_) => {}
                Event::Transmit => self.send_wbuf().await?,
                Event::PeerClosed | Event::Closed => {}
                Event::NeedRead => {
                    if self.eof || self.fill().await? == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "intake closed the connection"));
                    }
                }
            }
        }
    }

    /// Appends the plaintext that can be had without waiting to `out`
    /// (within its spare capacity): `Ok(None)` when a whole record has not
    /// arrived yet, `Ok(Some(0))` after close_notify. Answers rustls must
    /// send (a key update) wait in `wbuf` for the next write. Used when this
    /// session is itself the stream under another (TLS to an `https://`
    /// proxy, with the intake's TLS inside).
    pub fn read_plain_now(&mut self, out: &mut Vec<u8>) -> io::Result<Option<usize>> {
        debug_assert!(out.capacity() > out.len());
        let before = out.len();
        loop {
            if self.carry_pos < self.carry.len() {
                let n = (out.capacity() - out.len()).min(self.carry.len() - self.carry_pos);
                out.extend_from_slice(&self.carry[self.carry_pos..self.carry_pos + n]);
                self.carry_pos += n;
                if self.carry_pos == self.carry.len() {
                    self.carry.clear();
                    self.carry_pos = 0;
                }
                return Ok(Some(n));
            }
            if self.peer_closed {
                return Ok(Some(0));
            }
            match self.process(Want::Read(out)).map_err(tls_io)? {
                Event::Plain if out.len() > before => return Ok(Some(out.len() - before)),
                Event::Plain | Event::Ready | Event::Encrypted(_) | Event::Transmit => {}
                Event::PeerClosed | Event::Closed => {}
                Event::NeedRead => {
                    if self.eof {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed the connection"));
                    }
                    if self.rbuf.len() == self.rbuf.capacity() {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "TLS record larger than the buffer"));
                    }
                    match self.io.try_read_now(&mut self.rbuf)? {
                        None => return Ok(None),
                        Some(0) => self.eof = true,
                        Some(_) => {}
                    }
                }
            }
        }
    }

    /// Waits until plaintext is there, then appends it to `out`; `Ok(0)`
    /// after close_notify. Cancel-safe: the ciphertext it waited for stays
    /// in the session when the wait is dropped.
    pub async fn read_plain_ready(&mut self, out: &mut Vec<u8>) -> io::Result<usize> {
        loop {
            if let Some(n) = self.read_plain_now(out)? {
                return Ok(n);
            }
            // Anything rustls queued (a key update) goes with the next write:
            // a write here would not be cancel-safe.
            if self.io.read_ready(&mut self.rbuf).await? == 0 {
                self.eof = true;
            }
        }
    }

    /// The socket under the session.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.io.raw_fd()
    }

    /// Half-closes the socket under the session.
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.io.shutdown_write()
    }

    pub fn set_nodelay(&self) -> io::Result<()> {
        self.io.set_nodelay()
    }

    /// Whether a pooled session can carry another request. Reads, without
    /// blocking, whatever arrived while it was idle and lets rustls process
    /// it: session tickets and key updates keep it usable; EOF, close_notify,
    /// an alert, application data nobody asked for, or a partial record make
    /// it unusable.
    pub fn is_reusable_now(&mut self) -> bool {
        if self.eof || self.peer_closed || self.carry_pos < self.carry.len() {
            return false;
        }
        // Take in whatever the intake sent while the session sat idle (late
        // session tickets, a key update, or a close_notify / FIN) without
        // blocking, and let rustls judge it.
        loop {
            if self.rbuf.len() == self.rbuf.capacity() {
                return false;
            }
            match self.io.try_read_now(&mut self.rbuf) {
                Ok(None) => break,
                Ok(Some(0)) | Err(_) => {
                    self.eof = true;
                    return false;
                }
                Ok(Some(_)) => continue,
            }
        }
        while !self.rbuf.is_empty() {
            match self.process(Want::Advance) {
                // Queued ciphertext (e.g. a key update) goes out with the next write.
                Ok(Event::Transmit) => {}
                Ok(Event::Ready) if self.rbuf.is_empty() => break,
                // Application data nobody asked for, a partial record, an alert or close_notify.
                _ => return false,
            }
        }
        true
    }

    /// Sends close_notify, best effort, before the session is dropped.
    pub async fn close(mut self) {
        loop {
            match self.process(Want::Close) {
                Ok(Event::Transmit) => {
                    if self.send_wbuf().await.is_err() {
                        return;
                    }
                }
                Ok(Event::Encrypted(_)) => break,
                // Records read but not processed yet: pass them first.
                Ok(Event::Plain | Event::PeerClosed) => {}
                _ => return,
            }
        }
        let _ = self.send_wbuf().await;
    }

    /// Negotiated protocol version and suite, for logs and `version`.
    pub fn describe(&self) -> String {
        match (self.conn.protocol_version(), self.conn.negotiated_cipher_suite()) {
            (Some(v), Some(s)) => format!("{v:?} {:?}", s.suite()),
            _ => "handshake not complete".to_string(),
        }
    }

    /// The intake's end-entity certificate (DER), for `diagnose`.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        self.conn.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref())
    }
}

/// Hands a decrypted record to the reader: straight into its buffer while it
/// has room, the rest (or all, outside a read) into the carry.
fn deliver(payload: &[u8], want: &mut Want<'_>, carry: &mut Vec<u8>, carry_pos: &mut usize) {
    let mut rest = payload;
    if let Want::Read(out) = want {
        if *carry_pos == carry.len() {
            let n = rest.len().min(out.capacity() - out.len());
            out.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
    }
    if !rest.is_empty() {
        if *carry_pos > 0 && *carry_pos == carry.len() {
            carry.clear();
            *carry_pos = 0;
        }
        if carry.capacity() == 0 {
            carry.reserve_exact(MAX_FRAGMENT.max(rest.len()));
        }
        carry.extend_from_slice(rest);
    }
}

/// Lets `write` produce ciphertext at the end of `wbuf`, in a window of
/// `guess` bytes, or of the size rustls says it needs. Only zeroes what it
/// offers and allocates only if the window outgrows `wbuf`'s capacity.
fn append_with(
    wbuf: &mut Vec<u8>,
    guess: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) -> Result<usize, ()> {
    let start = wbuf.len();
    wbuf.resize(start + guess, 0);
    let result = match write(&mut wbuf[start..]) {
        Err(Some(required)) => {
            wbuf.resize(start + required, 0);
            write(&mut wbuf[start..])
        }
        other => other,
    };
    match result {
        Ok(n) => {
            wbuf.truncate(start + n);
            Ok(n)
        }
        Err(_) => {
            wbuf.truncate(start);
            Err(())
        }
    }
}

fn tls_io(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}
