//! One HTTP/2 client connection to the intake, without I/O (sans-IO): the
//! caller feeds it the plaintext the TLS session opened and writes out
//! what it queued. It owns the protocol state an exchange must not see:
//! settings both ways, flow-control windows, stream ids and states, HPACK
//! contexts, header blocks split over CONTINUATION, PING and SETTINGS
//! answers, GOAWAY.
//!
//! Frames for many streams are queued in one plaintext buffer
//! ([`Conn::output`]) so they go out in one TLS write.
//!
//! # Invariants
//! - Nothing is sent past the peer's windows: [`Conn::send_room`] says how
//!   many DATA bytes a stream may send now, and [`Conn::data`] refuses more.
//! - The peer never gets more than the window this side announced: a DATA
//!   frame beyond it ends the connection (FLOW_CONTROL_ERROR).
//! - A peer that floods control frames (PING, SETTINGS, empty DATA, resets
//!   of streams already closed) is cut with ENHANCE_YOUR_CALM.

use super::out::{Output, Put, Slots};
use crate::io::Strided;
use thiserror::Error;

use super::frame::{self, ErrorCode, Frame, FrameError, Kind, Setting};
use super::headers::{self, HeaderError};

/// What this side announces in its SETTINGS.
#[derive(Debug, Clone, Copy)]
pub struct LocalSettings {
    /// Per-stream receive window (SETTINGS_INITIAL_WINDOW_SIZE).
    pub stream_window: u32,
    /// The connection's receive window (raised by WINDOW_UPDATE on stream 0).
    pub conn_window: u32,
    pub max_frame: u32,
    pub max_header_list: u32,
}

impl Default for LocalSettings {
    fn default() -> Self {
        LocalSettings { stream_window: 1 << 20, conn_window: 4 << 20, max_frame: 16_384, max_header_list: 64 * 1024 }
    }
}

/// Control frames accepted between two frames that carry a request's data.
const CONTROL_BUDGET: u32 = 1_000;
/// The initial window of every stream and of the connection (RFC 9113 §6.9.2).
const DEFAULT_WINDOW: i64 = 65_535;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConnError {
    #[error("the intake broke HTTP/2 framing: {0}")]
    Frame(#[from] FrameError),
    #[error("the intake broke HTTP/2: {0}")]
    Protocol(&'static str),
    #[error("the intake sent more than the flow-control window allowed")]
    FlowControl,
    #[error("the intake's header block does not decode: {0}")]
    Compression(String),
    #[error("the intake sent too many control frames (a PING, SETTINGS or reset flood)")]
    Flood,
}

impl ConnError {
    /// The GOAWAY code this side sends before closing.
    pub fn code(&self) -> ErrorCode {
        match self {
            ConnError::Frame(e) => e.code(),
            ConnError::Protocol(_) => ErrorCode::Protocol,
            ConnError::FlowControl => ErrorCode::FlowControl,
            ConnError::Compression(_) => ErrorCode::Compression,
            ConnError::Flood => ErrorCode::EnhanceYourCalm,
        }
    }
}

/// What the peer's frames meant for the streams.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// An answer head, in [`Conn::answer_head`].
    /// `end_stream`: no body follows.
    Head { stream: u32, status: u16, end_stream: bool },
    /// Answer body bytes at `range` of the input given to [`Conn::receive`].
    Data { stream: u32, range: std::ops::Range<usize>, end_stream: bool },
    /// The intake reset the stream.
    Reset { stream: u32, code: ErrorCode },
    /// The intake is going away: streams above `last_stream` were never
    /// processed (they may be sent again elsewhere).
    GoAway { last_stream: u32, code: ErrorCode },
    /// Windows opened: streams waiting to send may try again.
    WindowOpen,
    /// The intake acknowledged a [`Conn::ping`] with this payload.
    PingAck([u8; 8]),
}

#[derive(Debug)]
struct StreamState {
    id: u32,
    send_window: i64,
    recv_window: i64,
    /// Bytes received and released by the caller, not yet announced back.
    unannounced: u32,
    local_done: bool,
    remote_done: bool,
}

/// A header block being assembled from HEADERS and CONTINUATION frames.
#[derive(Debug)]
struct PartialBlock {
    stream: u32,
    end_stream: bool,
    block: Vec<u8>,
}

pub struct Conn {
    local: LocalSettings,
    peer_max_streams: u32,
    peer_stream_window: u32,
    peer_max_frame: u32,
    conn_send: i64,
    conn_recv: i64,
    conn_unannounced: u32,
    next_stream: u32,
    streams: Vec<StreamState>,
    encoder: super::hpack::Encoder,
    decoder: super::hpack::Decoder,
    out: Output,
    /// Scratch for a request's header block.
    head: Vec<u8>,
    /// The last answer head (valid until the next `receive`).
    answer: headers::AnswerHead,
    /// Scratch for lowercased field names while a request is encoded.
    names: Vec<u8>,
    partial: Option<PartialBlock>,
    goaway: Option<u32>,
    control: u32,
    settings_acked: bool,
}

impl Conn {
    /// A new connection; the preface and this side's SETTINGS are queued,
    /// as plain bytes ([`Conn::output`]).
    pub fn new(local: LocalSettings) -> Conn {
        Conn::laid_out(local, Slots::PLAIN)
    }

    /// A new connection whose output is laid out in the places of the TLS
    /// records that will carry it (`slots`: the session's).
    pub fn laid_out(local: LocalSettings, slots: Slots) -> Conn {
        let mut out = Output::new(slots, 16 * 1024);
        out.put(frame::PREFACE);
        frame::write_settings(
            &mut out,
            &[
                Setting::EnablePush(false),
                Setting::InitialWindowSize(local.stream_window),
                Setting::MaxFrameSize(local.max_frame),
                Setting::MaxHeaderListSize(local.max_header_list),
            ],
        );
        let extra = local.conn_window as i64 - DEFAULT_WINDOW;
        if extra > 0 {
            frame::write_window_update(&mut out, 0, extra as u32);
        }
        Conn {
            local,
            peer_max_streams: u32::MAX,
            peer_stream_window: DEFAULT_WINDOW as u32,
            peer_max_frame: frame::MIN_MAX_FRAME_SIZE,
            conn_send: DEFAULT_WINDOW,
            conn_recv: local.conn_window as i64,
            conn_unannounced: 0,
            next_stream: 1,
            streams: Vec::new(),
            encoder: super::hpack::Encoder::new(),
            decoder: super::hpack::Decoder::new(),
            out,
            head: Vec::new(),
            answer: headers::AnswerHead::default(),
            names: Vec::new(),
            partial: None,
            goaway: None,
            control: 0,
            settings_acked: false,
        }
    }

    /// Plaintext queued for the intake; the caller writes it and clears it.
    pub fn output(&mut self) -> &mut Output {
        &mut self.out
    }

    /// Bytes queued in [`Conn::output`].
    pub fn output_len(&self) -> usize {
        self.out.len()
    }

    /// The last answer head (valid until the next `receive`).
    pub fn answer_head(&self) -> &headers::AnswerHead {
        &self.answer
    }

    /// Whether the intake acknowledged this side's SETTINGS.
    pub fn settings_acked(&self) -> bool {
        self.settings_acked
    }

    /// Whether the intake sent GOAWAY (no new stream goes on this connection).
    pub fn going_away(&self) -> bool {
        self.goaway.is_some()
    }

    /// Streams open now.
    pub fn active(&self) -> usize {
        self.streams.len()
    }

    /// Whether a new stream may be opened (under the intake's
    /// SETTINGS_MAX_CONCURRENT_STREAMS, no GOAWAY, ids left).
    pub fn can_open(&self) -> bool {
        self.goaway.is_none()
            && (self.streams.len() as u64) < self.peer_max_streams as u64
            && self.next_stream < (1 << 31)
    }

    /// Opens a stream for `rendered` (the upstream HTTP/1.1 head from
    /// `parse_request`) and queues its HEADERS. `end_stream`: no body.
    pub fn open(&mut self, rendered: &[u8], end_stream: bool) -> Result<u32, HeaderError> {
        debug_assert!(self.can_open());
        let mut block = std::mem::take(&mut self.head);
        block.clear();
        headers::encode_request(rendered, &mut self.encoder, &mut self.names, &mut block)?;
        let id = self.next_stream;
        self.next_stream += 2;
        frame::write_headers(&mut self.out, id, &block, end_stream, self.peer_max_frame);
        self.head = block;
        self.streams.push(StreamState {
            id,
            send_window: self.peer_stream_window as i64,
            recv_window: self.local.stream_window as i64,
            unannounced: 0,
            local_done: end_stream,
            remote_done: false,
        });
        Ok(id)
    }

    fn stream(&mut self, id: u32) -> Option<&mut StreamState> {
        self.streams.iter_mut().find(|s| s.id == id)
    }

    /// DATA bytes `stream` may send now (both windows and the frame size
    /// taken into account for one frame).
    pub fn send_room(&self, stream: u32) -> usize {
        let Some(s) = self.streams.iter().find(|s| s.id == stream) else { return 0 };
        s.send_window.min(self.conn_send).clamp(0, self.peer_max_frame as i64) as usize
    }

    /// DATA bytes the connection's window has room for, over all streams.
    pub fn conn_send_room(&self) -> usize {
        self.conn_send.max(0) as usize
    }

    /// DATA bytes a stream opened now could send before it has to wait for
    /// a WINDOW_UPDATE: the peer's initial stream window, within what the
    /// connection's window has left.
    pub fn new_stream_room(&self) -> u64 {
        (self.peer_stream_window as i64).min(self.conn_send).max(0) as u64
    }

    /// Whether `stream` is open (not ended both ways, reset or cancelled).
    pub fn is_open(&self, stream: u32) -> bool {
        self.streams.iter().any(|s| s.id == stream)
    }

    /// Queues one DATA frame (at most [`Conn::send_room`] bytes).
    pub fn data(&mut self, stream: u32, payload: &[u8], end_stream: bool) -> Result<(), ConnError> {
        if payload.len() > self.send_room(stream) && !payload.is_empty() {
            return Err(ConnError::Protocol("DATA beyond the intake's window (a relay bug)"));
        }
        let s = self.stream(stream).ok_or(ConnError::Protocol("DATA on a stream that is not open"))?;
        s.send_window -= payload.len() as i64;
        s.local_done |= end_stream;
        self.conn_send -= payload.len() as i64;
        frame::data_head(&mut self.out, stream, payload.len(), end_stream);
        self.out.put(payload);
        self.reap(stream);
        Ok(())
    }

    /// Queues DATA on `stream` read in place ([`Output::read_data`]):
    /// at most `max` bytes and the windows' room, in frames of one record
    /// each; END_STREAM when they reach `left`, what the body has left.
    /// The outer error is the connection's, the inner one `read`'s.
    pub fn data_read<E>(
        &mut self,
        stream: u32,
        max: usize,
        left: usize,
        read: impl FnOnce(&mut Vec<u8>, &Strided) -> Result<Option<usize>, E>,
    ) -> Result<Result<Option<usize>, E>, ConnError> {
        let conn_room = self.conn_send.max(0) as usize;
        let s = self.stream(stream).ok_or(ConnError::Protocol("DATA on a stream that is not open"))?;
        let max = max.min(left).min(s.send_window.max(0) as usize).min(conn_room);
        if max == 0 {
            return Err(ConnError::Protocol("DATA with no room in the intake's window (a relay bug)"));
        }
        let got = self.out.read_data(max, left, |len, end| frame::data_head_bytes(stream, len, end), read);
        if let Ok(Some(n)) = got {
            if n > 0 {
                let s = self.stream(stream).expect("looked up above");
                s.send_window -= n as i64;
                s.local_done |= n == left;
                self.conn_send -= n as i64;
                self.reap(stream);
            }
        }
        Ok(got)
    }

    /// Queues a PING (liveness); its ACK comes as [`Event::PingAck`].
    pub fn ping(&mut self, data: [u8; 8]) {
        frame::write_ping(&mut self.out, false, data);
    }

    /// Abandons a stream (the Agent went away): RST_STREAM CANCEL.
    pub fn cancel(&mut self, stream: u32) {
        if self.streams.iter().any(|s| s.id == stream) {
            frame::write_rst_stream(&mut self.out, stream, ErrorCode::Cancel);
            self.streams.retain(|s| s.id != stream);
        }
    }

    /// The caller has passed on `n` bytes of a stream's DATA: the windows
    /// reopen, announced in batches (when half a window is pending).
    pub fn release(&mut self, stream: u32, n: usize) {
        let stream_window = self.local.stream_window;
        if let Some(s) = self.streams.iter_mut().find(|s| s.id == stream) {
            s.unannounced += n as u32;
            if !s.remote_done && s.unannounced >= stream_window / 2 {
                frame::write_window_update(&mut self.out, stream, s.unannounced);
                s.recv_window += s.unannounced as i64;
                s.unannounced = 0;
            }
        }
        self.conn_unannounced += n as u32;
        if self.conn_unannounced >= self.local.conn_window / 2 {
            frame::write_window_update(&mut self.out, 0, self.conn_unannounced);
            self.conn_recv += self.conn_unannounced as i64;
            self.conn_unannounced = 0;
        }
    }

    /// Drops a stream that both sides have ended.
    fn reap(&mut self, stream: u32) {
        self.streams.retain(|s| s.id != stream || !(s.local_done && s.remote_done));
    }

    fn spend_control(&mut self) -> Result<(), ConnError> {
        self.control += 1;
        if self.control > CONTROL_BUDGET {
            return Err(ConnError::Flood);
        }
        Ok(())
    }

    /// Reads the frames at the start of `input`, handling what is the
    /// connection's and handing the rest to `on`. Returns the bytes
    /// consumed (whole frames only). An error ends the connection: GOAWAY
    /// with [`ConnError::code`] is queued.
    pub fn receive(&mut self, input: &[u8], mut on: impl FnMut(&Conn, Event)) -> Result<usize, ConnError> {
        let mut at = 0;
        loop {
            let f = match Frame::parse(&input[at..], self.local.max_frame) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(at),
                Err(e) => return Err(self.fail(e.into())),
            };
            let payload = at + f.payload.start..at + f.payload.end;
            let res = self.frame(&f, &input[payload.clone()], payload.start, &mut on);
            if let Err(e) = res {
                return Err(self.fail(e));
            }
            at += f.len;
        }
    }

    fn fail(&mut self, e: ConnError) -> ConnError {
        let last = self.next_stream.saturating_sub(2);
        frame::write_goaway(&mut self.out, last, e.code());
        e
    }

    /// Handles one frame: what is the connection's here, the rest handed
    /// to `on`.
    fn frame(
        &mut self,
        f: &Frame,
        payload: &[u8],
        offset: usize,
        on: &mut impl FnMut(&Conn, Event),
    ) -> Result<(), ConnError> {
        if let Some(p) = &self.partial {
            if f.kind != Kind::Continuation || f.stream != p.stream {
                return Err(ConnError::Protocol("a header block interrupted by another frame"));
            }
        }
        match f.kind {
            Kind::Settings => self.on_settings(f, payload, on)?,
            Kind::Ping => {
                self.spend_control()?;
                let mut data = [0u8; 8];
                data.copy_from_slice(payload);
                if f.has(frame::FLAG_ACK) {
                    on(self, Event::PingAck(data));
                } else {
                    frame::write_ping(&mut self.out, true, data);
                }
            }
            Kind::WindowUpdate => self.on_window_update(f, payload, on)?,
            Kind::GoAway => {
                let (last, code, _debug) = frame::goaway(payload);
                self.goaway = Some(last);
                on(self, Event::GoAway { last_stream: last, code });
            }
            Kind::RstStream => {
                let code = frame::rst_stream(payload);
                if self.streams.iter().any(|s| s.id == f.stream) {
                    self.streams.retain(|s| s.id != f.stream);
                    on(self, Event::Reset { stream: f.stream, code });
                } else {
                    self.spend_control()?;
                }
            }
            Kind::PushPromise => return Err(ConnError::Protocol("PUSH_PROMISE although push is disabled")),
            Kind::Headers => self.on_headers(f, payload, on)?,
            Kind::Continuation => self.on_continuation(f, payload, on)?,
            Kind::Data => self.on_data(f, payload, offset, on)?,
            Kind::Priority | Kind::Unknown(_) => self.spend_control()?,
        }
        Ok(())
    }

    fn on_settings(&mut self, f: &Frame, payload: &[u8], on: &mut impl FnMut(&Conn, Event)) -> Result<(), ConnError> {
        self.spend_control()?;
        if f.has(frame::FLAG_ACK) {
            self.settings_acked = true;
            return Ok(());
        }
        for s in frame::settings(payload) {
            match s? {
                Setting::MaxConcurrentStreams(n) => self.peer_max_streams = n,
                Setting::InitialWindowSize(w) => {
                    let delta = w as i64 - self.peer_stream_window as i64;
                    self.peer_stream_window = w;
                    for s in &mut self.streams {
                        s.send_window += delta;
                        if s.send_window > frame::MAX_WINDOW as i64 {
                            return Err(ConnError::FlowControl);
                        }
                    }
                }
                Setting::MaxFrameSize(n) => self.peer_max_frame = n,
                Setting::HeaderTableSize(n) => self.encoder.set_max_table_size(n as usize),
                Setting::EnablePush(_) | Setting::MaxHeaderListSize(_) | Setting::Unknown(..) => {}
            }
        }
        frame::write_settings_ack(&mut self.out);
        on(self, Event::WindowOpen);
        Ok(())
    }

    fn on_window_update(
        &mut self,
        f: &Frame,
        payload: &[u8],
        on: &mut impl FnMut(&Conn, Event),
    ) -> Result<(), ConnError> {
        // While this side uploads, the intake answers with little but
        // WINDOW_UPDATEs: those that open a window in use are not a flood;
        // updates for streams already gone count.
        if f.stream != 0 && !self.streams.iter().any(|s| s.id == f.stream) {
            self.spend_control()?;
        }
        let inc = frame::window_update(payload) as i64;
        if f.stream == 0 {
            self.conn_send += inc;
            if self.conn_send > frame::MAX_WINDOW as i64 {
                return Err(ConnError::FlowControl);
            }
        } else if let Some(s) = self.stream(f.stream) {
            s.send_window += inc;
            if s.send_window > frame::MAX_WINDOW as i64 {
                return Err(ConnError::FlowControl);
            }
        }
        on(self, Event::WindowOpen);
        Ok(())
    }

    fn on_headers(&mut self, f: &Frame, payload: &[u8], on: &mut impl FnMut(&Conn, Event)) -> Result<(), ConnError> {
        if f.stream.is_multiple_of(2) || f.stream >= self.next_stream {
            return Err(ConnError::Protocol("HEADERS on a stream this relay did not open"));
        }
        self.control = 0;
        let end_stream = f.has(frame::FLAG_END_STREAM);
        if f.has(frame::FLAG_END_HEADERS) {
            self.answer(f.stream, payload, end_stream, on)?;
        } else {
            self.partial = Some(PartialBlock { stream: f.stream, end_stream, block: payload.to_vec() });
        }
        Ok(())
    }

    fn on_continuation(
        &mut self,
        f: &Frame,
        payload: &[u8],
        on: &mut impl FnMut(&Conn, Event),
    ) -> Result<(), ConnError> {
        let Some(mut p) = self.partial.take() else {
            return Err(ConnError::Protocol("CONTINUATION without a header block"));
        };
        p.block.extend_from_slice(payload);
        if p.block.len() > self.local.max_header_list as usize {
            return Err(ConnError::Protocol("a header block larger than SETTINGS_MAX_HEADER_LIST_SIZE"));
        }
        if f.has(frame::FLAG_END_HEADERS) {
            self.answer(p.stream, &p.block, p.end_stream, on)?;
        } else {
            self.partial = Some(p);
        }
        Ok(())
    }

    fn on_data(
        &mut self,
        f: &Frame,
        payload: &[u8],
        offset: usize,
        on: &mut impl FnMut(&Conn, Event),
    ) -> Result<(), ConnError> {
        let flow = (f.len - frame::HEAD_LEN) as i64;
        self.conn_recv -= flow;
        if self.conn_recv < 0 {
            return Err(ConnError::FlowControl);
        }
        if payload.is_empty() && !f.has(frame::FLAG_END_STREAM) {
            self.spend_control()?;
        } else {
            self.control = 0;
        }
        let end_stream = f.has(frame::FLAG_END_STREAM);
        let Some(s) = self.stream(f.stream) else {
            // A stream this side reset: the bytes still count for the
            // connection, and come back at once.
            self.conn_unannounced += flow as u32;
            return Ok(());
        };
        s.recv_window -= flow;
        if s.recv_window < 0 {
            return Err(ConnError::FlowControl);
        }
        s.remote_done |= end_stream;
        // Padding is never handed on: released here.
        let padding = flow as usize - payload.len();
        on(self, Event::Data { stream: f.stream, range: offset..offset + payload.len(), end_stream });
        if padding > 0 {
            self.release(f.stream, padding);
        }
        if end_stream {
            self.reap(f.stream);
        }
        Ok(())
    }

    fn answer(
        &mut self,
        stream: u32,
        block: &[u8],
        end_stream: bool,
        on: &mut impl FnMut(&Conn, Event),
    ) -> Result<(), ConnError> {
        // Decoded whatever the stream's state: the HPACK context must follow.
        let res = headers::decode_answer(
            block,
            &mut self.decoder,
            end_stream,
            self.local.max_header_list as usize,
            &mut self.answer,
        );
        let status = match res {
            Ok(s) => s,
            Err(HeaderError::Hpack(e)) => return Err(ConnError::Compression(e)),
            Err(_) => {
                // A malformed answer is this stream's error (RFC 9113 §8.1.1).
                if self.streams.iter().any(|s| s.id == stream) {
                    frame::write_rst_stream(&mut self.out, stream, ErrorCode::Protocol);
                    self.streams.retain(|s| s.id != stream);
                    on(self, Event::Reset { stream, code: ErrorCode::Protocol });
                }
                return Ok(());
            }
        };
        let Some(s) = self.stream(stream) else { return Ok(()) };
        s.remote_done |= end_stream;
        on(self, Event::Head { stream, status, end_stream });
        if end_stream {
            self.reap(stream);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Against the `h2` crate's server (hyper's; nobody here wrote it), over
    //! an in-memory pipe.
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn rendered(agent: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        crate::http1::parse_request(agent, 16 * 1024, 1 << 30, Some("intake.test"), &mut out).unwrap().unwrap();
        out
    }

    const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

    /// FNV-1a over `bytes`, from `sum` on.
    fn fnv(mut sum: u64, bytes: &[u8]) -> u64 {
        for &b in bytes {
            sum = (sum ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        sum
    }

    /// An h2 server that answers each request 202 with a body naming the
    /// path, how many body bytes it read and their FNV-1a sum.
    async fn serve(io: tokio::io::DuplexStream, max_streams: u32) {
        let mut conn = h2::server::Builder::new().max_concurrent_streams(max_streams).handshake(io).await.unwrap();
        while let Some(req) = conn.accept().await {
            let (req, mut respond) = req.unwrap();
            tokio::spawn(async move {
                let path = req.uri().path().to_string();
                let mut body = req.into_body();
                let (mut n, mut sum) = (0, FNV_START);
                while let Some(chunk) = body.data().await {
                    let chunk = chunk.unwrap();
                    n += chunk.len();
                    sum = fnv(sum, &chunk);
                    let _ = body.flow_control().release_capacity(chunk.len());
                }
                let answer = format!("{path} {n} {sum:x}");
                let resp =
                    http::Response::builder().status(202).header("content-length", answer.len()).body(()).unwrap();
                let mut send = respond.send_response(resp, false).unwrap();
                send.send_data(bytes::Bytes::from(answer), true).unwrap();
            });
        }
    }

    /// A connection to [`serve`] with its settings exchanged (the server's
    /// SETTINGS, and its ack of ours): the connection, its pipe, its input.
    async fn connected(max_streams: u32) -> (Conn, tokio::io::DuplexStream, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        tokio::spawn(serve(server, max_streams));
        let mut conn = Conn::new(LocalSettings::default());
        let mut inbuf = Vec::new();
        drive(&mut conn, &mut client, &mut inbuf, |c, _| c.settings_acked()).await;
        (conn, client, inbuf)
    }

    /// Drives `conn` over `io` until `done` says so; returns the events.
    async fn drive(
        conn: &mut Conn,
        io: &mut tokio::io::DuplexStream,
        inbuf: &mut Vec<u8>,
        mut done: impl FnMut(&Conn, &[(Event, Vec<u8>)]) -> bool,
    ) -> Vec<(Event, Vec<u8>)> {
        let mut events = Vec::new();
        loop {
            if !conn.output().is_empty() {
                io.write_all(conn.output().plain()).await.unwrap();
                conn.output().clear();
            }
            if done(conn, &events) {
                return events;
            }
            let mut chunk = [0u8; 65536];
            let n =
                tokio::time::timeout(std::time::Duration::from_secs(5), io.read(&mut chunk)).await.unwrap().unwrap();
            assert!(n > 0, "the server closed");
            inbuf.extend_from_slice(&chunk[..n]);
            let mut got = Vec::new();
            let used = conn
                .receive(inbuf, |c, e| {
                    let extra = match &e {
                        Event::Head { .. } => {
                            let h = c.answer_head();
                            let mut out = Vec::new();
                            let reason = crate::http1::reason(h.status).as_bytes();
                            let client = crate::http1::ClientConn::default();
                            crate::http1::render_answer(
                                h.status,
                                reason,
                                false,
                                0,
                                h.fields(),
                                crate::http1::Method::Other,
                                client,
                                &mut out,
                            )
                            .unwrap();
                            out
                        }
                        Event::Data { range, .. } => inbuf[range.clone()].to_vec(),
                        _ => Vec::new(),
                    };
                    got.push((e, extra));
                })
                .unwrap();
            for (e, _) in &got {
                if let Event::Data { stream, range, .. } = e {
                    conn.release(*stream, range.len());
                }
            }
            events.extend(got);
            inbuf.drain(..used);
        }
    }

    #[test]
    fn many_requests_share_one_connection_with_the_h2_crate() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (mut conn, mut client, mut inbuf) = connected(100).await;
            // Ten requests with bodies, all written in one go.
            let body = vec![b'x'; 40_000];
            let mut ids = Vec::new();
            for i in 0..10 {
                let head = rendered(
                    format!("POST /api/v2/series/{i} HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", body.len())
                        .as_bytes(),
                );
                ids.push(conn.open(&head, false).unwrap());
            }
            let mut left: Vec<usize> = vec![body.len(); ids.len()];
            let mut heads = 0;
            let mut answers: Vec<(u32, Vec<u8>)> = Vec::new();
            while answers.len() < ids.len() {
                // Send what the windows allow, every stream in the same write.
                for (i, &id) in ids.iter().enumerate() {
                    while left[i] > 0 {
                        let room = conn.send_room(id).min(left[i]);
                        if room == 0 {
                            break;
                        }
                        left[i] -= room;
                        conn.data(id, &body[..room], left[i] == 0).unwrap();
                    }
                }
                let evs = drive(&mut conn, &mut client, &mut inbuf, |_, e| !e.is_empty()).await;
                for (e, extra) in evs {
                    match e {
                        Event::Head { status, end_stream, .. } => {
                            assert_eq!((status, end_stream), (202, false));
                            assert!(
                                extra.starts_with(b"HTTP/1.1 202 Accepted\r\n"),
                                "{}",
                                String::from_utf8_lossy(&extra)
                            );
                            heads += 1;
                        }
                        Event::Data { stream, end_stream, .. } => {
                            assert!(end_stream);
                            answers.push((stream, extra));
                        }
                        Event::WindowOpen => {}
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
            assert_eq!(heads, 10);
            answers.sort();
            for (i, (id, answer)) in answers.iter().enumerate() {
                assert_eq!(*id, ids[i]);
                assert_eq!(
                    String::from_utf8_lossy(answer),
                    format!("/api/v2/series/{i} 40000 {:x}", fnv(FNV_START, &body))
                );
            }
            assert_eq!(conn.active(), 0, "every stream ended both ways");
            assert!(conn.settings_acked());
        });
    }

    #[test]
    fn bodies_read_in_place_reach_the_h2_crate_whole() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (mut conn, mut client, mut inbuf) = connected(100).await;
            // Bodies past the intake's window (65,535), read in place in
            // pieces of uneven length, as a socket gives them.
            let sizes = [1usize, 16_375, 16_376, 100_000];
            let bodies: Vec<Vec<u8>> = sizes.iter().map(|&n| (0..n).map(|i| (i * 7 + n) as u8).collect()).collect();
            let mut ids = Vec::new();
            for (i, body) in bodies.iter().enumerate() {
                let head = format!("POST /p/{i} HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", body.len());
                ids.push(conn.open(&rendered(head.as_bytes()), false).unwrap());
            }
            let mut sent = vec![0usize; ids.len()];
            let mut answers: Vec<(u32, Vec<u8>)> = Vec::new();
            let mut turn = 0usize;
            while answers.len() < ids.len() {
                for (i, &id) in ids.iter().enumerate() {
                    while sent[i] < bodies[i].len() && conn.send_room(id) > 0 {
                        turn += 1;
                        let left = bodies[i].len() - sent[i];
                        let src = &bodies[i][sent[i]..];
                        let cap = [usize::MAX, 5_000, 30_000][turn % 3];
                        let got = conn
                            .data_read(id, usize::MAX, left, |buf, reads| {
                                Ok::<_, ()>(Some(crate::io::fill_places(buf, reads, src, cap)))
                            })
                            .unwrap()
                            .unwrap()
                            .unwrap();
                        assert!(got > 0 && got <= left);
                        sent[i] += got;
                    }
                }
                let evs = drive(&mut conn, &mut client, &mut inbuf, |_, e| !e.is_empty()).await;
                for (e, extra) in evs {
                    if let Event::Data { stream, .. } = e {
                        answers.push((stream, extra));
                    }
                }
            }
            answers.sort();
            for (i, (_, answer)) in answers.iter().enumerate() {
                let want = format!("/p/{i} {} {:x}", sizes[i], fnv(FNV_START, &bodies[i]));
                assert_eq!(String::from_utf8_lossy(answer), want);
            }
            assert_eq!(conn.active(), 0, "every stream ended both ways");
        });
    }

    #[test]
    fn the_intakes_stream_limit_is_honoured() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (mut conn, mut client, mut inbuf) = connected(2).await;
            let head = rendered(b"GET /v HTTP/1.1\r\nHost: a\r\n\r\n");
            conn.open(&head, true).unwrap();
            conn.open(&head, true).unwrap();
            assert!(!conn.can_open(), "SETTINGS_MAX_CONCURRENT_STREAMS = 2");
            drive(&mut conn, &mut client, &mut inbuf, |_, e| {
                e.iter().filter(|(e, _)| matches!(e, Event::Data { end_stream: true, .. })).count() == 2
            })
            .await;
            assert!(conn.can_open());
        });
    }

    #[test]
    fn a_ping_goes_out_and_its_ack_comes_back_as_an_event() {
        let mut conn = Conn::new(LocalSettings::default());
        conn.output().clear();
        conn.ping(*b"liveness");
        let out = conn.output().plain().to_vec();
        let f = Frame::parse(&out, 16_384).unwrap().unwrap();
        assert_eq!((f.kind, f.has(frame::FLAG_ACK), &out[f.payload.clone()]), (Kind::Ping, false, &b"liveness"[..]));
        let mut input = Vec::new();
        frame::write_ping(&mut input, true, *b"liveness");
        frame::write_ping(&mut input, false, *b"theirs!!");
        let mut events = Vec::new();
        conn.receive(&input, |_, e| events.push(e)).unwrap();
        assert_eq!(events, vec![Event::PingAck(*b"liveness")]);
        // The intake's own PING is answered, not reported.
        let out = conn.output().plain().to_vec();
        let f = Frame::parse(&out[17..], 16_384).unwrap().unwrap();
        assert_eq!((f.kind, f.has(frame::FLAG_ACK)), (Kind::Ping, true));
    }

    #[test]
    fn a_ping_flood_ends_the_connection() {
        let mut conn = Conn::new(LocalSettings::default());
        conn.output().clear();
        let mut input = Vec::new();
        for _ in 0..=CONTROL_BUDGET {
            frame::write_ping(&mut input, false, [0; 8]);
        }
        let e = conn.receive(&input, |_, _| {}).unwrap_err();
        assert_eq!(e, ConnError::Flood);
        // The answer to each ping, then a GOAWAY with ENHANCE_YOUR_CALM.
        let out = conn.output().plain().to_vec();
        let tail = &out[out.len() - 17..];
        let f = Frame::parse(tail, 16_384).unwrap().unwrap();
        assert_eq!(f.kind, Kind::GoAway);
        assert_eq!(frame::goaway(&tail[f.payload.clone()]).1, ErrorCode::EnhanceYourCalm);
    }

    #[test]
    fn window_updates_during_an_upload_are_not_a_flood() {
        let mut conn = Conn::new(LocalSettings::default());
        let id = conn.open(&rendered(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\n"), false).unwrap();
        let mut input = Vec::new();
        for _ in 0..5 * CONTROL_BUDGET {
            frame::write_window_update(&mut input, id, 1);
            frame::write_window_update(&mut input, 0, 1);
        }
        conn.receive(&input, |_, _| {}).unwrap();
        assert_eq!(conn.send_room(id), 16_384.min(65_535 + 5 * CONTROL_BUDGET as usize));
        // Updates for a stream that is not open still count.
        let mut input = Vec::new();
        for _ in 0..=CONTROL_BUDGET {
            frame::write_window_update(&mut input, 99, 1);
        }
        assert_eq!(conn.receive(&input, |_, _| {}).unwrap_err(), ConnError::Flood);
    }

    #[test]
    fn data_beyond_the_announced_window_is_a_flow_control_error() {
        let local = LocalSettings { stream_window: 100, conn_window: 65_535, ..LocalSettings::default() };
        let mut conn = Conn::new(local);
        let id = conn.open(&rendered(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), true).unwrap();
        let mut input = Vec::new();
        let mut enc = loona_hpack::Encoder::new();
        frame::write_headers(&mut input, id, &enc.encode([(&b":status"[..], &b"200"[..])]), false, 16_384);
        frame::data_head(&mut input, id, 101, false);
        input.extend_from_slice(&[0; 101]);
        let mut heads = 0;
        let e = conn
            .receive(&input, |_, e| {
                if matches!(e, Event::Head { .. }) {
                    heads += 1
                }
            })
            .unwrap_err();
        assert_eq!((heads, e), (1, ConnError::FlowControl));
    }

    #[test]
    fn a_goaway_stops_new_streams_and_names_the_last_one_processed() {
        let mut conn = Conn::new(LocalSettings::default());
        let head = rendered(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        let a = conn.open(&head, true).unwrap();
        let _b = conn.open(&head, true).unwrap();
        let mut input = Vec::new();
        frame::write_goaway(&mut input, a, ErrorCode::NoError);
        let mut got = Vec::new();
        conn.receive(&input, |_, e| got.push(e)).unwrap();
        assert_eq!(got, [Event::GoAway { last_stream: a, code: ErrorCode::NoError }]);
        assert!(!conn.can_open());
    }
}
