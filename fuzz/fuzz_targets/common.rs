//! Helpers shared by the fuzz targets (included with `#[path]`, not a crate).
#![allow(dead_code)] // each target uses a part

/// A few split points of `data` that the fuzzer can steer without any
/// framing bytes in the input (so seeds stay plain HTTP): one derived from a
/// hash of the whole input, one just before the end, and the positions around
/// the first blank line and the first line end.
pub fn split_points(data: &[u8]) -> Vec<usize> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut points = vec![(h % (data.len() as u64 + 1)) as usize, data.len().saturating_sub(1)];
    if let Some(p) = find(data, b"\r\n\r\n") {
        points.extend([p, p + 1, p + 2, p + 3, p + 4]);
    }
    if let Some(p) = find(data, b"\n") {
        points.extend([p, p + 1]);
    }
    points.retain(|&p| p < data.len());
    points.sort_unstable();
    points.dedup();
    points
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The header fields of a complete head, as (name, value) byte pairs.
pub fn fields<'a>(headers: &[httparse::Header<'a>]) -> Vec<(&'a str, &'a [u8])> {
    headers.iter().map(|h| (h.name, h.value)).collect()
}

pub fn count(fields: &[(&str, &[u8])], name: &str) -> usize {
    fields.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).count()
}

pub const HOP_BY_HOP: [&str; 6] = ["connection", "keep-alive", "te", "trailer", "upgrade", "proxy-connection"];

/// The value of a Content-Length field as the next hop would read it.
pub fn length_value(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.trim_matches([' ', '\t']).parse().ok()
}
