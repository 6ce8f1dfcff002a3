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
//! 3. Neither, and every process could be inspected: stopped. If some processes could not be
//!    inspected (not root), the answer is unknown.
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
    if let Ok(f) = std::fs::File::open(&lock) {
        use nix::fcntl::{Flock, FlockArg};
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(_released_on_drop) => stale_lock = true,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Liveness::Running(format!("{} is locked", lock.display()));
            }
            Err(_) => {}
        }
    }
    let canonical = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    match holders(&canonical) {
        Scan::Found(who) => Liveness::Running(who),
        Scan::Clear { uninspected: 0 } => Liveness::Stopped { clean: !stale_lock },
        Scan::Clear { uninspected } => Liveness::Unknown(format!(
            "no lock is held on {}, but {uninspected} process(es) could not be inspected (run promigrate as root to see them all)",
            lock.display()
        )),
    }
}

enum Scan {
    Found(String),
    Clear { uninspected: usize },
}

/// Looks for a process (other than this one) with a file under `root` open for writing.
fn holders(root: &Path) -> Scan {
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
                let target = std::fs::read_link(fd.path()).ok()?;
                (target.starts_with(root) && opened_for_writing(&dir, &fd.file_name()))
                    .then_some(target)
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // exited meanwhile
            Err(_) => {
                uninspected += 1;
                continue;
            }
        };
        if let Some(path) = found {
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            return Scan::Found(format!(
                "process {pid} ({}) has {} open",
                comm.trim(),
                path.display()
            ));
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
        std::fs::write(d.path().join("seg"), b"x").unwrap();
        let mut reader = std::process::Command::new("sleep")
            .arg("30")
            .stdin(std::fs::File::open(d.path().join("seg")).unwrap())
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
            .stdout(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(d.path().join("seg"))
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        let seen = probe(d.path());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            matches!(&seen, Liveness::Running(how) if how.contains("sleep")),
            "{seen:?}"
        );
        if nix::unistd::getuid().is_root() {
            assert_eq!(probe(d.path()), Liveness::Stopped { clean: true });
            std::fs::write(d.path().join("lock"), b"").unwrap();
            assert_eq!(probe(d.path()), Liveness::Stopped { clean: false });
        }
    }
}
