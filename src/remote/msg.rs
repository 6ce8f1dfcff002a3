//! What the two ends say to each other: requests from the driver (the promigrate that reads
//! the source), replies from the receiver (the promigrate beside the volume). JSON in
//! [`super::frame`] frames; file data travels in data frames, not here.

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::perms::Owner;
use crate::plan::inventory::{self, Inventory};
use crate::plan::{preflight, survey};
use crate::relpath::RelPath;
use crate::tsdb::check;
use crate::volume::{Entry, Op, Times};

/// A request. Paths (`rel`) are relative to the TSDB directory opened by [`Request::Open`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Opens the TSDB directory `root` on the volume mounted at `mount` (both as the
    /// receiver sees them), whose entries must belong to `owner`.
    Open {
        mount: PathBuf,
        root: PathBuf,
        owner: Owner,
        /// Record the changes instead of making them (`apply --dry-run`).
        dry_run: bool,
        /// The volume is mounted read-only for a command that only reads (plan, verify): a
        /// read-only mount or the access the mount gives now does not stand for what
        /// apply's own read-write receiver will have.
        #[serde(default)]
        read_only: bool,
    },
    /// What is at `rel` (links refused).
    Stat { rel: String },
    /// The names in directory `rel`.
    List { rel: String },
    /// Creates the missing directories down to `rel`.
    MakeDirs { rel: String },
    /// Creates the missing directories down to `rel`, or fixes an existing one's owner and
    /// mode; answers whether it had to.
    EnsureDir { rel: String },
    /// Opens a file to write and answers a handle for data frames and the offset to send
    /// from: 0 (created or truncated), or with `resume` the size of what an interrupted
    /// transfer left in it.
    Create { rel: String, resume: bool },
    /// Closes a handle's file: any write error of its data frames, otherwise gives it the
    /// owner and the mode of a copy of a source file with `mode`, with `durable` fsyncs it,
    /// and only then `times`.
    Finish {
        handle: u32,
        mode: u32,
        times: Option<Times>,
        durable: bool,
    },
    /// Closes a handle's file without finishing it (the copy failed on the driver's side).
    Discard { handle: u32 },
    /// Gives an existing file its access and modification times.
    SetTimes { rel: String, times: Times },
    /// Makes a file's data durable.
    SyncFile { rel: String },
    /// Makes a directory's entries durable.
    SyncDir { rel: String },
    /// Renames `from` to `to`.
    Rename { from: String, to: String },
    /// Removes a file.
    RemoveFile { rel: String },
    /// Removes promigrate's own staging directory `rel` and what it holds.
    RemoveTree { rel: String },
    /// Removes an empty directory.
    RemoveEmptyDir { rel: String },
    /// Gives an existing entry the owner and mode; answers whether it changed.
    FixOwner { rel: String },
    /// Marks a block directory as copied by migration `name`.
    MarkCopied { rel: String, name: String },
    /// Takes the apply lock on the TSDB directory, held until [`Request::Unlock`] or the
    /// end of the stream.
    Lock,
    /// Releases the lock.
    Unlock,
    /// A dry run: records a file apply would write.
    WouldWrite { rel: String, bytes: u64 },
    /// A dry run: what it recorded.
    Recorded,
    /// Scans the TSDB directory.
    Scan { depth: inventory::Depth },
    /// Where the TSDB directory and the volume are (boot id, devices and inodes).
    Whereabouts,
    /// Blockers about the way down from the volume to the TSDB directory.
    Layout,
    /// Who holds the apply lock, if an apply runs now.
    Writer,
    /// Takes a shared (reading) lock, held until [`Request::ReadUnlock`] or the end of the
    /// stream; answers who holds the apply lock instead when an apply runs.
    ReadLock,
    /// Releases the shared lock.
    ReadUnlock,
    /// The filesystem, and what these writes take of it.
    Space { writes: preflight::Writes },
    /// The write preflight.
    WriteCheck { plan: survey::WritePlan },
    /// A whole (small) file.
    Read { rel: String },
    /// Whether block directory `dir` carries migration `name`'s copied-mark.
    IsCopied { dir: String, name: String },
    /// Content hashes, `parallelism` files at a time.
    Hashes {
        rels: Vec<RelPath>,
        parallelism: usize,
    },
    /// The format checks of the TSDB directory at `depth`.
    Check {
        depth: check::Depth,
        parallelism: usize,
    },
}

/// A successful reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Done.
    Done,
    /// Yes or no (whether something changed).
    Changed(bool),
    /// An entry's attributes.
    Entry(Entry),
    /// Names in a directory, as bytes (a name need not be UTF-8).
    Names(Vec<Vec<u8>>),
    /// A file opened to write: its handle, and the offset to send data from.
    Opened { handle: u32, offset: u64 },
    /// What a dry run recorded.
    Ops(Vec<Op>),
    /// A scan.
    Inventory(Box<Inventory>),
    /// Blockers about the way down to the TSDB directory.
    Layout(survey::Layout),
    /// Blockers and warnings.
    Findings {
        blockers: Vec<String>,
        warnings: Vec<String>,
    },
    /// Who holds the apply lock (`None`: nobody).
    Holder(Option<String>),
    /// The filesystem and what the writes take.
    Space(survey::Space),
    /// A file's bytes.
    Bytes(Vec<u8>),
    /// Content hashes, or why not, in the order asked.
    Hashes(Vec<Result<u128, String>>),
    /// Format problems.
    Problems(Vec<check::Problem>),
    /// Where the TSDB directory is, and the volume's device.
    Whereabouts {
        root: Option<crate::fsutil::Whereabouts>,
        device: Option<(String, u64)>,
    },
}

/// A failed request, as the receiver saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// The OS error number, when there was one (ENOSPC, EACCES, ...).
    pub errno: Option<i32>,
    /// `NotFound`, `PermissionDenied`, ... (io::ErrorKind's name) when there was no errno.
    pub kind: String,
    /// The message, with the path as the receiver sees it.
    pub message: String,
}

/// A reply: the answer, or why not.
pub type Reply = Result<Answer, WireError>;

impl WireError {
    /// The wire form of `e`.
    pub fn of(e: &io::Error) -> WireError {
        WireError {
            errno: errno_of(e),
            kind: format!("{:?}", e.kind()),
            message: e.to_string(),
        }
    }

    /// An error from a message alone (not an I/O error).
    pub fn msg(message: impl Into<String>) -> WireError {
        WireError {
            errno: None,
            kind: "Other".into(),
            message: message.into(),
        }
    }

    /// Back into an io::Error: the same errno (so "volume full" is still ENOSPC) or kind,
    /// and the receiver's message.
    pub fn into_io(self) -> io::Error {
        let kind = match self.errno {
            Some(n) => io::Error::from_raw_os_error(n).kind(),
            None => match self.kind.as_str() {
                "NotFound" => io::ErrorKind::NotFound,
                "PermissionDenied" => io::ErrorKind::PermissionDenied,
                "AlreadyExists" => io::ErrorKind::AlreadyExists,
                "InvalidInput" => io::ErrorKind::InvalidInput,
                "InvalidData" => io::ErrorKind::InvalidData,
                "StorageFull" => io::ErrorKind::StorageFull,
                "CrossesDevices" => io::ErrorKind::CrossesDevices,
                "WouldBlock" => io::ErrorKind::WouldBlock,
                _ => io::ErrorKind::Other,
            },
        };
        match self.errno {
            // The errno's own text is already in the message.
            Some(n) if io::Error::from_raw_os_error(n).to_string() == self.message => {
                io::Error::from_raw_os_error(n)
            }
            Some(n) => io::Error::new(
                kind,
                ErrnoMessage {
                    errno: n,
                    message: self.message,
                },
            ),
            None => io::Error::new(kind, self.message),
        }
    }
}

/// An error the receiver reported with an errno and its own message; the errno stays
/// readable through [`errno_of`].
#[derive(Debug)]
pub struct ErrnoMessage {
    pub errno: i32,
    pub message: String,
}

impl std::fmt::Display for ErrnoMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ErrnoMessage {}

/// The OS error number of `e`, also when the receiver reported it.
pub fn errno_of(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        e.get_ref()
            .and_then(|i| i.downcast_ref::<ErrnoMessage>())
            .map(|m| m.errno)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_cross_with_their_errno_and_kind() {
        let full = io::Error::from_raw_os_error(libc::ENOSPC);
        let back = WireError::of(&full).into_io();
        assert_eq!(back.raw_os_error(), Some(libc::ENOSPC));
        let named = WireError {
            errno: Some(libc::EACCES),
            kind: "PermissionDenied".into(),
            message: "cannot write /volume/db/x: Permission denied".into(),
        }
        .into_io();
        assert_eq!(named.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(errno_of(&named), Some(libc::EACCES));
        assert!(named.to_string().contains("/volume/db/x"));
        let gone =
            WireError::of(&io::Error::new(io::ErrorKind::NotFound, "no such entry")).into_io();
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn requests_are_json_with_an_op() {
        let r = Request::Create {
            rel: "01ABC/chunks/000001".into(),
            resume: true,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(
            s,
            r#"{"op":"create","rel":"01ABC/chunks/000001","resume":true}"#
        );
        let back = serde_json::from_str::<Request>(&s).unwrap();
        assert!(matches!(back, Request::Create { resume: true, .. }));
        let a: Reply = Ok(Answer::Opened {
            handle: 3,
            offset: 10,
        });
        let s = serde_json::to_string(&a).unwrap();
        let back = serde_json::from_str::<Reply>(&s).unwrap();
        assert!(matches!(
            back,
            Ok(Answer::Opened {
                handle: 3,
                offset: 10
            })
        ));
        // Hashes are 128-bit numbers.
        let h: Reply = Ok(Answer::Hashes(vec![Ok(u128::MAX), Err("gone".into())]));
        let back = serde_json::from_str::<Reply>(&serde_json::to_string(&h).unwrap()).unwrap();
        assert!(matches!(back, Ok(Answer::Hashes(v)) if v[0] == Ok(u128::MAX)));
    }
}
