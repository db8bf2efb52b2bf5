//! HPACK (RFC 7541), the relay's own: the header compression of HTTP/2.
//!
//! Written here because the decoder of the crate tried first (loona-hpack
//! 0.4) builds a hash map of the whole Huffman code for every Huffman
//! string it decodes: 82 % of the relay's CPU behind an nginx intake. This
//! one decodes Huffman through a 64-bit bit buffer, one or two codes a
//! look-up in a table built at compile time (the canonical code's
//! per-length ranges for the rare codes longer than 11 bits), and
//! allocates nothing per header block in steady state (scratch buffers are
//! reused; the dynamic table allocates only for the fields it stores).
//!
//! - [`Decoder`]: the whole of §6 (indexed fields, literals with and
//!   without indexing and never indexed, dynamic table size updates), the
//!   dynamic table with eviction (§4), Huffman (§5.2, Appendix B), bounds on
//!   integers, strings and the table size this side announced.
//! - [`Encoder`]: static-table matches by full field or by name (found by a
//!   hash of the name without collisions in that table), a dynamic
//!   table for fields that repeat, never-indexed literals for credentials
//!   (§7.1.3: `dd-api-key`, `authorization`, `cookie`), literals without
//!   indexing for values that change per request (`content-length`). No
//!   Huffman on the way out (optional in HPACK).
//!
//! Must never: hand out a field the block did not encode, read past the
//! block, or keep a table larger than announced.

use std::collections::VecDeque;

use thiserror::Error;

/// The static table (RFC 7541 Appendix A), index 1 first.
const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// Code lengths of the Huffman code (RFC 7541 Appendix B), symbols 0-255
/// and EOS (256). The code is canonical: codes follow from the lengths,
/// assigned in order of (length, symbol).
const HUFFMAN_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28,
    28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12,
    10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6,
    5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22,
    22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22, 21, 20,
    22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28,
    27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28,
    27, 27, 27, 27, 27, 26, 30,
];

/// The default and largest dynamic table this side allows (and announces,
/// as SETTINGS_HEADER_TABLE_SIZE's default).
pub const TABLE_SIZE: usize = 4096;
/// Bytes a field costs in a table beyond its name and value (§4.1).
const ENTRY_OVERHEAD: usize = 32;
/// The longest string accepted in a block (names and values).
const MAX_STRING: usize = 64 * 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum HpackError {
    #[error("the header block ends inside a field")]
    Truncated,
    #[error("an integer in the header block is too large")]
    IntegerOverflow,
    #[error("index {0} is in neither table")]
    BadIndex(usize),
    #[error("a string of {0} bytes is longer than allowed")]
    StringTooLong(usize),
    #[error("a Huffman string is malformed (bad padding or EOS)")]
    BadHuffman,
    #[error("a dynamic table size update to {0} beyond the {1} bytes allowed")]
    TableTooLarge(usize, usize),
    #[error("a dynamic table size update after the first field of a block")]
    LateSizeUpdate,
}

/// Bits of input that the Huffman decoding table is indexed by. Every code
/// this long or shorter (all letters and digits, and all punctuation but
/// `#$<>@[\]^{}~` and the backquote) decodes with one look-up, two codes
/// at a time where both fit. The table takes 8 KiB.
const FAST_BITS: u32 = 11;

/// The canonical Huffman code, for decoding 32-bit windows of input.
struct Canonical {
    /// Symbols in order of (length, symbol).
    symbols: [u16; 257],
    /// For each length: the first code of that length, and where its
    /// symbols start in `symbols`.
    first_code: [u32; 31],
    first_index: [u16; 31],
    /// For each length L: where the codes of L bits or fewer end, as
    /// windows (`code << (32 - L)`). Canonical codes grow with their
    /// length, so a window below `window_end[L]` starts with a code of at
    /// most L bits; the last, after EOS, is 2^32.
    window_end: [u64; 31],
    /// The codes that start each window, by its first `FAST_BITS` bits.
    fast: [Fast; 1 << FAST_BITS],
}

/// The one or two codes that start a window, both within `FAST_BITS`:
/// `first | second << 8 | first's length << 16 | both lengths << 21`
/// (both lengths are the first's alone where no second code fits). 0
/// where the first code is longer.
#[derive(Clone, Copy)]
struct Fast(u32);

impl Fast {
    const LONG: Fast = Fast(0);

    const fn new(first: (u32, u32), second: Option<(u32, u32)>) -> Self {
        let (sym, len) = first;
        let (second, both_len) = match second {
            Some((second, second_len)) => (second, len + second_len),
            None => (0, len),
        };
        Fast(sym | second << 8 | len << 16 | both_len << 21)
    }

    fn is_long(self) -> bool {
        self.0 == 0
    }

    fn symbols(self) -> [u8; 2] {
        [self.0 as u8, (self.0 >> 8) as u8]
    }

    /// The first code's symbol and length.
    fn first(self) -> (u16, u32) {
        (u16::from(self.0 as u8), (self.0 >> 16) & 0x1f)
    }

    /// How many symbols (1 or 2) and how many bits of input.
    fn both(self) -> (usize, u32) {
        let both_len = self.0 >> 21;
        (1 + usize::from(both_len != self.first().1), both_len)
    }
}

/// The symbol and length of the code that starts `window`, if it has at
/// most `max` bits.
const fn short_code(c: &Canonical, window: u32, max: u32) -> Option<(u32, u32)> {
    let mut len = 1;
    while len <= max as usize {
        if (window as u64) < c.window_end[len] {
            let offset = (window >> (32 - len)) - c.first_code[len];
            return Some((c.symbols[c.first_index[len] as usize + offset as usize] as u32, len as u32));
        }
        len += 1;
    }
    None
}

const fn canonical() -> Canonical {
    let mut c = Canonical {
        symbols: [0; 257],
        first_code: [0; 31],
        first_index: [0; 31],
        window_end: [0; 31],
        fast: [Fast::LONG; 1 << FAST_BITS],
    };
    let mut n = 0;
    let mut len = 1;
    let mut code: u32 = 0;
    while len <= 30 {
        c.first_code[len] = code;
        c.first_index[len] = n as u16;
        let mut sym = 0;
        while sym < 257 {
            if HUFFMAN_LENGTHS[sym] as usize == len {
                c.symbols[n] = sym as u16;
                n += 1;
                code += 1;
            }
            sym += 1;
        }
        c.window_end[len] = (code as u64) << (32 - len);
        code <<= 1;
        len += 1;
    }
    assert!(c.window_end[30] == 1 << 32, "the Huffman code is complete");
    let mut w = 0;
    while w < c.fast.len() {
        let window = (w as u32) << (32 - FAST_BITS);
        if let Some(first) = short_code(&c, window, FAST_BITS) {
            let second = short_code(&c, window << first.1, FAST_BITS - first.1);
            c.fast[w] = Fast::new(first, second);
        }
        w += 1;
    }
    c
}

static CODE: Canonical = canonical();

impl Canonical {
    /// The symbol and length of the code that starts `window` (32 bits,
    /// first bit highest), a code longer than `FAST_BITS`.
    fn long_code(&self, window: u32) -> (u16, u32) {
        let mut len = FAST_BITS as usize + 1;
        // Ends at 30 at the latest: window_end[30] is above every window.
        while u64::from(window) >= self.window_end[len] {
            len += 1;
        }
        let offset = (window >> (32 - len)) - self.first_code[len];
        (self.symbols[self.first_index[len] as usize + offset as usize], len as u32)
    }
}

/// Appends the Huffman decoding of `input` to `out`.
///
/// # Invariants
/// Refused, as §5.2 says: EOS inside the string, padding of 8 bits or
/// more, padding that is not all ones. `out` holds garbage on error.
fn huffman_decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let start = out.len();
    // At most a symbol per 5 bits (the shortest code), and a byte for a
    // second symbol written and not counted.
    out.resize(start + input.len() * 8 / 5 + 1, 0);
    let buf = &mut out[start..];
    let mut n = 0;
    let mut rest = input;
    // The bits not decoded yet, first one highest: `have` of them (at most
    // 31 and a refill of 32), then zeros, or ones once the input is all
    // read (the padding a window past the end needs).
    let mut bits: u64 = 0;
    let mut have: u32 = 0;
    loop {
        if have < 32 {
            if let Some((chunk, tail)) = rest.split_first_chunk::<4>() {
                bits |= u64::from(u32::from_be_bytes(*chunk)) << (32 - have);
                have += 32;
                rest = tail;
            } else {
                for &b in rest {
                    bits |= u64::from(b) << (56 - have);
                    have += 8;
                }
                rest = &[];
                if have == 0 {
                    break;
                }
                bits |= u64::MAX >> have;
            }
        }
        // The next 32 bits: a code has at most 30.
        let window = (bits >> 32) as u32;
        let fast = CODE.fast[(window >> (32 - FAST_BITS)) as usize];
        let (count, len) = fast.both();
        if !fast.is_long() && len <= have {
            let [first, second] = fast.symbols();
            buf[n] = first;
            buf[n + 1] = second;
            n += count;
            bits <<= len;
            have -= len;
            continue;
        }
        // A long code, or the end of the input.
        let (sym, len) = if fast.is_long() { CODE.long_code(window) } else { fast.first() };
        if len > have {
            // No whole code is left: the rest is padding, fewer than 8
            // bits and all ones (the start of EOS).
            if have < 8 && window == u32::MAX {
                break;
            }
            return Err(HpackError::BadHuffman);
        }
        if sym == 256 {
            return Err(HpackError::BadHuffman);
        }
        buf[n] = sym as u8;
        n += 1;
        bits <<= len;
        have -= len;
    }
    out.truncate(start + n);
    Ok(())
}

/// Reads an integer with an `n`-bit prefix (§5.1) at `buf[*at..]`.
fn integer(buf: &[u8], at: &mut usize, n: u8) -> Result<usize, HpackError> {
    let mask = (1u16 << n) as usize - 1;
    let first = *buf.get(*at).ok_or(HpackError::Truncated)? as usize & mask;
    *at += 1;
    if first < mask {
        return Ok(first);
    }
    let mut value = mask;
    let mut shift = 0;
    loop {
        let b = *buf.get(*at).ok_or(HpackError::Truncated)?;
        *at += 1;
        if shift > 21 {
            return Err(HpackError::IntegerOverflow);
        }
        value += ((b & 0x7f) as usize) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
}

/// Writes `value` with an `n`-bit prefix, `flags` in the first byte's high bits.
fn write_integer(out: &mut Vec<u8>, value: usize, n: u8, flags: u8) {
    let mask = (1usize << n) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    let mut v = value - mask;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A dynamic table (§2.3.2): newest first.
#[derive(Default)]
struct Table {
    fields: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max: usize,
}

impl Table {
    fn new(max: usize) -> Self {
        Table { fields: VecDeque::new(), size: 0, max }
    }

    fn evict_to(&mut self, max: usize) {
        while self.size > max {
            let (n, v) = self.fields.pop_back().expect("a table over its size has fields");
            self.size -= n.len() + v.len() + ENTRY_OVERHEAD;
        }
    }

    fn set_max(&mut self, max: usize) {
        self.max = max;
        self.evict_to(max);
    }

    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let cost = name.len() + value.len() + ENTRY_OVERHEAD;
        if cost > self.max {
            // Larger than the table: the table empties (§4.4).
            self.fields.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max - cost);
        self.fields.push_front((name.to_vec(), value.to_vec()));
        self.size += cost;
    }

    /// Field at HPACK index `i` (1-based over static, then this table).
    fn get(&self, i: usize) -> Option<(&[u8], &[u8])> {
        match i {
            0 => None,
            1..=61 => Some(STATIC[i - 1]),
            _ => self.fields.get(i - 62).map(|(n, v)| (&n[..], &v[..])),
        }
    }
}

/// Decodes the header blocks of one connection (one per direction: the
/// table is the connection's).
pub struct Decoder {
    table: Table,
    /// The largest table this side allows (what it announced).
    allowed: usize,
    name: Vec<u8>,
    value: Vec<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Decoder { table: Table::new(TABLE_SIZE), allowed: TABLE_SIZE, name: Vec::new(), value: Vec::new() }
    }

    /// Decodes `block`, calling `field` with each (name, value) in order.
    pub fn decode(&mut self, block: &[u8], mut field: impl FnMut(&[u8], &[u8])) -> Result<(), HpackError> {
        let mut at = 0;
        let mut first = true;
        while at < block.len() {
            let b = block[at];
            if b & 0x80 != 0 {
                let i = integer(block, &mut at, 7)?;
                let (n, v) = self.table.get(i).ok_or(HpackError::BadIndex(i))?;
                field(n, v);
            } else if b & 0xe0 == 0x20 {
                if !first {
                    return Err(HpackError::LateSizeUpdate);
                }
                let max = integer(block, &mut at, 5)?;
                if max > self.allowed {
                    return Err(HpackError::TableTooLarge(max, self.allowed));
                }
                self.table.set_max(max);
                continue;
            } else {
                // 01: with incremental indexing (6-bit index); 0000 / 0001:
                // without indexing / never indexed (4-bit index).
                let indexing = b & 0xc0 == 0x40;
                let i = integer(block, &mut at, if indexing { 6 } else { 4 })?;
                let mut name = std::mem::take(&mut self.name);
                let mut value = std::mem::take(&mut self.value);
                name.clear();
                value.clear();
                let res = (|| {
                    if i == 0 {
                        string(block, &mut at, &mut name)?;
                    } else {
                        let (n, _) = self.table.get(i).ok_or(HpackError::BadIndex(i))?;
                        name.extend_from_slice(n);
                    }
                    string(block, &mut at, &mut value)
                })();
                if res.is_ok() {
                    field(&name, &value);
                    if indexing {
                        self.table.insert(&name, &value);
                    }
                }
                self.name = name;
                self.value = value;
                res?;
            }
            first = false;
        }
        Ok(())
    }
}

/// Reads a string literal (§5.2) at `buf[*at..]` into `out`.
fn string(buf: &[u8], at: &mut usize, out: &mut Vec<u8>) -> Result<(), HpackError> {
    let huffman = *buf.get(*at).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(buf, at, 7)?;
    if len > MAX_STRING {
        return Err(HpackError::StringTooLong(len));
    }
    let raw = buf.get(*at..*at + len).ok_or(HpackError::Truncated)?;
    *at += len;
    if huffman {
        huffman_decode(raw, out)
    } else {
        out.extend_from_slice(raw);
        Ok(())
    }
}

/// Where a field stands in the static table.
#[derive(Debug, PartialEq, Eq)]
enum StaticMatch {
    /// The whole field is entry `i` (1-based, as HPACK counts).
    Field(usize),
    /// Its name is that of entry `i` (the first with it), not its value.
    Name(usize),
    None,
}

/// The slot of a non-empty field name in [`STATIC_NAMES`]: a hash without
/// collisions among the 52 names of the static table (the table's build
/// checks it).
const fn name_slot(name: &[u8]) -> usize {
    (name.len() + 10 * name[0] as usize + 4 * name[name.len() - 1] as usize) & 0xff
}

/// `a == b`, for a const fn.
const fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// For each [`name_slot`]: the static entries with that name, as the index
/// of the first (1-based) and how many (entries with one name are
/// adjacent); `(0, 0)` where no name has the slot.
static STATIC_NAMES: [(u8, u8); 256] = static_names();

const fn static_names() -> [(u8, u8); 256] {
    let mut slots = [(0u8, 0u8); 256];
    let mut k = 0;
    while k < STATIC.len() {
        let name = STATIC[k].0;
        let slot = name_slot(name);
        let (first, count) = slots[slot];
        if count == 0 {
            slots[slot] = (k as u8 + 1, 1);
        } else {
            assert!(same(STATIC[first as usize - 1].0, name), "two static names share a slot: change name_slot");
            assert!(first as usize + count as usize == k + 1, "entries with one name are adjacent");
            slots[slot].1 += 1;
        }
        k += 1;
    }
    slots
}

/// Finds `name` and `value` in the static table: what a scan of the table
/// in order would find, with one hash, one comparison of names and one of
/// values per entry with the name (7 at most, for `:status`).
fn static_match(name: &[u8], value: &[u8]) -> StaticMatch {
    if name.is_empty() {
        return StaticMatch::None;
    }
    let (first, count) = STATIC_NAMES[name_slot(name)];
    let first = first as usize;
    if count == 0 || STATIC[first - 1].0 != name {
        return StaticMatch::None;
    }
    match (first..first + count as usize).find(|&i| STATIC[i - 1].1 == value) {
        Some(i) => StaticMatch::Field(i),
        None => StaticMatch::Name(first),
    }
}

/// Fields sent as never-indexed literals (§7.1.3): credentials.
fn is_sensitive(name: &[u8]) -> bool {
    matches!(name, b"dd-api-key" | b"authorization" | b"proxy-authorization" | b"cookie" | b"set-cookie")
}

/// Fields whose value changes with every request: not worth a table entry.
fn is_volatile(name: &[u8]) -> bool {
    matches!(name, b"content-length" | b"date" | b"x-datadog-request-id")
}

/// Encodes the header blocks of one connection.
pub struct Encoder {
    table: Table,
    /// A table size change to announce at the start of the next block.
    pending_size: Option<usize>,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    pub fn new() -> Self {
        Encoder { table: Table::new(TABLE_SIZE), pending_size: None }
    }

    /// The peer's SETTINGS_HEADER_TABLE_SIZE: the table shrinks to it (or to
    /// this side's own bound) and the next block says so.
    pub fn set_max_table_size(&mut self, peer: usize) {
        let max = peer.min(TABLE_SIZE);
        if max != self.table.max {
            self.table.set_max(max);
            self.pending_size = Some(max);
        }
    }

    /// Appends the block for `fields` to `out`.
    pub fn encode<'a>(&mut self, fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>, out: &mut Vec<u8>) {
        if let Some(max) = self.pending_size.take() {
            write_integer(out, max, 5, 0x20);
        }
        for (name, value) in fields {
            self.field(name, value, out);
        }
    }

    fn field(&mut self, name: &[u8], value: &[u8], out: &mut Vec<u8>) {
        let name_index = match static_match(name, value) {
            StaticMatch::Field(i) => {
                write_integer(out, i, 7, 0x80);
                return;
            }
            StaticMatch::Name(i) => i,
            StaticMatch::None => 0,
        };
        let sensitive = is_sensitive(name);
        if !sensitive {
            for (k, (n, v)) in self.table.fields.iter().enumerate() {
                if n == name && v == value {
                    write_integer(out, 62 + k, 7, 0x80);
                    return;
                }
            }
        }
        let (flags, prefix, index) = if sensitive {
            (0x10, 4, false)
        } else if is_volatile(name) {
            (0x00, 4, false)
        } else {
            (0x40, 6, true)
        };
        write_integer(out, name_index, prefix, flags);
        if name_index == 0 {
            write_integer(out, name.len(), 7, 0);
            out.extend_from_slice(name);
        }
        write_integer(out, value.len(), 7, 0);
        out.extend_from_slice(value);
        if index {
            self.table.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    fn decode_all(d: &mut Decoder, block: &[u8]) -> Result<Fields, HpackError> {
        let mut got = Vec::new();
        d.decode(block, |n, v| got.push((n.to_vec(), v.to_vec())))?;
        Ok(got)
    }

    #[test]
    fn the_examples_of_rfc7541_appendix_c_decode() {
        // C.4: requests with Huffman, sharing one dynamic table.
        let hex = |s: &str| -> Vec<u8> {
            let s: String = s.split_whitespace().collect();
            (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
        };
        let mut d = Decoder::new();
        let one = decode_all(&mut d, &hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff")).unwrap();
        assert_eq!(
            one,
            [
                (b":method".to_vec(), b"GET".to_vec()),
                (b":scheme".to_vec(), b"http".to_vec()),
                (b":path".to_vec(), b"/".to_vec()),
                (b":authority".to_vec(), b"www.example.com".to_vec()),
            ]
        );
        let two = decode_all(&mut d, &hex("8286 84be 5886 a8eb 1064 9cbf")).unwrap();
        assert_eq!(two[3], (b":authority".to_vec(), b"www.example.com".to_vec()));
        assert_eq!(two[4], (b"cache-control".to_vec(), b"no-cache".to_vec()));
        let three = decode_all(&mut d, &hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf")).unwrap();
        assert_eq!(three[2], (b":path".to_vec(), b"/index.html".to_vec()));
        assert_eq!(three[4], (b"custom-key".to_vec(), b"custom-value".to_vec()));
        // C.6: answers with Huffman and evictions (a 256-byte table).
        let mut d = Decoder::new();
        d.decode(&[0x3f, 0xe1, 0x01], |_, _| {}).unwrap(); // size update to 256
        let r1 = decode_all(
            &mut d,
            &hex("4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3"),
        )
        .unwrap();
        assert_eq!(r1[0], (b":status".to_vec(), b"302".to_vec()));
        assert_eq!(r1[2], (b"date".to_vec(), b"Mon, 21 Oct 2013 20:13:21 GMT".to_vec()));
        assert_eq!(r1[3], (b"location".to_vec(), b"https://www.example.com".to_vec()));
        let r2 = decode_all(&mut d, &hex("4883 640e ffc1 c0bf")).unwrap();
        assert_eq!(r2[0], (b":status".to_vec(), b"307".to_vec()));
        assert_eq!(r2[3], (b"location".to_vec(), b"https://www.example.com".to_vec()));
    }

    #[test]
    fn the_static_table_agrees_with_another_implementation() {
        let mut ours = Decoder::new();
        let mut theirs = loona_hpack::Decoder::new();
        for i in 1..=61u8 {
            let block = [0x80 | i];
            let a = decode_all(&mut ours, &block).unwrap();
            let b = theirs.decode(&block).unwrap();
            assert_eq!(a, b, "static index {i}");
        }
    }

    /// Each symbol's code and length, from the code lengths alone (codes in
    /// order of (length, symbol), as Appendix B assigns them).
    fn codes() -> &'static [(u32, u8); 257] {
        static CODES: std::sync::OnceLock<[(u32, u8); 257]> = std::sync::OnceLock::new();
        CODES.get_or_init(codes_from_lengths)
    }

    fn codes_from_lengths() -> [(u32, u8); 257] {
        let mut order: Vec<usize> = (0..257).collect();
        order.sort_by_key(|&sym| (HUFFMAN_LENGTHS[sym], sym));
        let mut codes = [(0u32, 0u8); 257];
        let mut code = 0u32;
        let mut prev = 0u8;
        for (k, &sym) in order.iter().enumerate() {
            let len = HUFFMAN_LENGTHS[sym];
            if k > 0 {
                code = (code + 1) << (len - prev);
            }
            prev = len;
            codes[sym] = (code, len);
        }
        codes
    }

    /// The Huffman coding of `input`, padded with ones.
    fn huffman_encode(input: &[u8]) -> Vec<u8> {
        let codes = codes();
        let mut out = Vec::new();
        let mut bits: u64 = 0;
        let mut have = 0;
        for &b in input {
            let (code, len) = codes[b as usize];
            bits = (bits << len) | u64::from(code);
            have += len;
            while have >= 8 {
                have -= 8;
                out.push((bits >> have) as u8);
            }
        }
        if have > 0 {
            out.push((bits << (8 - have)) as u8 | 0xff >> have);
        }
        out
    }

    /// The decoder this file had before its table: a bit at a time, codes
    /// looked up by (length, code). The reference the table must match.
    fn huffman_decode_bitwise(input: &[u8]) -> Result<Vec<u8>, HpackError> {
        type ByCode = std::collections::HashMap<(u8, u32), usize>;
        static BY_CODE: std::sync::OnceLock<ByCode> = std::sync::OnceLock::new();
        let by_code =
            BY_CODE.get_or_init(|| codes().iter().enumerate().map(|(sym, &(c, len))| ((len, c), sym)).collect());
        let mut out = Vec::new();
        let mut code: u32 = 0;
        let mut len: u8 = 0;
        for &byte in input {
            for bit in (0..8).rev() {
                code = (code << 1) | u32::from((byte >> bit) & 1);
                len += 1;
                if len > 30 {
                    return Err(HpackError::BadHuffman);
                }
                if let Some(&sym) = by_code.get(&(len, code)) {
                    if sym == 256 {
                        return Err(HpackError::BadHuffman);
                    }
                    out.push(sym as u8);
                    code = 0;
                    len = 0;
                }
            }
        }
        if len >= 8 || code != (1 << len) - 1 {
            return Err(HpackError::BadHuffman);
        }
        Ok(out)
    }

    fn decode_huffman(input: &[u8]) -> Result<Vec<u8>, HpackError> {
        let mut out = Vec::new();
        huffman_decode(input, &mut out).map(|()| out)
    }

    /// xorshift64: random enough for test inputs, the same on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn huffman_decodes_every_symbol_as_another_implementation_does() {
        let codes = codes();
        // Spot checks against RFC 7541 Appendix B.
        assert_eq!(codes[b'0' as usize], (0x0, 5));
        assert_eq!(codes[b'a' as usize], (0x3, 5));
        assert_eq!(codes[b' ' as usize], (0x14, 6));
        assert_eq!(codes[b'!' as usize], (0x3f8, 10));
        assert_eq!(codes[b'~' as usize], (0x1ffd, 13));
        assert_eq!(codes[0], (0x1ff8, 13));
        assert_eq!(codes[255], (0x3ffffee, 26));
        assert_eq!(codes[256], (0x3fffffff, 30));
        // Every byte value, Huffman-coded by the canonical code, decodes back.
        let input: Vec<u8> = (0..=255u8).chain(b"www.example.com".iter().copied()).collect();
        let bytes = huffman_encode(&input);
        assert!(decode_huffman(&bytes).unwrap() == input);
        // The same string as a literal field, through loona-hpack's decoder.
        let mut block = vec![0x00];
        block.push(1);
        block.push(b'x');
        let mut len = Vec::new();
        write_integer(&mut len, bytes.len(), 7, 0x80);
        block.extend_from_slice(&len);
        block.extend_from_slice(&bytes);
        let theirs = loona_hpack::Decoder::new().decode(&block).unwrap();
        assert!(theirs[0].1 == input);
        // Bad padding (a zero bit) and a whole EOS are refused.
        assert_eq!(huffman_decode(&[0x00], &mut Vec::new()), Err(HpackError::BadHuffman));
        assert_eq!(huffman_decode(&[0xff, 0xff, 0xff, 0xff], &mut Vec::new()), Err(HpackError::BadHuffman));
    }

    #[test]
    fn every_symbol_alone_decodes_back() {
        for sym in 0..=255u8 {
            let bytes = huffman_encode(&[sym]);
            assert_eq!(decode_huffman(&bytes), Ok(vec![sym]), "symbol {sym}");
            // After a prefix, so that the code starts at every bit offset.
            for lead in 1..8 {
                let mut input = vec![b'a'; lead];
                input.push(sym);
                input.push(b'0');
                assert_eq!(decode_huffman(&huffman_encode(&input)), Ok(input), "symbol {sym} after {lead}");
            }
        }
        assert_eq!(decode_huffman(&[]), Ok(Vec::new()));
    }

    #[test]
    fn random_strings_decode_back() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // Any byte, and header-like text (where the short codes are).
        let text = b"abcdefghijklmnopqrstuvwxyz0123456789-_./:;=, ABCDEFGHIJKLMNOPQRSTUVWXYZ";
        for round in 0..4000 {
            let len = rng.below(80);
            let input: Vec<u8> = if round % 2 == 0 {
                (0..len).map(|_| rng.next() as u8).collect()
            } else {
                (0..len).map(|_| text[rng.below(text.len())]).collect()
            };
            let bytes = huffman_encode(&input);
            assert_eq!(decode_huffman(&bytes), Ok(input.clone()), "round {round}");
            // Decoded into a buffer that already holds something: appended.
            let mut out = b"kept".to_vec();
            huffman_decode(&bytes, &mut out).unwrap();
            assert!(out[..4] == *b"kept" && out[4..] == input[..], "round {round}");
        }
    }

    #[test]
    fn any_bytes_decode_as_the_bitwise_decoder_decodes_them() {
        // Random bytes, bytes mostly of ones (to reach EOS and the long
        // codes), and valid strings with a bit of the last byte flipped or
        // a byte of ones after it: the same strings, and the same refusals,
        // as a bit at a time.
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for round in 0..20_000 {
            let len = rng.below(12);
            let mut input: Vec<u8> = match round % 3 {
                0 => (0..len).map(|_| rng.next() as u8).collect(),
                1 => (0..len).map(|_| (rng.next() | rng.next() | rng.next()) as u8).collect(),
                _ => huffman_encode(&(0..len).map(|_| rng.next() as u8).collect::<Vec<u8>>()),
            };
            if round % 3 == 2 && !input.is_empty() {
                let last = input.len() - 1;
                input[last] ^= 1 << rng.below(8);
                if rng.below(2) == 0 {
                    input.push(0xff);
                }
            }
            assert_eq!(decode_huffman(&input), huffman_decode_bitwise(&input), "{input:02x?}");
        }
    }

    #[test]
    fn huffman_padding_and_eos_are_checked() {
        // 'a' is 00011: three bits of padding, all ones, is the only end.
        assert_eq!(decode_huffman(&[0b0001_1111]), Ok(b"a".to_vec()));
        assert_eq!(decode_huffman(&[0b0001_1110]), Err(HpackError::BadHuffman));
        assert_eq!(decode_huffman(&[0b0001_1011]), Err(HpackError::BadHuffman));
        // Seven bits of ones pass ('a' and two spaces: 17 bits); eight or
        // more do not.
        let seven = huffman_encode(b"a  ");
        assert_eq!((seven.len(), seven[2]), (3, 0x7f));
        assert_eq!(decode_huffman(&seven), Ok(b"a  ".to_vec()));
        assert_eq!(decode_huffman(&[0xff]), Err(HpackError::BadHuffman));
        assert_eq!(decode_huffman(&[0b0001_1111, 0xff]), Err(HpackError::BadHuffman));
        let mut sixteen = huffman_encode(b"abc");
        assert_eq!(sixteen.len(), 2);
        sixteen.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(decode_huffman(&sixteen), Err(HpackError::BadHuffman));
        // EOS (30 ones) inside the string ('a', EOS, '0': 40 bits), or the
        // whole string.
        let (a, _) = codes()[b'a' as usize];
        let eos_inside = (u64::from(a) << 35 | 0x3fff_ffff << 5).to_be_bytes();
        assert_eq!(decode_huffman(&eos_inside[3..]), Err(HpackError::BadHuffman));
        assert_eq!(decode_huffman(&[0xff, 0xff, 0xff, 0xfc]), Err(HpackError::BadHuffman));
        assert_eq!(decode_huffman(&[0xff; 5]), Err(HpackError::BadHuffman));
        // 29 ones and a zero is a code of 30 bits (symbol 22), not EOS;
        // padding of zeros after it is refused.
        assert_eq!(decode_huffman(&[0xff, 0xff, 0xff, 0xfb]), Ok(vec![22]));
        assert_eq!(decode_huffman(&[0xff, 0xff, 0xff, 0xf8]), Err(HpackError::BadHuffman));
        // Whatever the bitwise decoder says of all of the above, so says this.
        for input in [&[0b0001_1110][..], &[0xff], &sixteen, &eos_inside[3..], &[0xff; 5], &[0xff, 0xff, 0xff, 0xfb]] {
            assert_eq!(decode_huffman(input), huffman_decode_bitwise(input));
        }
    }

    /// The static table's scan before [`static_match`]: in order, the whole
    /// field or else the first entry with the name.
    fn static_match_by_scan(name: &[u8], value: &[u8]) -> StaticMatch {
        let mut name_index = 0;
        for (k, &(n, v)) in STATIC.iter().enumerate() {
            if n == name {
                if v == value {
                    return StaticMatch::Field(k + 1);
                }
                if name_index == 0 {
                    name_index = k + 1;
                }
            }
        }
        if name_index == 0 {
            StaticMatch::None
        } else {
            StaticMatch::Name(name_index)
        }
    }

    #[test]
    fn the_static_table_is_found_as_a_scan_finds_it() {
        for (k, &(name, value)) in STATIC.iter().enumerate() {
            assert_eq!(static_match(name, value), StaticMatch::Field(k + 1), "{:?}", String::from_utf8_lossy(name));
            for other in [&b"other"[..], b"", b"GET", b"200", b"gzip, deflate", b"/x"] {
                assert_eq!(static_match(name, other), static_match_by_scan(name, other));
            }
            // The name changed at its ends, or one byte longer or shorter.
            let mut changed = name.to_vec();
            changed[0] ^= 0x20;
            assert_eq!(static_match(&changed, value), StaticMatch::None);
            let mut changed = name.to_vec();
            *changed.last_mut().unwrap() ^= 0x20;
            assert_eq!(static_match(&changed, value), StaticMatch::None);
            let mut longer = name.to_vec();
            longer.push(b's');
            assert_eq!(static_match(&longer, value), static_match_by_scan(&longer, value));
            assert_eq!(static_match(&name[1..], value), static_match_by_scan(&name[1..], value));
        }
        assert_eq!(static_match(b":status", b"404"), StaticMatch::Field(13));
        assert_eq!(static_match(b":status", b"302"), StaticMatch::Name(8));
        assert_eq!(static_match(b"accept-encoding", b"gzip, deflate"), StaticMatch::Field(16));
        assert_eq!(static_match(b"accept-encoding", b"gzip"), StaticMatch::Name(16));
        assert_eq!(static_match(b"www-authenticate", b""), StaticMatch::Field(61));
        let others: [&[u8]; 12] = [
            b"",
            b"a",
            b":",
            b"dd-api-key",
            b"content-lengtH",
            b"Content-Length",
            b"x-datadog-request-id",
            b"dd-evp-origin",
            b":protocol",
            b"te",
            b"accept-charsets",
            b"\xff\x00",
        ];
        for name in others {
            assert_eq!(static_match(name, b""), StaticMatch::None, "{:?}", String::from_utf8_lossy(name));
            assert_eq!(static_match(name, b""), static_match_by_scan(name, b""));
        }
        // Random names of the static names' letters: many land in a slot
        // of a static name and must still not match it.
        let mut rng = Rng(7);
        for _ in 0..20_000 {
            let len = 1 + rng.below(28);
            let name: Vec<u8> = (0..len).map(|_| b"-:acdeghilmnoprstuvwxy"[rng.below(22)]).collect();
            assert_eq!(static_match(&name, b""), static_match_by_scan(&name, b""), "{name:?}");
        }
    }

    #[test]
    fn what_the_encoder_writes_decodes_here_and_elsewhere() {
        let fields: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":authority", b"metrics.agent.ddog-gov.com"),
            (b":path", b"/api/v2/series"),
            (b"dd-api-key", b"0123456789abcdef"),
            (b"content-type", b"application/json"),
            (b"content-length", b"1024"),
            (b"x-custom", b"v"),
        ];
        let mut enc = Encoder::new();
        let mut ours = Decoder::new();
        let mut theirs = loona_hpack::Decoder::new();
        let mut sizes = Vec::new();
        for round in 0..3 {
            let mut block = Vec::new();
            enc.encode(fields.iter().copied(), &mut block);
            sizes.push(block.len());
            let want: Vec<(Vec<u8>, Vec<u8>)> = fields.iter().map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
            assert_eq!(decode_all(&mut ours, &block).unwrap(), want, "round {round}");
            assert_eq!(theirs.decode(&block).unwrap(), want, "round {round}");
            // The key goes as a never-indexed literal every time (0001xxxx).
            let key = block.windows(16).position(|w| w == b"0123456789abcdef").expect("the key, literal");
            assert!(key > 0);
        }
        // Repeated fields come from the dynamic table: the second block is
        // the key, the length and a few indexes.
        assert!(sizes[1] <= 45 && sizes[1] == sizes[2], "{sizes:?}");
        // A smaller table announced by the peer is said at the next block.
        enc.set_max_table_size(0);
        let mut block = Vec::new();
        enc.encode([(&b"x-custom"[..], &b"v"[..])], &mut block);
        assert_eq!(block[0], 0x20);
        assert_eq!(decode_all(&mut ours, &block).unwrap(), [(b"x-custom".to_vec(), b"v".to_vec())]);
    }

    #[test]
    fn malformed_blocks_are_refused() {
        let mut d = Decoder::new();
        assert_eq!(decode_all(&mut d, &[0x80]), Err(HpackError::BadIndex(0)));
        assert_eq!(decode_all(&mut d, &[0xbe]), Err(HpackError::BadIndex(62)));
        assert_eq!(decode_all(&mut d, &[0x40, 0x05, b'a']), Err(HpackError::Truncated));
        assert_eq!(decode_all(&mut d, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), Err(HpackError::IntegerOverflow));
        assert_eq!(decode_all(&mut d, &[0x82, 0x20]), Err(HpackError::LateSizeUpdate));
        assert!(matches!(decode_all(&mut d, &[0x3f, 0xe2, 0x1f]), Err(HpackError::TableTooLarge(..))));
        let mut long = vec![0x00, 0x01, b'x'];
        write_integer(&mut long, 100_000, 7, 0);
        assert_eq!(decode_all(&mut d, &long), Err(HpackError::StringTooLong(100_000)));
    }
}
