//! Staying out of the live server's page cache. Reading hundreds of GB through the cache
//! would evict a running Prometheus's working set (its mmapped blocks), as `rsync` does. So
//! every page promigrate brings in from the source is dropped again after use, while pages
//! that were cached before (`mincore`) are left alone; written target files are dropped once
//! they are durable.

use std::fs::File;

/// Which pages of a source file were in the page cache before promigrate read it. Reading
/// hundreds of GB through the cache would evict a live Prometheus's working set, so pages
/// brought in by the copy are dropped again, and pages that were there already are kept.
pub struct Residency {
    /// One entry per page: resident before the copy. Empty when unknown (then every page
    /// read is dropped).
    pages: Vec<bool>,
    page: u64,
}

impl Residency {
    /// Records which pages of `f` (of `len` bytes) are cached now.
    pub fn of(f: &File, len: u64) -> Residency {
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .unwrap_or(4096) as u64;
        Residency {
            pages: resident_pages(f, len, page).unwrap_or_default(),
            page,
        }
    }

    /// Drops `[off, off+len)` from the cache, except runs of pages that were resident before.
    pub fn drop_new_pages(&self, f: &File, off: u64, len: u64) {
        let (first, last) = (off / self.page, (off + len).div_ceil(self.page));
        let mut run_start: Option<u64> = None;
        for p in first..=last {
            let keep = p == last || self.pages.get(p as usize).copied().unwrap_or(false);
            match (keep, run_start) {
                (false, None) => run_start = Some(p),
                (true, Some(a)) => {
                    dontneed(f, a * self.page, (p - a) * self.page);
                    run_start = None;
                }
                _ => {}
            }
        }
    }
}

/// `mincore` of a read-only shared mapping of the file: which pages are in the page cache.
fn resident_pages(f: &File, len: u64, page: u64) -> Option<Vec<bool>> {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return Some(Vec::new());
    }
    let n = len.div_ceil(page) as usize;
    let mut vec = vec![0u8; n];
    // SAFETY: a fresh read-only shared mapping of `len` bytes of an open file; it is only
    // passed to mincore (never dereferenced, so no page is faulted in) and unmapped at once.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        if addr == libc::MAP_FAILED {
            return None;
        }
        let rc = libc::mincore(addr, len as usize, vec.as_mut_ptr());
        libc::munmap(addr, len as usize);
        if rc != 0 {
            return None;
        }
    }
    Some(vec.into_iter().map(|b| b & 1 == 1).collect())
}

/// `posix_fadvise(DONTNEED)` on a range (`len` 0 = to the end).
pub fn dontneed(f: &File, off: u64, len: u64) {
    use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
    let _ = posix_fadvise(
        f,
        off as i64,
        len as i64,
        PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}

/// Starts writeback of a just-written range, so the fsync before publishing finds little
/// left to do and dirty pages do not pile up.
pub fn start_writeback(f: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range only reads its integer arguments; the descriptor is owned by
    // `f`, which outlives the call. A failure only loses the hint, so it is ignored.
    unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            offset as i64,
            len as i64,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}
