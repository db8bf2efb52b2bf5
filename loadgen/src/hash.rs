//! The body hash (xxh3-64) that the mock intake and the load generator agree
//! on, so a test can prove that the bytes the Agent sent are the bytes the
//! intake received. Owns only hashing; it never reads or buffers bodies.

use xxhash_rust::xxh3::{xxh3_64, Xxh3Default};

/// Hash of a whole body held in memory.
pub fn body_hash(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// Streaming form of [`body_hash`]: feeding the body in any split gives the
/// same value as `body_hash` on the concatenation.
#[derive(Clone, Default)]
pub struct BodyHasher {
    state: Xxh3Default,
}

impl BodyHasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.state.update(bytes);
    }

    pub fn finish(&self) -> u64 {
        self.state.digest()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_equals_one_shot() {
        let body: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
        for split in [0usize, 1, 7, 64, 240, 4096, 65_537] {
            let mut h = BodyHasher::new();
            if split == 0 {
                h.update(&body);
            } else {
                for part in body.chunks(split) {
                    h.update(part);
                }
            }
            assert_eq!(h.finish(), body_hash(&body), "split {split}");
        }
        assert_eq!(BodyHasher::new().finish(), body_hash(b""));
    }
}
