//! What the source says of an entry: its kind, size, mode, owner and time, locally or over
//! SFTP.

use std::os::unix::fs::MetadataExt;

use crate::fsutil::MTime;

/// Owner, mode, size and time of an entry.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    /// Size in bytes.
    pub size: u64,
    /// Modification time (whole seconds over SFTP).
    pub mtime: MTime,
    /// `st_mode`, type bits included.
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
}

impl Stat {
    pub(crate) fn of(m: &std::fs::Metadata) -> Stat {
        Stat {
            size: m.len(),
            mtime: MTime {
                sec: m.mtime(),
                nsec: m.mtime_nsec(),
            },
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
        }
    }

    pub(crate) fn of_sftp(s: &ssh2::FileStat) -> Stat {
        Stat {
            size: s.size.unwrap_or(0),
            mtime: MTime {
                sec: s.mtime.unwrap_or(0) as i64,
                nsec: 0,
            },
            mode: s.perm.unwrap_or(0),
            uid: s.uid.unwrap_or(0),
            gid: s.gid.unwrap_or(0),
        }
    }

    /// What kind of entry this is (links are not followed).
    pub fn kind(&self) -> Kind {
        match self.mode & 0o170000 {
            0o100000 => Kind::File,
            0o040000 => Kind::Dir,
            0o120000 => Kind::Symlink,
            _ => Kind::Other,
        }
    }
}

/// The kind of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed).
    Symlink,
    /// Anything else.
    Other,
}

/// One directory entry.
#[derive(Debug, Clone)]
pub struct Ent {
    /// Its name, or `Err(lossy name)` when it is not UTF-8.
    pub name: Result<String, String>,
    /// Its attributes (of the entry itself, links not followed).
    pub stat: Stat,
}
