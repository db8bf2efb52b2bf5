//! A fixed-size, order-free summary of a multiset of body hashes, kept the
//! same way by the mock intake (what it recorded) and by loadgen (what was
//! answered 2xx), so that `--verify` works for a run of any length with
//! memory that does not grow with it.
//!
//! A [`BodyDigest`] holds a count, two independent wrapping sums of the
//! hashes (the plain value and a 64-bit mix of it), and an invertible
//! counting sketch ([`Sketch`], an invertible Bloom lookup table with
//! additive cells). Equal multisets give equal digests. Subtracting two
//! digests leaves a digest of the difference; when the difference is small
//! (up to about [`SKETCH_CELLS`] / 1.5 distinct bodies) the sketch decodes it
//! into the bodies that differ, with their signed counts. The two sums check
//! the decoding independently. Owns arithmetic only: no I/O, no bodies.

use serde::{Deserialize, Serialize};

/// Cells in a [`Sketch`]: 24 bytes each, 768 KiB in all.
pub const SKETCH_CELLS: usize = 1 << 15;
/// Cells each hash goes to, one in each third of the table.
const SKETCH_HASHES: usize = 3;
/// Cells per third.
const PART: usize = SKETCH_CELLS / SKETCH_HASHES;

/// 64-bit finalizer (the splitmix64 one) keyed by `key`: a different key
/// gives an unrelated function of `h`.
fn mix(h: u64, key: u64) -> u64 {
    let mut z = h ^ key;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The second, independent sum's function.
fn mixed(h: u64) -> u64 {
    mix(h, 0x243f_6a88_85a3_08d3)
}

/// The sketch's per-cell check value.
fn check(h: u64) -> u64 {
    mix(h, 0x1319_8a2e_0370_7344)
}

/// The cells `h` goes to, one per third.
fn cells(h: u64) -> [usize; SKETCH_HASHES] {
    let mut out = [0; SKETCH_HASHES];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = i * PART + (mix(h, 0x9e37_79b9_7f4a_7c15 ^ i as u64) % PART as u64) as usize;
    }
    out
}

/// Invertible counting sketch: per cell, a signed count, the wrapping sum of
/// the hashes and the wrapping sum of their check values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sketch {
    pub count: Vec<i64>,
    pub key_sum: Vec<u64>,
    pub check_sum: Vec<u64>,
}

impl Default for Sketch {
    fn default() -> Self {
        Sketch { count: vec![0; SKETCH_CELLS], key_sum: vec![0; SKETCH_CELLS], check_sum: vec![0; SKETCH_CELLS] }
    }
}

/// Multiplicative inverse of an odd `a` modulo 2^64 (Newton's iteration).
fn inverse_odd(a: u64) -> u64 {
    let mut x = a; // correct to 3 bits for odd a
    for _ in 0..5 {
        x = x.wrapping_mul(2u64.wrapping_sub(a.wrapping_mul(x)));
    }
    x
}

impl Sketch {
    fn add(&mut self, h: u64, times: i64) {
        let (k, c) = (h.wrapping_mul(times as u64), check(h).wrapping_mul(times as u64));
        for i in cells(h) {
            self.count[i] += times;
            self.key_sum[i] = self.key_sum[i].wrapping_add(k);
            self.check_sum[i] = self.check_sum[i].wrapping_add(c);
        }
    }

    fn subtract(&mut self, other: &Sketch) {
        for i in 0..SKETCH_CELLS.min(other.count.len()) {
            self.count[i] -= other.count[i];
            self.key_sum[i] = self.key_sum[i].wrapping_sub(other.key_sum[i]);
            self.check_sum[i] = self.check_sum[i].wrapping_sub(other.check_sum[i]);
        }
    }

    fn is_valid(&self) -> bool {
        self.count.len() == SKETCH_CELLS && self.key_sum.len() == SKETCH_CELLS && self.check_sum.len() == SKETCH_CELLS
    }

    /// The one hash cell `i` holds `count[i]` times, if it holds only one.
    fn pure(&self, i: usize) -> Option<u64> {
        let c = self.count[i];
        if c == 0 || c.unsigned_abs() > 1 << 20 {
            return None;
        }
        // key_sum = c·h mod 2^64. With c = 2^t·o (o odd), h is known up to its
        // top t bits: try each candidate (t is small for small counts).
        let t = c.unsigned_abs().trailing_zeros();
        if t > 4 {
            return None;
        }
        let o = (c as u64) >> t; // odd, as a 64-bit two's complement value
        if self.key_sum[i] & ((1u64 << t) - 1) != 0 {
            return None;
        }
        let low = (self.key_sum[i] >> t).wrapping_mul(inverse_odd(o)) & (u64::MAX >> t);
        (0..1u64 << t).map(|top| low | top.checked_shl(64 - t).unwrap_or(0)).find(|&h| {
            h.wrapping_mul(c as u64) == self.key_sum[i]
                && check(h).wrapping_mul(c as u64) == self.check_sum[i]
                && cells(h).contains(&i)
        })
    }

    /// Peels the sketch: every (hash, signed count) it holds, or `None` when
    /// the difference is too large to decode.
    fn decode(mut self) -> Option<Vec<(u64, i64)>> {
        let mut found = Vec::new();
        let mut queue: Vec<usize> = (0..SKETCH_CELLS).filter(|&i| self.count[i] != 0).collect();
        while let Some(i) = queue.pop() {
            if self.count[i] == 0 {
                continue;
            }
            if let Some(h) = self.pure(i) {
                let c = self.count[i];
                found.push((h, c));
                self.add(h, -c);
                queue.extend(cells(h));
            }
        }
        let empty = self.count.iter().all(|&c| c == 0)
            && self.key_sum.iter().all(|&k| k == 0)
            && self.check_sum.iter().all(|&k| k == 0);
        empty.then_some(found)
    }
}

/// Summary of a multiset of body hashes (see the module doc).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyDigest {
    /// Bodies in the multiset.
    pub count: u64,
    /// Wrapping sum of the hashes.
    pub sum: u64,
    /// Wrapping sum of a 64-bit mix of each hash: independent of `sum`.
    pub mixed_sum: u64,
    pub sketch: Sketch,
}

/// What [`BodyDigest::difference`] found: `self` minus `other`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Difference {
    /// The multisets are equal.
    Equal,
    /// These bodies differ: positive counts are in `self` more often.
    Named(Vec<(u64, i64)>),
    /// The multisets differ by `count` bodies (net, signed), too many to
    /// name (or the sketches do not fit together).
    TooLarge { count: i64 },
}

impl BodyDigest {
    pub fn new() -> BodyDigest {
        BodyDigest::default()
    }

    pub fn insert(&mut self, h: u64) {
        self.count += 1;
        self.sum = self.sum.wrapping_add(h);
        self.mixed_sum = self.mixed_sum.wrapping_add(mixed(h));
        self.sketch.add(h, 1);
    }

    /// Adds every body of `other` (digests of two threads, say).
    pub fn merge(&mut self, other: &BodyDigest) {
        self.count += other.count;
        self.sum = self.sum.wrapping_add(other.sum);
        self.mixed_sum = self.mixed_sum.wrapping_add(other.mixed_sum);
        for i in 0..SKETCH_CELLS.min(other.sketch.count.len()) {
            self.sketch.count[i] += other.sketch.count[i];
            self.sketch.key_sum[i] = self.sketch.key_sum[i].wrapping_add(other.sketch.key_sum[i]);
            self.sketch.check_sum[i] = self.sketch.check_sum[i].wrapping_add(other.sketch.check_sum[i]);
        }
    }

    /// `self` minus `other`, as the bodies that differ when they can be named.
    pub fn difference(&self, other: &BodyDigest) -> Difference {
        let count = self.count as i64 - other.count as i64;
        let sum = self.sum.wrapping_sub(other.sum);
        let mixed_sum = self.mixed_sum.wrapping_sub(other.mixed_sum);
        if !self.sketch.is_valid() || !other.sketch.is_valid() {
            return Difference::TooLarge { count };
        }
        let mut sketch = self.sketch.clone();
        sketch.subtract(&other.sketch);
        let Some(mut items) = sketch.decode() else { return Difference::TooLarge { count } };
        // The decoded items must account for the count and both sums.
        let (mut c, mut s, mut m) = (0i64, 0u64, 0u64);
        for &(h, n) in &items {
            c += n;
            s = s.wrapping_add(h.wrapping_mul(n as u64));
            m = m.wrapping_add(mixed(h).wrapping_mul(n as u64));
        }
        if (c, s, m) != (count, sum, mixed_sum) {
            return Difference::TooLarge { count };
        }
        if items.is_empty() {
            return Difference::Equal;
        }
        items.sort_unstable();
        Difference::Named(items)
    }
}

/// Words in a [`SentFilter`]: 8 MiB.
const FILTER_WORDS: usize = 1 << 20;
/// Bits set per hash.
const FILTER_HASHES: u64 = 3;

/// A Bloom filter of the bodies answered 2xx, shared by loadgen's threads:
/// "not in it" proves a body was never sent (a recorded body the client never
/// sent is corrupted), "in it" means it was sent, up to a false-positive
/// rate that grows with the count ([`SentFilter::false_positive_rate`]).
pub struct SentFilter {
    words: Vec<std::sync::atomic::AtomicU64>,
}

impl Default for SentFilter {
    fn default() -> Self {
        SentFilter { words: (0..FILTER_WORDS).map(|_| std::sync::atomic::AtomicU64::new(0)).collect() }
    }
}

impl SentFilter {
    fn bits(h: u64) -> impl Iterator<Item = (usize, u64)> {
        (0..FILTER_HASHES).map(move |i| {
            let bit = mix(h, 0x2545_f491_4f6c_dd1d ^ i) % (FILTER_WORDS as u64 * 64);
            ((bit / 64) as usize, 1u64 << (bit % 64))
        })
    }

    pub fn insert(&self, h: u64) {
        for (w, b) in Self::bits(h) {
            self.words[w].fetch_or(b, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn may_contain(&self, h: u64) -> bool {
        Self::bits(h).all(|(w, b)| self.words[w].load(std::sync::atomic::Ordering::Relaxed) & b != 0)
    }

    /// The chance that a body never inserted is said to be in, after `n` inserts.
    pub fn false_positive_rate(n: u64) -> f64 {
        let m = (FILTER_WORDS * 64) as f64;
        let k = FILTER_HASHES as f64;
        (1.0 - (-k * n as f64 / m).exp()).powf(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_has_no_false_negatives() {
        let f = SentFilter::default();
        for i in 0..100_000 {
            f.insert(h(i));
        }
        assert!((0..100_000).all(|i| f.may_contain(h(i))));
        let false_hits = (1_000_000..1_100_000).filter(|&i| f.may_contain(h(i))).count();
        assert!(false_hits < 10, "{false_hits}");
        assert!(SentFilter::false_positive_rate(5_000_000) < 0.01);
    }

    fn digest(hashes: impl IntoIterator<Item = u64>) -> BodyDigest {
        let mut d = BodyDigest::new();
        for h in hashes {
            d.insert(h);
        }
        d
    }

    fn h(i: u64) -> u64 {
        mix(i, 0xfeed)
    }

    #[test]
    fn equal_multisets_in_any_order() {
        let a = digest((0..50_000).map(h));
        let b = digest((0..50_000).rev().map(h));
        assert_eq!(a, b);
        assert_eq!(a.difference(&b), Difference::Equal);
        let mut parts = digest((0..20_000).map(h));
        parts.merge(&digest((20_000..50_000).map(h)));
        assert_eq!(parts, a);
    }

    #[test]
    fn names_lost_duplicated_and_foreign_bodies() {
        let sent = digest((0..100_000).map(h));
        // Recorded: body 7 lost, body 9 three times, one never-sent body.
        let recorded = digest((0..100_000).filter(|&i| i != 7).map(h).chain([h(9), h(9), 0xdead_beef]));
        let Difference::Named(items) = recorded.difference(&sent) else { panic!() };
        let mut want = vec![(h(7), -1), (h(9), 2), (0xdead_beef, 1)];
        want.sort_unstable();
        assert_eq!(items, want);
    }

    #[test]
    fn decodes_thousands_and_refuses_too_many() {
        let sent = digest((0..200_000).map(h));
        let recorded = digest((5_000..200_000).map(h));
        let Difference::Named(items) = recorded.difference(&sent) else { panic!("5000 should decode") };
        assert_eq!(items.len(), 5_000);
        assert!(items.iter().all(|&(_, n)| n == -1));
        let recorded = digest((60_000..200_000).map(h));
        assert_eq!(recorded.difference(&sent), Difference::TooLarge { count: -60_000 });
    }

    #[test]
    fn counts_other_than_one_decode() {
        for times in [2u64, 3, 4, 8, 16] {
            let a = digest((0..times).map(|_| 0x1234_5678_9abc_def1));
            let Difference::Named(items) = a.difference(&BodyDigest::new()) else { panic!("{times}") };
            assert_eq!(items, vec![(0x1234_5678_9abc_def1, times as i64)]);
        }
    }

    #[test]
    fn inverse() {
        for a in [1u64, 3, 5, 0xffff_ffff_ffff_ffff, 0x1234_5677] {
            assert_eq!(a.wrapping_mul(inverse_odd(a)), 1, "{a}");
        }
    }

    #[test]
    fn serializes_round_trip() {
        let a = digest((0..10).map(h));
        let text = serde_json::to_string(&a).unwrap();
        let b: BodyDigest = serde_json::from_str(&text).unwrap();
        assert_eq!(a, b);
    }
}
