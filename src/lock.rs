//! The target's lock: a flock on the TSDB directory itself, so that no file of promigrate's
//! stays in the data directory after a run, and a crashed run leaves no stale lock (the
//! kernel drops a flock with its last file descriptor). An apply holds it exclusively while
//! it writes; a verify holds it shared while it reads; `plan` only asks. Who holds it is read
//! from `/proc/locks` (pid, by the directory's device and inode) and `/proc/<pid>/stat`.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

/// A held lock; released when dropped.
pub struct Guard(Held);

/// What holds a lock (held, never read: dropping it releases the lock).
#[allow(dead_code)]
enum Held {
    /// A flock on the directory here.
    Flock(Flock<File>),
    /// A lock held elsewhere (by a receiver), released by dropping this.
    Elsewhere(Box<dyn Send + Sync>),
}

impl Guard {
    /// A lock held elsewhere, released when `release` is dropped.
    pub fn elsewhere(release: Box<dyn Send + Sync>) -> Guard {
        Guard(Held::Elsewhere(release))
    }
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Held::Flock(_) => "Guard(flock)",
            Held::Elsewhere(_) => "Guard(elsewhere)",
        })
    }
}

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The process (as this PID namespace sees it), if `/proc/locks` names one.
    pub pid: Option<u32>,
    /// When that process started (UTC), if known.
    pub since: Option<jiff::Timestamp>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pid = self.pid.map_or("unknown".to_string(), |p| p.to_string());
        let since = self.since.map_or("unknown".to_string(), |t| {
            t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
        });
        write!(f, "pid {pid}, since {since}")
    }
}

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("held by another promigrate ({0})")]
    Busy(Holder),
    /// The directory could not be opened or locked.
    #[error("cannot lock {path}: {source}")]
    Io {
        /// The directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

fn open_dir(dir: &Path) -> Result<File, LockError> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
        .map_err(|source| LockError::Io {
            path: dir.display().to_string(),
            source,
        })
}

fn take(dir: &Path, how: FlockArg) -> Result<Guard, LockError> {
    take_open(open_dir(dir)?, dir, how)
}

/// Takes the exclusive lock of a directory already opened (read-only) as `file`; `dir` names
/// it in messages and for finding the holder.
pub fn exclusive_open(file: File, dir: &Path) -> Result<Guard, LockError> {
    take_open(file, dir, FlockArg::LockExclusiveNonblock)
}

fn take_open(file: File, dir: &Path, how: FlockArg) -> Result<Guard, LockError> {
    Flock::lock(file, how)
        .map(|f| Guard(Held::Flock(f)))
        .map_err(|(_, errno)| {
            if errno == nix::errno::Errno::EWOULDBLOCK {
                LockError::Busy(holder(dir).unwrap_or(Holder {
                    pid: None,
                    since: None,
                }))
            } else {
                LockError::Io {
                    path: dir.display().to_string(),
                    source: errno.into(),
                }
            }
        })
}

/// Takes the exclusive lock of a directory (an apply writing it), without waiting.
pub fn exclusive(dir: &Path) -> Result<Guard, LockError> {
    take(dir, FlockArg::LockExclusiveNonblock)
}

/// Takes a shared lock of a directory (a verify reading it), without waiting: fails only
/// while an apply holds it.
pub fn shared(dir: &Path) -> Result<Guard, LockError> {
    take(dir, FlockArg::LockSharedNonblock)
}

/// Whether an apply holds the directory's lock now (`None` if not, or if the directory does
/// not exist). Takes and drops a shared lock.
pub fn writer(dir: &Path) -> Option<Holder> {
    if !dir.is_dir() {
        return None;
    }
    match shared(dir) {
        Err(LockError::Busy(h)) => Some(h),
        _ => None,
    }
}

/// A process holding a flock on `dir`, from `/proc/locks`.
fn holder(dir: &Path) -> Option<Holder> {
    let md = std::fs::metadata(dir).ok()?;
    let (major, minor) = (libc::major(md.dev()), libc::minor(md.dev()));
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let pid = locks.lines().find_map(|l| {
        // "1: FLOCK  ADVISORY  WRITE 2149 fe:00:5505065 0 EOF"
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 6 || f[1] != "FLOCK" {
            return None;
        }
        let mut id = f[5].split(':');
        let maj = u32::from_str_radix(id.next()?, 16).ok()?;
        let min = u32::from_str_radix(id.next()?, 16).ok()?;
        let ino: u64 = id.next()?.parse().ok()?;
        (maj == major && min == minor && ino == md.ino())
            .then(|| f[4].parse::<u32>().ok())
            .flatten()
    });
    Some(Holder {
        pid,
        since: pid.and_then(started),
    })
}

/// When a process started: its start time in clock ticks after boot (`/proc/PID/stat`
/// field 22) plus the boot time (`/proc/stat` btime).
fn started(pid: u32) -> Option<jiff::Timestamp> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let btime: i64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|h| *h > 0)? as u64;
    jiff::Timestamp::from_second(btime + (ticks / hz) as i64).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_names_this_process_and_a_shared_one_does_not_block_another_reader() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(writer(dir.path()), None);
        let g = exclusive(dir.path()).unwrap();
        let h = writer(dir.path()).expect("the exclusive lock is seen");
        assert_eq!(h.pid, Some(std::process::id()));
        let since = h.since.expect("start time known");
        assert!(since <= jiff::Timestamp::now());
        assert!(matches!(exclusive(dir.path()), Err(LockError::Busy(_))));
        drop(g);
        let r1 = shared(dir.path()).unwrap();
        let r2 = shared(dir.path()).unwrap();
        assert_eq!(writer(dir.path()), None);
        assert!(matches!(exclusive(dir.path()), Err(LockError::Busy(_))));
        drop((r1, r2));
        assert!(exclusive(dir.path()).is_ok());
    }
}
