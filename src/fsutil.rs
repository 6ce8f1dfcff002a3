//! Small filesystem facts and helpers: free space and filesystem type (statfs), directory
//! fsync, path containment, modification-time comparison.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::statfs::{NFS_SUPER_MAGIC, statfs};
use nix::sys::statvfs::statvfs;

/// Free space and type of the filesystem holding a path.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FsInfo {
    /// Bytes available to unprivileged users (`f_bavail * f_frsize`).
    pub free_bytes: u64,
    /// Whether it is NFS (slow for Prometheus, and locking is unreliable).
    pub is_nfs: bool,
}

/// Reads [`FsInfo`] for `path` (which must exist).
pub fn fs_info(path: &Path) -> std::io::Result<FsInfo> {
    let v = statvfs(path).map_err(std::io::Error::from)?;
    let s = statfs(path).map_err(std::io::Error::from)?;
    Ok(FsInfo {
        free_bytes: v.blocks_available() as u64 * v.fragment_size() as u64,
        is_nfs: s.filesystem_type() == NFS_SUPER_MAGIC,
    })
}

/// fsyncs a directory, so renames and creations in it are durable.
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The nearest existing ancestor of `p` (or `p` itself), canonicalized, with the rest joined.
pub fn canonical_lenient(p: &Path) -> PathBuf {
    let mut missing = Vec::new();
    let mut cur = p.to_path_buf();
    loop {
        if let Ok(c) = cur.canonicalize() {
            return missing
                .iter()
                .rev()
                .fold(c, |acc: PathBuf, part| acc.join(part));
        }
        match (cur.file_name().map(|s| s.to_os_string()), cur.parent()) {
            (Some(name), Some(parent)) => {
                missing.push(name);
                cur = parent.to_path_buf();
            }
            _ => return p.to_path_buf(),
        }
    }
}

/// Whether `inner` is `outer` or lies below it (both canonical).
pub fn is_within(inner: &Path, outer: &Path) -> bool {
    inner.starts_with(outer)
}

/// A modification time with nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MTime {
    /// Seconds since the epoch.
    pub sec: i64,
    /// Nanoseconds.
    pub nsec: i64,
}

impl MTime {
    /// Equal to the nanosecond, or to the second when either side has no sub-second part
    /// (filesystems that keep whole seconds).
    pub fn same(self, other: MTime) -> bool {
        self.sec == other.sec && (self.nsec == other.nsec || self.nsec == 0 || other.nsec == 0)
    }

    /// This time as a [`SystemTime`], to give a copy: times before 1970 (negative seconds)
    /// included, never a panic (a 64-bit `time_t` holds every `i64`; a filesystem clamps
    /// what it cannot store).
    pub fn system_time(self) -> SystemTime {
        let nsec = Duration::from_nanos(self.nsec.clamp(0, 999_999_999) as u64);
        let secs = Duration::from_secs(self.sec.unsigned_abs());
        let t = if self.sec >= 0 {
            UNIX_EPOCH.checked_add(secs)
        } else {
            UNIX_EPOCH.checked_sub(secs)
        };
        t.and_then(|t| t.checked_add(nsec)).unwrap_or(UNIX_EPOCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_canonical_and_containment() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        let c = canonical_lenient(&root.join("a/b"));
        assert_eq!(c, root.join("a/b"));
        assert!(is_within(&c, &root));
        assert!(!is_within(&root, &c));
    }

    #[test]
    fn mtime_tolerates_whole_second_filesystems() {
        let a = MTime { sec: 5, nsec: 123 };
        assert!(a.same(MTime { sec: 5, nsec: 123 }));
        assert!(a.same(MTime { sec: 5, nsec: 0 }));
        assert!(!a.same(MTime { sec: 5, nsec: 124 }));
        assert!(!a.same(MTime { sec: 6, nsec: 123 }));
    }

    #[test]
    fn times_before_1970_and_huge_ones_convert_without_panic() {
        let before = MTime {
            sec: -315_619_200,
            nsec: 500_000_000,
        };
        let d = UNIX_EPOCH.duration_since(before.system_time()).unwrap();
        assert_eq!(d, Duration::from_millis(315_619_199_500));
        for sec in [i64::MAX, i64::MIN, 0o77777777777] {
            MTime { sec, nsec: 0 }.system_time();
        }
    }
}
