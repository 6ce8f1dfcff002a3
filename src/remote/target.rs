//! A target volume reached through a receiver: the same [`Target`] apply writes a local
//! volume through, each operation done by the receiver beside the volume.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::anyhow;

use super::client::{Handle, Receiver};
use super::msg::Request;
use crate::lock::Guard;
use crate::perms::Owner;
use crate::volume::{Entry, OutFile, Target, Times};

/// The TSDB directory on a volume that a receiver has opened.
pub struct Remote {
    rx: Arc<Receiver>,
    /// A dry run: the receiver records the changes instead of making them.
    dry_run: bool,
    /// The TSDB directory as the receiver sees it, in messages prefixed with the receiver
    /// (`pod monitoring/promigrate-rx-…:/volume/prometheus-db`).
    shown: PathBuf,
    owner: Owner,
}

impl Remote {
    /// Opens the TSDB directory `root` on the volume the receiver has mounted at `mount`;
    /// with `dry_run` the receiver records what apply would change instead.
    pub fn open(
        rx: Arc<Receiver>,
        mount: &Path,
        root: &Path,
        owner: Owner,
        dry_run: bool,
    ) -> anyhow::Result<Remote> {
        rx.open(mount.to_path_buf(), root.to_path_buf(), owner, dry_run)
            .map_err(|e| anyhow!("{}: {e}", rx.name))?;
        let shown = shown(&rx, root);
        Ok(Remote {
            rx,
            dry_run,
            shown,
            owner,
        })
    }
}

/// The TSDB directory in messages: `RECEIVER:PATH`.
pub fn shown(rx: &Receiver, root: &Path) -> PathBuf {
    PathBuf::from(format!("{}:{}", rx.name, root.display()))
}

fn s(rel: &Path) -> String {
    rel.to_string_lossy().into_owned()
}

impl Target for Remote {
    fn root(&self) -> &Path {
        &self.shown
    }

    fn owner(&self) -> Owner {
        self.owner
    }

    fn recording(&self) -> bool {
        self.dry_run
    }

    /// The receiver's record, its paths named as [`Target::path`] names them here.
    fn recorded(&self) -> Vec<crate::volume::Op> {
        use crate::volume::Op;
        let ops = match self.rx.call(&Request::Recorded) {
            Ok(super::msg::Answer::Ops(ops)) => ops,
            _ => return Vec::new(),
        };
        let on = |p: String| format!("{}:{p}", self.rx.name);
        ops.into_iter()
            .map(|op| match op {
                Op::Mkdir { path } => Op::Mkdir { path: on(path) },
                Op::Write { path, bytes } => Op::Write {
                    path: on(path),
                    bytes,
                },
                Op::Rename { from, to } => Op::Rename {
                    from: on(from),
                    to: on(to),
                },
                Op::Remove { path } => Op::Remove { path: on(path) },
                Op::RemoveTree { path } => Op::RemoveTree { path: on(path) },
                Op::Rmdir { path } => Op::Rmdir { path: on(path) },
                Op::Chown { path } => Op::Chown { path: on(path) },
            })
            .collect()
    }

    fn would_write(&self, rel: &Path, bytes: u64) {
        let _ = self.rx.call(&Request::WouldWrite { rel: s(rel), bytes });
    }

    fn stat(&self, rel: &Path) -> io::Result<Entry> {
        self.rx.stat(&s(rel))
    }

    fn make_dirs(&self, rel: &Path) -> anyhow::Result<()> {
        self.rx
            .call(&Request::MakeDirs { rel: s(rel) })
            .map(drop)
            .map_err(|e| anyhow!("{e}"))
    }

    fn ensure_dir(&self, rel: &Path) -> anyhow::Result<bool> {
        self.rx
            .changed(&Request::EnsureDir { rel: s(rel) })
            .map_err(|e| anyhow!("{e}"))
    }

    fn create_file(&self, rel: &Path) -> io::Result<Box<dyn OutFile>> {
        let h = self.rx.create(&s(rel), false)?;
        Ok(Box::new(RemoteFile {
            rx: self.rx.clone(),
            h,
            offset: h.offset,
            open: true,
        }))
    }

    fn set_times(&self, rel: &Path, times: Times) -> io::Result<()> {
        self.rx
            .call(&Request::SetTimes { rel: s(rel), times })
            .map(drop)
    }

    fn sync_file(&self, rel: &Path) -> io::Result<()> {
        self.rx.call(&Request::SyncFile { rel: s(rel) }).map(drop)
    }

    fn sync_dir(&self, rel: &Path) -> io::Result<()> {
        self.rx.call(&Request::SyncDir { rel: s(rel) }).map(drop)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.rx
            .call(&Request::Rename {
                from: s(from),
                to: s(to),
            })
            .map(drop)
    }

    fn remove_file(&self, rel: &Path) -> io::Result<()> {
        self.rx.call(&Request::RemoveFile { rel: s(rel) }).map(drop)
    }

    fn remove_tree(&self, rel: &Path) -> io::Result<()> {
        self.rx.call(&Request::RemoveTree { rel: s(rel) }).map(drop)
    }

    fn remove_empty_dir(&self, rel: &Path) -> io::Result<()> {
        self.rx
            .call(&Request::RemoveEmptyDir { rel: s(rel) })
            .map(drop)
    }

    fn list(&self, rel: &Path) -> io::Result<Vec<std::ffi::OsString>> {
        self.rx.list(&s(rel))
    }

    fn fix_owner(&self, rel: &Path) -> io::Result<bool> {
        self.rx.changed(&Request::FixOwner { rel: s(rel) })
    }

    fn mark_copied(&self, rel: &Path, name: &str) -> io::Result<()> {
        self.rx
            .call(&Request::MarkCopied {
                rel: s(rel),
                name: name.into(),
            })
            .map(drop)
    }

    /// The receiver holds the lock (a flock on the TSDB directory, as a local apply takes)
    /// until the guard is dropped, or the stream ends.
    fn lock(&self) -> anyhow::Result<Option<Guard>> {
        self.rx.call(&Request::Lock).map_err(|e| anyhow!("{e}"))?;
        Ok(Some(release_on_drop(self.rx.clone(), Request::Unlock)))
    }
}

/// A guard that sends `release` (an unlock) to the receiver when dropped.
pub fn release_on_drop(rx: Arc<Receiver>, release: Request) -> Guard {
    struct Release(Arc<Receiver>, Request);
    impl Drop for Release {
        fn drop(&mut self) {
            let _ = self.0.call(&self.1);
        }
    }
    Guard::elsewhere(Box::new(Release(rx, release)))
}

/// A file being written through the receiver: data frames sent without waiting; a write
/// error comes back when it is finished.
struct RemoteFile {
    rx: Arc<Receiver>,
    h: Handle,
    offset: u64,
    open: bool,
}

impl OutFile for RemoteFile {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.rx.write_at(self.h.id, self.offset, data)?;
        self.offset += data.len() as u64;
        Ok(())
    }

    fn finish(
        &mut self,
        _shown: &Path,
        _owner: Owner,
        src_mode: u32,
        times: Option<Times>,
        durable: bool,
    ) -> io::Result<()> {
        self.open = false;
        self.rx.finish(self.h, src_mode, times, durable)
    }
}

impl Drop for RemoteFile {
    /// A copy that stopped part-way: the receiver closes the file (a rerun truncates it).
    fn drop(&mut self) {
        if self.open {
            let _ = self.rx.call(&Request::Discard { handle: self.h.id });
        }
    }
}
