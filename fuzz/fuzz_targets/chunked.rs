//! The incremental chunked-body scanner (`http1::ChunkedScanner`): delivery
//! in pieces never changes where the body ends, and the end is exact;
//! decoding (`dechunk`, for HTTP/1.0 clients) ends the body at the same byte
//! and yields exactly the payload the scan counts, however the bytes come.
#![no_main]

use fipsrelay::http1::ChunkedScanner;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;
use common::split_points;

/// What a scan over some delivery of the input concluded.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Bytes that belong to the body, decoded payload, end of body seen.
    Scanned {
        used: usize,
        payload: u64,
        done: bool,
    },
    Refused(&'static str),
}

/// Feeds `input` in the pieces ending at `cuts` (then the rest), as the relay
/// does: each call sees only the bytes not yet consumed.
fn scan_in_pieces(input: &[u8], cuts: impl IntoIterator<Item = usize>) -> Outcome {
    let mut s = ChunkedScanner::new();
    let mut used = 0;
    for end in cuts.into_iter().chain([input.len()]) {
        if s.is_done() || end < used {
            continue;
        }
        match s.scan(&input[used..end]) {
            Ok(n) => {
                assert!(n <= end - used, "scan consumed {n} of {} bytes given", end - used);
                assert!(n == end - used || s.is_done(), "scan stopped early without reaching the end of the body");
                used += n;
            }
            Err(e) => return Outcome::Refused(e),
        }
    }
    assert!(s.payload <= used as u64);
    Outcome::Scanned { used, payload: s.payload, done: s.is_done() }
}

/// As [`scan_in_pieces`], with `dechunk`; also returns the decoded payload.
fn dechunk_in_pieces(input: &[u8], cuts: impl IntoIterator<Item = usize>) -> (Outcome, Vec<u8>) {
    let mut s = ChunkedScanner::new();
    let (mut used, mut decoded) = (0, Vec::new());
    for end in cuts.into_iter().chain([input.len()]) {
        if s.is_done() || end < used {
            continue;
        }
        let mut piece = input[used..end].to_vec();
        match s.dechunk(&mut piece) {
            Ok((n, out)) => {
                assert!(out <= n && n <= end - used, "dechunk gave {out} of {n} consumed, {} given", end - used);
                assert_eq!(&piece[n..], &input[used + n..end], "dechunk touched bytes after the body");
                decoded.extend_from_slice(&piece[..out]);
                used += n;
            }
            Err(e) => return (Outcome::Refused(e), decoded),
        }
    }
    assert_eq!(decoded.len() as u64, s.payload);
    (Outcome::Scanned { used, payload: s.payload, done: s.is_done() }, decoded)
}

fuzz_target!(|data: &[u8]| {
    let whole = scan_in_pieces(data, []);
    let (decoded_whole, payload) = dechunk_in_pieces(data, []);
    assert_eq!(decoded_whole, whole, "dechunk and scan disagree");
    for cut in split_points(data) {
        let (outcome, bytes) = dechunk_in_pieces(data, [cut]);
        assert_eq!(outcome, whole, "dechunk split at {cut}");
        if matches!(outcome, Outcome::Scanned { .. }) {
            assert_eq!(bytes, payload, "dechunk split at {cut} decoded other bytes");
        }
    }
    for cut in split_points(data) {
        assert_eq!(scan_in_pieces(data, [cut]), whole, "split at {cut}");
    }
    assert_eq!(scan_in_pieces(data, 1..data.len()), whole, "byte by byte");

    if let Outcome::Scanned { used, payload, done } = whole {
        assert!(used <= data.len());
        if done {
            // The end is exact: the consumed bytes alone are a complete body,
            // and one byte less is not.
            let again = scan_in_pieces(&data[..used], []);
            assert_eq!(again, Outcome::Scanned { used, payload, done: true });
            let short = scan_in_pieces(&data[..used - 1], []);
            assert!(
                matches!(short, Outcome::Scanned { done: false, .. }),
                "body already complete one byte early: {short:?}"
            );
        } else {
            assert_eq!(used, data.len(), "unfinished body must consume all input");
        }
    }
});
