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
/// not kept: the copy fails it), in this run or, for block files, in an earlier apply
/// ([`Sent::take_kept`]). The verify that ends an apply takes a source file's hash from
/// here instead of reading the file again when the file still has that size and mtime (to
/// the nanosecond where the source keeps them): the source is read once, the target is
/// always read back from its volume.
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

    /// The hash of `rel` as copied, if it was copied whole (in this run, or kept from an
    /// earlier one) and the file has the same size and mtime now.
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

/// The file, beside the run records, that keeps the hashes a copy took of the source's
/// block files from one apply to the next ([`Sent::keep`], [`Sent::take_kept`]): the
/// closing verify of the final phase then does not read again the blocks a presync copied.
pub const KEPT_FILE: &str = "source-hashes.json";

/// Whether a file's hash may be kept from one run to the next: a block's chunk segment or
/// index (`<ULID>/chunks/000001`, `<ULID>/index`), which Prometheus writes once, in a
/// temporary directory renamed into place, and never rewrites. Not meta.json and
/// tombstones, which a live server rewrites in place, nor WAL and head files.
pub fn keeps_across_runs(rel: &str) -> bool {
    let Some((dir, rest)) = rel.split_once('/') else {
        return false;
    };
    let block = matches!(
        crate::tsdb::classify_root(dir, true),
        crate::tsdb::RootEntry::Block(_)
    );
    let data = rest == "index"
        || rest
            .strip_prefix("chunks/")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    block && data
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Kept {
    version: u32,
    /// The source the hashes are of (`host:path` or the local path).
    source: String,
    files: std::collections::BTreeMap<String, KeptHash>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct KeptHash {
    /// xxh3-128, 32 hex digits.
    xxh3: String,
    size: u64,
    mtime: crate::fsutil::MTime,
}

impl Sent {
    /// Adds the hashes [`Sent::keep`] wrote into `dir` for `source`; how many. A file that
    /// is absent gives 0; one that cannot be read, or is of another source or version,
    /// gives the reason (the caller warns: its files are then read again, nothing else).
    pub fn take_kept(&self, dir: &std::path::Path, source: &str) -> Result<usize, String> {
        let path = dir.join(KEPT_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let kept: Kept = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not readable: {e}", path.display()))?;
        if kept.version != 1 {
            return Err(format!(
                "{} has version {}, not 1",
                path.display(),
                kept.version
            ));
        }
        if kept.source != source {
            return Err(format!(
                "{} is of another source ({}, not {source})",
                path.display(),
                kept.source
            ));
        }
        let mut n = 0;
        for (rel, k) in kept.files {
            let Ok(hash) = u128::from_str_radix(&k.xxh3, 16) else {
                continue;
            };
            if keeps_across_runs(&rel) {
                self.record(&rel, hash, k.size, k.mtime);
                n += 1;
            }
        }
        Ok(n)
    }

    /// Writes the hashes of block files ([`keeps_across_runs`]) of the blocks `still`
    /// says the source has, for `source`, into `dir` (a temporary file renamed: whole or
    /// absent); how many.
    pub fn keep(
        &self,
        dir: &std::path::Path,
        source: &str,
        still: impl Fn(&str) -> bool,
    ) -> anyhow::Result<usize> {
        use anyhow::Context;
        let files: std::collections::BTreeMap<String, KeptHash> = self
            .0
            .lock()
            .map_err(|_| anyhow::anyhow!("the hashes' lock is poisoned"))?
            .iter()
            .filter(|(rel, _)| {
                keeps_across_runs(rel) && still(rel.split('/').next().unwrap_or_default())
            })
            .map(|(rel, h)| {
                (
                    rel.clone(),
                    KeptHash {
                        xxh3: format!("{:032x}", h.hash),
                        size: h.size,
                        mtime: h.mtime,
                    },
                )
            })
            .collect();
        let n = files.len();
        let body = serde_json::to_vec(&Kept {
            version: 1,
            source: source.to_string(),
            files,
        })?;
        let path = dir.join(KEPT_FILE);
        // This process's own temporary name (an apply refused by the target's lock never
        // gets here, but two promigrates of one migration on different hosts or PID
        // namespaces could): the last rename wins, and the file is always whole.
        let tmp = dir.join(format!(
            ".{KEPT_FILE}.{}{}",
            std::process::id(),
            crate::tsdb::TMP_SUFFIX
        ));
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            std::io::Write::write_all(&mut f, &body)?;
            f.sync_all()
        });
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, &path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("cannot write {}", path.display()));
        }
        Ok(n)
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

    #[test]
    fn only_block_data_files_are_kept_across_runs() {
        let b = "01M969EDZ7MT87T4MCWCZA66ER";
        for rel in [format!("{b}/index"), format!("{b}/chunks/000001")] {
            assert!(keeps_across_runs(&rel), "{rel}");
        }
        for rel in [
            format!("{b}/meta.json"),
            format!("{b}/tombstones"),
            format!("{b}/chunks/.000001.tmp"),
            format!("{b}/chunks"),
            format!("{b}.tmp-for-creation/index"),
            "wal/00000001".to_string(),
            "chunks_head/000001".to_string(),
            "01M969EDZ7MT87T4MCWCZA66E/index".to_string(),
        ] {
            assert!(!keeps_across_runs(&rel), "{rel}");
        }
    }

    #[test]
    fn kept_hashes_come_back_for_the_same_source_only() {
        let d = tempfile::tempdir().unwrap();
        let b = "01M969EDZ7MT87T4MCWCZA66ER";
        let gone = "01M969EE0PDB69G7K074YMHNRQ";
        let t = MTime { sec: 7, nsec: 9 };
        let s = Sent::default();
        s.record(&format!("{b}/index"), u128::MAX - 1, 10, t);
        s.record(&format!("{b}/meta.json"), 2, 10, t);
        s.record("wal/00000001", 3, 10, t);
        s.record(&format!("{gone}/index"), 4, 10, t);
        // Only the blocks the source still has.
        assert_eq!(s.keep(d.path(), "src", |dir| dir == b).unwrap(), 1);

        let back = Sent::default();
        assert_eq!(back.take_kept(d.path(), "src"), Ok(1));
        assert_eq!(back.get(&format!("{b}/index"), 10, t), Some(u128::MAX - 1));
        assert_eq!(back.get("wal/00000001", 10, t), None);
        assert_eq!(back.get(&format!("{gone}/index"), 10, t), None);
        // A later run that takes them and copies more keeps both.
        back.record(&format!("{b}/chunks/000001"), 5, 11, t);
        assert_eq!(back.keep(d.path(), "src", |dir| dir == b).unwrap(), 2);
        let again = Sent::default();
        assert_eq!(again.take_kept(d.path(), "src"), Ok(2));
        assert_eq!(again.get(&format!("{b}/index"), 10, t), Some(u128::MAX - 1));
        assert_eq!(again.get(&format!("{b}/chunks/000001"), 11, t), Some(5));
        // Touched since: not given.
        assert_eq!(
            again.get(&format!("{b}/index"), 10, MTime { sec: 8, nsec: 9 }),
            None
        );
        // Another source's, a damaged file, none at all.
        let other = Sent::default();
        assert!(
            other
                .take_kept(d.path(), "host:/src")
                .unwrap_err()
                .contains("another source")
        );
        let v2 = std::fs::read_to_string(d.path().join(KEPT_FILE))
            .unwrap()
            .replacen("\"version\":1", "\"version\":2", 1);
        std::fs::write(d.path().join(KEPT_FILE), v2).unwrap();
        assert!(
            other
                .take_kept(d.path(), "src")
                .unwrap_err()
                .contains("version 2")
        );
        std::fs::write(d.path().join(KEPT_FILE), b"{").unwrap();
        assert!(
            other
                .take_kept(d.path(), "src")
                .unwrap_err()
                .contains("not readable")
        );
        assert!(other.is_empty());
        assert_eq!(
            Sent::default().take_kept(&d.path().join("none"), "src"),
            Ok(0)
        );
    }
}
