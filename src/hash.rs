//! Content hashes (xxh3-128) of source and target files, for `verify` and for
//! `apply --checksum`. Reading leaves the page cache as it was: a live source server keeps
//! its working set.

use std::io::Read;

use crate::progress::Progress;
use crate::source::{Input, Source};

/// Buffer size for [`file`]: one per worker.
pub const BUF_SIZE: usize = 1 << 20;

/// The xxh3-128 of the file `rel` below `root`, read through `buf`; each chunk read is
/// counted on `progress`. `cancel` stops it between chunks (`Interrupted`): a large file
/// does not hold up a Ctrl-C.
pub fn file(
    root: &Source,
    rel: &str,
    buf: &mut [u8],
    progress: &dyn Progress,
    cancel: &std::sync::atomic::AtomicBool,
) -> std::io::Result<u128> {
    let (mut f, st) = root.open(rel)?;
    let len = st.size;
    // Leave the page cache as it was (the source may be a live server's).
    let cached_before = match &f {
        Input::Local(file) => Some(crate::cache::Residency::of(file, len)),
        Input::Remote(_) | Input::Prefetched(_) => None,
    };
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut done = 0u64;
    let result = loop {
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            break Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "interrupted",
            ));
        }
        let n = match f.read(buf) {
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        if n == 0 {
            break Ok(h.digest128());
        }
        h.update(&buf[..n]);
        progress.add_bytes(n as u64);
        done += n as u64;
    };
    if let (Some(before), Input::Local(file)) = (&cached_before, &f) {
        before.drop_new_pages(file, 0, done.max(len));
    }
    result
}

/// Source content hashes taken by a copy from the very bytes it read and sent, each with
/// the file's size and modification time then (a file that changed while it was read is
/// not kept: the copy fails it). The verify that ends an apply takes a source file's hash
/// from here instead of reading the file again when the file still has that size and
/// mtime (to the nanosecond where the source keeps them): the source is read once, the
/// target is always read back from its volume.
#[derive(Debug, Default)]
pub struct Sent(std::sync::Mutex<std::collections::HashMap<String, SentHash>>);

#[derive(Debug, Clone, Copy)]
struct SentHash {
    hash: u128,
    size: u64,
    mtime: crate::fsutil::MTime,
}

impl Sent {
    /// Keeps the hash of `rel`'s bytes as copied, the file having `size` and `mtime`.
    pub fn record(&self, rel: &str, hash: u128, size: u64, mtime: crate::fsutil::MTime) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(rel.to_string(), SentHash { hash, size, mtime });
        }
    }

    /// The hash of `rel` as copied, if it was copied whole in this run and the file has the
    /// same size and mtime now.
    pub fn get(&self, rel: &str, size: u64, mtime: crate::fsutil::MTime) -> Option<u128> {
        let m = self.0.lock().ok()?;
        let s = m.get(rel)?;
        (s.size == size && s.mtime == mtime).then_some(s.hash)
    }

    /// How many files' hashes are kept.
    pub fn len(&self) -> usize {
        self.0.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::MTime;

    #[test]
    fn a_sent_hash_is_given_only_for_the_same_size_and_mtime() {
        let s = Sent::default();
        let t = MTime { sec: 10, nsec: 5 };
        s.record("wal/00000001", 42, 100, t);
        assert_eq!(s.get("wal/00000001", 100, t), Some(42));
        // Grown, or touched since (even by a nanosecond, or to whole seconds): read it again.
        assert_eq!(s.get("wal/00000001", 101, t), None);
        assert_eq!(s.get("wal/00000001", 100, MTime { sec: 10, nsec: 6 }), None);
        assert_eq!(s.get("wal/00000001", 100, MTime { sec: 10, nsec: 0 }), None);
        assert_eq!(s.get("wal/00000002", 100, t), None);
        assert_eq!(s.len(), 1);
    }
}
