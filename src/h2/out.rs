//! Where a connection's frames are written: [`Output`], plaintext laid out
//! in the places of the TLS records that will carry it, so the session
//! seals them where they lie ([`crate::upstream::tls::TlsSession::write_laid_out`])
//! instead of copying the frames into its own buffer first. A DATA frame's
//! payload is copied once, from the Agent's buffer into its place here.
//!
//! [`Put`] is what a frame writer needs (`frame::write_*`): a plain
//! `Vec<u8>` is one too (tests, `diagnose`).

/// Appends frame bytes.
pub trait Put {
    fn put(&mut self, bytes: &[u8]);
    /// A frame's header is about to be put (frames are counted).
    fn frame_started(&mut self) {}
}

impl Put for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// The places of the records: each holds `payload` bytes of plaintext
/// between `before` bytes of room (the record's header) and `after` (its
/// inner type and tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slots {
    pub before: usize,
    pub after: usize,
    pub payload: usize,
}

impl Slots {
    /// No room around the plaintext: the bytes as they are.
    pub const PLAIN: Slots = Slots { before: 0, after: 0, payload: usize::MAX };

    /// A full place's length.
    pub fn stride(&self) -> usize {
        self.before.saturating_add(self.payload).saturating_add(self.after)
    }
}

/// A connection's queued frames, in record places.
#[derive(Debug)]
pub struct Output {
    buf: Vec<u8>,
    slots: Slots,
    /// Where the open place's plaintext starts, if one is open.
    open: Option<usize>,
    /// Plaintext bytes put.
    len: usize,
    frames: u64,
}

impl Output {
    pub fn new(slots: Slots, capacity: usize) -> Output {
        Output { buf: Vec::with_capacity(capacity), slots, open: None, len: 0, frames: 0 }
    }

    pub fn slots(&self) -> Slots {
        self.slots
    }

    /// Plaintext bytes queued.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Frames queued.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Empties it, keeping its capacity.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.open = None;
        self.len = 0;
        self.frames = 0;
    }

    /// The plaintext, for an output without record places ([`Slots::PLAIN`]).
    pub fn plain(&self) -> &[u8] {
        assert_eq!(self.slots, Slots::PLAIN, "an output laid out in records has no plain view");
        &self.buf
    }

    /// The records as laid out: every place but the last full, the last
    /// one closed after its plaintext; to be sealed where they lie. Put
    /// nothing more before [`Output::clear`].
    pub fn records(&mut self) -> &mut Vec<u8> {
        if self.open.take().is_some() {
            self.buf.resize(self.buf.len() + self.slots.after, 0);
        }
        &mut self.buf
    }

    /// Opens the next place (closing the full one before it).
    fn open_place(&mut self) -> usize {
        let len = self.buf.len() + if self.open.is_some() { self.slots.after } else { 0 };
        self.buf.resize(len + self.slots.before, 0);
        let at = self.buf.len();
        self.open = Some(at);
        at
    }
}

impl Put for Output {
    fn put(&mut self, mut bytes: &[u8]) {
        if self.slots == Slots::PLAIN {
            self.buf.extend_from_slice(bytes);
            self.len += bytes.len();
            return;
        }
        while !bytes.is_empty() {
            let at = match self.open {
                Some(at) if self.buf.len() - at < self.slots.payload => at,
                _ => self.open_place(),
            };
            let n = (self.slots.payload - (self.buf.len() - at)).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
        }
    }

    fn frame_started(&mut self) {
        self.frames += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_fill_the_places_in_order_with_room_around_each() {
        let slots = Slots { before: 2, after: 3, payload: 4 };
        let mut out = Output::new(slots, 0);
        out.put(b"abc");
        out.frame_started();
        out.put(b"defghij");
        assert_eq!((out.len(), out.frames()), (10, 1));
        // [2 room][abcd][3 room][2 room][efgh][3 room][2 room][ij][3 room]
        let r = out.records().clone();
        assert_eq!(r.len(), 9 + 9 + 7);
        assert_eq!(&r[2..6], b"abcd");
        assert_eq!(&r[11..15], b"efgh");
        assert_eq!(&r[20..22], b"ij");
        out.clear();
        assert!(out.is_empty() && out.records().is_empty());
    }

    #[test]
    fn a_plain_output_is_the_bytes() {
        let mut out = Output::new(Slots::PLAIN, 0);
        out.put(b"abc");
        out.put(b"de");
        assert_eq!(out.plain(), b"abcde");
        assert_eq!(out.records().as_slice(), b"abcde");
    }
}
