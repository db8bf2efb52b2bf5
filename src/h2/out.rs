//! Where a connection's frames are written: [`Output`], plaintext laid out
//! in the places of the TLS records that will carry it, so the session
//! seals them where they lie ([`crate::upstream::tls::TlsSession::write_laid_out`])
//! instead of copying the frames into its own buffer first. A DATA frame's
//! payload is read from the Agent's socket straight into its place here
//! ([`Output::read_data`]), or copied once from the Agent's buffer when
//! it was read there with the request head.
//!
//! [`Put`] is what a frame writer needs (`frame::write_*`): a plain
//! `Vec<u8>` is one too (tests, `diagnose`).

/// Appends frame bytes.
pub trait Put {
    fn put(&mut self, bytes: &[u8]);
    /// A frame's header is about to be put (frames are counted).
    fn frame_started(&mut self) {}
}

use crate::io::Strided;

/// The plaintext of one TLS record, and of the places of a plain output
/// that [`Output::read_data`] lays out.
const RECORD: usize = 16 * 1024;

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

    /// Where plaintext byte `at` (counted over all the bytes put) lies in
    /// the buffer.
    fn index(&self, at: usize) -> usize {
        if self.slots == Slots::PLAIN {
            return at;
        }
        let p = self.slots.payload;
        (at / p) * self.slots.stride() + self.slots.before + at % p
    }

    /// Overwrites bytes put earlier, from plaintext byte `at` on.
    fn patch(&mut self, at: usize, bytes: &[u8]) {
        for (k, &b) in bytes.iter().enumerate() {
            let i = self.index(at + k);
            self.buf[i] = b;
        }
    }

    /// Drops what was put after the first `len` plaintext bytes (and
    /// `frames` frames).
    fn truncate(&mut self, len: usize, frames: u64) {
        self.frames = frames;
        self.len = len;
        if self.slots == Slots::PLAIN {
            self.buf.truncate(len);
        } else if len == 0 {
            self.buf.clear();
            self.open = None;
        } else {
            let p = self.slots.payload;
            let place = (len - 1) / p;
            let start = place * self.slots.stride() + self.slots.before;
            self.buf.truncate(start + (len - place * p));
            self.open = Some(start);
        }
    }

    /// Queues DATA frames whose payload `read` puts in place: it fills
    /// the places of up to `max` bytes ([`Strided`], in the spare
    /// capacity; a vectored read from the Agent's socket) and says how
    /// many it filled. They go out as frames of one record each, the
    /// frame's header (`head(payload length, last)`, `H` bytes) first (the
    /// first frame shares the open record with what was queued before
    /// it), so the places are evenly spaced; `last` is true for the last
    /// frame when the bytes reach `end_at`. Nothing is queued when `read`
    /// fills nothing or fails; its answer is returned.
    pub fn read_data<E, const H: usize>(
        &mut self,
        max: usize,
        end_at: usize,
        head: impl Fn(usize, bool) -> [u8; H],
        read: impl FnOnce(&mut Vec<u8>, &Strided) -> Result<Option<usize>, E>,
    ) -> Result<Option<usize>, E> {
        let (len0, frames0) = (self.len, self.frames);
        let plain = self.slots == Slots::PLAIN;
        let (before, after, record) =
            if plain { (0, 0, RECORD) } else { (self.slots.before, self.slots.after, self.slots.payload) };
        let per_frame = record - H;
        // The first frame's header; its length is written once known.
        self.frame_started();
        self.put(&[0; H]);
        let first = if plain {
            per_frame
        } else {
            let at = match self.open {
                Some(at) if self.buf.len() - at < record => at,
                _ => self.open_place(),
            };
            record - (self.buf.len() - at)
        };
        let reads = Strided { len: per_frame, stride: before + record + after, total: max, first };
        self.buf.reserve(reads.room());
        let n = match read(&mut self.buf, &reads) {
            Ok(Some(n)) if n > 0 => n,
            other => {
                self.truncate(len0, frames0);
                return other;
            }
        };
        assert!(n <= max, "a read past its places");
        let gap = before + after + H;
        let (mut head_at, mut left, mut room) = (len0, n, first);
        loop {
            let take = left.min(room);
            // SAFETY: the read wrote these bytes, in the spare capacity.
            unsafe { self.buf.set_len(self.buf.len() + take) };
            self.len += take;
            left -= take;
            self.patch(head_at, &head(take, left == 0 && n == end_at));
            if left == 0 {
                return Ok(Some(n));
            }
            // The next record: room for its header and the last one's tag
            // (sealing writes them), and the frame's header.
            let l = self.buf.len();
            debug_assert!(self.buf.capacity() - l >= gap);
            // SAFETY: within the capacity reserved for the places; zeroed
            // before the length covers them.
            unsafe {
                std::ptr::write_bytes(self.buf.as_mut_ptr().add(l), 0, gap);
                self.buf.set_len(l + gap);
            }
            if !plain {
                self.open = Some(l + after + before);
            }
            head_at = self.len;
            self.len += H;
            self.frames += 1;
            room = per_frame;
        }
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
    use crate::h2::frame::{data_head_bytes, Frame, Kind, FLAG_END_STREAM};

    /// What a vectored read would do: fills the places from `src`, at
    /// most `cap` bytes.
    fn fill_from(src: &[u8], cap: usize) -> impl FnOnce(&mut Vec<u8>, &Strided) -> Result<Option<usize>, ()> + '_ {
        move |buf, reads| Ok(Some(crate::io::fill_places(buf, reads, src, cap)))
    }

    /// DATA frame headers on `stream`.
    fn data(stream: u32) -> impl Fn(usize, bool) -> [u8; 9] {
        move |len, end| data_head_bytes(stream, len, end)
    }

    /// The plaintext of a laid-out output: each record's bytes between its rooms.
    fn plaintext(out: &mut Output) -> Vec<u8> {
        let Slots { before, after, .. } = out.slots();
        let stride = out.slots().stride();
        out.records().chunks(stride).flat_map(|r| r[before..r.len() - after].to_vec()).collect()
    }

    /// The frames in `plain`: (kind, flags, stream, payload).
    fn frames(plain: &[u8]) -> Vec<(Kind, u8, u32, Vec<u8>)> {
        let mut at = 0;
        let mut got = Vec::new();
        while at < plain.len() {
            let f = Frame::parse(&plain[at..], 1 << 20).unwrap().expect("whole frames only");
            got.push((f.kind, f.flags, f.stream, plain[at..][f.payload.clone()].to_vec()));
            at += f.len;
        }
        got
    }

    #[test]
    fn data_read_in_place_goes_out_as_one_frame_per_record() {
        // Records of 32 bytes of plaintext: DATA frames of 23 after the first.
        let slots = Slots { before: 5, after: 17, payload: 32 };
        let src: Vec<u8> = (0..=255).cycle().take(100).collect();
        let mut out = Output::new(slots, 0);
        crate::h2::frame::write_ping(&mut out, false, *b"12345678");
        let before = (out.len(), out.frames());
        let got = out.read_data(100, 100, data(3), fill_from(&src, usize::MAX));
        assert_eq!(got, Ok(Some(100)));
        assert_eq!(out.len(), before.0 + 100 + 6 * 9, "six DATA frames, their headers counted");
        assert_eq!(out.frames(), before.1 + 6);
        let plain = plaintext(&mut out);
        assert_eq!(plain.len(), out.len());
        let f = frames(&plain);
        assert_eq!(f[0].0, Kind::Ping);
        // The PING and the first header take 26 bytes of the first record:
        // 6 bytes of payload share it; then 23 a record; 2 in the last.
        let sizes: Vec<usize> = f[1..].iter().map(|f| f.3.len()).collect();
        assert_eq!(sizes, vec![6, 23, 23, 23, 23, 2]);
        let data: Vec<u8> = f[1..].iter().flat_map(|f| f.3.clone()).collect();
        assert_eq!(data, src, "every byte, in order");
        for (i, (kind, flags, stream, _)) in f[1..].iter().enumerate() {
            assert_eq!((*kind, *stream), (Kind::Data, 3));
            assert_eq!(*flags & FLAG_END_STREAM != 0, i == f.len() - 2, "END_STREAM on the last only");
        }
    }

    #[test]
    fn a_short_read_ends_the_frames_early_without_end_stream() {
        let slots = Slots { before: 5, after: 17, payload: 32 };
        let src = vec![7u8; 100];
        let mut out = Output::new(slots, 0);
        let got = out.read_data(100, 100, data(1), fill_from(&src, 40));
        assert_eq!(got, Ok(Some(40)));
        let f = frames(&plaintext(&mut out));
        let sizes: Vec<usize> = f.iter().map(|f| f.3.len()).collect();
        assert_eq!(sizes, vec![23, 17]);
        assert!(f.iter().all(|f| f.1 & FLAG_END_STREAM == 0), "the body is not all there");
        // More of the same stream after it, ending it.
        let got = out.read_data(60, 60, data(1), fill_from(&src[40..], usize::MAX));
        assert_eq!(got, Ok(Some(60)));
        let f = frames(&plaintext(&mut out));
        assert_eq!(f.iter().map(|f| f.3.len()).sum::<usize>(), 100);
        assert_eq!(f.last().unwrap().1 & FLAG_END_STREAM, FLAG_END_STREAM);
    }

    #[test]
    fn a_read_of_nothing_or_a_failed_one_queues_nothing() {
        for slots in [Slots { before: 5, after: 17, payload: 32 }, Slots::PLAIN] {
            let mut out = Output::new(slots, 0);
            crate::h2::frame::write_ping(&mut out, false, *b"12345678");
            let was = (out.len(), out.frames(), out.records().clone());
            let mut out2 = Output::new(slots, 0);
            crate::h2::frame::write_ping(&mut out2, false, *b"12345678");
            assert_eq!(out2.read_data(50, 50, data(1), |_, _| Ok::<_, ()>(None)), Ok(None));
            assert_eq!(out2.read_data(50, 50, data(1), |_, _| Ok::<_, ()>(Some(0))), Ok(Some(0)));
            assert_eq!(out2.read_data(50, 50, data(1), |_, _| Err::<Option<usize>, _>("gone")), Err("gone"));
            assert_eq!((out2.len(), out2.frames(), out2.records().clone()), was);
            let _ = out.records();
        }
    }

    #[test]
    fn a_plain_output_gets_the_same_frames_back_to_back() {
        let src: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let mut out = Output::new(Slots::PLAIN, 0);
        assert_eq!(out.read_data(40_000, 40_000, data(5), fill_from(&src, usize::MAX)), Ok(Some(40_000)));
        let f = frames(out.plain());
        let sizes: Vec<usize> = f.iter().map(|f| f.3.len()).collect();
        assert_eq!(sizes, vec![16_375, 16_375, 40_000 - 2 * 16_375]);
        assert_eq!(f.iter().flat_map(|f| f.3.clone()).collect::<Vec<_>>(), src);
        assert_eq!(out.len(), out.plain().len());
    }

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
