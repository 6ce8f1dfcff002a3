//! Where TSDB data is read from: a local directory, or a directory on another host over SSH
//! (SFTP). Listing, reading and the "is the server still running" probe go through here, so
//! inventory, plan, apply, verify and the format checks work the same on both. Nothing here
//! writes: local files are opened read-only, remote ones through SFTP's read mode.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::fsutil::MTime;
use crate::live::Liveness;
use crate::ssh::{self, Pool, SshSpec};

/// A TSDB directory to read.
#[derive(Clone)]
pub enum Source {
    /// A directory on this host.
    Local(PathBuf),
    /// A directory on another host, over SSH.
    Ssh {
        /// The directory there.
        root: PathBuf,
        /// Connections to the host.
        pool: Arc<Pool>,
        /// What a few commands told of the whole directory at the start of a scan
        /// ([`Source::snapshot`]); `None` for everything else.
        snap: Option<Arc<ssh::snapshot::Snapshot>>,
    },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

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
    fn of(m: &std::fs::Metadata) -> Stat {
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

/// An open source file.
pub enum Input {
    /// A local file.
    Local(File),
    /// A remote file, read through SFTP.
    Remote(RemoteFile),
    /// A remote file whose ends (or all) a [`Source::snapshot`] holds; the rest is read
    /// through SFTP.
    Prefetched(Prefetched),
}

impl Read for Input {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Input::Local(f) => f.read(buf),
            Input::Remote(f) => f.read(buf),
            Input::Prefetched(f) => f.read(buf),
        }
    }
}

impl Seek for Input {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        match self {
            Input::Local(f) => f.seek(pos),
            Input::Remote(f) => f.seek(pos),
            Input::Prefetched(f) => f.seek(pos),
        }
    }
}

impl Source {
    /// The directory (on its host).
    pub fn root(&self) -> &Path {
        match self {
            Source::Local(p) | Source::Ssh { root: p, .. } => p,
        }
    }

    /// `path` or `user@host:port:path`, for messages.
    pub fn describe(&self) -> String {
        match self {
            Source::Local(p) => p.display().to_string(),
            Source::Ssh { root, pool, .. } => {
                format!("{}:{}", pool.spec().describe(), root.display())
            }
        }
    }

    /// The SSH host, if remote.
    pub fn ssh(&self) -> Option<&SshSpec> {
        match self {
            Source::Local(_) => None,
            Source::Ssh { pool, .. } => Some(pool.spec()),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root().to_path_buf()
        } else {
            self.root().join(rel)
        }
    }

    /// Attributes of `rel` (`""`: the root), links not followed.
    pub fn stat(&self, rel: &str) -> io::Result<Stat> {
        let p = self.path(rel);
        if let Some(st) = self.snap().and_then(|s| s.stat(rel)) {
            return Ok(st);
        }
        match self {
            Source::Local(_) => std::fs::symlink_metadata(&p).map(|m| Stat::of(&m)),
            Source::Ssh { pool, .. } => pool.with(&format!("stat {}", p.display()), |c| {
                c.sftp()?
                    .lstat(&p)
                    .map(|s| Stat::of_sftp(&s))
                    .map_err(io::Error::from)
            }),
        }
    }

    /// The entries of directory `rel` (`""`: the root), sorted by name, with their
    /// attributes. Entries that vanish while listed are left out.
    pub fn list(&self, rel: &str) -> io::Result<Vec<Ent>> {
        if let Some(l) = self.snap().and_then(|s| s.list(rel)) {
            return Ok(l);
        }
        let dir = self.path(rel);
        let mut out = match self {
            Source::Local(_) => {
                let mut v = Vec::new();
                for e in std::fs::read_dir(&dir)? {
                    let e = e?;
                    let m = match std::fs::symlink_metadata(e.path()) {
                        Ok(m) => m,
                        Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                        Err(err) => return Err(err),
                    };
                    let name = e
                        .file_name()
                        .into_string()
                        .map_err(|n| n.to_string_lossy().into_owned());
                    v.push(Ent {
                        name,
                        stat: Stat::of(&m),
                    });
                }
                v
            }
            Source::Ssh { pool, .. } => pool.with(&format!("list {}", dir.display()), |c| {
                let entries = c.sftp()?.readdir(&dir).map_err(io::Error::from)?;
                Ok(entries
                    .iter()
                    .map(|(p, st)| Ent {
                        name: p
                            .file_name()
                            .map(|n| n.to_os_string())
                            .unwrap_or_default()
                            .into_string()
                            .map_err(|n| n.to_string_lossy().into_owned()),
                        stat: Stat::of_sftp(st),
                    })
                    .collect())
            })?,
        };
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Reads a whole (small) file.
    pub fn read(&self, rel: &str) -> io::Result<Vec<u8>> {
        if let Some((data, _)) = self.snap().and_then(|s| s.whole(rel)) {
            return Ok(data.to_vec());
        }
        let p = self.path(rel);
        match self {
            Source::Local(_) => crate::sync::copy::read_source(&p),
            // Read from the start on every attempt; no stat first (a round trip saved per
            // meta.json and tombstones file).
            Source::Ssh { pool, .. } => pool.with(&format!("read {}", p.display()), |c| {
                let mut v = Vec::new();
                c.sftp()?
                    .open(&p)
                    .map_err(io::Error::from)?
                    .read_to_end(&mut v)?;
                Ok(v)
            }),
        }
    }

    /// Opens a file for reading; returns it and its attributes at open time.
    pub fn open(&self, rel: &str) -> io::Result<(Input, Stat)> {
        let p = self.path(rel);
        match self {
            Source::Local(_) => {
                let f = crate::sync::copy::open_source(&p)?;
                let st = Stat::of(&f.metadata()?);
                Ok((Input::Local(f), st))
            }
            Source::Ssh { pool, snap, .. } => {
                let mut f = RemoteFile {
                    pool: pool.clone(),
                    path: p,
                    conn: None,
                    file: None,
                    pos: 0,
                };
                if let Some((head, tail, st)) = snap.as_deref().and_then(|s| s.bytes(rel)) {
                    return Ok((
                        Input::Prefetched(Prefetched {
                            head: head.to_vec(),
                            tail: tail.to_vec(),
                            len: st.size,
                            pos: 0,
                            rest: f,
                        }),
                        st,
                    ));
                }
                let st = f.stat_now()?;
                Ok((Input::Remote(f), st))
            }
        }
    }

    /// Whether attributes come over SFTP (an SSH source without a [`Source::snapshot`]):
    /// SFTP (protocol 3) carries times as unsigned 32-bit seconds, so a time before 1970
    /// arrives 2^32 s later, after 2038-01-19.
    pub fn times_over_sftp(&self) -> bool {
        matches!(self, Source::Ssh { snap: None, .. })
    }

    /// The snapshot this source answers from, if any.
    fn snap(&self) -> Option<&ssh::snapshot::Snapshot> {
        match self {
            Source::Ssh { snap, .. } => snap.as_deref(),
            Source::Local(_) => None,
        }
    }

    /// This source answering listings, attributes and the reads of the cheap checks from
    /// one [`ssh::snapshot`] of the remote directory taken now, instead of an SFTP round
    /// trip each: for one scan (and the checks that follow it), never for copying or
    /// hashing. Local sources, `read: sftp`, and hosts where the snapshot cannot be taken
    /// are returned as they are.
    pub fn snapshot(&self) -> Source {
        match self {
            Source::Ssh {
                root,
                pool,
                snap: None,
            } if pool.spec().read == ssh::ReadVia::Tar => match ssh::snapshot::take(pool, root) {
                Some(s) => Source::Ssh {
                    root: root.clone(),
                    pool: pool.clone(),
                    snap: Some(Arc::new(s)),
                },
                None => self.clone(),
            },
            _ => self.clone(),
        }
    }

    /// Whether the Prometheus that owns this directory is running.
    pub fn probe(&self) -> Liveness {
        match self {
            Source::Local(p) => crate::live::probe(p),
            Source::Ssh { root, pool, snap } => match snap.as_deref().and_then(|s| s.lock()) {
                // Asked by the snapshot's listing command, at the start of this scan.
                Some(answer) => lock_answer(root, pool, answer),
                None => remote_probe(root, pool),
            },
        }
    }
}

/// The lock probe on the remote host: open `lock` read-only (never creating it) and try a
/// non-blocking flock on it, as Prometheus holds it while it runs.
fn remote_probe(root: &Path, pool: &Pool) -> Liveness {
    let cmd = format!("cd {} || exit 97; {LOCK_PROBE}", ssh::shell_quote(root));
    match pool.with("probe the source lock", |c| ssh::exec(&c.sess, &cmd)) {
        Ok((_, text)) => lock_answer(root, pool, &text),
        Err(e) => Liveness::Unknown(format!("the remote lock probe failed: {e}")),
    }
}

/// The remote lock probe, in the TSDB directory: prints one line, `lock 0` (free), `lock
/// 99` (held) or `absent`. In a subshell, so the lock file is closed again when it ends.
pub(crate) const LOCK_PROBE: &str = "(if [ -e lock ] && command exec 9<lock; then flock -n -E 99 9; echo \"lock $?\"; else echo absent; fi) 2>/dev/null";

/// What the lock probe's answer means.
fn lock_answer(root: &Path, pool: &Pool, text: &str) -> Liveness {
    match text.trim() {
        "lock 99" => Liveness::Running(format!(
            "{} is locked on {}",
            root.join("lock").display(),
            pool.spec().host
        )),
        "lock 0" => Liveness::Stopped { clean: false },
        "absent" => Liveness::Unknown(format!(
            "{} has no lock file, and promigrate cannot see the processes of {} over SSH",
            root.display(),
            pool.spec().host
        )),
        other => Liveness::Unknown(format!(
            "the remote lock probe answered `{other}` (is util-linux flock installed on {}?)",
            pool.spec().host
        )),
    }
}

/// A remote file read through SFTP. A dropped connection is re-established (with backoff)
/// and the read resumes at the offset it had reached.
pub struct RemoteFile {
    pool: Arc<Pool>,
    path: PathBuf,
    conn: Option<ssh::Conn>,
    file: Option<ssh2::File>,
    pos: u64,
}

impl RemoteFile {
    /// Opens the file at the offset reached, on a new connection when `fresh` (a retry never
    /// trusts an idle one).
    fn ensure_open(&mut self, fresh: bool) -> io::Result<()> {
        if self.conn.is_none() {
            self.conn = Some(self.pool.take_or_refuse(fresh)?);
        }
        let conn = self
            .conn
            .as_ref()
            .ok_or_else(|| io::Error::other("no connection"))?;
        let mut f = conn.sftp()?.open(&self.path).map_err(io::Error::from)?;
        if self.pos > 0 {
            f.seek(SeekFrom::Start(self.pos))?;
        }
        self.file = Some(f);
        Ok(())
    }

    /// The file's attributes now (when opened: at open time; later, to see whether it
    /// changed while it was read).
    pub fn stat_now(&mut self) -> io::Result<Stat> {
        self.retrying("checking", |f| {
            f.stat().map(|s| Stat::of_sftp(&s)).map_err(io::Error::from)
        })
    }

    fn reset(&mut self) {
        self.file = None;
        self.conn = None; // a broken session is dropped, not pooled
    }

    /// Runs `op` on the open file; when the connection is gone, reconnects with backoff
    /// (1, 2, 4, … s), reopens the file at the offset reached, and runs it again. Other
    /// errors, and running out of attempts, are returned.
    fn retrying<T>(
        &mut self,
        what: &str,
        mut op: impl FnMut(&mut ssh2::File) -> io::Result<T>,
    ) -> io::Result<T> {
        let attempts = self.pool.attempts.max(1);
        let mut last = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                let wait = Duration::from_secs(1 << (attempt - 1).min(4));
                tracing::warn!(
                    "{what} {} over SSH failed ({}); reconnecting in {}s and resuming at byte {} (attempt {}/{attempts})",
                    self.path.display(),
                    last.as_ref()
                        .map(|e: &io::Error| e.to_string())
                        .unwrap_or_default(),
                    wait.as_secs(),
                    self.pos,
                    attempt + 1
                );
                std::thread::sleep(wait);
            }
            if self.file.is_none()
                && let Err(e) = self.ensure_open(attempt > 0)
            {
                if !ssh::is_connection_error(&e) {
                    return Err(e);
                }
                self.reset();
                self.pool.discard_idle();
                last = Some(e);
                continue;
            }
            let Some(f) = self.file.as_mut() else {
                continue;
            };
            match op(f) {
                Ok(v) => return Ok(v),
                Err(e) if ssh::is_connection_error(&e) => {
                    self.reset();
                    self.pool.discard_idle();
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!(
                "{what} {} over SSH: gave up after {attempts} attempts ({}); rerun to resume (completed files are kept)",
                self.path.display(),
                last.map(|e| e.to_string()).unwrap_or_default()
            ),
        ))
    }
}

impl Read for RemoteFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.retrying("reading", |f| f.read(buf))?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for RemoteFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => p,
            SeekFrom::Current(d) => self.pos.saturating_add_signed(d),
            SeekFrom::End(d) => self.stat_now()?.size.saturating_add_signed(d),
        };
        if let Some(f) = self.file.as_mut() {
            f.seek(SeekFrom::Start(new))?;
        }
        self.pos = new;
        Ok(new)
    }
}

/// A remote file read from a snapshot where it holds the bytes: its first `head.len()`
/// bytes and its last `tail.len()` (of `len`); anything between through SFTP, opened only
/// then.
pub struct Prefetched {
    head: Vec<u8>,
    tail: Vec<u8>,
    len: u64,
    pos: u64,
    rest: RemoteFile,
}

impl Read for Prefetched {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let tail_at = self.len.saturating_sub(self.tail.len() as u64);
        let (pos, head) = (self.pos, self.head.len() as u64);
        let n = if pos >= self.len {
            0
        } else if pos < head {
            (&self.head[pos as usize..]).read(buf)?
        } else if pos >= tail_at {
            (&self.tail[(pos - tail_at) as usize..]).read(buf)?
        } else {
            let want = ((tail_at - pos) as usize).min(buf.len());
            self.rest.seek(SeekFrom::Start(pos))?;
            self.rest.read(&mut buf[..want])?
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Prefetched {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.pos = match pos {
            SeekFrom::Start(p) => p,
            SeekFrom::Current(d) => self.pos.saturating_add_signed(d),
            SeekFrom::End(d) => self.len.saturating_add_signed(d),
        };
        Ok(self.pos)
    }
}

impl Drop for RemoteFile {
    fn drop(&mut self) {
        self.file = None;
        if let Some(c) = self.conn.take() {
            self.pool.give(c);
        }
    }
}
