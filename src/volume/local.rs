//! A target volume mounted on this machine.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use nix::fcntl::OFlag;

use super::{Entry, OutFile, Target, Times};
use crate::fsutil::{MTime, beneath};
use crate::lock::Guard;
use crate::perms::{self, Owner};
use crate::tsdb;

/// A TSDB directory on a volume mounted here, worked on through the mount's descriptor.
pub struct Local {
    /// The volume's mount (in messages).
    pub(super) mount: PathBuf,
    /// The TSDB directory.
    root: PathBuf,
    /// The TSDB directory below the mount.
    pub(super) root_rel: PathBuf,
    /// The mount, opened once: every path is resolved below it.
    base: OwnedFd,
    owner: Owner,
}

impl Local {
    /// Opens the volume mounted at `mount` (never through a link) for the TSDB directory
    /// `root` below it, whose entries must belong to `owner`.
    pub fn open(mount: &Path, root: &Path, owner: Owner) -> anyhow::Result<Local> {
        let root_rel = root
            .strip_prefix(mount)
            .map_err(|_| {
                anyhow!(
                    "the target {} is not below its volume's mount {}",
                    root.display(),
                    mount.display()
                )
            })?
            .to_path_buf();
        let base = beneath::open_base(mount)
            .map_err(|e| anyhow!("cannot open the target volume {}: {e}", mount.display()))?;
        Ok(Local {
            mount: mount.to_path_buf(),
            root: root.to_path_buf(),
            root_rel,
            base,
            owner,
        })
    }

    /// `rel` (below the TSDB directory) below the mount.
    pub(super) fn full(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.root_rel.clone()
        } else {
            self.root_rel.join(rel)
        }
    }

    fn open_at(&self, rel: &Path, flags: OFlag, mode: u32) -> io::Result<OwnedFd> {
        beneath::open_at(self.base.as_fd(), &self.full(rel), flags, mode)
    }

    /// Whether the directory `below` (relative to the mount) is there: `false` when nothing
    /// is; an error for anything else in its place (a file, a link) or a failed lookup,
    /// saying what to do.
    pub(super) fn dir_there(&self, below: &Path) -> anyhow::Result<bool> {
        let shown = self.mount.join(below);
        match beneath::stat_at(self.base.as_fd(), below) {
            Ok((_, st)) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => Ok(true),
            Ok(_) => anyhow::bail!(
                "{} is not a directory: promigrate needs one there; move it away and rerun apply",
                shown.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(anyhow!("cannot create directory {}: {e}", shown.display())),
        }
    }

    /// Creates the missing directories down to `below` (relative to the mount).
    fn create_below(&self, below: &Path) -> anyhow::Result<()> {
        let mut cur = PathBuf::new();
        for c in below.components() {
            cur.push(c);
            if self.dir_there(&cur)? {
                continue;
            }
            let shown = self.mount.join(&cur);
            let is_dir = |st: &nix::sys::stat::FileStat| st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            match beneath::mkdir_at(self.base.as_fd(), &cur) {
                // Another worker made it meanwhile (and gives it its owner).
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if beneath::stat_at(self.base.as_fd(), &cur).is_ok_and(|(_, st)| is_dir(&st)) {
                        continue;
                    }
                    return Err(anyhow!("cannot create directory {}: {e}", shown.display()));
                }
                r => r,
            }
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ENOSPC) {
                    anyhow!(
                        "target volume is full: cannot create {}; free space and rerun apply",
                        shown.display()
                    )
                } else {
                    anyhow!("cannot create directory {}: {e}", shown.display())
                }
            })?;
            let (fd, st) = beneath::stat_at(self.base.as_fd(), &cur)
                .map_err(|e| anyhow!("cannot open {}: {e}", shown.display()))?;
            perms::fix_open(&fd, &st, self.owner)
                .map_err(|e| anyhow!(perms::explain(&shown, &e, self.owner)))?;
        }
        Ok(())
    }
}

impl Local {
    /// Creates (or truncates) a file to write, mode 0600 until it is complete.
    pub fn create_local(&self, rel: &Path) -> io::Result<File> {
        self.open_at(
            rel,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC,
            0o600,
        )
        .map(File::from)
    }

    /// Opens a file read-only.
    pub fn open_file(&self, rel: &Path) -> io::Result<File> {
        self.open_at(rel, OFlag::O_RDONLY, 0).map(File::from)
    }

    /// Opens a file to go on writing where an interrupted transfer stopped (created if
    /// missing, never truncated), mode 0600 until it is complete.
    pub fn open_to_resume(&self, rel: &Path) -> io::Result<File> {
        self.open_at(rel, OFlag::O_WRONLY | OFlag::O_CREAT, 0o600)
            .map(File::from)
    }
}

/// Finishes a written file: the owner (a failure explained), the mode promigrate gives a
/// copy of a source file with `src_mode`, with `durable` an fsync (and the pages dropped
/// from the cache), and only then `times`: the source's mtime is the mark a resumed run
/// takes as "complete", so it must never reach the disk before the data. `shown` names the
/// file in messages.
pub fn finish_file(
    f: &File,
    shown: &Path,
    owner: Owner,
    src_mode: u32,
    times: std::fs::FileTimes,
    durable: bool,
) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::fchown(f, Some(owner.uid), Some(owner.gid))
        .map_err(|e| io::Error::other(perms::explain(shown, &e, owner)))?;
    f.set_permissions(std::fs::Permissions::from_mode(perms::file_mode_from(
        src_mode,
    )))?;
    if durable {
        f.sync_all()?;
        crate::cache::dontneed(f, 0, 0);
    }
    f.set_times(times)
}

impl Target for Local {
    fn root(&self) -> &Path {
        &self.root
    }

    fn owner(&self) -> Owner {
        self.owner
    }

    fn stat(&self, rel: &Path) -> io::Result<Entry> {
        let (_, st) = beneath::stat_at(self.base.as_fd(), &self.full(rel))?;
        let kind = st.st_mode & libc::S_IFMT;
        Ok(Entry {
            is_dir: kind == libc::S_IFDIR,
            is_file: kind == libc::S_IFREG,
            size: st.st_size as u64,
            mtime: MTime {
                sec: st.st_mtime,
                nsec: st.st_mtime_nsec,
            },
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode,
        })
    }

    fn make_dirs(&self, rel: &Path) -> anyhow::Result<()> {
        self.create_below(&self.full(rel))
    }

    fn ensure_dir(&self, rel: &Path) -> anyhow::Result<bool> {
        // The common case, a directory that exists: one lookup, and its owner and mode fixed
        // through the descriptor it gave.
        match beneath::stat_at(self.base.as_fd(), &self.full(rel)) {
            Ok((fd, st)) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                perms::fix_open(&fd, &st, self.owner)
                    .map_err(|e| anyhow!(perms::explain(&self.path(rel), &e, self.owner)))
            }
            _ => self.make_dirs(rel).map(|()| false),
        }
    }

    fn create_file(&self, rel: &Path) -> io::Result<Box<dyn OutFile>> {
        Ok(Box::new(self.create_local(rel)?))
    }

    fn set_times(&self, rel: &Path, times: Times) -> io::Result<()> {
        self.open_file(rel)?.set_times(times.file_times())
    }

    fn sync_file(&self, rel: &Path) -> io::Result<()> {
        let f = self.open_file(rel)?;
        f.sync_all()?;
        crate::cache::dontneed(&f, 0, 0);
        Ok(())
    }

    fn sync_dir(&self, rel: &Path) -> io::Result<()> {
        File::from(self.open_at(rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)?).sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        beneath::rename_at(self.base.as_fd(), &self.full(from), &self.full(to))
    }

    fn remove_file(&self, rel: &Path) -> io::Result<()> {
        beneath::unlink_at(self.base.as_fd(), &self.full(rel))
    }

    fn remove_tree(&self, rel: &Path) -> io::Result<()> {
        beneath::remove_tree_at(self.base.as_fd(), &self.full(rel))
    }

    fn remove_empty_dir(&self, rel: &Path) -> io::Result<()> {
        beneath::rmdir_at(self.base.as_fd(), &self.full(rel))
    }

    fn list(&self, rel: &Path) -> io::Result<Vec<std::ffi::OsString>> {
        beneath::list_at(self.base.as_fd(), &self.full(rel))
    }

    fn fix_owner(&self, rel: &Path) -> io::Result<bool> {
        let (fd, st) = beneath::stat_at(self.base.as_fd(), &self.full(rel))?;
        perms::fix_open(&fd, &st, self.owner)
    }

    fn mark_copied(&self, rel: &Path, name: &str) -> io::Result<()> {
        use xattr::FileExt;
        File::from(self.open_at(rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)?)
            .set_xattr(tsdb::COPIED_XATTR, name.as_bytes())
    }

    fn lock(&self) -> anyhow::Result<Option<Guard>> {
        let root = &self.root;
        let dir = self
            .open_at(Path::new(""), OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)
            .map_err(|e| anyhow!("cannot lock {}: {e}", root.display()))?;
        let lock = crate::lock::exclusive_open(File::from(dir), root).map_err(|e| match e {
            crate::lock::LockError::Busy(h) => anyhow!(
                "another promigrate apply or verify is using {} ({h}): wait for it to finish",
                root.display()
            ),
            e => anyhow!("{e}"),
        })?;
        // The lock file of earlier releases is ours, and no longer used.
        let old = Path::new(tsdb::LOCK_FILE);
        if self.stat(old).is_ok_and(|e| e.is_file) {
            self.remove_file(old).map_err(|e| {
                anyhow!(
                    "cannot remove the old lock file {}: {e}",
                    self.path(old).display()
                )
            })?;
        }
        Ok(Some(lock))
    }
}
