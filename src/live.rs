//! Is the source Prometheus running? The final phase copies `wal/` and `chunks_head/`, which
//! are only consistent once the server has stopped, so it must know.
//!
//! Evidence, strongest first:
//! 1. `<data>/lock` is flock'ed: running. (Prometheus holds it while it runs and removes the file
//!    on a clean shutdown; a lock file nobody holds means it stopped uncleanly.)
//! 2. A process has a file below the data directory open for writing (`/proc/*/fd` and the
//!    flags in `/proc/*/fdinfo`; a running Prometheus always has its WAL segment open for
//!    writing): running, whether or not it uses a lock file (Debian's build does not by
//!    default). Readers (another promigrate, a backup tool, a Thanos sidecar) are not evidence.
//! 3. Neither, every process could be inspected, and (without a lock file) the last WAL
//!    segment ends on a page boundary as a clean stop leaves it: stopped. Processes that could
//!    not be inspected (not root), a lock that cannot be tested, or a WAL tail ending mid-page
//!    (a writer in another PID namespace or on another host is invisible here) make it unknown.
//!
//! Everything here only reads; taking the flock on a lock file nobody holds is released at once.

use std::path::Path;

use serde::Serialize;

/// What is known about the source server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "snake_case")]
pub enum Liveness {
    /// It runs; how we know.
    Running(String),
    /// It does not run. `clean` is false when a stale lock file shows it did not shut down cleanly.
    Stopped {
        /// Whether the last shutdown was clean (no stale lock file).
        clean: bool,
    },
    /// It cannot be told; why.
    Unknown(String),
}

/// Probes whether a Prometheus is running on the data directory `root`.
pub fn probe(root: &Path) -> Liveness {
    let lock = root.join("lock");
    let mut stale_lock = false;
    match std::fs::File::open(&lock) {
        Ok(f) => {
            use nix::fcntl::{Flock, FlockArg};
            match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                Ok(_released_on_drop) => stale_lock = true,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    return Liveness::Running(format!("{} is locked", lock.display()));
                }
                // e.g. flock emulated with fcntl on NFS/CIFS, which wants a writable descriptor.
                Err((_, errno)) => {
                    return Liveness::Unknown(format!(
                        "cannot test the lock on {}: {errno}",
                        lock.display()
                    ));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Liveness::Unknown(format!("cannot open {}: {e}", lock.display())),
    }
    match scan(root) {
        Scan::Found(w) => {
            return Liveness::Running(format!(
                "process {} ({}) has {} open for writing",
                w.pid,
                w.comm,
                w.file.display()
            ));
        }
        Scan::Clear { uninspected } if uninspected > 0 => {
            return Liveness::Unknown(format!(
                "no lock is held on {}, but {} could not be inspected (run promigrate as root to see them all)",
                lock.display(),
                crate::units::count(uninspected as u64, "process")
            ));
        }
        Scan::Clear { .. } => {}
    }
    // A server in another PID namespace or on another host is invisible to /proc. A clean stop
    // pads the last WAL segment to a whole page; a live writer usually leaves a partial one.
    if !stale_lock
        && let Some((name, size)) = last_wal_segment(root)
        && size % WAL_PAGE != 0
    {
        return Liveness::Unknown(format!(
            "no lock file and no writer visible here, but the last WAL segment wal/{name} ends mid-page ({size} bytes): a server this host cannot see (another PID namespace or host) may be writing it, or it crashed"
        ));
    }
    Liveness::Stopped { clean: !stale_lock }
}

const WAL_PAGE: u64 = 32 * 1024;

/// A process that has a file of the data directory open for writing: the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writer {
    /// Its PID.
    pub pid: u32,
    /// Its command name (`/proc/<pid>/comm`).
    pub comm: String,
    /// The file it has open for writing, as its /proc link reads.
    pub file: std::path::PathBuf,
}

/// The process (other than this one) that has a file of the data directory `root` open for
/// writing, if this host's /proc shows one (see the module doc for what it cannot see).
pub fn writer(root: &Path) -> Option<Writer> {
    match scan(root) {
        Scan::Found(w) => Some(w),
        Scan::Clear { .. } => None,
    }
}

/// [`holders`] of the files a running server keeps open below `root`.
fn scan(root: &Path) -> Scan {
    let canonical = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    holders(&written_files(root), &canonical)
}

/// The highest-numbered WAL segment and its size.
fn last_wal_segment(root: &Path) -> Option<(String, u64)> {
    std::fs::read_dir(root.join("wal"))
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            let n = crate::tsdb::segment_number(&name)?;
            Some((n, name, e.metadata().ok()?.len()))
        })
        .max()
        .map(|(_, name, size)| (name, size))
}

/// (device, inode) of the files a running server keeps open for writing: the lock and the
/// WAL, WBL and head chunk files. Identity, not path text: a containerised server shows its
/// own paths (`/prometheus/wal/...`) in /proc.
fn written_files(root: &Path) -> std::collections::HashSet<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut ids = std::collections::HashSet::new();
    let mut add = |p: &Path| {
        if let Ok(m) = std::fs::metadata(p) {
            ids.insert((m.dev(), m.ino()));
        }
    };
    add(&root.join("lock"));
    for dir in ["wal", "wbl", "chunks_head"] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir)) {
            for e in entries.flatten() {
                add(&e.path());
            }
        }
    }
    ids
}

enum Scan {
    Found(Writer),
    Clear { uninspected: usize },
}

/// Looks for a process (other than this one) with a file open for writing that is one of
/// `ids`, or lies below `root` (a file created after `ids` was taken, e.g. a new segment).
fn holders(ids: &std::collections::HashSet<(u64, u64)>, root: &Path) -> Scan {
    use std::os::unix::fs::MetadataExt;
    let me = std::process::id().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Scan::Clear { uninspected: 1 };
    };
    let mut uninspected = 0;
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let dir = p.path();
        let found = match std::fs::read_dir(dir.join("fd")) {
            Ok(fds) => fds.flatten().find_map(|fd| {
                // stat follows the /proc link to the open file itself.
                let link = std::fs::read_link(fd.path()).ok()?;
                let same =
                    std::fs::metadata(fd.path()).is_ok_and(|m| ids.contains(&(m.dev(), m.ino())));
                ((same || link.starts_with(root)) && opened_for_writing(&dir, &fd.file_name()))
                    .then_some(link)
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // exited meanwhile
            Err(_) => {
                uninspected += 1;
                continue;
            }
        };
        if let Some(file) = found {
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            return Scan::Found(Writer {
                pid: pid.parse().unwrap_or_default(),
                comm: comm.trim().to_string(),
                file,
            });
        }
    }
    Scan::Clear { uninspected }
}

/// Whether `/proc/<pid>/fdinfo/<fd>` shows the descriptor open for writing.
fn opened_for_writing(proc_dir: &Path, fd: &std::ffi::OsStr) -> bool {
    let Ok(info) = std::fs::read_to_string(proc_dir.join("fdinfo").join(fd)) else {
        return false;
    };
    info.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        .is_some_and(|flags| flags & (libc::O_WRONLY | libc::O_RDWR) as u32 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_file_means_running_and_a_stale_lock_means_unclean() {
        let d = tempfile::tempdir().unwrap();
        // Our own process is skipped, so a child holds the file open; a reader is no writer.
        std::fs::create_dir(d.path().join("wal")).unwrap();
        let seg = d.path().join("wal/00000000");
        std::fs::write(&seg, vec![0u8; 32 * 1024]).unwrap();
        let mut reader = std::process::Command::new("sleep")
            .arg("30")
            .stdin(std::fs::File::open(&seg).unwrap())
            .spawn()
            .unwrap();
        let seen_reader = probe(d.path());
        reader.kill().unwrap();
        reader.wait().unwrap();
        assert!(
            !matches!(seen_reader, Liveness::Running(_)),
            "{seen_reader:?}"
        );
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stdout(std::fs::OpenOptions::new().append(true).open(&seg).unwrap())
            .spawn()
            .unwrap();
        let seen = probe(d.path());
        let who = writer(d.path());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            matches!(&seen, Liveness::Running(how) if how.contains("sleep")),
            "{seen:?}"
        );
        let who = who.expect("the writer");
        assert_eq!((who.pid, who.comm.as_str()), (child.id(), "sleep"));
        if nix::unistd::getuid().is_root() {
            assert_eq!(probe(d.path()), Liveness::Stopped { clean: true });
            std::fs::write(d.path().join("lock"), b"").unwrap();
            assert_eq!(probe(d.path()), Liveness::Stopped { clean: false });
            std::fs::remove_file(d.path().join("lock")).unwrap();
            // A WAL tail mid-page with nothing visible: someone unseen may be writing.
            std::fs::write(&seg, vec![1u8; 1000]).unwrap();
            assert!(matches!(probe(d.path()), Liveness::Unknown(why) if why.contains("mid-page")));
        }
    }

    #[test]
    fn a_held_lock_means_running() {
        use nix::fcntl::{Flock, FlockArg};
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("lock"), b"").unwrap();
        let held = Flock::lock(
            std::fs::File::open(d.path().join("lock")).unwrap(),
            FlockArg::LockExclusiveNonblock,
        )
        .unwrap();
        assert!(matches!(probe(d.path()), Liveness::Running(how) if how.contains("locked")));
        drop(held);
        assert!(!matches!(probe(d.path()), Liveness::Running(_)));
    }
}
