//! Small filesystem facts and helpers: free space, free inodes, read-only flag and
//! filesystem type (statvfs, statfs), directory fsync, path containment, modification-time
//! comparison.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::sys::statfs::{NFS_SUPER_MAGIC, statfs};
use nix::sys::statvfs::{FsFlags, statvfs};

/// Free space, inodes, flags and type of the filesystem holding a path.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FsInfo {
    /// Bytes available to unprivileged users (`f_bavail * f_frsize`).
    pub free_bytes: u64,
    /// The unit free space is counted in (`f_frsize`): a file takes a whole number of them.
    pub block_size: u64,
    /// Inodes available to unprivileged users (`f_favail`); `None` when the filesystem
    /// reports no inode total at all (btrfs and others allocate inodes as needed).
    pub free_inodes: Option<u64>,
    /// Mounted read-only (`ST_RDONLY`): every write fails with EROFS, root's included.
    pub read_only: bool,
    /// Whether it is NFS (slow for Prometheus, and locking is unreliable).
    pub is_nfs: bool,
}

/// Reads [`FsInfo`] for `path` (which must exist).
pub fn fs_info(path: &Path) -> std::io::Result<FsInfo> {
    let v = statvfs(path).map_err(std::io::Error::from)?;
    let s = statfs(path).map_err(std::io::Error::from)?;
    Ok(FsInfo {
        free_bytes: v.blocks_available() as u64 * v.fragment_size() as u64,
        block_size: v.fragment_size() as u64,
        free_inodes: (v.files() > 0).then_some(v.files_available() as u64),
        read_only: v.flags().contains(FsFlags::ST_RDONLY),
        is_nfs: s.filesystem_type() == NFS_SUPER_MAGIC,
    })
}

/// `p` itself if it exists, else its nearest existing ancestor (symlinks are not followed).
pub fn nearest_existing(p: &Path) -> PathBuf {
    p.ancestors()
        .find(|a| a.symlink_metadata().is_ok())
        .unwrap_or(p)
        .to_path_buf()
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
}
