//! Request bodies shaped like the Agent's: a pool of templates (series, log
//! batch, trace payload or raw bytes) built once before the run, each with a
//! fixed-width slot where a request's sequence number is written, so that
//! every body is unique without building one from scratch. Compression
//! (zlib `deflate` or `zstd`) runs per request with a reused context into a
//! reused buffer. Owns body bytes only; it never touches sockets.
//!
//! # Invariants
//! - Two bodies produced with different sequence numbers (or run nonces)
//!   differ, compressed or not.
//! - After the first request of a given size, [`BodyGen::next`] allocates
//!   nothing.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Width of the sequence-number slot: `u64::MAX` in decimal.
pub const SEQ_WIDTH: usize = 20;
/// Most templates in a pool.
const MAX_TEMPLATES: usize = 64;
/// Bytes all templates of a pool may take together (at least one template
/// is always built).
const POOL_BYTES: usize = 64 * 1024 * 1024;
/// Largest body accepted by `--body-size` (the intake limit for DBM is 20 MB
/// uncompressed).
pub const MAX_BODY_SIZE: usize = 32 * 1024 * 1024;
/// zstd level, as the Agent's default (1).
const ZSTD_LEVEL: i32 = 1;
/// zlib level, as the Agent's default (6).
const DEFLATE_LEVEL: u32 = 6;

/// What the bodies look like.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadKind {
    /// `{"series":[{metric, type, points, resources, tags}, …]}` (v2 series).
    #[default]
    Series,
    /// `[{message, ddsource, ddtags, hostname, service, status, timestamp}, …]`.
    Logs,
    /// `{"traces":[[{trace_id, span_id, name, resource, service, …}]]}`.
    Traces,
    /// Pseudo-random bytes (incompressible).
    Raw,
}

impl PayloadKind {
    pub fn content_type(self) -> &'static str {
        match self {
            PayloadKind::Raw => "application/octet-stream",
            _ => "application/json",
        }
    }
}

/// `Content-Encoding` of the bodies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    /// zlib stream (RFC 1950), as the Agent sends for `deflate`.
    Deflate,
    Zstd,
}

impl Compression {
    /// Header value, `None` for uncompressed bodies.
    pub fn content_encoding(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Deflate => Some("deflate"),
            Compression::Zstd => Some("zstd"),
        }
    }
}

/// Uncompressed body size: one size or a uniform range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodySize {
    pub min: usize,
    pub max: usize,
}

impl Default for BodySize {
    fn default() -> Self {
        BodySize { min: 1024, max: 1024 }
    }
}

impl fmt::Display for BodySize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}-{}", self.min, self.max)
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParsePayloadError {
    #[error("unknown payload {0:?}; use series, logs, traces or raw")]
    Kind(String),
    #[error("unknown compression {0:?}; use none, deflate or zstd")]
    Compression(String),
    #[error("bad body size {0:?}; write it like 1k, 512, 64k, 1m or a range 1k-64k (at most 32m)")]
    Size(String),
}

impl FromStr for PayloadKind {
    type Err = ParsePayloadError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "series" => Ok(PayloadKind::Series),
            "logs" => Ok(PayloadKind::Logs),
            "traces" => Ok(PayloadKind::Traces),
            "raw" => Ok(PayloadKind::Raw),
            _ => Err(ParsePayloadError::Kind(s.to_owned())),
        }
    }
}

impl FromStr for Compression {
    type Err = ParsePayloadError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Compression::None),
            "deflate" => Ok(Compression::Deflate),
            "zstd" => Ok(Compression::Zstd),
            _ => Err(ParsePayloadError::Compression(s.to_owned())),
        }
    }
}

impl FromStr for BodySize {
    type Err = ParsePayloadError;
    /// `1024`, `1k`, `1m` (binary units), or `MIN-MAX`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParsePayloadError::Size(s.to_owned());
        let one = |t: &str| -> Result<usize, ParsePayloadError> {
            let t = t.trim().to_ascii_lowercase();
            let (digits, mult) = match t.as_bytes().last() {
                Some(b'k') => (&t[..t.len() - 1], 1024),
                Some(b'm') => (&t[..t.len() - 1], 1024 * 1024),
                _ => (&t[..], 1),
            };
            let n: usize = digits.parse().map_err(|_| bad())?;
            n.checked_mul(mult).filter(|&n| n <= MAX_BODY_SIZE).ok_or_else(bad)
        };
        let (min, max) = match s.split_once('-') {
            Some((a, b)) => (one(a)?, one(b)?),
            None => {
                let n = one(s)?;
                (n, n)
            }
        };
        if min > max {
            return Err(bad());
        }
        Ok(BodySize { min, max })
    }
}

/// Small, fast, deterministic generator (SplitMix64); not for secrets.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), with negligible bias.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// One body with a slot for the sequence number.
#[derive(Clone, Debug)]
struct Template {
    bytes: Vec<u8>,
    /// Offset of the [`SEQ_WIDTH`]-byte sequence slot.
    seq_at: usize,
}

/// The templates of a run, shared read-only by every connection.
#[derive(Debug)]
pub struct PayloadPool {
    kind: PayloadKind,
    compression: Compression,
    templates: Vec<Template>,
}

impl PayloadPool {
    /// Builds the pool: template sizes evenly spread over `size` (so that
    /// picking a template uniformly gives sizes uniform over the range), at
    /// most 64 templates and 64 MiB in all. `nonce` goes into every body so
    /// two runs never send the same bytes. JSON bodies are exactly the asked
    /// size unless it is below the smallest valid body of that kind.
    pub fn new(kind: PayloadKind, compression: Compression, size: BodySize, nonce: u64) -> PayloadPool {
        let by_bytes = (POOL_BYTES / size.max.max(1)).max(1);
        let count = if size.min == size.max { 8 } else { MAX_TEMPLATES }.min(by_bytes);
        let mut rng = Rng::new(nonce ^ 0x6C6F_6164_6765_6E21);
        let templates = (0..count)
            .map(|i| {
                let len = if count == 1 { size.min } else { size.min + (size.max - size.min) * i / (count - 1) };
                build_template(kind, len, nonce, &mut rng)
            })
            .collect();
        PayloadPool { kind, compression, templates }
    }

    pub fn kind(&self) -> PayloadKind {
        self.kind
    }

    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Number of templates.
    pub fn len(&self) -> usize {
        self.templates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }
}

/// Per-connection body builder over a shared [`PayloadPool`].
pub struct BodyGen {
    pool: Arc<PayloadPool>,
    rng: Rng,
    plain: Vec<u8>,
    compressed: Vec<u8>,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    deflate: Option<flate2::Compress>,
}

#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error("zstd compression failed: {0}")]
    Zstd(#[source] std::io::Error),
    #[error("deflate compression failed: {0}")]
    Deflate(#[source] flate2::CompressError),
}

impl BodyGen {
    /// `seed` picks the sequence of templates.
    pub fn new(pool: Arc<PayloadPool>, seed: u64) -> Result<BodyGen, CompressError> {
        let zstd = match pool.compression {
            Compression::Zstd => Some(zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(CompressError::Zstd)?),
            _ => None,
        };
        let deflate = match pool.compression {
            Compression::Deflate => Some(flate2::Compress::new(flate2::Compression::new(DEFLATE_LEVEL), true)),
            _ => None,
        };
        Ok(BodyGen { pool, rng: Rng::new(seed), plain: Vec::new(), compressed: Vec::new(), zstd, deflate })
    }

    /// The body for sequence number `seq`, compressed as the pool says. The
    /// slice lives until the next call.
    pub fn next(&mut self, seq: u64) -> Result<&[u8], CompressError> {
        let pick = self.rng.below(self.pool.templates.len() as u64) as usize;
        let template = &self.pool.templates[pick];
        self.plain.clear();
        self.plain.extend_from_slice(&template.bytes);
        write_seq(&mut self.plain[template.seq_at..template.seq_at + SEQ_WIDTH], seq);
        match self.pool.compression {
            Compression::None => Ok(&self.plain),
            Compression::Zstd => {
                let compressor = self.zstd.as_mut().expect("zstd compressor built for zstd pools");
                let bound = zstd::zstd_safe::compress_bound(self.plain.len());
                self.compressed.clear();
                self.compressed.reserve(bound);
                compressor.compress_to_buffer(&self.plain, &mut self.compressed).map_err(CompressError::Zstd)?;
                Ok(&self.compressed)
            }
            Compression::Deflate => {
                let compress = self.deflate.as_mut().expect("deflate context built for deflate pools");
                compress.reset();
                self.compressed.clear();
                // zlib's bound: input + 0.1% + header; never reallocates here.
                self.compressed.reserve(self.plain.len() + self.plain.len() / 1000 + 64);
                let status = compress
                    .compress_vec(&self.plain, &mut self.compressed, flate2::FlushCompress::Finish)
                    .map_err(CompressError::Deflate)?;
                debug_assert_eq!(status, flate2::Status::StreamEnd);
                Ok(&self.compressed)
            }
        }
    }
}

/// Writes `seq` as [`SEQ_WIDTH`] zero-padded decimal digits.
fn write_seq(slot: &mut [u8], mut seq: u64) {
    for b in slot.iter_mut().rev() {
        *b = b'0' + (seq % 10) as u8;
        seq /= 10;
    }
}

const SEQ_SLOT: &str = "00000000000000000000";
const WORDS: &[&str] = &[
    "request",
    "handled",
    "user",
    "checkout",
    "cache",
    "miss",
    "db",
    "query",
    "took",
    "ms",
    "retry",
    "upstream",
    "session",
    "token",
    "refreshed",
    "order",
    "payment",
    "accepted",
    "queue",
    "depth",
    "worker",
    "started",
];

fn words(rng: &mut Rng, n: usize, out: &mut String) {
    for i in 0..n {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
    }
}

/// A body of `kind`, `len` bytes long where the kind allows, with the
/// sequence slot in its first element.
fn build_template(kind: PayloadKind, len: usize, nonce: u64, rng: &mut Rng) -> Template {
    if kind == PayloadKind::Raw {
        let mut bytes: Vec<u8> = Vec::with_capacity(len.max(SEQ_WIDTH + 16));
        while bytes.len() < len.max(SEQ_WIDTH + 16) {
            bytes.extend_from_slice(&rng.next_u64().to_le_bytes());
        }
        bytes.truncate(len.max(SEQ_WIDTH + 16));
        bytes[SEQ_WIDTH..SEQ_WIDTH + 16].copy_from_slice(format!("{nonce:016x}").as_bytes());
        return Template { bytes, seq_at: 0 };
    }
    let (open, close) = match kind {
        PayloadKind::Series => ("{\"series\":[", "]}"),
        PayloadKind::Logs => ("[", "]"),
        PayloadKind::Traces => ("{\"traces\":[[", "]]}"),
        PayloadKind::Raw => unreachable!(),
    };
    let mut body = String::with_capacity(len + 512);
    body.push_str(open);
    let mut seq_at = 0;
    let mut index = 0u64;
    // `,"pad":"` + padding + `"` replaces the element's closing brace.
    const PAD_FIELD: usize = ",\"pad\":\"\"".len();
    loop {
        let start = body.len();
        if index > 0 {
            body.push(',');
        }
        let seq = if index == 0 { SEQ_SLOT } else { "" };
        element(kind, index, nonce, seq, rng, &mut body);
        if index == 0 {
            seq_at = body.find(SEQ_SLOT).expect("first element holds the sequence slot");
        } else if body.len() + PAD_FIELD + close.len() > len {
            body.truncate(start);
            break;
        }
        index += 1;
    }
    // Pad to the exact size inside the last element.
    if body.len() + PAD_FIELD + close.len() <= len {
        let missing = len - (body.len() + PAD_FIELD + close.len());
        body.pop(); // the element's closing brace
        body.push_str(",\"pad\":\"");
        body.push_str(&"x".repeat(missing));
        body.push_str("\"}");
    }
    body.push_str(close);
    Template { bytes: body.into_bytes(), seq_at }
}

/// One array element; `seq` (empty except in the first) goes in a field.
fn element(kind: PayloadKind, index: u64, nonce: u64, seq: &str, rng: &mut Rng, out: &mut String) {
    use std::fmt::Write;
    let ts = 1_700_000_000 + rng.below(1_000_000);
    let host = rng.below(64);
    let _ = match kind {
        PayloadKind::Series => write!(
            out,
            "{{\"metric\":\"loadgen.metric.{index}\",\"type\":3,\"points\":[{{\"timestamp\":{ts},\"value\":{}.{}}}],\
             \"resources\":[{{\"name\":\"host-{host}\",\"type\":\"host\"}}],\
             \"tags\":[\"env:load\",\"service:loadgen\",\"run:{nonce:016x}\",\"seq:{seq}\"]}}",
            rng.below(10_000),
            rng.below(100),
        ),
        PayloadKind::Logs => {
            let mut message = String::new();
            let count = 8 + rng.below(16) as usize;
            words(rng, count, &mut message);
            write!(
                out,
                "{{\"message\":\"{message}\",\"ddsource\":\"loadgen\",\"ddtags\":\"env:load,run:{nonce:016x},seq:{seq}\",\
                 \"hostname\":\"host-{host}\",\"service\":\"loadgen\",\"status\":\"info\",\"timestamp\":{ts}000}}"
            )
        }
        PayloadKind::Traces => write!(
            out,
            "{{\"trace_id\":{},\"span_id\":{},\"parent_id\":0,\"name\":\"web.request\",\"resource\":\"POST /api/{index}\",\
             \"service\":\"loadgen\",\"type\":\"web\",\"start\":{ts}000000000,\"duration\":{},\"error\":0,\
             \"meta\":{{\"env\":\"load\",\"run\":\"{nonce:016x}\",\"seq\":\"{seq}\"}},\"metrics\":{{\"_sampling_priority_v1\":1}}}}",
            rng.next_u64() >> 1,
            rng.next_u64() >> 1,
            rng.below(10_000_000),
        ),
        PayloadKind::Raw => unreachable!(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::io::Read;

    fn decode(compression: Compression, body: &[u8]) -> Vec<u8> {
        match compression {
            Compression::None => body.to_vec(),
            Compression::Deflate => {
                let mut out = Vec::new();
                flate2::read::ZlibDecoder::new(body).read_to_end(&mut out).unwrap();
                out
            }
            Compression::Zstd => zstd::stream::decode_all(body).unwrap(),
        }
    }

    #[test]
    fn parses_sizes() {
        assert_eq!("1k".parse(), Ok(BodySize { min: 1024, max: 1024 }));
        assert_eq!("512".parse(), Ok(BodySize { min: 512, max: 512 }));
        assert_eq!("1k-64k".parse(), Ok(BodySize { min: 1024, max: 65536 }));
        assert_eq!("2M".parse(), Ok(BodySize { min: 2 << 20, max: 2 << 20 }));
        assert!("64k-1k".parse::<BodySize>().is_err());
        assert!("1g".parse::<BodySize>().is_err());
        assert!("33m".parse::<BodySize>().is_err());
        assert!("x".parse::<BodySize>().is_err());
    }

    #[test]
    fn json_bodies_have_the_asked_size_and_parse() {
        for kind in [PayloadKind::Series, PayloadKind::Logs, PayloadKind::Traces] {
            for len in [1024, 1500, 4096, 65_536] {
                let pool = PayloadPool::new(kind, Compression::None, BodySize { min: len, max: len }, 7);
                let mut gen = BodyGen::new(Arc::new(pool), 1).unwrap();
                let body = gen.next(42).unwrap().to_vec();
                assert_eq!(body.len(), len, "{kind:?} {len}");
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert!(String::from_utf8(body).unwrap().contains("00000000000000000042"));
                assert!(json.is_object() || json.is_array());
            }
        }
        // Below the smallest element: still valid, slightly larger.
        let pool = PayloadPool::new(PayloadKind::Series, Compression::None, BodySize { min: 10, max: 10 }, 7);
        let body = BodyGen::new(Arc::new(pool), 1).unwrap().next(1).unwrap().to_vec();
        serde_json::from_slice::<serde_json::Value>(&body).unwrap();
    }

    #[test]
    fn every_body_is_unique_and_round_trips() {
        for kind in [PayloadKind::Series, PayloadKind::Logs, PayloadKind::Traces, PayloadKind::Raw] {
            for compression in [Compression::None, Compression::Deflate, Compression::Zstd] {
                let pool = Arc::new(PayloadPool::new(kind, compression, "1k-8k".parse().unwrap(), 99));
                let mut gen = BodyGen::new(Arc::clone(&pool), 5).unwrap();
                let mut seen = HashSet::new();
                for seq in 0..500u64 {
                    let body = gen.next(seq).unwrap().to_vec();
                    let plain = decode(compression, &body);
                    assert!((1024..=8192).contains(&plain.len()), "{kind:?} {compression:?} {}", plain.len());
                    if kind != PayloadKind::Raw {
                        assert!(String::from_utf8_lossy(&plain).contains(&format!("{seq:020}")));
                        serde_json::from_slice::<serde_json::Value>(&plain).unwrap();
                    }
                    assert!(seen.insert(body), "{kind:?} {compression:?}: body {seq} repeated");
                }
            }
        }
    }

    #[test]
    fn sizes_spread_over_the_range() {
        let pool = PayloadPool::new(PayloadKind::Logs, Compression::None, "1k-64k".parse().unwrap(), 1);
        assert_eq!(pool.len(), 64);
        let sizes: Vec<usize> = pool.templates.iter().map(|t| t.bytes.len()).collect();
        assert_eq!(sizes[0], 1024);
        assert_eq!(sizes[63], 65536);
        assert!(sizes.windows(2).all(|w| w[0] < w[1]));
        // Large bodies: the pool stays within its byte budget.
        let pool = PayloadPool::new(PayloadKind::Raw, Compression::None, "16m".parse().unwrap(), 1);
        assert_eq!(pool.len(), 4);
    }

    #[test]
    fn two_runs_differ() {
        let a = PayloadPool::new(PayloadKind::Series, Compression::None, BodySize::default(), 1);
        let b = PayloadPool::new(PayloadKind::Series, Compression::None, BodySize::default(), 2);
        let body_a = BodyGen::new(Arc::new(a), 1).unwrap().next(0).unwrap().to_vec();
        let body_b = BodyGen::new(Arc::new(b), 1).unwrap().next(0).unwrap().to_vec();
        assert_ne!(body_a, body_b);
    }

    #[test]
    fn rng_below_is_in_range() {
        let mut rng = Rng::new(3);
        let mut hits = [0u32; 7];
        for _ in 0..7000 {
            hits[rng.below(7) as usize] += 1;
        }
        assert!(hits.iter().all(|&h| (800..1200).contains(&h)), "{hits:?}");
    }
}
