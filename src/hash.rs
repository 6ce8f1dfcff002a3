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
