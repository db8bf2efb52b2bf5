//! Request bodies shaped like the Agent's: JSON bodies (series, log batch,
//! trace payload) come from a pool of templates built once before the run,
//! each with a fixed-width slot where a request's sequence number is
//! written, so that every body is unique without building one from
//! scratch; raw bodies are slices of one block of random bytes (as
//! incompressible as the Agent's zstd output), of a size drawn per request
//! from the [`BodySize`] distribution (fixed, uniform or log-uniform) by the
//! connection's seeded generator, so a run with the same seed repeats its
//! sizes. Compression (zlib `deflate` or `zstd`) runs per request with a
//! reused context into a reused buffer. Owns body bytes only; it never
//! touches sockets.
//!
//! # Invariants
//! - Two bodies produced with different sequence numbers (or run nonces)
//!   differ, compressed or not.
//! - Every body's uncompressed size is within the [`BodySize`] bounds (JSON
//!   bodies below the smallest valid body of their kind excepted).
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
/// Smallest raw body: the sequence slot and the run's nonce (16 hex digits).
const RAW_MIN: usize = SEQ_WIDTH + 16;
/// Most extra random bytes past the largest raw body, over which its start
/// slides (so two bodies of one size are different slices).
const RAW_SLIDE: usize = 1024 * 1024;
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

/// How sizes are spread between [`BodySize::min`] and [`BodySize::max`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SizeSpread {
    /// Every size in the range equally likely (one size when min = max).
    #[default]
    Uniform,
    /// The logarithm of the size uniform: each decade of sizes gets the same
    /// share of the requests, the median is near sqrt(min·max). The Agent's
    /// payloads spread so (a few hundred bytes to the 2.5 MiB cap).
    LogUniform,
}

/// Uncompressed body size: one size, or a range and how sizes spread over
/// it. Written `1k` (fixed), `1k-64k` or `uniform:1k..64k` (uniform),
/// `log-uniform:512..1m` (log-uniform); `fixed:1m` is `1m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodySize {
    pub min: usize,
    pub max: usize,
    pub spread: SizeSpread,
}

impl Default for BodySize {
    fn default() -> Self {
        BodySize::fixed(1024)
    }
}

impl BodySize {
    /// Every body `len` bytes.
    pub const fn fixed(len: usize) -> BodySize {
        BodySize { min: len, max: len, spread: SizeSpread::Uniform }
    }

    /// Sizes uniform over `min..=max`.
    pub const fn uniform(min: usize, max: usize) -> BodySize {
        BodySize { min, max, spread: SizeSpread::Uniform }
    }

    /// Sizes log-uniform over `min..=max` (min ≥ 1).
    pub const fn log_uniform(min: usize, max: usize) -> BodySize {
        BodySize { min, max, spread: SizeSpread::LogUniform }
    }

    pub fn is_fixed(&self) -> bool {
        self.min == self.max
    }

    /// One size drawn from the distribution, always within `min..=max`.
    pub fn draw(&self, rng: &mut Rng) -> usize {
        if self.is_fixed() {
            return self.min;
        }
        match self.spread {
            SizeSpread::Uniform => self.min + rng.below((self.max - self.min) as u64 + 1) as usize,
            SizeSpread::LogUniform => {
                // exp of a uniform draw over [ln min, ln(max + 1)), floored:
                // P(size = n) ∝ ln((n + 1) / n), which is the continuous
                // log-uniform density binned to whole bytes.
                let (lo, hi) = ((self.min.max(1) as f64).ln(), ((self.max + 1) as f64).ln());
                let len = (lo + rng.unit() * (hi - lo)).exp().floor() as usize;
                len.clamp(self.min, self.max)
            }
        }
    }

    /// The mean size of the distribution, in bytes.
    pub fn mean(&self) -> f64 {
        let (min, max) = (self.min as f64, self.max as f64);
        match self.spread {
            _ if self.is_fixed() => min,
            SizeSpread::Uniform => (min + max) / 2.0,
            // ∫ x dx/(x ln(b/a)) over [a, b] = (b − a) / ln(b/a), with b = max + 1.
            SizeSpread::LogUniform => (max + 1.0 - min.max(1.0)) / ((max + 1.0) / min.max(1.0)).ln(),
        }
    }

    /// `count` template sizes whose uniform choice follows the distribution:
    /// evenly spaced for uniform, geometrically spaced for log-uniform.
    fn template_sizes(&self, count: usize) -> Vec<usize> {
        if count == 1 || self.is_fixed() {
            return vec![self.min; count];
        }
        (0..count)
            .map(|i| match self.spread {
                SizeSpread::Uniform => self.min + (self.max - self.min) * i / (count - 1),
                SizeSpread::LogUniform => {
                    let ratio = self.max as f64 / self.min.max(1) as f64;
                    let len = (self.min.max(1) as f64 * ratio.powf(i as f64 / (count - 1) as f64)).round() as usize;
                    len.clamp(self.min, self.max)
                }
            })
            .collect()
    }
}

impl fmt::Display for BodySize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.spread {
            _ if self.is_fixed() => write!(f, "{}", self.min),
            SizeSpread::Uniform => write!(f, "{}-{}", self.min, self.max),
            SizeSpread::LogUniform => write!(f, "log-uniform:{}..{}", self.min, self.max),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParsePayloadError {
    #[error("unknown payload {0:?}; use series, logs, traces or raw")]
    Kind(String),
    #[error("unknown compression {0:?}; use none, deflate or zstd")]
    Compression(String),
    #[error(
        "bad body size {0:?}; write it like 1k, 512, 64k, 1m, fixed:1m, a uniform range 1k-64k or \
         uniform:1k..64k, or log-uniform:512..1m (sizes at most 32m, the smaller first)"
    )]
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
    /// `1024`, `1k`, `1m` (binary units), `MIN-MAX`, `fixed:N`,
    /// `uniform:MIN..MAX` or `log-uniform:MIN..MAX`.
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
        let range = |t: &str| -> Result<(usize, usize), ParsePayloadError> {
            let (a, b) = t.split_once("..").ok_or_else(bad)?;
            Ok((one(a)?, one(b)?))
        };
        let (min, max, spread) = if let Some(rest) = s.strip_prefix("log-uniform:") {
            let (min, max) = range(rest)?;
            (min, max, SizeSpread::LogUniform)
        } else if let Some(rest) = s.strip_prefix("uniform:") {
            let (min, max) = range(rest)?;
            (min, max, SizeSpread::Uniform)
        } else if let Some(rest) = s.strip_prefix("fixed:") {
            let n = one(rest)?;
            (n, n, SizeSpread::Uniform)
        } else {
            match s.split_once('-') {
                Some((a, b)) => (one(a)?, one(b)?, SizeSpread::Uniform),
                None => {
                    let n = one(s)?;
                    (n, n, SizeSpread::Uniform)
                }
            }
        };
        if min > max || (spread == SizeSpread::LogUniform && min == 0) {
            return Err(bad());
        }
        Ok(BodySize { min, max, spread })
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

    /// Uniform in `[0, 1)`, 53 bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One body with a slot for the sequence number.
#[derive(Clone, Debug)]
struct Template {
    bytes: Vec<u8>,
    /// Offset of the [`SEQ_WIDTH`]-byte sequence slot.
    seq_at: usize,
}

/// The bodies of a run, shared read-only by every connection: templates
/// for the JSON kinds, one block of random bytes for raw bodies.
#[derive(Debug)]
pub struct PayloadPool {
    kind: PayloadKind,
    compression: Compression,
    size: BodySize,
    /// JSON kinds: the templates, picked uniformly per request.
    templates: Vec<Template>,
    /// Raw: random bytes; a body is a slice of it at a random offset.
    random: Vec<u8>,
    /// The run's nonce in hex, written into every raw body.
    nonce_hex: [u8; 16],
}

impl PayloadPool {
    /// Builds the pool. JSON kinds: template sizes spread over `size` (evenly
    /// for a uniform range, geometrically for a log-uniform one, so that
    /// picking a template uniformly follows the distribution), at most 64
    /// templates and 64 MiB in all; JSON bodies are exactly the asked size
    /// unless it is below the smallest valid body of that kind. Raw: a block
    /// of `size.max` random bytes plus room to slide (up to 1 MiB more), and
    /// each request draws its own size. `nonce` goes into every body so two
    /// runs never send the same bytes.
    pub fn new(kind: PayloadKind, compression: Compression, size: BodySize, nonce: u64) -> PayloadPool {
        let mut rng = Rng::new(nonce ^ 0x6C6F_6164_6765_6E21);
        let mut nonce_hex = [0u8; 16];
        nonce_hex.copy_from_slice(format!("{nonce:016x}").as_bytes());
        let (templates, random) = if kind == PayloadKind::Raw {
            let longest = size.max.max(RAW_MIN);
            let len = longest + longest.clamp(64, RAW_SLIDE);
            let mut random = Vec::with_capacity(len + 8);
            while random.len() < len {
                random.extend_from_slice(&rng.next_u64().to_le_bytes());
            }
            random.truncate(len);
            (Vec::new(), random)
        } else {
            let by_bytes = (POOL_BYTES / size.max.max(1)).max(1);
            let count = if size.is_fixed() { 8 } else { MAX_TEMPLATES }.min(by_bytes);
            let templates =
                size.template_sizes(count).into_iter().map(|len| build_template(kind, len, nonce, &mut rng)).collect();
            (templates, Vec::new())
        };
        PayloadPool { kind, compression, size, templates, random, nonce_hex }
    }

    pub fn kind(&self) -> PayloadKind {
        self.kind
    }

    pub fn compression(&self) -> Compression {
        self.compression
    }

    pub fn size(&self) -> BodySize {
        self.size
    }

    /// Number of templates (raw bodies have none: they are drawn per request).
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
        self.plain.clear();
        if self.pool.kind == PayloadKind::Raw {
            // Size first, then where in the block: both from this
            // connection's generator, so a seed repeats the sizes.
            let len = self.pool.size.draw(&mut self.rng).max(RAW_MIN);
            let start = self.rng.below((self.pool.random.len() - len + 1) as u64) as usize;
            self.plain.extend_from_slice(&self.pool.random[start..start + len]);
            write_seq(&mut self.plain[..SEQ_WIDTH], seq);
            self.plain[SEQ_WIDTH..RAW_MIN].copy_from_slice(&self.pool.nonce_hex);
        } else {
            let pick = self.rng.below(self.pool.templates.len() as u64) as usize;
            let template = &self.pool.templates[pick];
            self.plain.extend_from_slice(&template.bytes);
            write_seq(&mut self.plain[template.seq_at..template.seq_at + SEQ_WIDTH], seq);
        }
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

/// A JSON body of `kind`, `len` bytes long where the kind allows, with the
/// sequence slot in its first element.
fn build_template(kind: PayloadKind, len: usize, nonce: u64, rng: &mut Rng) -> Template {
    let (open, close) = match kind {
        PayloadKind::Series => ("{\"series\":[", "]}"),
        PayloadKind::Logs => ("[", "]"),
        PayloadKind::Traces => ("{\"traces\":[[", "]]}"),
        PayloadKind::Raw => unreachable!("raw bodies are sliced from the pool's random block"),
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
        assert_eq!("1k".parse(), Ok(BodySize::fixed(1024)));
        assert_eq!("512".parse(), Ok(BodySize::fixed(512)));
        assert_eq!("fixed:1m".parse(), Ok(BodySize::fixed(1 << 20)));
        assert_eq!("1k-64k".parse(), Ok(BodySize::uniform(1024, 65536)));
        assert_eq!("uniform:1k..64k".parse(), Ok(BodySize::uniform(1024, 65536)));
        assert_eq!("2M".parse(), Ok(BodySize::fixed(2 << 20)));
        assert_eq!("log-uniform:512..1m".parse(), Ok(BodySize::log_uniform(512, 1 << 20)));
        assert_eq!("log-uniform:512..2621440".parse(), Ok(BodySize::log_uniform(512, 2_621_440)));
        for bad in ["64k-1k", "1g", "33m", "x", "log-uniform:0..1m", "log-uniform:1m..1k", "log-uniform:1k", "fixed:"] {
            assert!(bad.parse::<BodySize>().is_err(), "{bad}");
        }
        // Display is what the report prints, and parses back.
        for text in ["1024", "1024-65536", "log-uniform:512..1048576"] {
            assert_eq!(text.parse::<BodySize>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn log_uniform_sizes_fill_every_decade_equally() {
        // 512 B .. 1 MiB, the Agent mix: ln(2048) = 7.62, so each decade
        // holds ln(10)/ln(2048) = 30.3 % of the draws; median sqrt(min·max).
        let size = BodySize::log_uniform(512, 1 << 20);
        let mut rng = Rng::new(42);
        let n = 200_000;
        let mut sizes: Vec<usize> = (0..n).map(|_| size.draw(&mut rng)).collect();
        sizes.sort_unstable();
        assert!(sizes[0] >= 512 && sizes[n - 1] <= 1 << 20, "{} {}", sizes[0], sizes[n - 1]);
        // Both ends are reached.
        assert!(sizes[0] < 520 && sizes[n - 1] > 1_040_000, "{} {}", sizes[0], sizes[n - 1]);
        let median = sizes[n / 2] as f64;
        let expected = (512.0 * (1u64 << 20) as f64).sqrt(); // 23,170
        assert!((median / expected - 1.0).abs() < 0.03, "median {median}, expected {expected}");
        let below = |limit: usize| sizes.partition_point(|&s| s < limit) as f64 / n as f64;
        let decade = 10f64.ln() / 2048f64.ln();
        for (k, limit) in [5_120, 51_200, 512_000].into_iter().enumerate() {
            let share = below(limit);
            assert!((share - decade * (k + 1) as f64).abs() < 0.01, "below {limit}: {share}");
        }
        // Quartiles in the right decades: p25 in 2-10 KiB, p75 in 100-300 KiB.
        assert!((2_000..10_000).contains(&sizes[n / 4]), "p25 {}", sizes[n / 4]);
        assert!((100_000..300_000).contains(&sizes[3 * n / 4]), "p75 {}", sizes[3 * n / 4]);
        // The mean, ~134 KiB, as `mean()` says.
        let mean = sizes.iter().sum::<usize>() as f64 / n as f64;
        assert!((mean / size.mean() - 1.0).abs() < 0.03, "mean {mean} vs {}", size.mean());
        assert!((130_000.0..140_000.0).contains(&size.mean()), "{}", size.mean());
    }

    #[test]
    fn uniform_and_fixed_draws_stay_in_bounds() {
        let mut rng = Rng::new(7);
        let uniform = BodySize::uniform(1000, 1010);
        let mut seen = [false; 11];
        for _ in 0..10_000 {
            let s = uniform.draw(&mut rng);
            assert!((1000..=1010).contains(&s));
            seen[s - 1000] = true;
        }
        assert!(seen.iter().all(|&b| b), "both ends reached");
        assert!((0..100).all(|_| BodySize::fixed(4096).draw(&mut rng) == 4096));
        assert_eq!(BodySize::log_uniform(7, 7).draw(&mut rng), 7);
    }

    #[test]
    fn raw_sizes_repeat_with_the_seed_and_bodies_are_incompressible() {
        let size: BodySize = "log-uniform:512..1m".parse().unwrap();
        let sizes = |seed: u64, nonce: u64| -> Vec<usize> {
            let pool = Arc::new(PayloadPool::new(PayloadKind::Raw, Compression::None, size, nonce));
            let mut gen = BodyGen::new(pool, seed).unwrap();
            (0..200).map(|seq| gen.next(seq).unwrap().len()).collect()
        };
        let a = sizes(1, 100);
        // Same seed, another run (nonce): the same sizes.
        assert_eq!(a, sizes(1, 200));
        assert_ne!(a, sizes(2, 100));
        assert!(a.iter().all(|s| (512..=1 << 20).contains(s)));
        // Random bytes: zstd cannot shrink them (the Agent's payloads are
        // zstd output already).
        let pool = Arc::new(PayloadPool::new(PayloadKind::Raw, Compression::None, BodySize::fixed(65_536), 3));
        let body = BodyGen::new(pool, 1).unwrap().next(9).unwrap().to_vec();
        let packed = zstd::bulk::compress(&body, 3).unwrap();
        assert!(packed.len() as f64 > body.len() as f64 * 0.99, "{} -> {}", body.len(), packed.len());
    }

    #[test]
    fn json_bodies_have_the_asked_size_and_parse() {
        for kind in [PayloadKind::Series, PayloadKind::Logs, PayloadKind::Traces] {
            for len in [1024, 1500, 4096, 65_536] {
                let pool = PayloadPool::new(kind, Compression::None, BodySize::fixed(len), 7);
                let mut gen = BodyGen::new(Arc::new(pool), 1).unwrap();
                let body = gen.next(42).unwrap().to_vec();
                assert_eq!(body.len(), len, "{kind:?} {len}");
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert!(String::from_utf8(body).unwrap().contains("00000000000000000042"));
                assert!(json.is_object() || json.is_array());
            }
        }
        // Below the smallest element: still valid, slightly larger.
        let pool = PayloadPool::new(PayloadKind::Series, Compression::None, BodySize::fixed(10), 7);
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
        // Log-uniform JSON: geometric steps, each template one 64th.
        let pool = PayloadPool::new(PayloadKind::Series, Compression::None, "log-uniform:1k..256k".parse().unwrap(), 1);
        let sizes: Vec<usize> = pool.templates.iter().map(|t| t.bytes.len()).collect();
        assert_eq!((sizes[0], sizes[63]), (1024, 262_144));
        let step = (256f64).powf(1.0 / 63.0);
        assert!(sizes.windows(2).all(|w| (w[1] as f64 / w[0] as f64 / step - 1.0).abs() < 0.01), "{sizes:?}");
        // Raw bodies: no templates, one random block with room to slide.
        let pool = PayloadPool::new(PayloadKind::Raw, Compression::None, "16m".parse().unwrap(), 1);
        assert_eq!(pool.len(), 0);
        assert_eq!(pool.random.len(), 17 << 20);
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
