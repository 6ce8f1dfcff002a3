//! The target volume as a capability (a module named `volume`, not `target`, so that it is
//! never mistaken for cargo's build directory): everything `apply` does to a target goes
//! through [`Target`], with paths relative to the target's TSDB directory.
//!
//! - [`Local`]: a volume mounted here. The mount is opened once, and every path is resolved
//!   from that descriptor ([`crate::fsutil::beneath`]), so "never through a link" and "never
//!   outside the volume" hold by construction.
//! - [`DryRun`]: a target whose writes are recorded instead of made (`apply --dry-run`): it
//!   reads what is there, so the engine decides exactly as it would, and lists what it would
//!   change.
//!
//! A receiver pod in the cluster is the next implementation.

mod dry_run;
mod local;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::fsutil::MTime;
use crate::lock::Guard;
use crate::perms::Owner;

pub use dry_run::DryRun;
pub use local::{Local, finish_file};

/// What is at a path of the target (never a link: links are refused).
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize)]
pub struct Entry {
    /// A directory.
    pub is_dir: bool,
    /// A regular file.
    pub is_file: bool,
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: MTime,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// `st_mode` (type and permission bits).
    pub mode: u32,
}

/// The access and modification times a copy gets from its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Times {
    /// Access time.
    pub accessed: MTime,
    /// Modification time.
    pub modified: MTime,
}

impl Times {
    /// Both times `t`.
    pub fn both(t: MTime) -> Times {
        Times {
            accessed: t,
            modified: t,
        }
    }

    /// As std's `FileTimes`.
    pub fn file_times(self) -> std::fs::FileTimes {
        std::fs::FileTimes::new()
            .set_accessed(self.accessed.system_time())
            .set_modified(self.modified.system_time())
    }
}

/// A file being written on a target, from [`Target::create_file`].
pub trait OutFile: Send {
    /// Appends `data`.
    fn write_all(&mut self, data: &[u8]) -> io::Result<()>;
    /// Hints that the range just written can go to disk now (a local file).
    fn writeback(&self, _offset: u64, _len: u64) {}
    /// Finishes the file: the owner, the mode promigrate gives a copy of a source file with
    /// `src_mode`, with `durable` an fsync, and only then `times` (see [`finish_file`]).
    /// `shown` names it in messages.
    fn finish(
        &mut self,
        shown: &Path,
        owner: Owner,
        src_mode: u32,
        times: Option<Times>,
        durable: bool,
    ) -> io::Result<()>;
    /// The file itself when it is on a volume mounted here (the in-kernel copy writes it).
    fn as_file(&self) -> Option<&File> {
        None
    }
}

impl OutFile for File {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        io::Write::write_all(self, data)
    }

    fn writeback(&self, offset: u64, len: u64) {
        crate::cache::start_writeback(self, offset, len);
    }

    fn finish(
        &mut self,
        shown: &Path,
        owner: Owner,
        src_mode: u32,
        times: Option<Times>,
        durable: bool,
    ) -> io::Result<()> {
        let times = times.map_or_else(std::fs::FileTimes::new, Times::file_times);
        finish_file(self, shown, owner, src_mode, times, durable)
    }

    fn as_file(&self) -> Option<&File> {
        Some(self)
    }
}

/// A change apply makes to a target, as a dry run records it. Paths are full paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A directory created (with the target owner and mode).
    Mkdir { path: String },
    /// A file written (then given the owner, mode and the source's times, and fsync'ed).
    Write { path: String, bytes: u64 },
    /// An entry renamed: a staged block or a temp file into place, or an entry into the
    /// quarantine.
    Rename { from: String, to: String },
    /// A file removed: a temp file an interrupted run left, the lock file of an earlier
    /// release.
    Remove { path: String },
    /// A staged directory removed with what it holds: one an interrupted run left that is
    /// no longer to be copied, or one this run staged for a block a presync leaves for the
    /// final phase.
    RemoveTree { path: String },
    /// An empty directory of promigrate's removed (the staging directory, at the end).
    Rmdir { path: String },
    /// An existing entry given the target owner and mode.
    Chown { path: String },
}

/// Everything apply does to a target volume. Paths are relative to its TSDB directory.
pub trait Target: Send + Sync {
    /// The TSDB directory (in messages).
    fn root(&self) -> &Path;
    /// Who must own what is written.
    fn owner(&self) -> Owner;
    /// Whether writes are only recorded ([`DryRun`]): the engine then reads no file content.
    fn recording(&self) -> bool {
        false
    }
    /// What the dry run recorded (empty for a real target).
    fn recorded(&self) -> Vec<Op> {
        Vec::new()
    }
    /// What is at `rel`; `NotFound` if nothing, an error for a link.
    fn stat(&self, rel: &Path) -> io::Result<Entry>;
    /// Creates the missing directories down to `rel`, each with the target owner and mode.
    fn make_dirs(&self, rel: &Path) -> anyhow::Result<()>;
    /// [`Self::make_dirs`], or for an existing directory gives it the owner and mode;
    /// returns whether an existing one had to be changed.
    fn ensure_dir(&self, rel: &Path) -> anyhow::Result<bool>;
    /// Creates (or truncates) a file to write, mode 0600 until it is complete.
    fn create_file(&self, rel: &Path) -> io::Result<Box<dyn OutFile>>;
    /// Records a file apply would write (a dry run; a real target never gets this call).
    fn would_write(&self, _rel: &Path, _bytes: u64) {}
    /// Gives a file written earlier its times.
    fn set_times(&self, rel: &Path, times: Times) -> io::Result<()>;
    /// Makes a file's data durable.
    fn sync_file(&self, rel: &Path) -> io::Result<()>;
    /// Makes a directory's entries durable.
    fn sync_dir(&self, rel: &Path) -> io::Result<()>;
    /// Renames `from` to `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, rel: &Path) -> io::Result<()>;
    /// Removes a directory and everything in it, or anything else as it is (promigrate's
    /// own staging only).
    fn remove_tree(&self, rel: &Path) -> io::Result<()>;
    /// Removes an empty directory.
    fn remove_empty_dir(&self, rel: &Path) -> io::Result<()>;
    /// The names in a directory.
    fn list(&self, rel: &Path) -> io::Result<Vec<std::ffi::OsString>>;
    /// Gives an existing entry the target owner and mode; returns whether it changed.
    fn fix_owner(&self, rel: &Path) -> io::Result<bool>;
    /// Marks a (staged) block directory as copied by migration `name`
    /// ([`crate::tsdb::COPIED_XATTR`]).
    fn mark_copied(&self, rel: &Path, name: &str) -> io::Result<()>;
    /// Takes the target's apply lock (an exclusive flock on the TSDB directory, which must
    /// exist); a dry run takes none.
    fn lock(&self) -> anyhow::Result<Option<Guard>>;
    /// `rel` as a full path (in messages).
    fn path(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.root().to_path_buf()
        } else {
            self.root().join(rel)
        }
    }
}
