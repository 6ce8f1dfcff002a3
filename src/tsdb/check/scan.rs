//! A forward reader over one file with a bounded buffer, for format checks that read every
//! byte once: big-endian integers, Go varints, and CRC-32C over spans of any size without
//! holding them in memory.

use std::fs::File;

use crate::source::{Input, Tree};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use integer_encoding::VarInt;

/// Buffer size for reading whole files; also the largest span [`Scanner::take`] returns in
/// one piece.
pub const BUF: usize = 1 << 20;
/// Buffer size for header-only checks: they must not read (and cache) a MiB of every file.
pub const SMALL_BUF: usize = 16 << 10;

/// Reads a file front to back through a fixed buffer.
pub struct Scanner {
    file: Input,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Absolute offset of `buf[start]`.
    pos: u64,
    len: u64,
    /// For a whole-file reader, the pages cached before it: only the others are dropped when
    /// it is done. Header-only readers touch a few KiB, and keeping those cached makes the
    /// next plan cheap.
    cached_before: Option<crate::cache::Residency>,
}

impl Drop for Scanner {
    fn drop(&mut self) {
        // Give back the page cache this reader used (the source may be a live server's).
        if let (Some(before), Input::Local(f)) = (&self.cached_before, &self.file) {
            before.drop_new_pages(f, 0, self.len);
        }
    }
}

impl Scanner {
    /// Opens `path` read-only (without updating atime where permitted) to read all of it.
    pub fn open(path: &Path) -> io::Result<Scanner> {
        Self::open_with(path, BUF)
    }

    /// Opens `path` to read only a little of it (headers, a table of contents).
    pub fn open_small(path: &Path) -> io::Result<Scanner> {
        Self::open_with(path, SMALL_BUF)
    }

    /// [`Scanner::open`] for deep checks, [`Scanner::open_small`] for cheap ones.
    pub fn for_depth(path: &Path, depth: super::Depth) -> io::Result<Scanner> {
        match depth {
            super::Depth::Deep => Self::open(path),
            super::Depth::Cheap => Self::open_small(path),
        }
    }

    /// Opens `rel` below a (local or remote) TSDB root, for checks at `depth`.
    pub fn in_source(src: &dyn Tree, rel: &str, depth: super::Depth) -> io::Result<Scanner> {
        let buf = match depth {
            super::Depth::Deep => BUF,
            super::Depth::Cheap => SMALL_BUF,
        };
        let (input, stat) = src.open(rel)?;
        Self::from_input(input, stat.size, buf)
    }

    fn open_with(path: &Path, buf: usize) -> io::Result<Scanner> {
        let file = crate::fsutil::open_noatime(path)?;
        let len = file.metadata()?.len();
        Self::from_input(Input::Local(file), len, buf)
    }

    fn from_input(file: Input, len: u64, buf: usize) -> io::Result<Scanner> {
        let whole_file = buf == BUF;
        let cached_before = match &file {
            Input::Local(f) if whole_file => {
                advise_sequential(f);
                Some(crate::cache::Residency::of(f, len))
            }
            _ => None,
        };
        Ok(Scanner {
            file,
            cached_before,
            buf: vec![0; buf],
            start: 0,
            end: 0,
            pos: 0,
            len,
        })
    }

    /// Current absolute offset.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// File length.
    #[allow(clippy::len_without_is_empty)] // a file length, not a collection
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Bytes left after the current offset.
    pub fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    /// Moves to an absolute offset.
    pub fn seek(&mut self, off: u64) -> io::Result<()> {
        let buffered_end = self.pos + (self.end - self.start) as u64;
        if off >= self.pos && off <= buffered_end {
            self.start += (off - self.pos) as usize;
        } else {
            self.file.seek(SeekFrom::Start(off))?;
            self.start = 0;
            self.end = 0;
        }
        self.pos = off;
        Ok(())
    }

    /// Makes at least `n` (≤ the buffer size) bytes available; false if the file ends first.
    fn fill(&mut self, n: usize) -> io::Result<bool> {
        if self.end - self.start >= n {
            return Ok(true);
        }
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        while self.end < n {
            let r = self.file.read(&mut self.buf[self.end..])?;
            if r == 0 {
                return Ok(false);
            }
            self.end += r;
        }
        Ok(true)
    }

    /// The next `n` bytes without consuming them, or `None` if the file is shorter.
    pub fn peek(&mut self, n: usize) -> io::Result<Option<&[u8]>> {
        if n > self.buf.len() || !self.fill(n)? {
            return Ok(None);
        }
        Ok(Some(&self.buf[self.start..self.start + n]))
    }

    /// Consumes and returns the next `n` (≤ BUF) bytes, or `None` if the file is shorter.
    pub fn take(&mut self, n: usize) -> io::Result<Option<&[u8]>> {
        if n > self.buf.len() || !self.fill(n)? {
            return Ok(None);
        }
        let s = self.start;
        self.start += n;
        self.pos += n as u64;
        Ok(Some(&self.buf[s..s + n]))
    }

    /// A big-endian u32.
    pub fn be32(&mut self) -> io::Result<Option<u32>> {
        Ok(self
            .take(4)?
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])))
    }

    /// A Go `binary.Uvarint`.
    pub fn uvarint(&mut self) -> io::Result<Option<u64>> {
        let avail = (self.remaining().min(10)) as usize;
        let Some(b) = self.peek(avail)? else {
            return Ok(None);
        };
        match u64::decode_var(b) {
            Some((v, n)) => {
                self.start += n;
                self.pos += n as u64;
                Ok(Some(v))
            }
            None => Ok(None),
        }
    }

    /// CRC-32C over the next `n` bytes (any size), consuming them; `None` if the file is shorter.
    pub fn crc_span(&mut self, n: u64) -> io::Result<Option<u32>> {
        self.crc_span_from(0, n)
    }

    /// Continues the CRC-32C `crc` over the next `n` bytes (any size), consuming them, with
    /// memory bounded by the buffer; `None` if the file is shorter.
    pub fn crc_span_from(&mut self, mut crc: u32, mut n: u64) -> io::Result<Option<u32>> {
        while n > 0 {
            let step = n.min(self.buf.len() as u64) as usize;
            let Some(b) = self.take(step)? else {
                return Ok(None);
            };
            crc = crc32c::crc32c_append(crc, b);
            n -= step as u64;
        }
        Ok(Some(crc))
    }

    /// Consumes and returns the next `n` bytes, of any size (a span longer than the buffer is
    /// gathered into a vector of its own); `None` if the file is shorter. The caller bounds
    /// `n` (by a section or file end).
    pub fn take_vec(&mut self, n: u64) -> io::Result<Option<Vec<u8>>> {
        if n > self.remaining() {
            return Ok(None);
        }
        let mut v = Vec::with_capacity(n as usize);
        let mut left = n;
        while left > 0 {
            let step = left.min(self.buf.len() as u64) as usize;
            let Some(b) = self.take(step)? else {
                return Ok(None);
            };
            v.extend_from_slice(b);
            left -= step as u64;
        }
        Ok(Some(v))
    }

    /// Whether every byte from here to `end` is zero (consumes them).
    pub fn zeros_until(&mut self, end: u64) -> io::Result<bool> {
        while self.pos < end {
            let step = (end - self.pos).min(self.buf.len() as u64) as usize;
            let Some(b) = self.take(step)? else {
                return Ok(false);
            };
            if b.iter().any(|&x| x != 0) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Tells the kernel the file is read sequentially (bigger read-ahead).
fn advise_sequential(f: &File) {
    use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
    let _ = posix_fadvise(f, 0, 0, PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL);
}

/// Decodes a Go `binary.Uvarint` from the front of `b`: (value, bytes used).
pub fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    u64::decode_var(b)
}

/// Decodes a Go `binary.Varint` (zig-zag) from the front of `b`: (value, bytes used).
pub fn varint(b: &[u8]) -> Option<(i64, usize)> {
    i64::decode_var(b)
}

/// A big-endian u32 from 4 bytes.
pub fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_across_buffer_refills() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let mut f = File::create(&p).unwrap();
        let data: Vec<u8> = (0..(BUF as u32 * 3)).map(|i| (i % 7) as u8).collect();
        f.write_all(&data).unwrap();
        drop(f);
        let mut s = Scanner::open(&p).unwrap();
        s.seek(BUF as u64 - 2).unwrap();
        assert_eq!(s.take(4).unwrap().unwrap(), &data[BUF - 2..BUF + 2]);
        s.seek(10).unwrap();
        assert_eq!(
            s.crc_span(BUF as u64 * 2).unwrap().unwrap(),
            crc32c::crc32c(&data[10..10 + BUF * 2])
        );
        assert!(s.take(BUF).unwrap().is_none(), "only BUF-10 bytes left");
    }

    #[test]
    fn go_varints() {
        assert_eq!(uvarint(&[0xac, 0x02]), Some((300, 2)));
        assert_eq!(varint(&[0x03]), Some((-2, 1)), "zig-zag like Go");
        assert_eq!(uvarint(&[0x80]), None, "truncated");
    }
}
