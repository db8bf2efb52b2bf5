//! Per-worker pool of I/O buffers, so that idle Agent connections hold no
//! large buffer and a busy worker allocates none in steady state.
//!
//! Owned by one worker (inside a `RefCell`), never shared between threads.
//! Only buffers of exactly [`BufferPool::SIZE`] capacity come back into the
//! pool (one that grew for an oversized head is freed), and at most
//! `max_free` wait there, so the pool's memory is bounded.

/// Pooled buffers kept per worker between requests (4 MiB at most).
pub const MAX_FREE_BUFFERS: usize = 64;

pub struct BufferPool {
    free: Vec<Vec<u8>>,
    max_free: usize,
}

impl BufferPool {
    /// Capacity of a pooled buffer: four TLS records' worth of plaintext,
    /// the HTTP/2 stream window intakes announce (nginx: 64 KiB), so an
    /// Agent body read for an HTTP/2 stream takes one read per window,
    /// not one per record.
    pub const SIZE: usize = 64 * 1024;

    pub fn new(max_free: usize) -> Self {
        BufferPool { free: Vec::new(), max_free }
    }

    /// An empty buffer of `SIZE` capacity.
    pub fn take(&mut self) -> Vec<u8> {
        self.free.pop().unwrap_or_else(|| Vec::with_capacity(Self::SIZE))
    }

    /// Returns a buffer; it is kept only if it has the pooled size and room remains.
    pub fn give_back(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() == Self::SIZE && self.free.len() < self.max_free {
            buf.clear();
            self.free.push(buf);
        }
    }

    pub fn free_count(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_bounds() {
        let mut p = BufferPool::new(2);
        let a = p.take();
        let ptr = a.as_ptr();
        p.give_back(a);
        let b = p.take();
        assert_eq!(b.as_ptr(), ptr, "a returned buffer is reused");
        p.give_back(b);
        p.give_back(Vec::with_capacity(BufferPool::SIZE));
        p.give_back(Vec::with_capacity(BufferPool::SIZE));
        assert_eq!(p.free_count(), 2, "bounded");
        let mut grown = p.take();
        grown.reserve(BufferPool::SIZE * 2);
        p.give_back(grown);
        assert_eq!(p.free_count(), 1, "a grown buffer is freed, not pooled");
    }
}
