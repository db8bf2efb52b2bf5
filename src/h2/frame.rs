//! HTTP/2 frames (RFC 9113 §4 and §6): the 9-byte header, the payload
//! shapes the relay sends and reads, and the checks a peer's frames must
//! pass before anything acts on them. No I/O and no state beyond one frame:
//! the connection (streams, windows, settings) is the caller's.
//!
//! Writers append to a plaintext buffer (the one that is sealed into TLS
//! records), so the frames of many streams go out in one write. A DATA
//! frame's header can be written alone ([`data_head`]) in front of a payload
//! that is read straight into place after it.
//!
//! Readers never copy: [`Frame::parse`] gives the frame's kind, flags,
//! stream and the payload's place in the input, padding and priority fields
//! already stripped.

use super::out::Put;
use thiserror::Error;

/// Bytes of a frame header.
pub const HEAD_LEN: usize = 9;
/// The smallest SETTINGS_MAX_FRAME_SIZE a peer may announce, and the
/// initial value (RFC 9113 §6.5.2).
pub const MIN_MAX_FRAME_SIZE: u32 = 16_384;
/// The largest SETTINGS_MAX_FRAME_SIZE allowed.
pub const MAX_MAX_FRAME_SIZE: u32 = (1 << 24) - 1;
/// The largest flow-control window (RFC 9113 §6.9.1).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;
/// The connection preface a client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const FLAG_END_STREAM: u8 = 0x1;
pub const FLAG_ACK: u8 = 0x1;
pub const FLAG_END_HEADERS: u8 = 0x4;
pub const FLAG_PADDED: u8 = 0x8;
pub const FLAG_PRIORITY: u8 = 0x20;

/// Frame types (RFC 9113 §6). Unknown types are [`Kind::Unknown`] and must
/// be ignored (§4.1), except inside a header block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Data,
    Headers,
    Priority,
    RstStream,
    Settings,
    PushPromise,
    Ping,
    GoAway,
    WindowUpdate,
    Continuation,
    Unknown(u8),
}

impl Kind {
    fn from_byte(b: u8) -> Kind {
        match b {
            0 => Kind::Data,
            1 => Kind::Headers,
            2 => Kind::Priority,
            3 => Kind::RstStream,
            4 => Kind::Settings,
            5 => Kind::PushPromise,
            6 => Kind::Ping,
            7 => Kind::GoAway,
            8 => Kind::WindowUpdate,
            9 => Kind::Continuation,
            other => Kind::Unknown(other),
        }
    }

    fn byte(self) -> u8 {
        match self {
            Kind::Data => 0,
            Kind::Headers => 1,
            Kind::Priority => 2,
            Kind::RstStream => 3,
            Kind::Settings => 4,
            Kind::PushPromise => 5,
            Kind::Ping => 6,
            Kind::GoAway => 7,
            Kind::WindowUpdate => 8,
            Kind::Continuation => 9,
            Kind::Unknown(b) => b,
        }
    }
}

/// Error codes (RFC 9113 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NoError,
    Protocol,
    Internal,
    FlowControl,
    SettingsTimeout,
    StreamClosed,
    FrameSize,
    RefusedStream,
    Cancel,
    Compression,
    Connect,
    EnhanceYourCalm,
    InadequateSecurity,
    Http11Required,
    /// A code this relay does not know (treated as an internal error).
    Other(u32),
}

impl ErrorCode {
    pub fn from_u32(v: u32) -> ErrorCode {
        match v {
            0x0 => ErrorCode::NoError,
            0x1 => ErrorCode::Protocol,
            0x2 => ErrorCode::Internal,
            0x3 => ErrorCode::FlowControl,
            0x4 => ErrorCode::SettingsTimeout,
            0x5 => ErrorCode::StreamClosed,
            0x6 => ErrorCode::FrameSize,
            0x7 => ErrorCode::RefusedStream,
            0x8 => ErrorCode::Cancel,
            0x9 => ErrorCode::Compression,
            0xa => ErrorCode::Connect,
            0xb => ErrorCode::EnhanceYourCalm,
            0xc => ErrorCode::InadequateSecurity,
            0xd => ErrorCode::Http11Required,
            other => ErrorCode::Other(other),
        }
    }

    pub fn as_u32(self) -> u32 {
        match self {
            ErrorCode::NoError => 0x0,
            ErrorCode::Protocol => 0x1,
            ErrorCode::Internal => 0x2,
            ErrorCode::FlowControl => 0x3,
            ErrorCode::SettingsTimeout => 0x4,
            ErrorCode::StreamClosed => 0x5,
            ErrorCode::FrameSize => 0x6,
            ErrorCode::RefusedStream => 0x7,
            ErrorCode::Cancel => 0x8,
            ErrorCode::Compression => 0x9,
            ErrorCode::Connect => 0xa,
            ErrorCode::EnhanceYourCalm => 0xb,
            ErrorCode::InadequateSecurity => 0xc,
            ErrorCode::Http11Required => 0xd,
            ErrorCode::Other(v) => v,
        }
    }
}

/// A frame that breaks RFC 9113: the connection must end with GOAWAY
/// carrying [`FrameError::code`].
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("a {kind:?} frame of {len} bytes is larger than the {max}-byte limit this relay announced")]
    TooLarge { kind: Kind, len: usize, max: u32 },
    #[error("a {kind:?} frame has a payload of {len} bytes, which its type does not allow")]
    BadLength { kind: Kind, len: usize },
    #[error("a {0:?} frame on stream 0, which its type does not allow")]
    NeedsStream(Kind),
    #[error("a {0:?} frame on a stream, which its type does not allow")]
    NeedsConnection(Kind),
    #[error("a {0:?} frame's padding is longer than its payload")]
    BadPadding(Kind),
    #[error("a WINDOW_UPDATE with an increment of 0")]
    ZeroIncrement,
    #[error("a SETTINGS value out of range: {0}")]
    BadSetting(&'static str),
}

impl FrameError {
    /// The GOAWAY code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::TooLarge { .. } | FrameError::BadLength { .. } => ErrorCode::FrameSize,
            FrameError::BadSetting("SETTINGS_INITIAL_WINDOW_SIZE") => ErrorCode::FlowControl,
            _ => ErrorCode::Protocol,
        }
    }
}

/// One frame read from the peer, pointing into the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub flags: u8,
    pub stream: u32,
    /// The payload without padding or priority fields, as a range of the
    /// input [`Frame::parse`] was given.
    pub payload: std::ops::Range<usize>,
    /// Bytes the whole frame took in the input (header, padding included):
    /// what the caller consumes. Flow control counts `len - HEAD_LEN` for DATA.
    pub len: usize,
}

impl Frame {
    /// Parses the frame at the start of `input`. `Ok(None)`: the whole frame
    /// is not there yet. `max_frame` is the SETTINGS_MAX_FRAME_SIZE this
    /// relay announced: a larger frame is refused before it is buffered.
    pub fn parse(input: &[u8], max_frame: u32) -> Result<Option<Frame>, FrameError> {
        if input.len() < HEAD_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([0, input[0], input[1], input[2]]) as usize;
        let kind = Kind::from_byte(input[3]);
        let flags = input[4];
        let stream = u32::from_be_bytes([input[5], input[6], input[7], input[8]]) & MAX_WINDOW;
        if len > max_frame as usize {
            return Err(FrameError::TooLarge { kind, len, max: max_frame });
        }
        if input.len() < HEAD_LEN + len {
            return Ok(None);
        }
        let mut start = HEAD_LEN;
        let mut end = HEAD_LEN + len;
        match kind {
            Kind::Data | Kind::Headers | Kind::PushPromise | Kind::Continuation | Kind::RstStream => {
                if stream == 0 {
                    return Err(FrameError::NeedsStream(kind));
                }
            }
            Kind::Settings | Kind::Ping | Kind::GoAway => {
                if stream != 0 {
                    return Err(FrameError::NeedsConnection(kind));
                }
            }
            Kind::Priority => {
                if stream == 0 {
                    return Err(FrameError::NeedsStream(kind));
                }
            }
            Kind::WindowUpdate | Kind::Unknown(_) => {}
        }
        let fixed = match kind {
            Kind::Priority => Some(5),
            Kind::RstStream => Some(4),
            Kind::Ping => Some(8),
            Kind::WindowUpdate => Some(4),
            _ => None,
        };
        if let Some(n) = fixed {
            if len != n {
                return Err(FrameError::BadLength { kind, len });
            }
        }
        match kind {
            Kind::Settings if !len.is_multiple_of(6) || (flags & FLAG_ACK != 0 && len != 0) => {
                return Err(FrameError::BadLength { kind, len });
            }
            Kind::GoAway if len < 8 => return Err(FrameError::BadLength { kind, len }),
            _ => {}
        }
        if matches!(kind, Kind::Data | Kind::Headers | Kind::PushPromise) && flags & FLAG_PADDED != 0 {
            let Some(&pad) = input.get(start).filter(|_| len > 0) else {
                return Err(FrameError::BadPadding(kind));
            };
            start += 1;
            if pad as usize > end - start {
                return Err(FrameError::BadPadding(kind));
            }
            end -= pad as usize;
        }
        if kind == Kind::Headers && flags & FLAG_PRIORITY != 0 {
            if end - start < 5 {
                return Err(FrameError::BadLength { kind, len });
            }
            start += 5;
        }
        if kind == Kind::WindowUpdate && u32_at(input, start) & MAX_WINDOW == 0 {
            return Err(FrameError::ZeroIncrement);
        }
        Ok(Some(Frame { kind, flags, stream, payload: start..end, len: HEAD_LEN + len }))
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A SETTINGS parameter (RFC 9113 §6.5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    HeaderTableSize(u32),
    EnablePush(bool),
    MaxConcurrentStreams(u32),
    InitialWindowSize(u32),
    MaxFrameSize(u32),
    MaxHeaderListSize(u32),
    /// An identifier this relay does not know: ignored (§6.5.2).
    Unknown(u16, u32),
}

impl Setting {
    fn id_value(self) -> (u16, u32) {
        match self {
            Setting::HeaderTableSize(v) => (1, v),
            Setting::EnablePush(b) => (2, b as u32),
            Setting::MaxConcurrentStreams(v) => (3, v),
            Setting::InitialWindowSize(v) => (4, v),
            Setting::MaxFrameSize(v) => (5, v),
            Setting::MaxHeaderListSize(v) => (6, v),
            Setting::Unknown(id, v) => (id, v),
        }
    }
}

/// The parameters of a SETTINGS payload, each checked for range.
pub fn settings(payload: &[u8]) -> impl Iterator<Item = Result<Setting, FrameError>> + '_ {
    payload.chunks_exact(6).map(|c| {
        let id = u16::from_be_bytes([c[0], c[1]]);
        let v = u32_at(c, 2);
        Ok(match id {
            1 => Setting::HeaderTableSize(v),
            2 if v <= 1 => Setting::EnablePush(v == 1),
            2 => return Err(FrameError::BadSetting("SETTINGS_ENABLE_PUSH")),
            3 => Setting::MaxConcurrentStreams(v),
            4 if v <= MAX_WINDOW => Setting::InitialWindowSize(v),
            4 => return Err(FrameError::BadSetting("SETTINGS_INITIAL_WINDOW_SIZE")),
            5 if (MIN_MAX_FRAME_SIZE..=MAX_MAX_FRAME_SIZE).contains(&v) => Setting::MaxFrameSize(v),
            5 => return Err(FrameError::BadSetting("SETTINGS_MAX_FRAME_SIZE")),
            6 => Setting::MaxHeaderListSize(v),
            other => Setting::Unknown(other, v),
        })
    })
}

/// A GOAWAY payload: the last stream the peer processed, the code, and
/// the debug data (for the log).
pub fn goaway(payload: &[u8]) -> (u32, ErrorCode, &[u8]) {
    (u32_at(payload, 0) & MAX_WINDOW, ErrorCode::from_u32(u32_at(payload, 4)), &payload[8..])
}

/// A RST_STREAM payload's code.
pub fn rst_stream(payload: &[u8]) -> ErrorCode {
    ErrorCode::from_u32(u32_at(payload, 0))
}

/// A WINDOW_UPDATE payload's increment (never 0: [`Frame::parse`] refuses it).
pub fn window_update(payload: &[u8]) -> u32 {
    u32_at(payload, 0) & MAX_WINDOW
}

// ---- writers: each appends one frame (or, for a header block, a HEADERS
// frame and its CONTINUATIONs) to `out` ----

/// Appends a frame header.
pub fn head(out: &mut impl Put, len: usize, kind: Kind, flags: u8, stream: u32) {
    debug_assert!(len <= MAX_MAX_FRAME_SIZE as usize);
    let l = (len as u32).to_be_bytes();
    out.frame_started();
    out.put(&[l[1], l[2], l[3], kind.byte(), flags]);
    out.put(&(stream & MAX_WINDOW).to_be_bytes());
}

/// Appends a SETTINGS frame with `params`.
pub fn write_settings(out: &mut impl Put, params: &[Setting]) {
    head(out, params.len() * 6, Kind::Settings, 0, 0);
    for p in params {
        let (id, v) = p.id_value();
        out.put(&id.to_be_bytes());
        out.put(&v.to_be_bytes());
    }
}

pub fn write_settings_ack(out: &mut impl Put) {
    head(out, 0, Kind::Settings, FLAG_ACK, 0);
}

pub fn write_window_update(out: &mut impl Put, stream: u32, increment: u32) {
    debug_assert!(increment > 0 && increment <= MAX_WINDOW);
    head(out, 4, Kind::WindowUpdate, 0, stream);
    out.put(&increment.to_be_bytes());
}

pub fn write_ping(out: &mut impl Put, ack: bool, data: [u8; 8]) {
    head(out, 8, Kind::Ping, if ack { FLAG_ACK } else { 0 }, 0);
    out.put(&data);
}

pub fn write_rst_stream(out: &mut impl Put, stream: u32, code: ErrorCode) {
    head(out, 4, Kind::RstStream, 0, stream);
    out.put(&code.as_u32().to_be_bytes());
}

pub fn write_goaway(out: &mut impl Put, last_stream: u32, code: ErrorCode) {
    head(out, 8, Kind::GoAway, 0, 0);
    out.put(&(last_stream & MAX_WINDOW).to_be_bytes());
    out.put(&code.as_u32().to_be_bytes());
}

/// Appends a header block as one HEADERS frame, followed by CONTINUATION
/// frames when the block is larger than the peer's `max_frame`.
pub fn write_headers(out: &mut impl Put, stream: u32, block: &[u8], end_stream: bool, max_frame: u32) {
    let max = max_frame as usize;
    let mut chunks = block.chunks(max.max(1));
    let first = chunks.next().unwrap_or(&[]);
    let single = block.len() <= max;
    let mut flags = if end_stream { FLAG_END_STREAM } else { 0 };
    if single {
        flags |= FLAG_END_HEADERS;
    }
    head(out, first.len(), Kind::Headers, flags, stream);
    out.put(first);
    let rest: Vec<&[u8]> = chunks.collect();
    for (i, c) in rest.iter().enumerate() {
        let last = i + 1 == rest.len();
        head(out, c.len(), Kind::Continuation, if last { FLAG_END_HEADERS } else { 0 }, stream);
        out.put(c);
    }
}

/// Appends the header of a DATA frame whose `len` payload bytes the caller
/// puts right after it.
pub fn data_head(out: &mut impl Put, stream: u32, len: usize, end_stream: bool) {
    head(out, len, Kind::Data, if end_stream { FLAG_END_STREAM } else { 0 }, stream);
}

/// A DATA frame's header as bytes, for a frame whose payload was read in
/// place before its length was known ([`crate::h2::out::Output::read_data`]).
pub fn data_head_bytes(stream: u32, len: usize, end_stream: bool) -> [u8; HEAD_LEN] {
    debug_assert!(len <= MAX_MAX_FRAME_SIZE as usize);
    let l = (len as u32).to_be_bytes();
    let s = (stream & MAX_WINDOW).to_be_bytes();
    let flags = if end_stream { FLAG_END_STREAM } else { 0 };
    [l[1], l[2], l[3], Kind::Data.byte(), flags, s[0], s[1], s[2], s[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(input: &[u8]) -> Result<Option<Frame>, FrameError> {
        Frame::parse(input, MIN_MAX_FRAME_SIZE)
    }

    #[test]
    fn frames_written_are_read_back() {
        let mut out = Vec::new();
        write_settings(&mut out, &[Setting::EnablePush(false), Setting::InitialWindowSize(1 << 20)]);
        write_settings_ack(&mut out);
        write_window_update(&mut out, 0, 65_535);
        write_ping(&mut out, false, *b"liveness");
        write_rst_stream(&mut out, 3, ErrorCode::Cancel);
        write_goaway(&mut out, 7, ErrorCode::NoError);
        data_head(&mut out, 5, 3, true);
        out.extend_from_slice(b"abc");

        let mut at = 0;
        let mut frames = Vec::new();
        while at < out.len() {
            let f = one(&out[at..]).unwrap().expect("a whole frame");
            frames.push((f.clone(), out[at..][f.payload.clone()].to_vec()));
            at += f.len;
        }
        assert_eq!(frames.len(), 7);
        let (f, p) = &frames[0];
        assert_eq!((f.kind, f.stream), (Kind::Settings, 0));
        let s: Vec<_> = settings(p).map(Result::unwrap).collect();
        assert_eq!(s, [Setting::EnablePush(false), Setting::InitialWindowSize(1 << 20)]);
        assert!(frames[1].0.has(FLAG_ACK) && frames[1].1.is_empty());
        assert_eq!(window_update(&frames[2].1), 65_535);
        assert_eq!((frames[3].0.kind, &frames[3].1[..]), (Kind::Ping, &b"liveness"[..]));
        assert_eq!((frames[4].0.stream, rst_stream(&frames[4].1)), (3, ErrorCode::Cancel));
        let (last, code, debug) = goaway(&frames[5].1);
        assert_eq!((last, code, debug), (7, ErrorCode::NoError, &b""[..]));
        let (f, p) = &frames[6];
        assert_eq!((f.kind, f.stream, f.has(FLAG_END_STREAM), &p[..]), (Kind::Data, 5, true, &b"abc"[..]));
    }

    #[test]
    fn a_partial_frame_waits_for_more() {
        let mut out = Vec::new();
        data_head(&mut out, 1, 4, false);
        out.extend_from_slice(b"ab");
        assert_eq!(one(&out[..5]), Ok(None));
        assert_eq!(one(&out), Ok(None));
        out.extend_from_slice(b"cd");
        assert_eq!(one(&out).unwrap().unwrap().payload, HEAD_LEN..HEAD_LEN + 4);
    }

    #[test]
    fn a_header_block_larger_than_a_frame_goes_on_in_continuations() {
        let block: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        write_headers(&mut out, 9, &block, true, MIN_MAX_FRAME_SIZE);
        let mut at = 0;
        let mut kinds = Vec::new();
        let mut got = Vec::new();
        while at < out.len() {
            let f = one(&out[at..]).unwrap().unwrap();
            kinds.push((f.kind, f.has(FLAG_END_HEADERS), f.has(FLAG_END_STREAM)));
            got.extend_from_slice(&out[at..][f.payload.clone()]);
            at += f.len;
        }
        assert_eq!(
            kinds,
            [(Kind::Headers, false, true), (Kind::Continuation, false, false), (Kind::Continuation, true, false)]
        );
        assert!(got == block);
        // A small block is one HEADERS frame with END_HEADERS.
        let mut out = Vec::new();
        write_headers(&mut out, 1, b"\x82", false, MIN_MAX_FRAME_SIZE);
        let f = one(&out).unwrap().unwrap();
        assert!(f.has(FLAG_END_HEADERS) && !f.has(FLAG_END_STREAM));
    }

    #[test]
    fn padding_and_priority_are_stripped() {
        // HEADERS, PADDED | PRIORITY: pad length 2, 5 bytes of priority, "hb", 2 pad bytes.
        let mut f = Vec::new();
        head(&mut f, 1 + 5 + 2 + 2, Kind::Headers, FLAG_PADDED | FLAG_PRIORITY | FLAG_END_HEADERS, 1);
        f.extend_from_slice(&[2, 0, 0, 0, 0, 16, b'h', b'b', 0, 0]);
        let fr = one(&f).unwrap().unwrap();
        assert_eq!(&f[fr.payload.clone()], b"hb");
        assert_eq!(fr.len, f.len());
        // DATA with padding longer than the payload.
        let mut f = Vec::new();
        head(&mut f, 2, Kind::Data, FLAG_PADDED, 1);
        f.extend_from_slice(&[5, 0]);
        assert_eq!(one(&f), Err(FrameError::BadPadding(Kind::Data)));
    }

    #[test]
    fn frames_that_break_the_rules_are_refused_with_their_code() {
        let frame = |len: usize, kind: Kind, flags: u8, stream: u32| {
            let mut f = Vec::new();
            head(&mut f, len, kind, flags, stream);
            f.resize(HEAD_LEN + len, 1);
            f
        };
        let e = one(&frame(20_000, Kind::Data, 0, 1)).unwrap_err();
        assert_eq!(e.code(), ErrorCode::FrameSize);
        // Refused from the header alone, before the payload is there.
        let big = frame(20_000, Kind::Data, 0, 1);
        assert!(one(&big[..HEAD_LEN]).is_err());
        assert_eq!(one(&frame(4, Kind::Data, 0, 0)), Err(FrameError::NeedsStream(Kind::Data)));
        assert_eq!(one(&frame(8, Kind::Ping, 0, 1)), Err(FrameError::NeedsConnection(Kind::Ping)));
        assert_eq!(one(&frame(7, Kind::Ping, 0, 0)).unwrap_err().code(), ErrorCode::FrameSize);
        assert_eq!(one(&frame(5, Kind::Settings, 0, 0)).unwrap_err().code(), ErrorCode::FrameSize);
        assert_eq!(one(&frame(6, Kind::Settings, FLAG_ACK, 0)).unwrap_err().code(), ErrorCode::FrameSize);
        assert_eq!(one(&frame(4, Kind::GoAway, 0, 0)).unwrap_err().code(), ErrorCode::FrameSize);
        let mut zero = Vec::new();
        head(&mut zero, 4, Kind::WindowUpdate, 0, 1);
        zero.extend_from_slice(&0u32.to_be_bytes());
        assert_eq!(one(&zero), Err(FrameError::ZeroIncrement));
        // Unknown frame types are read (to be ignored), on any stream.
        assert_eq!(one(&frame(3, Kind::Unknown(0xfa), 0, 0)).unwrap().unwrap().kind, Kind::Unknown(0xfa));
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        let param = |id: u16, v: u32| {
            let mut p = id.to_be_bytes().to_vec();
            p.extend_from_slice(&v.to_be_bytes());
            p
        };
        assert_eq!(settings(&param(2, 2)).next().unwrap().unwrap_err().code(), ErrorCode::Protocol);
        assert_eq!(settings(&param(4, 1 << 31)).next().unwrap().unwrap_err().code(), ErrorCode::FlowControl);
        assert!(settings(&param(5, 16_383)).next().unwrap().is_err());
        assert!(settings(&param(5, 1 << 24)).next().unwrap().is_err());
        assert_eq!(settings(&param(0x99, 7)).next().unwrap(), Ok(Setting::Unknown(0x99, 7)));
        assert_eq!(settings(&param(3, 100)).next().unwrap(), Ok(Setting::MaxConcurrentStreams(100)));
    }
}
