//! Small filesystem facts and helpers: free space, free inodes, read-only flag and
//! filesystem type (statvfs, statfs), directory fsync, path containment, modification-time
//! comparison, reading without touching access times.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::statfs::{NFS_SUPER_MAGIC, statfs};
use nix::sys::statvfs::{FsFlags, statvfs};

/// Free space, inodes, flags and type of the filesystem holding a path.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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

/// `~/x` → `$HOME/x`, as a shell would; other paths unchanged.
pub fn expand_home(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => p.to_path_buf(),
    }
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

/// This kernel's boot id (`/proc/sys/kernel/random/boot_id`): device numbers compare only
/// under the same one.
pub fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_string())
}

/// Where a directory is, in terms that hold across mount namespaces (a receiver in a pod
/// and the promigrate beside the source on the same node): the kernel's boot id, and the
/// (device, inode) of the directory (or its nearest existing ancestor) and of each
/// directory above it up to `/`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Whereabouts {
    /// `/proc/sys/kernel/random/boot_id`: the same kernel, the same device numbers.
    pub boot_id: String,
    /// (device, inode), innermost first.
    pub chain: Vec<(u64, u64)>,
}

impl Whereabouts {
    /// Of `p` on this host; `None` when the boot id cannot be read.
    pub fn of(p: &Path) -> Option<Whereabouts> {
        use std::os::unix::fs::MetadataExt;
        let boot_id = boot_id()?;
        let c = canonical_lenient(p);
        let chain = c
            .ancestors()
            .filter_map(|a| std::fs::metadata(a).ok())
            .map(|m| (m.dev(), m.ino()))
            .collect();
        Some(Whereabouts { boot_id, chain })
    }

    /// Whether one of the two directories is the other or lies below it (never across two
    /// kernels).
    pub fn overlaps(&self, other: &Whereabouts) -> bool {
        if self.boot_id != other.boot_id {
            return false;
        }
        let (Some(a), Some(b)) = (self.chain.first(), other.chain.first()) else {
            return false;
        };
        other.chain.contains(a) || self.chain.contains(b)
    }
}

/// Whether `inner` is `outer` or lies below it (both canonical).
pub fn is_within(inner: &Path, outer: &Path) -> bool {
    inner.starts_with(outer)
}

/// A modification time with nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// Operations on paths below a base directory (the target volume's mount) that never follow
/// a symbolic link and never leave the base, by construction: every path is resolved by
/// `openat2(2)` from the base's descriptor with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
/// RESOLVE_NO_XDEV`, so a link anywhere on the way (put there before or during the run) is
/// an error (`ELOOP`), not a path into somewhere else, and so is another filesystem mounted
/// below the base (`EXDEV`): it is not the volume. The base itself is opened with
/// `O_NOFOLLOW`.
pub mod beneath {
    use std::ffi::OsStr;
    use std::io;
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::{Component, Path};

    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
    use nix::sys::stat::Mode;

    fn err(e: nix::errno::Errno) -> io::Error {
        io::Error::from_raw_os_error(e as i32)
    }

    /// `path` relative to `base`, or an error if it is not below it.
    fn rel<'a>(base: &Path, path: &'a Path) -> io::Result<&'a Path> {
        let r = path.strip_prefix(base).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not below {}", path.display(), base.display()),
            )
        })?;
        plain(r).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is not a plain path below {}",
                    path.display(),
                    base.display()
                ),
            )
        })
    }

    /// Opens a directory to work below (`O_PATH`, never through a link as its last part).
    pub fn open_base(base: &Path) -> io::Result<OwnedFd> {
        nix::fcntl::open(
            base,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(err)
    }

    /// `rel` as openat2 takes it: plain components only (`.` for the directory itself).
    fn plain(rel: &Path) -> io::Result<&Path> {
        if rel == Path::new(".") {
            return Ok(rel);
        }
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a plain relative path", rel.display()),
            ));
        }
        Ok(if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        })
    }

    /// Opens `rel` below the directory `dir` with `flags` (and `mode` when it creates).
    pub fn open_at(dir: BorrowedFd, rel: &Path, flags: OFlag, mode: u32) -> io::Result<OwnedFd> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .mode(Mode::from_bits_truncate(mode))
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_XDEV,
            );
        openat2(dir, plain(rel)?, how).map_err(|e| match e {
            nix::errno::Errno::EXDEV => io::Error::new(
                io::ErrorKind::CrossesDevices,
                format!(
                    "{} crosses a mount point inside the target volume (another filesystem, or a bind mount); promigrate works only within the volume mounted at target.path: plan names the mount point",
                    rel.display()
                ),
            ),
            e => err(e),
        })
    }

    /// The directory holding `rel` (below `dir`), opened, and `rel`'s last component.
    fn parent_at<'a>(dir: BorrowedFd, rel: &'a Path) -> io::Result<(OwnedFd, &'a OsStr)> {
        let name = rel.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} has no name", rel.display()),
            )
        })?;
        let up = rel.parent().unwrap_or(Path::new(""));
        Ok((
            open_at(dir, up, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)?,
            name,
        ))
    }

    /// Creates the directory `rel` (below `dir`; its parent must exist), mode 0700.
    pub fn mkdir_at(dir: BorrowedFd, rel: &Path) -> io::Result<()> {
        let (d, name) = parent_at(dir, rel)?;
        nix::sys::stat::mkdirat(d.as_fd(), name, Mode::from_bits_truncate(0o700)).map_err(err)
    }

    /// Renames `from` to `to`, both below `dir`.
    pub fn rename_at(dir: BorrowedFd, from: &Path, to: &Path) -> io::Result<()> {
        let (a, an) = parent_at(dir, from)?;
        let (b, bn) = parent_at(dir, to)?;
        nix::fcntl::renameat(a.as_fd(), an, b.as_fd(), bn).map_err(err)
    }

    /// `rel`'s status (an `O_PATH` descriptor of it, and its fstat); a link is refused
    /// (`ELOOP`), never followed.
    pub fn stat_at(dir: BorrowedFd, rel: &Path) -> io::Result<(OwnedFd, nix::sys::stat::FileStat)> {
        let fd = open_at(dir, rel, OFlag::O_PATH, 0)?;
        let st = nix::sys::stat::fstat(fd.as_fd()).map_err(err)?;
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(io::Error::other(format!(
                "{} is a symbolic link: promigrate never changes or writes through links",
                rel.display()
            )));
        }
        Ok((fd, st))
    }

    /// Removes the file `rel` (below `dir`); a directory is refused.
    pub fn unlink_at(dir: BorrowedFd, rel: &Path) -> io::Result<()> {
        let (d, name) = parent_at(dir, rel)?;
        nix::unistd::unlinkat(d.as_fd(), name, nix::unistd::UnlinkatFlags::NoRemoveDir).map_err(err)
    }

    /// Removes the empty directory `rel` (below `dir`).
    pub fn rmdir_at(dir: BorrowedFd, rel: &Path) -> io::Result<()> {
        let (d, name) = parent_at(dir, rel)?;
        nix::unistd::unlinkat(d.as_fd(), name, nix::unistd::UnlinkatFlags::RemoveDir).map_err(err)
    }

    /// Removes `rel` (below `dir`): a directory with everything in it, anything else (a
    /// link too) as it is. Entries are removed through their directory's descriptor: a link
    /// is removed, never followed.
    pub fn remove_tree_at(dir: BorrowedFd, rel: &Path) -> io::Result<()> {
        let (d, name) = parent_at(dir, rel)?;
        let st = nix::sys::stat::fstatat(d.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(err)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return unlink_at(d.as_fd(), Path::new(name));
        }
        remove_entries(d.as_fd(), Path::new(name))?;
        rmdir_at(d.as_fd(), Path::new(name))
    }

    fn remove_entries(parent: BorrowedFd, name: &Path) -> io::Result<()> {
        let fd = open_at(parent, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)?;
        let mut entries = nix::dir::Dir::from_fd(fd).map_err(err)?;
        let names: Vec<(std::ffi::CString, Option<nix::dir::Type>)> = entries
            .iter()
            .filter_map(Result::ok)
            .filter(|e| !matches!(e.file_name().to_bytes(), b"." | b".."))
            .map(|e| (e.file_name().to_owned(), e.file_type()))
            .collect();
        let here = entries.as_fd();
        for (n, kind) in names {
            let n = Path::new(OsStr::from_bytes(n.as_bytes()));
            // Filesystems that do not fill in the type: ask (never following a link).
            let is_dir = match kind {
                Some(k) => k == nix::dir::Type::Directory,
                None => {
                    stat_at(here, n).is_ok_and(|(_, st)| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
                }
            };
            if is_dir {
                remove_entries(here, n)?;
                rmdir_at(here, n)?;
            } else {
                unlink_at(here, n)?;
            }
        }
        Ok(())
    }

    /// The names in the directory `rel` (below `dir`).
    pub fn list_at(dir: BorrowedFd, rel: &Path) -> io::Result<Vec<std::ffi::OsString>> {
        let fd = open_at(dir, rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)?;
        let mut entries = nix::dir::Dir::from_fd(fd).map_err(err)?;
        Ok(entries
            .iter()
            .filter_map(Result::ok)
            .filter(|e| !matches!(e.file_name().to_bytes(), b"." | b".."))
            .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_os_string())
            .collect())
    }

    /// Opens `path` (below `base`) with `flags` (and `mode` when it creates).
    pub fn open(base: &Path, path: &Path, flags: OFlag, mode: u32) -> io::Result<OwnedFd> {
        open_at(open_base(base)?.as_fd(), rel(base, path)?, flags, mode)
    }

    /// Creates the directory `path` (below `base`; its parent must exist), mode 0700.
    pub fn mkdir(base: &Path, path: &Path) -> io::Result<()> {
        mkdir_at(open_base(base)?.as_fd(), rel(base, path)?)
    }

    /// Renames `from` to `to`, both below `base`.
    pub fn rename(base: &Path, from: &Path, to: &Path) -> io::Result<()> {
        rename_at(open_base(base)?.as_fd(), rel(base, from)?, rel(base, to)?)
    }

    /// `path`'s status (an `O_PATH` descriptor of it, and its fstat); a link is refused
    /// (`ELOOP`), never followed.
    pub fn stat(base: &Path, path: &Path) -> io::Result<(OwnedFd, nix::sys::stat::FileStat)> {
        stat_at(open_base(base)?.as_fd(), rel(base, path)?).map_err(|e| {
            if e.kind() == io::ErrorKind::Other {
                io::Error::other(format!(
                    "{} is a symbolic link: promigrate never changes or writes through links",
                    path.display()
                ))
            } else {
                e
            }
        })
    }

    /// Sets the owner of the entry behind an `O_PATH` descriptor.
    pub fn chown(fd: &OwnedFd, uid: u32, gid: u32) -> io::Result<()> {
        nix::unistd::fchownat(
            fd.as_fd(),
            "",
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_EMPTY_PATH,
        )
        .map_err(err)
    }

    /// Sets the mode of the entry behind an `O_PATH` descriptor (through its
    /// `/proc/self/fd` entry: fchmod does not take an `O_PATH` descriptor).
    pub fn chmod(fd: &OwnedFd, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let p = format!("/proc/self/fd/{}", fd.as_raw_fd());
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn links_anywhere_below_the_base_are_refused() {
            let d = tempfile::tempdir().unwrap();
            let base = d.path().join("base");
            let outside = d.path().join("outside");
            std::fs::create_dir_all(base.join("a")).unwrap();
            std::fs::create_dir(&outside).unwrap();
            std::os::unix::fs::symlink(&outside, base.join("link")).unwrap();
            std::os::unix::fs::symlink("a", base.join("rel")).unwrap();
            // Through a link on the way: refused (ELOOP, or ENOTDIR for a link opened as
            // the directory to create in), nothing created.
            for p in [
                base.join("link/x"),
                base.join("rel/x"),
                base.join("link/a/x"),
            ] {
                let e = mkdir(&base, &p).unwrap_err();
                assert!(
                    matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)),
                    "{p:?}: {e}"
                );
            }
            assert!(stat(&base, &base.join("link")).is_err());
            assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
            assert!(!base.join("a/x").exists());
            // A plain path works, and so does the base itself.
            mkdir(&base, &base.join("a/x")).unwrap();
            assert!(stat(&base, &base).unwrap().1.st_mode & libc::S_IFMT == libc::S_IFDIR);
            rename(&base, &base.join("a/x"), &base.join("y")).unwrap();
            assert!(base.join("y").is_dir());
            // Not below the base at all.
            assert!(mkdir(&base, &outside.join("z")).is_err());
            // A base that is itself a link is refused.
            let lbase = d.path().join("lbase");
            std::os::unix::fs::symlink(&base, &lbase).unwrap();
            assert!(stat(&lbase, &lbase).is_err());
        }
    }
}

/// Opens a source file read-only, without updating its access time where permitted.
pub fn open_noatime(path: &Path) -> io::Result<File> {
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc_o_noatime())
        .open(path)
    {
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EPERM as i32) => File::open(path),
        r => r,
    }
}

fn libc_o_noatime() -> i32 {
    nix::fcntl::OFlag::O_NOATIME.bits()
}

/// Reads a whole (small) file from the source side, opened like [`open_noatime`].
pub fn read_noatime(path: &Path) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    open_noatime(path)?.read_to_end(&mut v)?;
    Ok(v)
}
