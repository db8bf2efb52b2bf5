//! A client TLS session to the intake, driven over the owned-buffer I/O seam.
//!
//! The handshake runs in a rustls `UnbufferedClientConnection` (built from
//! `crypto::client_config`, so only the FIPS provider takes part). Once it
//! is done, rustls hands over the traffic secrets and keeps a
//! `KernelConnection` (its kTLS API) for what is not record protection:
//! session tickets (stored for resumption) and TLS 1.3 key updates. Records
//! are then sealed and opened in place, in this session's own buffers, by
//! the FIPS module's TLS record AEAD ([`super::records`]): plaintext is
//! copied once into the outgoing buffer and sealed where it lies; incoming
//! records are opened where they were read and their plaintext copied once
//! to the caller. No allocation per record. It knows nothing of HTTP. It
//! must never write plaintext to the socket: every byte leaving the socket
//! is a handshake message from rustls or a record sealed by the module.
//!
//! # Backpressure
//! `write_plain` returns only once its data is sealed and written to the
//! socket, and seals at most [`WRITE_BATCH`] bytes ahead of the socket, so a
//! slow intake slows the reader of the Agent's request. `read_plain` never
//! holds more than one record of ciphertext beyond what it hands out.

use std::io;
use std::sync::Arc;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::pki_types::ServerName;
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::ClientConfig;

use super::records::{
    record_len, Opener, RecordVersion, Sealer, CONTENT_ALERT, CONTENT_APPLICATION_DATA, CONTENT_HANDSHAKE,
};
use crate::h2::out::{Output, Slots};
use crate::io::{Stream, Strided};

/// Ciphertext buffer size: one full TLS record (16 KiB of plaintext plus
/// header, padding and tag) with room to spare.
const CIPHER_BUF: usize = 18 * 1024;
/// Largest plaintext fragment of one TLS record.
const MAX_FRAGMENT: usize = 16 * 1024;
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
    #[error("cannot take the TLS records over from rustls: {0}")]
    Records(super::records::RecordError),
}

pub struct TlsSession<S: Stream> {
    io: S,
    /// rustls after the handshake: session tickets and key updates.
    kernel: KernelConnection<ClientConnectionData>,
    sealer: Sealer,
    opener: Opener,
    version: RecordVersion,
    /// Ciphertext received: `rbuf[rpos..]` is not opened yet.
    rbuf: Vec<u8>,
    rpos: usize,
    /// Opened plaintext not yet handed to the caller, inside `rbuf`.
    plain: std::ops::Range<usize>,
    /// Ciphertext sealed, not yet written: `wbuf[..len()]`.
    wbuf: Vec<u8>,
    /// TCP end of stream seen.
    eof: bool,
    /// close_notify received: no more plaintext will come.
    peer_closed: bool,
    /// TLS 1.2 key near its confidentiality limit: do not reuse the session.
    exhausted: bool,
    /// The peer asked for a key update: ours goes out before our next record.
    key_update_owed: bool,
    /// A read or write was cancelled half-way (a timeout): the buffers no
    /// longer match the session's state, so it must not be used again.
    poisoned: bool,
    /// "TLSv1_3 TLS13_AES_256_GCM_SHA384", for logs.
    described: String,
    /// The intake's end-entity certificate (DER), for `diagnose`.
    peer_certificate: Option<Vec<u8>>,
    /// The protocol the intake picked by ALPN (`h2`), if any.
    alpn: Option<Vec<u8>>,
}

/// The handshake, before rustls hands the records over.
struct Handshake {
    conn: UnbufferedClientConnection,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
}

/// Records a TLS 1.3 key seals before it is updated (well before the
/// suite's confidentiality limit, 2^23 or 2^24 records for AES-GCM).
const KEY_UPDATE_MARGIN: u64 = 1 << 16;
/// Records that carry no application data (tickets, key updates, alerts,
/// empty records) accepted in a row before the peer is cut off as flooding.
const MAX_CONTROL_RECORDS: u32 = 32;
/// Bytes sealed into `wbuf` before they are written (several records per write).
pub const WRITE_BATCH: usize = 64 * 1024;
/// Handshake message types seen after the handshake.
const HS_HELLO_REQUEST: u8 = 0;
const HS_NEW_SESSION_TICKET: u8 = 4;
const HS_KEY_UPDATE: u8 = 24;

/// The record buffer of a session, lent for several records' plaintext
/// to be read into it at once ([`TlsSession::lend_records`]): `reads` says
/// where, in `buf`'s spare capacity from `buf.len()` on.
pub struct LentRecords {
    pub buf: Vec<u8>,
    start: usize,
    pub reads: Strided,
}

/// What [`TlsSession::try_write_laid_out`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrittenNow {
    /// Every record is written.
    All,
    /// Sealed; what the socket did not take waits in the session.
    Left,
    /// Nothing done: the caller writes it with `write_laid_out`.
    NotNow,
}

/// One record taken off `rbuf`.
enum Opened {
    /// Application data, now at `rbuf[range]`.
    Data(std::ops::Range<usize>),
    /// A ticket, a key update or an alert, handled.
    Control,
}

/// Where the handshake driver stopped.
enum Event {
    /// `wbuf` holds handshake bytes that must be written before going on.
    Transmit,
    /// rustls needs more ciphertext from the socket.
    NeedRead,
    /// The handshake is done and nothing is pending.
    Ready,
    /// The intake sent application data or close_notify before any request.
    Unexpected,
}

impl Handshake {
    /// Drives rustls over the ciphertext in `rbuf` until it needs the
    /// caller: bytes to transmit, more bytes to read, or the handshake done.
    fn process(&mut self) -> Result<Event, rustls::Error> {
        let Self { conn, rbuf, wbuf, .. } = self;
        loop {
            let UnbufferedStatus { discard, state } = conn.process_tls_records(rbuf);
            let outcome = match state {
                Err(e) => Err(e),
                // Application data before our first request: nothing to do with it.
                Ok(ConnectionState::ReadTraffic(_) | ConnectionState::PeerClosed | ConnectionState::Closed) => {
                    Ok(Some(Event::Unexpected))
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
                Ok(ConnectionState::WriteTraffic(_)) => Ok(Some(Event::Ready)),
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
}

impl<S: Stream> TlsSession<S> {
    /// Runs the handshake over `io`, then takes the records over from rustls.
    pub async fn connect(mut io: S, config: Arc<ClientConfig>, server_name: &str) -> Result<Self, TlsError> {
        let name =
            ServerName::try_from(server_name.to_string()).map_err(|_| TlsError::ServerName(server_name.into()))?;
        let conn = UnbufferedClientConnection::new(config, name).map_err(TlsError::Handshake)?;
        let mut h = Handshake { conn, rbuf: Vec::with_capacity(CIPHER_BUF), wbuf: Vec::with_capacity(CIPHER_BUF) };
        loop {
            match h.process() {
                Ok(Event::Ready) => break,
                Ok(Event::Transmit) => send_all(&mut io, &mut h.wbuf).await.map_err(TlsError::HandshakeIo)?,
                Ok(Event::NeedRead) => {
                    if h.rbuf.len() == h.rbuf.capacity() {
                        // Only while rustls holds a handshake message spanning several records.
                        if h.rbuf.capacity() >= MAX_CIPHER_BUF {
                            return Err(TlsError::HandshakeIo(io::Error::new(
                                io::ErrorKind::InvalidData,
                                "TLS handshake message too large",
                            )));
                        }
                        h.rbuf.reserve(CIPHER_BUF);
                    }
                    let buf = std::mem::take(&mut h.rbuf);
                    let (res, buf) = io.read(buf).await;
                    h.rbuf = buf;
                    match res {
                        Ok(0) => return Err(TlsError::HandshakeEof),
                        Ok(_) => {}
                        Err(e) => return Err(TlsError::HandshakeIo(e)),
                    }
                }
                Ok(Event::Unexpected) => return Err(TlsError::HandshakeEof),
                Err(e) => {
                    // Best effort: tell the intake why (rustls queued the alert).
                    let _ = h.process();
                    if !h.wbuf.is_empty() {
                        let _ = send_all(&mut io, &mut h.wbuf).await;
                    }
                    return Err(TlsError::Handshake(e));
                }
            }
        }
        send_all(&mut io, &mut h.wbuf).await.map_err(TlsError::HandshakeIo)?;
        let described = match (h.conn.protocol_version(), h.conn.negotiated_cipher_suite()) {
            (Some(v), Some(s)) => format!("{v:?} {:?}", s.suite()),
            _ => "handshake not complete".to_string(),
        };
        let version = match h.conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => RecordVersion::Tls13,
            _ => RecordVersion::Tls12,
        };
        let peer_certificate = h.conn.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref().to_vec());
        let alpn = h.conn.alpn_protocol().map(<[u8]>::to_vec);
        let Handshake { conn, mut rbuf, wbuf, .. } = h;
        let (secrets, kernel) = conn.dangerous_into_kernel_connection().map_err(TlsError::Handshake)?;
        let limit = super::records::confidentiality_limit(kernel.negotiated_cipher_suite());
        let sealer = Sealer::new(version, secrets.tx, limit).map_err(TlsError::Records)?;
        let opener = Opener::new(version, secrets.rx).map_err(TlsError::Records)?;
        // A long certificate chain may have grown the incoming buffer; an
        // established session keeps only one record's worth.
        if rbuf.capacity() > CIPHER_BUF && rbuf.len() <= CIPHER_BUF {
            rbuf.shrink_to(CIPHER_BUF);
        }
        Ok(TlsSession {
            io,
            kernel,
            sealer,
            opener,
            version,
            rbuf,
            rpos: 0,
            plain: 0..0,
            wbuf,
            eof: false,
            peer_closed: false,
            exhausted: false,
            key_update_owed: false,
            poisoned: false,
            described,
            peer_certificate,
            alpn,
        })
    }

    /// Opens the whole record at `rbuf[rpos..]`, if one is there, and
    /// handles what is not application data: tickets and key updates go
    /// to rustls, close_notify ends the stream, other alerts are errors.
    fn next_record(&mut self) -> io::Result<Option<Opened>> {
        let avail = &self.rbuf[self.rpos..];
        let Some(len) = record_len(avail) else { return Ok(None) };
        if len - super::records::HEADER_LEN > super::records::MAX_CIPHERTEXT {
            return Err(invalid("the intake sent a record longer than 2^14 + 256 bytes"));
        }
        if avail.len() < len {
            return Ok(None);
        }
        let at = self.rpos;
        let (typ, range) = self.opener.open(&mut self.rbuf[at..at + len]).map_err(records_io)?;
        self.rpos += len;
        let body = at + range.start..at + range.end;
        match typ {
            CONTENT_APPLICATION_DATA => Ok(Some(Opened::Data(body))),
            CONTENT_HANDSHAKE => {
                self.handle_handshake(body)?;
                Ok(Some(Opened::Control))
            }
            CONTENT_ALERT => {
                let alert = &self.rbuf[body];
                match alert {
                    [_, 0] => {
                        self.peer_closed = true;
                        Ok(Some(Opened::Control))
                    }
                    // user_canceled: a warning, close_notify follows.
                    [_, 90] => Ok(Some(Opened::Control)),
                    [_, d] => Err(invalid(&format!("the intake sent TLS alert {d}"))),
                    _ => Err(invalid("malformed TLS alert")),
                }
            }
            other => Err(invalid(&format!("unexpected TLS record type {other} after the handshake"))),
        }
    }

    /// Handshake messages after the handshake, each whole in this record.
    fn handle_handshake(&mut self, body: std::ops::Range<usize>) -> io::Result<()> {
        let mut at = body.start;
        while at < body.end {
            let msg = &self.rbuf[at..body.end];
            if msg.len() < 4 {
                return Err(invalid("a post-handshake message split across records"));
            }
            let typ = msg[0];
            let len = u32::from_be_bytes([0, msg[1], msg[2], msg[3]]) as usize;
            if msg.len() < 4 + len {
                return Err(invalid("a post-handshake message split across records"));
            }
            let payload = at + 4..at + 4 + len;
            match (typ, self.version) {
                (HS_NEW_SESSION_TICKET, RecordVersion::Tls13) => {
                    let Self { kernel, rbuf, .. } = self;
                    kernel.handle_new_session_ticket(&rbuf[payload]).map_err(tls_io)?;
                }
                (HS_KEY_UPDATE, RecordVersion::Tls13) => {
                    let requested = match &self.rbuf[payload] {
                        [0] => false,
                        [1] => true,
                        _ => return Err(invalid("malformed KeyUpdate")),
                    };
                    if at + 4 + len != body.end {
                        return Err(invalid("a KeyUpdate must end its record"));
                    }
                    let rx = self.kernel.update_rx_secret().map_err(tls_io)?;
                    self.opener = Opener::new(self.version, rx).map_err(records_io)?;
                    // One answer however many requests came: before our next
                    // record (RFC 8446 §4.6.3).
                    self.key_update_owed |= requested;
                }
                // Renegotiation is not supported: ignored, as rustls does.
                (HS_HELLO_REQUEST, RecordVersion::Tls12) => {}
                _ => return Err(invalid(&format!("unexpected handshake message {typ} after the handshake"))),
            }
            at += 4 + len;
        }
        Ok(())
    }

    /// TLS 1.3: sends KeyUpdate(update_not_requested) under the current key,
    /// then seals under the next one.
    fn update_tx_key(&mut self) -> io::Result<()> {
        self.seal_into_wbuf(CONTENT_HANDSHAKE, &[HS_KEY_UPDATE, 0, 0, 1, 0])?;
        let tx = self.kernel.update_tx_secret().map_err(tls_io)?;
        let limit = super::records::confidentiality_limit(self.kernel.negotiated_cipher_suite());
        self.sealer = Sealer::new(self.version, tx, limit).map_err(records_io)?;
        Ok(())
    }

    /// TLS 1.3: updates our sending key now (KeyUpdate, not asking the
    /// peer to update its own); the message goes with the next write. What
    /// the confidentiality limit does on its own; TLS 1.2 has no key update.
    pub fn update_keys(&mut self) -> io::Result<()> {
        match self.version {
            RecordVersion::Tls13 => self.update_tx_key(),
            RecordVersion::Tls12 => Err(io::Error::new(io::ErrorKind::Unsupported, "TLS 1.2 has no key update")),
        }
    }

    /// Seals one record of `typ` holding `data` (at most one fragment) at the end of `wbuf`.
    fn seal_into_wbuf(&mut self, typ: u8, data: &[u8]) -> io::Result<()> {
        let start = self.wbuf.len();
        self.wbuf.resize(start + self.sealer.prefix_len(), 0);
        self.wbuf.extend_from_slice(data);
        match self.sealer.seal(&mut self.wbuf, start, typ) {
            Ok(_) => Ok(()),
            Err(e) => {
                self.wbuf.truncate(start);
                Err(records_io(e))
            }
        }
    }

    /// Before an application data record: updates the key (TLS 1.3) well
    /// before its limit, and answers a key update the peer asked for.
    fn before_data_record(&mut self) -> io::Result<()> {
        if self.key_update_owed {
            self.key_update_owed = false;
            self.update_tx_key()?;
        }
        if self.sealer.records_left() <= KEY_UPDATE_MARGIN {
            match self.version {
                RecordVersion::Tls13 => self.update_tx_key()?,
                // No key update in TLS 1.2: this session is not reused.
                RecordVersion::Tls12 => self.exhausted = true,
            }
        }
        Ok(())
    }

    /// Seals application data.
    fn seal_data(&mut self, data: &[u8]) -> io::Result<()> {
        self.before_data_record()?;
        self.seal_into_wbuf(CONTENT_APPLICATION_DATA, data)
    }

    /// Lends the record buffer for up to `max_records` application data
    /// records holding at most `max` bytes of plaintext in all, so the
    /// caller can read their plaintext straight into it in one vectored
    /// read ([`LentRecords::reads`], [`Stream::read_strided`]): each record's
    /// place has room for its header before and its tag after. Give it back
    /// with [`Self::seal_lent_records`] (until then the session is poisoned).
    pub fn lend_records(&mut self, max: usize, max_records: usize) -> io::Result<LentRecords> {
        self.usable()?;
        self.before_data_record()?;
        let records = max.div_ceil(MAX_FRAGMENT).clamp(1, max_records.max(1));
        // Never more records than the key may still seal.
        let records = records.min(usize::try_from(self.sealer.records_left()).unwrap_or(usize::MAX).max(1));
        let total = max.min(records * MAX_FRAGMENT);
        let stride = self.sealer.overhead() + MAX_FRAGMENT;
        let start = self.wbuf.len();
        self.wbuf.resize(start + self.sealer.prefix_len(), 0);
        self.wbuf.reserve(records * stride);
        self.poisoned = true;
        let reads = Strided::even(MAX_FRAGMENT, stride, total);
        Ok(LentRecords { buf: std::mem::take(&mut self.wbuf), start, reads })
    }

    /// Takes the lent buffer back after `n` bytes of plaintext were read
    /// into its places and seals them where they lie: every place but the
    /// last full, so the records follow one another with no gap. An `n` of
    /// 0 seals nothing. [`Self::flush`] writes them, in one write.
    pub fn seal_lent_records(&mut self, lent: LentRecords, n: usize) -> io::Result<()> {
        let LentRecords { mut buf, start, reads } = lent;
        self.poisoned = false;
        if n == 0 {
            buf.truncate(start);
            self.wbuf = buf;
            return Ok(());
        }
        let (prefix, suffix) = (self.sealer.prefix_len(), self.sealer.suffix_len());
        let records = n.div_ceil(MAX_FRAGMENT);
        let last_plain = n - (records - 1) * MAX_FRAGMENT;
        let end = start + (records - 1) * reads.stride + prefix + last_plain + suffix;
        if n > reads.total || reads.len != MAX_FRAGMENT || end > buf.capacity() || buf.len() != start + prefix {
            self.wbuf = buf;
            self.poisoned = true;
            return Err(invalid("more plaintext than the lent records hold"));
        }
        // SAFETY: `end` is within the capacity (checked above). The bytes up
        // to it are the header room of the first record (initialised when
        // lent), the plaintext the read wrote into each place, and the
        // rooms around them, which are zeroed here before the length
        // covers them.
        unsafe {
            let base = buf.as_mut_ptr();
            for i in 0..records {
                let at = start + i * reads.stride;
                let plain = if i + 1 == records { last_plain } else { MAX_FRAGMENT };
                if i > 0 {
                    std::ptr::write_bytes(base.add(at), 0, prefix);
                }
                std::ptr::write_bytes(base.add(at + prefix + plain), 0, suffix);
            }
            buf.set_len(end);
        }
        self.wbuf = buf;
        for i in 0..records {
            let at = start + i * reads.stride;
            let len = (end - at).min(reads.stride);
            if let Err(e) = self.sealer.seal_record(&mut self.wbuf[at..at + len], CONTENT_APPLICATION_DATA) {
                self.poisoned = true;
                return Err(records_io(e));
            }
        }
        Ok(())
    }

    /// The places of this session's records, for plaintext laid out to be
    /// sealed where it lies ([`Self::write_laid_out`]).
    pub fn record_slots(&self) -> Slots {
        Slots { before: self.sealer.prefix_len(), after: self.sealer.suffix_len(), payload: MAX_FRAGMENT }
    }

    /// Seals the records `out` holds, laid out in this session's places
    /// ([`Self::record_slots`]; every place full but the last), where they
    /// lie, and writes them in one write (after anything queued, such as a
    /// key update). A connection's HTTP/2 frames go out this way with no
    /// copy into the session's own buffer.
    ///
    /// # Backpressure
    /// Returns only once every record is written to the socket.
    pub async fn write_laid_out(&mut self, out: &mut Output) -> io::Result<()> {
        if !self.laid_out_usable(out)? {
            return Ok(());
        }
        if self.near_key_limit(out) {
            // Near the key's limit: one record at a time, each checked.
            let plain: Vec<u8> = {
                let stride = self.record_slots().stride();
                let (before, after) = (self.sealer.prefix_len(), self.sealer.suffix_len());
                out.records().chunks(stride).flat_map(|r| &r[before..r.len() - after]).copied().collect()
            };
            return self.write_plain(&plain).await;
        }
        // One check covers the batch: it is far below the margin.
        self.before_data_record()?;
        self.send_wbuf().await?;
        self.seal_laid_out(out)?;
        let buf = out.records();
        self.poisoned = true;
        let (res, b) = self.io.write_all(std::mem::take(buf)).await;
        *buf = b;
        self.poisoned = false;
        res
    }

    /// [`Self::write_laid_out`] without waiting: seals `out`'s records and
    /// writes what the socket takes now. [`WrittenNow::Left`]: the socket
    /// took part (or none) of them, and the rest waits in the session's
    /// buffer for [`Self::flush`] (moved there, not copied);
    /// [`WrittenNow::NotNow`]: `out` is untouched, because ciphertext
    /// written earlier is still waiting or the key is near its limit, and
    /// the caller writes it with `write_laid_out`. The caller clears `out`
    /// unless it got `NotNow`.
    pub fn try_write_laid_out(&mut self, out: &mut Output) -> io::Result<WrittenNow> {
        if !self.laid_out_usable(out)? {
            return Ok(WrittenNow::All);
        }
        if self.near_key_limit(out) {
            return Ok(WrittenNow::NotNow);
        }
        self.before_data_record()?;
        // A key update just sealed, or what an earlier write left, first.
        if !self.send_wbuf_now()? {
            return Ok(WrittenNow::NotNow);
        }
        self.seal_laid_out(out)?;
        // The sealed records are the ciphertext, back to back.
        std::mem::swap(&mut self.wbuf, out.records());
        Ok(if self.send_wbuf_now()? { WrittenNow::All } else { WrittenNow::Left })
    }

    /// Writes `wbuf` as far as the socket takes it now and drops what went;
    /// true when all of it went.
    fn send_wbuf_now(&mut self) -> io::Result<bool> {
        let mut sent = 0;
        while sent < self.wbuf.len() {
            match self.io.try_write_now(&self.wbuf[sent..]) {
                Ok(None) => break,
                Ok(Some(0)) => return Err(self.poison(io::ErrorKind::WriteZero.into())),
                Ok(Some(n)) => sent += n,
                Err(e) => return Err(self.poison(e)),
            }
        }
        self.wbuf.drain(..sent);
        Ok(self.wbuf.is_empty())
    }

    /// A write failed half-way: the session is not used again.
    fn poison(&mut self, e: io::Error) -> io::Error {
        self.poisoned = true;
        e
    }

    /// `Ok(false)`: nothing to write.
    fn laid_out_usable(&self, out: &Output) -> io::Result<bool> {
        self.usable()?;
        if out.is_empty() {
            return Ok(false);
        }
        if out.slots() != self.record_slots() {
            return Err(invalid("plaintext laid out for another session's records"));
        }
        Ok(true)
    }

    /// Whether `out`'s records would take the key near its limit (they
    /// then go one at a time, each checked).
    fn near_key_limit(&self, out: &Output) -> bool {
        let records = out.len().div_ceil(MAX_FRAGMENT);
        self.sealer.records_left() <= KEY_UPDATE_MARGIN + records as u64
    }

    /// Seals `out`'s records where they lie.
    fn seal_laid_out(&mut self, out: &mut Output) -> io::Result<()> {
        let stride = self.record_slots().stride();
        let buf = out.records();
        let mut at = 0;
        while at < buf.len() {
            let len = (buf.len() - at).min(stride);
            if let Err(e) = self.sealer.seal_record(&mut buf[at..at + len], CONTENT_APPLICATION_DATA) {
                self.poisoned = true;
                return Err(records_io(e));
            }
            at += len;
        }
        Ok(())
    }

    /// Whether sealed bytes wait to be written ([`Self::flush`]).
    pub fn has_unwritten(&self) -> bool {
        !self.wbuf.is_empty()
    }

    /// Makes room to read: drops what was opened and handed out, keeping a
    /// partial record at the front (a few bytes move, at most one record).
    fn compact(&mut self) {
        debug_assert!(self.plain.is_empty());
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        } else if self.rpos > 0 && self.rbuf.capacity() - self.rbuf.len() < CIPHER_BUF - MAX_FRAGMENT {
            self.rbuf.copy_within(self.rpos.., 0);
            self.rbuf.truncate(self.rbuf.len() - self.rpos);
            self.rpos = 0;
        }
        if self.rbuf.len() == self.rbuf.capacity() {
            // A whole record always fits in CIPHER_BUF once compacted.
            self.rbuf.copy_within(self.rpos.., 0);
            self.rbuf.truncate(self.rbuf.len() - self.rpos);
            self.rpos = 0;
        }
    }

    /// Reads ciphertext from the socket, appending to `rbuf`; `Ok(0)` at EOF.
    async fn fill(&mut self) -> io::Result<usize> {
        // A key update we owe, and anything queued, go out before we wait.
        if self.key_update_owed {
            self.key_update_owed = false;
            self.update_tx_key()?;
        }
        self.send_wbuf().await?;
        // Armed (idle in the pool), the stream holds `rbuf`, with the read
        // that is under way.
        if !self.io.is_armed() {
            self.compact();
            if self.rbuf.len() == self.rbuf.capacity() {
                return Err(invalid("TLS record larger than the buffer"));
            }
        }
        let buf = std::mem::take(&mut self.rbuf);
        self.poisoned = true;
        let (res, buf) = self.io.read(buf).await;
        self.rbuf = buf;
        self.poisoned = false;
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
        self.poisoned = true;
        let res = send_all(&mut self.io, &mut self.wbuf).await;
        self.poisoned = false;
        res
    }

    /// Refuses a session whose last read or write was cancelled half-way.
    fn usable(&self) -> io::Result<()> {
        if self.poisoned {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "TLS session abandoned in the middle of an I/O"));
        }
        Ok(())
    }

    /// Writes queued ciphertext (a key update answer).
    pub async fn flush(&mut self) -> io::Result<()> {
        self.send_wbuf().await
    }

    /// Seals and sends all of `data`, one record per 16 KiB of plaintext,
    /// up to [`WRITE_BATCH`] bytes per write.
    ///
    /// # Backpressure
    /// Returns only once every record is written to the socket.
    pub async fn write_plain(&mut self, data: &[u8]) -> io::Result<()> {
        self.usable()?;
        for chunk in data.chunks(MAX_FRAGMENT) {
            self.seal_data(chunk)?;
            if self.wbuf.len() >= WRITE_BATCH {
                self.send_wbuf().await?;
            }
        }
        self.send_wbuf().await
    }

    /// Hands out opened plaintext into `out`'s spare capacity.
    fn take_plain(&mut self, out: &mut Vec<u8>) -> usize {
        let n = (out.capacity() - out.len()).min(self.plain.len());
        out.extend_from_slice(&self.rbuf[self.plain.start..self.plain.start + n]);
        self.plain.start += n;
        n
    }

    /// Appends decrypted bytes to `out` (within its spare capacity; never grows it).
    /// `Ok(0)`: the intake closed the session with close_notify; TCP EOF
    /// without it is `UnexpectedEof`.
    pub async fn read_plain(&mut self, out: &mut Vec<u8>) -> io::Result<usize> {
        self.usable()?;
        no_room(out)?;
        let mut control = 0;
        loop {
            if !self.plain.is_empty() {
                return Ok(self.take_plain(out));
            }
            if self.peer_closed {
                return Ok(0);
            }
            match self.next_record()? {
                Some(Opened::Data(range)) if !range.is_empty() => self.plain = range,
                Some(Opened::Data(_) | Opened::Control) => control_record(&mut control)?,
                None => {
                    if self.eof || self.fill().await? == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "intake closed the connection"));
                    }
                }
            }
        }
    }

    /// Appends the plaintext that can be had without waiting to `out`
    /// (within its spare capacity): `Ok(None)` when a whole record has not
    /// arrived yet, `Ok(Some(0))` after close_notify. Answers owed to the
    /// peer (a key update) wait in `wbuf` for the next write. Used when this
    /// session is itself the stream under another (TLS to an `https://`
    /// proxy, with the intake's TLS inside).
    pub fn read_plain_now(&mut self, out: &mut Vec<u8>) -> io::Result<Option<usize>> {
        self.usable()?;
        no_room(out)?;
        let mut control = 0;
        loop {
            if !self.plain.is_empty() {
                return Ok(Some(self.take_plain(out)));
            }
            if self.peer_closed {
                return Ok(Some(0));
            }
            match self.next_record()? {
                Some(Opened::Data(range)) if !range.is_empty() => self.plain = range,
                Some(Opened::Data(_) | Opened::Control) => control_record(&mut control)?,
                None => {
                    if self.eof {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed the connection"));
                    }
                    if !self.io.is_armed() {
                        self.compact();
                        if self.rbuf.len() == self.rbuf.capacity() {
                            return Err(invalid("TLS record larger than the buffer"));
                        }
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
        std::future::poll_fn(|cx| self.poll_read_plain_ready(cx, out)).await
    }

    /// [`Self::read_plain_ready`] as a poll: the session is borrowed only
    /// while it is polled.
    pub fn poll_read_plain_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
        out: &mut Vec<u8>,
    ) -> std::task::Poll<io::Result<usize>> {
        loop {
            if let Some(n) = self.read_plain_now(out)? {
                return std::task::Poll::Ready(Ok(n));
            }
            // Anything queued (a key update answer) goes with the next write:
            // a write here would not be cancel-safe.
            if std::task::ready!(self.io.poll_read_ready(cx, &mut self.rbuf))? == 0 {
                self.eof = true;
            }
        }
    }

    /// Whether the intake picked HTTP/2 by ALPN.
    pub fn is_h2(&self) -> bool {
        self.alpn.as_deref() == Some(crate::crypto::ALPN_H2)
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
    /// blocking, whatever arrived while it was idle and opens it: session
    /// tickets and key updates keep it usable; EOF, close_notify, an alert,
    /// application data nobody asked for, or a partial record make it
    /// unusable, and so does a TLS 1.2 key near its limit.
    pub fn is_reusable_now(&mut self) -> bool {
        if self.eof || self.peer_closed || !self.plain.is_empty() || self.exhausted || self.poisoned {
            return false;
        }
        loop {
            if !self.io.is_armed() {
                self.compact();
                if self.rbuf.len() == self.rbuf.capacity() {
                    return false;
                }
            }
            // Armed: no system call; the read reports what came meanwhile.
            match self.io.try_read_now(&mut self.rbuf) {
                Ok(None) => break,
                Ok(Some(0)) | Err(_) => {
                    self.eof = true;
                    return false;
                }
                Ok(Some(_)) => continue,
            }
        }
        let mut control = 0;
        loop {
            match self.next_record() {
                Ok(Some(Opened::Control)) if !self.peer_closed && control_record(&mut control).is_ok() => {}
                Ok(Some(Opened::Data(r))) if r.is_empty() && control_record(&mut control).is_ok() => {}
                Ok(None) => return self.rpos == self.rbuf.len(),
                // Application data nobody asked for, close_notify, an alert, a bad record.
                _ => return false,
            }
        }
    }

    /// Goes idle (into the pool): where the backend can, a read stays armed
    /// on the socket, so what the intake sends meanwhile (a ticket, an
    /// alert, FIN) is seen when it comes and reuse needs no probe.
    pub fn arm_idle(&mut self) {
        if self.poisoned || self.eof || !self.plain.is_empty() {
            return;
        }
        self.compact();
        if self.rpos == self.rbuf.len() && self.rbuf.capacity() > self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
            self.io.arm(&mut self.rbuf);
        }
    }

    /// Sends close_notify, best effort, before the session is dropped.
    pub async fn close(mut self) {
        if self.poisoned {
            return;
        }
        if self.seal_into_wbuf(CONTENT_ALERT, &[1, 0]).is_ok() {
            let _ = self.send_wbuf().await;
        }
    }

    /// Negotiated protocol version and suite, for logs and `version`.
    pub fn describe(&self) -> String {
        self.described.clone()
    }

    /// The intake's end-entity certificate (DER), for `diagnose`.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        self.peer_certificate.as_deref()
    }
}

/// Writes all of `buf` and empties it (keeping its capacity).
async fn send_all<S: Stream>(io: &mut S, buf: &mut Vec<u8>) -> io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    let b = std::mem::take(buf);
    let (res, mut b) = io.write_all(b).await;
    b.clear();
    *buf = b;
    res
}

/// The caller's buffer has no room: an error, never a read of 0 (which means end of stream).
fn no_room(out: &Vec<u8>) -> io::Result<()> {
    if out.capacity() == out.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "read_plain needs spare capacity in its buffer"));
    }
    Ok(())
}

/// Counts a record without application data; too many in a row is a flood.
fn control_record(count: &mut u32) -> io::Result<()> {
    *count += 1;
    if *count > MAX_CONTROL_RECORDS {
        return Err(invalid("the peer sent too many TLS records without data in a row"));
    }
    Ok(())
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

fn records_io(e: super::records::RecordError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
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

/// A TLS failure as an I/O error that keeps its rustls cause (see
/// [`is_tls_error`]).
fn tls_io(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Whether an I/O error of a session is a TLS failure (a rustls error, or
/// a record that does not open), not the connection closing or failing.
pub fn is_tls_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>() || inner.is::<super::records::RecordError>())
}
