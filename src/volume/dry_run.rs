//! A target whose writes are recorded instead of made (`apply --dry-run`).

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{Entry, Local, Op, Target};
use crate::lock::Guard;
use crate::perms::{self, Owner};

/// A [`Local`] target that is read as it is, and whose changes are recorded as [`Op`]s:
/// apply's engine runs on it exactly as on the real one, and the record is what it would do.
pub struct DryRun {
    inner: Local,
    ops: Mutex<Vec<Op>>,
    /// Directories the run would have created (below the mount): they count as there.
    made: Mutex<BTreeSet<PathBuf>>,
    /// Entries the run would have moved or removed (below the TSDB directory): they count
    /// as gone.
    gone: Mutex<BTreeSet<PathBuf>>,
    /// Entries whose owner and mode the run would have fixed: fixed once.
    fixed: Mutex<BTreeSet<PathBuf>>,
    /// Entries the run would have put in place by a rename (a staged block, a file written
    /// under a temp name): new, with the target owner and mode.
    placed: Mutex<BTreeSet<PathBuf>>,
}

impl DryRun {
    /// Records what apply would do to `inner`.
    pub fn new(inner: Local) -> DryRun {
        DryRun {
            inner,
            ops: Mutex::new(Vec::new()),
            made: Mutex::new(BTreeSet::new()),
            gone: Mutex::new(BTreeSet::new()),
            fixed: Mutex::new(BTreeSet::new()),
            placed: Mutex::new(BTreeSet::new()),
        }
    }

    /// Whether `rel` (or a directory above it) is one the run would have put in place.
    fn is_placed(&self, rel: &Path) -> bool {
        self.placed
            .lock()
            .is_ok_and(|p| rel.ancestors().any(|a| p.contains(a)))
    }

    /// Whether `rel` was moved or removed by the run (itself or a directory above it).
    fn is_gone(&self, rel: &Path) -> bool {
        self.gone
            .lock()
            .is_ok_and(|g| rel.ancestors().any(|a| g.contains(a)))
    }

    fn set_gone(&self, rel: &Path) {
        if let Ok(mut g) = self.gone.lock() {
            g.insert(rel.to_path_buf());
        }
    }

    fn not_found(&self, rel: &Path) -> io::Error {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} (moved away by this run)", self.shown(rel)),
        )
    }

    fn record(&self, op: Op) {
        if let Ok(mut ops) = self.ops.lock() {
            ops.push(op);
        }
    }

    fn shown(&self, rel: &Path) -> String {
        self.path(rel).display().to_string()
    }

    fn made(&self, below_mount: &Path) -> bool {
        self.made.lock().is_ok_and(|m| m.contains(below_mount))
    }
}

impl Target for DryRun {
    fn root(&self) -> &Path {
        self.inner.root()
    }

    fn owner(&self) -> Owner {
        self.inner.owner()
    }

    fn recording(&self) -> bool {
        true
    }

    fn recorded(&self) -> Vec<Op> {
        self.ops.lock().map(|o| o.clone()).unwrap_or_default()
    }

    fn stat(&self, rel: &Path) -> io::Result<Entry> {
        if self.is_gone(rel) {
            return Err(self.not_found(rel));
        }
        if self.made(&self.inner.full(rel)) {
            // As the run would have made it.
            let owner = self.owner();
            return Ok(Entry {
                is_dir: true,
                is_file: false,
                size: 0,
                mtime: crate::fsutil::MTime { sec: 0, nsec: 0 },
                uid: owner.uid,
                gid: owner.gid,
                mode: libc::S_IFDIR | perms::wanted_mode(0o700, true),
            });
        }
        self.inner.stat(rel)
    }

    fn make_dirs(&self, rel: &Path) -> anyhow::Result<()> {
        let mut cur = PathBuf::new();
        for c in self.inner.full(rel).components() {
            cur.push(c);
            if self.made(&cur) {
                continue;
            }
            // What the run would have moved away is not there for it; what is in the way,
            // or cannot be looked up, fails as a real run would.
            let gone = cur
                .strip_prefix(&self.inner.root_rel)
                .is_ok_and(|r| !r.as_os_str().is_empty() && self.is_gone(r));
            if !gone && self.inner.dir_there(&cur)? {
                continue;
            }
            if let Ok(mut m) = self.made.lock() {
                m.insert(cur.clone());
            }
            self.record(Op::Mkdir {
                path: self.inner.mount.join(&cur).display().to_string(),
            });
        }
        Ok(())
    }

    fn ensure_dir(&self, rel: &Path) -> anyhow::Result<bool> {
        match self.stat(rel) {
            Ok(e) if e.is_dir => Ok(self.fix_owner(rel).unwrap_or(false)),
            _ => self.make_dirs(rel).map(|()| false),
        }
    }

    fn create_file(&self, rel: &Path) -> io::Result<Box<dyn super::OutFile>> {
        Err(io::Error::other(format!(
            "a dry run writes nothing (asked to create {})",
            self.shown(rel)
        )))
    }

    fn set_times(&self, _rel: &Path, _times: super::Times) -> io::Result<()> {
        Ok(())
    }

    fn would_write(&self, rel: &Path, bytes: u64) {
        self.record(Op::Write {
            path: self.shown(rel),
            bytes,
        });
    }

    fn sync_file(&self, _rel: &Path) -> io::Result<()> {
        Ok(())
    }

    fn sync_dir(&self, _rel: &Path) -> io::Result<()> {
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.set_gone(from);
        if let Ok(mut g) = self.gone.lock() {
            g.remove(to);
        }
        if let Ok(mut p) = self.placed.lock() {
            p.insert(to.to_path_buf());
        }
        self.record(Op::Rename {
            from: self.shown(from),
            to: self.shown(to),
        });
        Ok(())
    }

    fn remove_file(&self, rel: &Path) -> io::Result<()> {
        self.set_gone(rel);
        self.record(Op::Remove {
            path: self.shown(rel),
        });
        Ok(())
    }

    fn remove_tree(&self, rel: &Path) -> io::Result<()> {
        self.set_gone(rel);
        self.record(Op::RemoveTree {
            path: self.shown(rel),
        });
        Ok(())
    }

    fn remove_empty_dir(&self, rel: &Path) -> io::Result<()> {
        // A real run removes it only if nothing is left in it.
        if self.list(rel)?.is_empty() {
            self.set_gone(rel);
            self.record(Op::Rmdir {
                path: self.shown(rel),
            });
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::ENOTEMPTY))
        }
    }

    fn list(&self, rel: &Path) -> io::Result<Vec<std::ffi::OsString>> {
        if self.is_gone(rel) {
            return Err(self.not_found(rel));
        }
        let full = self.inner.full(rel);
        let names = if self.made(&full) {
            // A directory the run would have made: what it would have made in it.
            self.made
                .lock()
                .map(|m| {
                    m.iter()
                        .filter(|p| p.parent() == Some(full.as_path()))
                        .filter_map(|p| p.file_name().map(|n| n.to_os_string()))
                        .collect()
                })
                .unwrap_or_default()
        } else {
            self.inner.list(rel)?
        };
        Ok(names
            .into_iter()
            .filter(|n| !self.is_gone(&rel.join(n)))
            .collect())
    }

    fn fix_owner(&self, rel: &Path) -> io::Result<bool> {
        let e = self.stat(rel)?;
        if self.is_placed(rel) || self.fixed.lock().is_ok_and(|f| f.contains(rel)) {
            return Ok(false);
        }
        let change = perms::problem_of(e.uid, e.gid, e.mode, self.owner()).is_some();
        if change {
            if let Ok(mut f) = self.fixed.lock() {
                f.insert(rel.to_path_buf());
            }
            self.record(Op::Chown {
                path: self.shown(rel),
            });
        }
        Ok(change)
    }

    fn mark_copied(&self, _rel: &Path, _name: &str) -> io::Result<()> {
        Ok(())
    }

    fn lock(&self) -> anyhow::Result<Option<Guard>> {
        // No lock; but the lock file of earlier releases, which a real run removes, is listed.
        let old = Path::new(crate::tsdb::LOCK_FILE);
        if self.stat(old).is_ok_and(|e| e.is_file) {
            self.remove_file(old)?;
        }
        Ok(None)
    }
}
